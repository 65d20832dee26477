"""Make the lab's identity data exist, like `keystone-manage bootstrap`.

Safe to run at every start: it only creates what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from labkit.cloud.identity.backend import INTERFACES, IdentityBackend
from labkit.cloud.identity.models import (
    Assignment,
    Domain,
    Endpoint,
    ImpliedRole,
    Project,
    Region,
    Role,
    Service,
    User,
)


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def bootstrap(backend: IdentityBackend, lab: Path, base_url: str,
              served: tuple[str, ...] | None = None) -> None:
    """Create what the lab's files name and is missing; point lab endpoints at `base_url`.

    `served` lists the paths the cloud answers on; catalog entries elsewhere are left
    out, since clients (the CLI's `quota show`, for one) call every service listed.
    """
    identity = load_yaml(lab / "identity.yaml")
    catalog = load_yaml(lab / "catalog.yaml")
    ids = backend.ids
    with backend.db.session() as s:
        for d in identity["domains"]:
            if s.get(Domain, d["id"]) is None:
                s.add(Domain(id=d["id"], name=d["name"], description=d.get("description", ""),
                             enabled=True))
        roles = {}
        for name in identity["roles"]:
            role = s.scalar(select(Role).where(Role.name == name))
            if role is None:
                role = Role(id=ids.hex_id("role"), name=name, description="")
                s.add(role)
            roles[name] = role
        s.flush()
        for rule in identity.get("implied_roles", []):
            key = (roles[rule["prior"]].id, roles[rule["implies"]].id)
            if s.get(ImpliedRole, key) is None:
                s.add(ImpliedRole(prior_role_id=key[0], implied_role_id=key[1]))
        projects = {}
        for p in identity["projects"]:
            project = s.scalar(select(Project).where(Project.name == p["name"],
                                                     Project.domain_id == "default"))
            if project is None:
                project = Project(id=ids.hex_id("project"), name=p["name"], domain_id="default",
                                  description=p.get("description", ""), enabled=True)
                s.add(project)
            projects[p["name"]] = project
        s.flush()
        for u in identity["users"]:
            user = s.scalar(select(User).where(User.name == u["name"],
                                               User.domain_id == "default"))
            if user is None:
                user = User(id=ids.hex_id("user"), name=u["name"], domain_id="default",
                            password_hash=backend.hash_password(u["password"]), enabled=True)
                s.add(user)
                s.flush()
                s.add(Assignment(actor_id=user.id, target_type="project",
                                 target_id=projects[u["project"]].id,
                                 role_id=roles[u["role"]].id))
        region_id = identity["region"]
        if s.get(Region, region_id) is None:
            s.add(Region(id=region_id, description=""))
        for entry in catalog["services"]:
            if served is not None and not entry["path"].startswith(served):
                continue
            service = s.scalar(select(Service).where(Service.type == entry["type"],
                                                     Service.name == entry["name"]))
            if service is None:
                service = Service(id=ids.hex_id("service"), type=entry["type"],
                                  name=entry["name"], description=entry.get("description", ""),
                                  enabled=True)
                s.add(service)
                s.flush()
            url = base_url.rstrip("/") + entry["path"]
            existing = {e.interface: e for e in s.scalars(
                select(Endpoint).where(Endpoint.service_id == service.id))}
            for interface in INTERFACES:
                if interface in existing:
                    existing[interface].url = url  # the port may differ from the last start
                else:
                    s.add(Endpoint(id=ids.hex_id("endpoint"), service_id=service.id,
                                   interface=interface, region_id=region_id, url=url,
                                   enabled=True))
    backend.forget_cached()


def clouds_yaml(lab: Path, base_url: str) -> dict[str, Any]:
    """The clouds.yaml the cloud writes: one entry per lab user named in identity.yaml."""
    identity = load_yaml(lab / "identity.yaml")
    passwords = {u["name"]: u["password"] for u in identity["users"]}
    clouds = {}
    for cloud, who in identity["clouds"].items():
        clouds[cloud] = {
            "auth": {
                "auth_url": base_url.rstrip("/") + "/identity",
                "username": who["user"],
                "password": passwords[who["user"]],
                "project_name": who["project"],
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": identity["region"],
            "interface": "public",
            "identity_api_version": 3,
        }
    return {"clouds": clouds}
