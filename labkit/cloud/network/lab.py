"""The lab's networks (data/networks.yaml): its ml2 settings, and what exists at start.

`load` creates what the file names and is missing, through the model's own calls, so
the lab's networks get their DHCP port, gateway and interface ports as any other would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from labkit.cloud.network.common import TUNNEL_ID_MAX, LabConfig, NetContext

if TYPE_CHECKING:
    from labkit.cloud.network.models import Neutron

NETWORK_KEYS = ("name", "shared", "router:external", "provider:network_type",
                "provider:physical_network", "provider:segmentation_id", "mtu", "description",
                "admin_state_up", "port_security_enabled")
SUBNET_KEYS = ("name", "cidr", "ip_version", "gateway_ip", "allocation_pools",
               "dns_nameservers", "host_routes", "enable_dhcp", "description")


def read(lab: Path) -> dict[str, Any]:
    path = lab / "networks.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def config(lab: Path) -> LabConfig:
    spec = read(lab)
    defaults = LabConfig()
    tunnel_type = spec.get("tunnel_type", defaults.tunnel_type)
    if tunnel_type not in TUNNEL_ID_MAX:
        raise ValueError(f"networks.yaml: tunnel_type must be vxlan or gre, not {tunnel_type!r}")
    return LabConfig(
        tunnel_type=tunnel_type,
        tunnel_id_start=int(spec.get("tunnel_id_start", defaults.tunnel_id_start)),
        flat_networks=tuple(spec.get("flat_networks", defaults.flat_networks)),
        bridge_mappings=dict(spec.get("bridge_mappings", defaults.bridge_mappings)))


def load(neutron: Neutron, lab: Path, projects: Mapping[str, str]) -> None:
    """Create the lab's networks, subnets and routers that are missing.

    `projects` maps project names to keystone ids; entries whose project is unknown
    are skipped.
    """
    spec = read(lab)
    subnet_ids: dict[str, str] = {}
    network_ids: dict[str, str] = {}
    for net in spec.get("networks", []):
        project = projects.get(net.get("project", "admin"))
        if project is None:
            continue
        ctx = NetContext(project_id=project, is_admin=True)
        existing = _named(neutron, ctx, "network", net["name"], project)
        if existing is None:
            body = {k: net[k] for k in NETWORK_KEYS if k in net}
            existing = neutron.create(ctx, "network", {**body, "project_id": project})
        network_ids[net["name"]] = existing["id"]
        for sub in net.get("subnets", []):
            found = _named(neutron, ctx, "subnet", sub["name"], project)
            if found is None:
                body = {k: sub[k] for k in SUBNET_KEYS if k in sub}
                found = neutron.create(ctx, "subnet", {**body, "network_id": existing["id"],
                                                       "project_id": project})
            subnet_ids[sub["name"]] = found["id"]
    for spec_router in spec.get("routers", []):
        project = projects.get(spec_router.get("project", "admin"))
        if project is None:
            continue
        ctx = NetContext(project_id=project, is_admin=True)
        router = _named(neutron, ctx, "router", spec_router["name"], project)
        if router is None:
            router = neutron.create(ctx, "router", {"name": spec_router["name"],
                                                    "project_id": project})
        gateway = spec_router.get("external_gateway")
        if gateway in network_ids and not router.get("external_gateway_info"):
            router = neutron.update(ctx, "router", router["id"], {
                "external_gateway_info": {"network_id": network_ids[gateway]}})
        attached = {p["fixed_ips"][0]["subnet_id"] for p in neutron.list(ctx, "port")
                    if p["device_id"] == router["id"] and p["fixed_ips"]
                    and p["device_owner"] == "network:router_interface"}
        for name in spec_router.get("interfaces", []):
            if name in subnet_ids and subnet_ids[name] not in attached:
                neutron.add_router_interface(ctx, router["id"], {"subnet_id": subnet_ids[name]})


def _named(neutron: Neutron, ctx: NetContext, resource: str, name: str,
           project: str) -> dict[str, Any] | None:
    return next((r for r in neutron.list(ctx, resource)
                 if r["name"] == name and r["project_id"] == project), None)
