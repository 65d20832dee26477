"""Keystone's rules: who you are, what you may act on, and the tokens that say so.

No HTTP here: handlers parse requests and shape replies; this module holds the
state (through SQLAlchemy) and raises `labkit.cloud.errors` when it refuses.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import bcrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from labkit.cloud.http import is_true
from labkit.cloud.identity.exceptions import TokenNotFound
from labkit.cloud.identity.models import (
    Assignment,
    Domain,
    Endpoint,
    IdentityBase,
    ImpliedRole,
    Project,
    Region,
    RevocationEvent,
    Role,
    Service,
    User,
)
from labkit.cloud.identity.tokens import FernetTokens, InvalidToken, TokenPayload
from labkit.cloud.ids import IdSource


@dataclass
class TokenInfo:
    """A validated token: whose it is, its scope, its roles. What every service acts on."""

    token: str
    user: dict[str, Any]
    methods: list[str]
    issued_at: float
    expires_at: float
    audit_ids: list[str]
    roles: list[dict[str, str]] = field(default_factory=list)
    project: dict[str, Any] | None = None
    domain: dict[str, Any] | None = None

    @property
    def user_id(self) -> str:
        return self.user["id"]

    @property
    def project_id(self) -> str | None:
        return self.project["id"] if self.project else None

    @property
    def role_names(self) -> list[str]:
        return [r["name"] for r in self.roles]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.role_names


# What each kind of entity accepts on create and update, and which list filters it honours.
ENTITY_MODELS: dict[str, type[IdentityBase]] = {
    "domain": Domain,
    "project": Project,
    "user": User,
    "role": Role,
    "region": Region,
    "service": Service,
    "endpoint": Endpoint,
}
FIELDS: dict[str, tuple[str, ...]] = {
    "domain": ("name", "description", "enabled"),
    "project": ("name", "domain_id", "description", "enabled"),
    "user": ("name", "domain_id", "password", "enabled", "email", "description",
             "default_project_id"),
    "role": ("name", "description"),
    "region": ("id", "description", "parent_region_id"),
    "service": ("type", "name", "description", "enabled"),
    "endpoint": ("service_id", "interface", "region_id", "url", "enabled"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "domain": ("name",),
    "project": ("name",),
    "user": ("name",),
    "role": ("name",),
    "region": (),
    "service": ("type",),
    "endpoint": ("service_id", "interface", "url"),
}
FILTERS: dict[str, tuple[str, ...]] = {
    "domain": ("name", "enabled"),
    "project": ("name", "domain_id", "enabled"),
    "user": ("name", "domain_id", "enabled"),
    "role": ("name",),
    "region": ("parent_region_id",),
    "service": ("type", "name"),
    "endpoint": ("service_id", "interface", "region_id"),
}
INTERFACES = ("public", "internal", "admin")


@dataclass(frozen=True)
class DomainRef:
    """What sign-in needs of a domain, kept in memory."""

    id: str
    name: str
    enabled: bool
NULLABLE = ("email", "description", "default_project_id", "parent_region_id", "region_id")
NAME_LENGTH = {"domain": 64, "project": 64, "user": 255, "role": 255, "service": 255}


def _audit_id(ids: IdSource) -> str:
    # keystone: 16 random bytes, urlsafe base64 without padding (22 characters)
    return base64.urlsafe_b64encode(ids.random_bytes("audit", 16)).decode().rstrip("=")


class IdentityBackend:
    """The identity, resource, assignment, catalog and token parts of keystone, in one object."""

    def __init__(
        self, db: Database, tokens: FernetTokens, ids: IdSource, *,
        bcrypt_rounds: int = 4, token_ttl: int = 3600,
    ) -> None:
        self.db = db
        self.tokens = tokens
        self.ids = ids
        self.bcrypt_rounds = bcrypt_rounds
        self.token_ttl = token_ttl
        self._roles: tuple[dict[str, list[str]], dict[str, str]] | None = None
        self._catalogs: dict[str | None, list[dict[str, Any]]] = {}
        self._domain_cache: dict[str, DomainRef] | None = None
        with db.session() as session:
            self._revocations = list(session.scalars(select(RevocationEvent)))

    # -- passwords ---------------------------------------------------------------------

    def hash_password(self, password: str) -> str:
        salt = bcrypt.gensalt(rounds=self.bcrypt_rounds)
        return bcrypt.hashpw(_bcrypt_input(password), salt).decode()

    @staticmethod
    def _password_matches(password: str, hashed: str | None) -> bool:
        if not hashed:
            return False
        return bcrypt.checkpw(_bcrypt_input(password), hashed.encode())

    # -- authentication ----------------------------------------------------------------

    def authenticate(self, auth: dict[str, Any], now: float | None = None) -> TokenInfo:
        """POST /v3/auth/tokens: check the identity, resolve the scope, issue a token."""
        now = time.time() if now is None else now
        identity = _require_dict(auth, "identity", "auth")
        methods = identity.get("methods")
        if not isinstance(methods, list) or not methods:
            raise BadRequest("Expecting to find methods in identity. The server could not "
                             "comply with the request since it is either malformed or "
                             "otherwise incorrect.")
        unknown = [m for m in methods if m not in ("password", "token")]
        if unknown:
            raise Unauthorized(
                f"Attempted to authenticate with an unsupported method: {unknown[0]}")

        with self.db.session() as session:
            if "password" in methods:
                user = self._check_password(session, _require_dict(identity, "password",
                                                                    "identity"))
                expires_at = now + self.token_ttl
                audit_ids = [_audit_id(self.ids)]
            else:
                token = _require_dict(identity, "token", "identity").get("id")
                if not isinstance(token, str):
                    raise BadRequest("Expecting to find id in token.")
                try:
                    original = self.validate(token, now=now)
                except TokenNotFound as exc:
                    raise Unauthorized() from exc
                user = session.get(User, original.user_id)
                # a rescoped token keeps the original's methods and expiry; its second audit
                # id names the chain it belongs to (the original's first)
                methods = list(dict.fromkeys(["token", *original.methods]))
                expires_at = original.expires_at
                audit_ids = [_audit_id(self.ids), original.audit_ids[-1]]
            # `project` stays referenced until the token is described: SQLAlchemy's identity
            # map holds objects weakly, and a dropped one would be read again
            project, domain_id = self._resolve_scope(session, auth.get("scope"), user)
            payload = TokenPayload(
                user_id=user.id,
                methods=tuple(methods),
                expires_at=float(expires_at),
                audit_ids=tuple(audit_ids),
                project_id=project.id if project else None,
                domain_id=domain_id,
                issued_at=float(now),
            )
            return self._describe(session, self.tokens.issue(payload), payload)

    def _check_password(self, session: Session, password: dict[str, Any]) -> User:
        user_ref = _require_dict(password, "user", "password")
        secret = user_ref.get("password")
        if not isinstance(secret, str):
            raise BadRequest("Expecting to find password in user.")
        if "id" in user_ref:
            user = session.get(User, _text(user_ref["id"], "user.id"))
        elif "name" in user_ref:
            domain = self._find_domain(session, user_ref.get("domain"), "user")
            user = session.scalar(select(User).where(
                User.name == _text(user_ref["name"], "user.name"), User.domain_id == domain.id))
        else:
            raise BadRequest("Expecting to find id or name in user.")
        # one answer for every failure, so a caller cannot tell which part was wrong
        if (user is None or not user.enabled or not self._domain_enabled(session, user.domain_id)
                or not self._password_matches(secret, user.password_hash)):
            raise Unauthorized()
        return user

    def _find_domain(self, session: Session, ref: Any, owner: str) -> DomainRef:
        if not isinstance(ref, dict) or not ({"id", "name"} & ref.keys()):
            raise BadRequest(f"Expecting to find domain in {owner}.")
        domains = self._domains(session)
        if "id" in ref:
            domain = domains.get(_text(ref["id"], "domain.id"))
        else:
            name = _text(ref["name"], "domain.name")
            domain = next((d for d in domains.values() if d.name == name), None)
        if domain is None or not domain.enabled:
            raise Unauthorized()
        return domain

    def _domains(self, session: Session) -> dict[str, DomainRef]:
        """Every domain by id; every sign-in names one, so they are cached until one changes."""
        if self._domain_cache is None:
            self._domain_cache = {d.id: DomainRef(d.id, d.name, d.enabled)
                                  for d in session.scalars(select(Domain))}
        return self._domain_cache

    def _domain_enabled(self, session: Session, domain_id: str) -> bool:
        domain = self._domains(session).get(domain_id)
        return domain is not None and domain.enabled

    def _user_ref(self, session: Session, user: User) -> dict[str, Any]:
        domain = self._domains(session)[user.domain_id]
        return {"id": user.id, "name": user.name,
                "domain": {"id": domain.id, "name": domain.name},
                "password_expires_at": None}

    def _project_ref(self, session: Session, project: Project) -> dict[str, Any]:
        domain = self._domains(session)[project.domain_id]
        return {"id": project.id, "name": project.name,
                "domain": {"id": domain.id, "name": domain.name}}

    def _resolve_scope(
        self, session: Session, scope: Any, user: User
    ) -> tuple[Project | None, str | None]:
        """The project (or the domain id) a token is to be scoped to, if the user has a role."""
        if scope == "unscoped":  # keystone's way to ask for an unscoped token explicitly
            return None, None
        if scope is None or scope == {}:
            # no scope asked for: keystone scopes to the user's default project, if usable
            project = session.get(Project, user.default_project_id or "")
            if project is not None and project.enabled and self._effective_roles(
                    session, user.id, "project", project.id):
                return project, None
            return None, None
        if not isinstance(scope, dict):
            raise BadRequest("Invalid scope: expecting an object.")
        if "project" in scope:
            ref = scope["project"]
            if not isinstance(ref, dict):
                raise BadRequest("Expecting to find id or name in project.")
            if "id" in ref:
                project = session.get(Project, _text(ref["id"], "project.id"))
            elif "name" in ref:
                domain = self._find_domain(session, ref.get("domain"), "project")
                project = session.scalar(select(Project).where(
                    Project.name == _text(ref["name"], "project.name"),
                    Project.domain_id == domain.id))
            else:
                raise BadRequest("Expecting to find id or name in project.")
            if (project is None or not project.enabled
                    or not self._domain_enabled(session, project.domain_id)):
                raise Unauthorized()
            if not self._effective_roles(session, user.id, "project", project.id):
                raise Unauthorized(f"User {user.id} has no access to project {project.id}")
            return project, None
        if "domain" in scope:
            domain = self._find_domain(session, scope["domain"], "scope")
            if not self._effective_roles(session, user.id, "domain", domain.id):
                raise Unauthorized(f"User {user.id} has no access to domain {domain.id}")
            return None, domain.id
        raise BadRequest("Invalid scope: a scope names a project or a domain.")

    # -- validation and revocation ------------------------------------------------------

    def validate(self, token: str, now: float | None = None) -> TokenInfo:
        """The token's facts, or TokenNotFound if it is not ours, expired, or revoked."""
        now = time.time() if now is None else now
        try:
            payload = self.tokens.read(token)
        except (InvalidToken, ValueError, KeyError, TypeError) as exc:
            raise TokenNotFound("the token is malformed or was not issued here") from exc
        if now >= payload.expires_at:
            raise TokenNotFound("the token has expired")
        if self._is_revoked(payload):
            raise TokenNotFound("the token has been revoked")
        with self.db.session() as session:
            return self._describe(session, token, payload)

    def _describe(self, session: Session, token: str, payload: TokenPayload) -> TokenInfo:
        """What a token stands for now: its user, scope and roles, read from the database."""
        user = session.get(User, payload.user_id)
        if user is None or not user.enabled or not self._domain_enabled(session, user.domain_id):
            raise TokenNotFound("the token's user, or its domain, is gone or disabled")
        info = TokenInfo(
            token=token,
            user=self._user_ref(session, user),
            methods=list(payload.methods),
            issued_at=payload.issued_at,
            expires_at=payload.expires_at,
            audit_ids=list(payload.audit_ids),
        )
        if payload.project_id:
            project = session.get(Project, payload.project_id)
            if (project is None or not project.enabled
                    or not self._domain_enabled(session, project.domain_id)):
                raise TokenNotFound("the token's project, or its domain, is gone or disabled")
            info.project = self._project_ref(session, project)
            info.roles = self._effective_roles(session, user.id, "project", project.id)
        elif payload.domain_id:
            domain = session.get(Domain, payload.domain_id)
            if domain is None or not domain.enabled:
                raise TokenNotFound("the token's domain is gone or disabled")
            info.domain = {"id": domain.id, "name": domain.name}
            info.roles = self._effective_roles(session, user.id, "domain", domain.id)
        if (payload.project_id or payload.domain_id) and not info.roles:
            raise TokenNotFound("the token's user no longer has a role on its scope")
        return info

    def revoke_token(self, info: TokenInfo) -> None:
        """DELETE /v3/auth/tokens: keystone records a revocation event by audit id."""
        self._add_revocation(audit_id=info.audit_ids[0], issued_before=time.time())

    def _add_revocation(self, **fields: Any) -> None:
        with self.db.session() as session:
            event = RevocationEvent(revoked_at=time.time(), **fields)
            session.add(event)
        self._revocations.append(event)

    def _is_revoked(self, payload: TokenPayload) -> bool:
        for event in self._revocations:
            if payload.issued_at >= event.issued_before:
                continue
            # by audit id, keystone revokes that one token, not the tokens rescoped from it
            if event.audit_id and event.audit_id != payload.audit_ids[0]:
                continue
            if event.user_id and event.user_id != payload.user_id:
                continue
            if event.project_id and event.project_id != payload.project_id:
                continue
            return True
        return False

    # -- roles -------------------------------------------------------------------------

    def _effective_roles(
        self, session: Session, user_id: str, target_type: str, target_id: str
    ) -> list[dict[str, str]]:
        direct = session.scalars(
            select(Assignment.role_id).where(
                Assignment.actor_id == user_id,
                Assignment.target_type == target_type,
                Assignment.target_id == target_id,
            )
        ).all()
        return self._with_implied(session, direct)

    def _role_graph(self, session: Session) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Which roles imply which, and their names; cached until a role changes."""
        if self._roles is None:
            implied: dict[str, list[str]] = {}
            for rule in session.scalars(select(ImpliedRole)):
                implied.setdefault(rule.prior_role_id, []).append(rule.implied_role_id)
            names = {r.id: r.name for r in session.scalars(select(Role))}
            self._roles = (implied, names)
        return self._roles

    def _with_implied(self, session: Session, role_ids: Iterable[str]) -> list[dict[str, str]]:
        implied, names = self._role_graph(session)
        seen: list[str] = []
        todo = list(role_ids)
        while todo:
            role_id = todo.pop(0)
            if role_id not in seen:
                seen.append(role_id)
                todo.extend(implied.get(role_id, []))
        return [{"id": rid, "name": names[rid]} for rid in seen if rid in names]

    def grant(self, user_id: str, target_type: str, target_id: str, role_id: str) -> None:
        with self.db.session() as session:
            self._check_grant_parts(session, user_id, target_type, target_id, role_id)
            key = (user_id, target_type, target_id, role_id)
            if session.get(Assignment, key) is None:
                session.add(Assignment(actor_id=user_id, target_type=target_type,
                                       target_id=target_id, role_id=role_id))

    def revoke_grant(self, user_id: str, target_type: str, target_id: str, role_id: str) -> None:
        with self.db.session() as session:
            self._check_grant_parts(session, user_id, target_type, target_id, role_id)
            grant = session.get(Assignment, (user_id, target_type, target_id, role_id))
            if grant is None:
                raise NotFound(f"Could not find role assignment with role: {role_id}, "
                               f"user or group: {user_id}, {target_type}: {target_id}.")
            session.delete(grant)
        # no revocation event needed: every validation reads the roles afresh

    def has_grant(self, user_id: str, target_type: str, target_id: str, role_id: str) -> bool:
        with self.db.session() as session:
            self._check_grant_parts(session, user_id, target_type, target_id, role_id)
            return session.get(Assignment, (user_id, target_type, target_id, role_id)) is not None

    def list_grants(self, user_id: str, target_type: str, target_id: str) -> list[Role]:
        with self.db.session() as session:
            self._get(session, "user", user_id)
            self._get(session, target_type, target_id)
            role_ids = session.scalars(select(Assignment.role_id).where(
                Assignment.actor_id == user_id, Assignment.target_type == target_type,
                Assignment.target_id == target_id)).all()
            return list(session.scalars(select(Role).where(Role.id.in_(role_ids))))

    def _check_grant_parts(self, session: Session, user_id: str, target_type: str,
                           target_id: str, role_id: str) -> None:
        self._get(session, "user", user_id)
        self._get(session, target_type, target_id)
        self._get(session, "role", role_id)

    def role_assignments(self, filters: dict[str, str], effective: bool = False,
                         include_names: bool = False) -> list[dict[str, Any]]:
        """GET /v3/role_assignments, with keystone's dotted filters."""
        with self.db.session() as session:
            stmt = select(Assignment)
            if "user.id" in filters:
                stmt = stmt.where(Assignment.actor_id == filters["user.id"])
            if "scope.project.id" in filters:
                stmt = stmt.where(Assignment.target_type == "project",
                                  Assignment.target_id == filters["scope.project.id"])
            if "scope.domain.id" in filters:
                stmt = stmt.where(Assignment.target_type == "domain",
                                  Assignment.target_id == filters["scope.domain.id"])
            rows = []
            for grant in session.scalars(stmt):
                role_ids = [grant.role_id]
                if effective:
                    role_ids = [r["id"] for r in self._with_implied(session, role_ids)]
                for role_id in role_ids:
                    if filters.get("role.id") not in (None, role_id):
                        continue
                    rows.append(self._assignment_view(session, grant, role_id, include_names))
            return _unique(rows)

    def _assignment_view(self, session: Session, grant: Assignment, role_id: str,
                         names: bool) -> dict[str, Any]:
        user: dict[str, Any] = {"id": grant.actor_id}
        role: dict[str, Any] = {"id": role_id}
        target: dict[str, Any] = {"id": grant.target_id}
        if names:
            user = self._user_ref(session, session.get(User, grant.actor_id))
            role["name"] = session.get(Role, role_id).name
            if grant.target_type == "project":
                target = self._project_ref(session, session.get(Project, grant.target_id))
            else:
                target["name"] = session.get(Domain, grant.target_id).name
        return {"user": user, "role": role, "scope": {grant.target_type: target}}

    def user_projects(self, user_id: str) -> list[Project]:
        """Projects on which the user holds any role, as /v3/auth/projects lists them."""
        with self.db.session() as session:
            self._get(session, "user", user_id)
            ids = session.scalars(select(Assignment.target_id).where(
                Assignment.actor_id == user_id, Assignment.target_type == "project")).all()
            return list(session.scalars(
                select(Project).where(Project.id.in_(ids)).order_by(Project.name)))

    def user_domains(self, user_id: str) -> list[Domain]:
        with self.db.session() as session:
            ids = session.scalars(select(Assignment.target_id).where(
                Assignment.actor_id == user_id, Assignment.target_type == "domain")).all()
            return list(session.scalars(select(Domain).where(Domain.id.in_(ids))))

    def change_password(self, user_id: str, original: str, new: str) -> None:
        with self.db.session() as session:
            user = self._get(session, "user", user_id)
            if not self._password_matches(original, user.password_hash):
                raise Unauthorized("The original password was not correct.")
            user.password_hash = self.hash_password(new)
            user.password_changed_at = time.time()
        self._add_revocation(user_id=user_id, issued_before=time.time())

    # -- the catalog -------------------------------------------------------------------

    def catalog(self, project_id: str | None) -> list[dict[str, Any]]:
        """The service catalog a token carries; "$(project_id)s" filled in as keystone does.

        Cached per project, as keystone's [catalog] caching does, until the catalog changes.
        """
        if project_id in self._catalogs:
            return self._catalogs[project_id]
        with self.db.session() as session:
            services = session.scalars(
                select(Service).where(Service.enabled.is_(True)).order_by(Service.type)).all()
            endpoints = session.scalars(select(Endpoint).where(Endpoint.enabled.is_(True))).all()
        catalog = []
        for service in services:
            entries = []
            for ep in endpoints:
                if ep.service_id != service.id:
                    continue
                if "project_id)s" in ep.url and not project_id:
                    continue
                url = ep.url.replace("$(project_id)s", project_id or "").replace(
                    "%(project_id)s", project_id or "")
                entries.append({"id": ep.id, "interface": ep.interface, "region": ep.region_id,
                                "region_id": ep.region_id, "url": url})
            entries.sort(key=lambda e: INTERFACES.index(e["interface"])
                         if e["interface"] in INTERFACES else 9)
            catalog.append({"id": service.id, "type": service.type, "name": service.name,
                            "endpoints": entries})
        self._catalogs[project_id] = catalog
        return catalog

    def forget_cached(self, kind: str | None = None) -> None:
        """Drop what was cached about `kind` (everything when None) after it changed."""
        if kind in (None, "role"):
            self._roles = None
        if kind in (None, "domain"):
            self._domain_cache = None
        if kind in (None, "service", "endpoint", "region"):
            self._catalogs.clear()

    # -- plain entities: list, get, create, update, delete ------------------------------

    def list(self, kind: str, filters: dict[str, str] | None = None) -> list[Any]:
        model = ENTITY_MODELS[kind]
        stmt = select(model)
        for key, value in (filters or {}).items():
            if key not in FILTERS[kind]:
                continue
            column = getattr(model, key)
            if key == "enabled":
                stmt = stmt.where(column.is_(is_true(value)))
            else:
                stmt = stmt.where(column == value)
        order = model.name if hasattr(model, "name") else model.id
        with self.db.session() as session:
            return list(session.scalars(stmt.order_by(order)))

    def get(self, kind: str, entity_id: str) -> Any:
        with self.db.session() as session:
            return self._get(session, kind, entity_id)

    def _get(self, session: Session, kind: str, entity_id: str) -> Any:
        entity = session.get(ENTITY_MODELS[kind], entity_id)
        if entity is None:
            raise NotFound(f"Could not find {kind}: {entity_id}.")
        return entity

    def create(self, kind: str, body: dict[str, Any]) -> Any:
        fields = self._clean(kind, body, creating=True)
        with self.db.session() as session:
            if kind == "endpoint" and body.get("region") and not fields.get("region_id"):
                # the v2-era "region" attribute: keystone creates that region if it is missing
                fields["region_id"] = self._legacy_region(session, body["region"])
            if kind == "region":
                fields.setdefault("id", self.ids.hex_id("region"))
                if session.get(Region, fields["id"]) is not None:
                    raise Conflict(f"Conflict occurred attempting to store region - "
                                   f"Duplicate ID, {fields['id']}.")
            else:
                fields["id"] = self.ids.hex_id(kind)
            if kind in ("project", "user"):
                fields.setdefault("domain_id", "default")
                self._get(session, "domain", fields["domain_id"])
            self._check_references(session, kind, fields)
            self._check_unique(session, kind, fields)
            if kind == "user":
                password = fields.pop("password", None)
                fields["password_hash"] = self.hash_password(password) if password else None
            entity = ENTITY_MODELS[kind](**fields)
            session.add(entity)
            if kind == "domain":
                entity.enabled = fields.get("enabled", True)
        self.forget_cached(kind)
        return entity

    def update(self, kind: str, entity_id: str, body: dict[str, Any]) -> Any:
        fields = self._clean(kind, body, creating=False)
        fields.pop("id", None)
        with self.db.session() as session:
            entity = self._get(session, kind, entity_id)
            if "domain_id" in fields and fields["domain_id"] != entity.domain_id:
                raise BadRequest(f"Cannot change the domain_id of a {kind}.")
            self._check_references(session, kind, fields)
            if "name" in fields and fields["name"] != getattr(entity, "name", None):
                self._check_unique(session, kind, {**_columns(entity), **fields})
            password_changed = kind == "user" and "password" in fields
            if password_changed:
                entity.password_hash = self.hash_password(fields.pop("password"))
                entity.password_changed_at = time.time()
            for key, value in fields.items():
                setattr(entity, key, value)
        # a disabled user, or one whose password changed, loses every token issued so far
        if kind == "user" and (password_changed or fields.get("enabled") is False):
            self._add_revocation(user_id=entity_id, issued_before=time.time())
        if kind == "project" and fields.get("enabled") is False:
            self._add_revocation(project_id=entity_id, issued_before=time.time())
        self.forget_cached(kind)
        return entity

    def delete(self, kind: str, entity_id: str) -> None:
        with self.db.session() as session:
            entity = self._get(session, kind, entity_id)
            if kind == "domain" and entity.enabled:
                raise Forbidden("Cannot delete a domain that is enabled, please disable it "
                                 "first.")
            if kind == "domain" and entity_id == "default":
                raise Forbidden("Cannot delete the default domain.")
            if kind == "domain" and (
                    session.scalar(select(Project.id).where(Project.domain_id == entity_id))
                    or session.scalar(select(User.id).where(User.domain_id == entity_id))):
                raise Conflict("Cannot delete a domain that still owns projects or users: "
                               "delete those first.")
            if kind == "region" and (
                    session.scalar(select(Endpoint.id).where(Endpoint.region_id == entity_id))
                    or session.scalar(select(Region.id).where(
                        Region.parent_region_id == entity_id))):
                raise Conflict(f"Cannot delete region {entity_id}: endpoints or child regions "
                               f"still refer to it.")
            if kind in ("project", "domain"):
                for grant in session.scalars(select(Assignment).where(
                        Assignment.target_id == entity_id)):
                    session.delete(grant)
            session.delete(entity)
        # tokens of a deleted user or project fail validation, which reads both afresh
        self.forget_cached(kind)

    def _clean(self, kind: str, body: dict[str, Any], creating: bool) -> dict[str, Any]:
        allowed = FIELDS[kind]
        fields = {k: v for k, v in body.items() if k in allowed}
        if creating:
            missing = [f for f in REQUIRED[kind] if f not in fields]
            if missing:
                raise BadRequest(f"Invalid input for field '{missing[0]}': "
                                 f"'{missing[0]}' is a required property")
        for key, value in fields.items():
            if key == "enabled" and not isinstance(value, bool):
                raise BadRequest(f"Invalid input for field 'enabled': {value!r} is not of "
                                 f"type 'boolean'")
            if key == "name" and (not isinstance(value, str) or not value.strip()):
                raise BadRequest("Invalid input for field 'name': the name must be a "
                                 "non-empty string")
            if key == "name" and len(value) > NAME_LENGTH.get(kind, 255):
                raise BadRequest(f"Invalid input for field 'name': {value!r} is too long "
                                 f"(at most {NAME_LENGTH[kind]} characters)")
            if key == "interface" and value not in INTERFACES:
                raise BadRequest(f"Invalid input for field 'interface': {value!r} is not one "
                                 f"of {list(INTERFACES)}")
            if key != "enabled" and not (value is None and key in NULLABLE):
                _text(value, key)
        return fields

    def _legacy_region(self, session: Session, region_id: Any) -> str:
        region_id = _text(region_id, "region")
        if session.get(Region, region_id) is None:
            session.add(Region(id=region_id, description=""))
            session.flush()
        return region_id

    def _check_references(self, session: Session, kind: str, fields: dict[str, Any]) -> None:
        if kind == "endpoint":
            if "service_id" in fields:
                self._get(session, "service", fields["service_id"])
            if fields.get("region_id") is not None:
                self._get(session, "region", fields["region_id"])
        if kind == "region" and fields.get("parent_region_id") is not None:
            self._get(session, "region", fields["parent_region_id"])
        if kind == "user" and fields.get("default_project_id"):
            self._get(session, "project", fields["default_project_id"])

    def _check_unique(self, session: Session, kind: str, fields: dict[str, Any]) -> None:
        model = ENTITY_MODELS[kind]
        if kind in ("project", "user"):
            clash = session.scalar(select(model).where(
                model.name == fields["name"], model.domain_id == fields["domain_id"]))
        elif kind in ("domain", "role"):
            clash = session.scalar(select(model).where(model.name == fields["name"]))
        else:
            return
        if clash is not None:
            raise Conflict(f"Conflict occurred attempting to store {kind} - Duplicate entry "
                           f"found with name {fields['name']}.")


def _columns(entity: Any) -> dict[str, Any]:
    return {c.key: getattr(entity, c.key) for c in entity.__table__.columns}


def _bcrypt_input(password: str) -> bytes:
    """bcrypt reads 72 bytes at most; keystone cuts longer passwords there too."""
    return _text(password, "password").encode()[:72]


def _text(value: Any, field: str) -> str:
    """`value` if it is a string that can be stored, else BadRequest naming the field."""
    if not isinstance(value, str):
        raise BadRequest(f"Invalid input for field '{field}': {value!r} is not of type 'string'")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise BadRequest(f"Invalid input for field '{field}': not valid Unicode text") from exc
    return value


def _require_dict(parent: Any, key: str, where: str) -> dict[str, Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(value, dict):
        raise BadRequest(f"Expecting to find {key} in {where}. The server could not comply "
                         f"with the request since it is either malformed or otherwise "
                         f"incorrect. The client is assumed to be in error.")
    return value


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for row in rows:
        key = repr(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out
