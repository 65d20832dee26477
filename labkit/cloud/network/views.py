"""Rows as the API shows them: neutron's field names, every field (the API layer trims).

Each function takes a row (and what the row alone cannot say) and returns a plain dict.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from labkit.cloud.network.tables import (
    AgentRow,
    FloatingIPRow,
    NetworkRow,
    PortRow,
    RouterRow,
    SecurityGroupRow,
    SecurityGroupRuleRow,
    SubnetRow,
)

DEFAULT_ZONE = "nova"


def _standard(row: Any, project_id: str) -> dict[str, Any]:
    return {"tenant_id": project_id, "project_id": project_id,
            "description": row.description, "tags": list(row.tags or []),
            "created_at": row.created_at, "updated_at": row.updated_at,
            "revision_number": row.revision_number}


def network(row: NetworkRow, has_dhcp: bool = False) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "admin_state_up": row.admin_state_up,
        "mtu": row.mtu, "status": row.status, "subnets": [s.id for s in row.subnets],
        "shared": row.shared, "router:external": row.external,
        "port_security_enabled": row.port_security_enabled,
        "availability_zone_hints": list(row.availability_zone_hints or []),
        # the zones of the DHCP agents that serve it
        "availability_zones": [DEFAULT_ZONE] if has_dhcp else [],
        "ipv4_address_scope": None, "ipv6_address_scope": None, "l2_adjacency": True,
        "is_default": False,
        "provider:network_type": row.network_type,
        "provider:physical_network": row.physical_network,
        "provider:segmentation_id": row.segmentation_id,
        **_standard(row, row.project_id),
    }


def subnet(row: SubnetRow) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "network_id": row.network_id,
        "ip_version": row.ip_version, "cidr": row.cidr, "gateway_ip": row.gateway_ip,
        "enable_dhcp": row.enable_dhcp,
        "allocation_pools": [dict(p) for p in row.allocation_pools],
        "dns_nameservers": list(row.dns_nameservers or []),
        "host_routes": [dict(r) for r in row.host_routes or []],
        "ipv6_ra_mode": row.ipv6_ra_mode, "ipv6_address_mode": row.ipv6_address_mode,
        "subnetpool_id": None, "segment_id": None, "service_types": [],
        **_standard(row, row.project_id),
    }


def port(row: PortRow) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "network_id": row.network_id,
        "mac_address": row.mac_address, "admin_state_up": row.admin_state_up,
        "status": row.status, "device_id": row.device_id, "device_owner": row.device_owner,
        "fixed_ips": [{"subnet_id": a.subnet_id, "ip_address": a.ip_address}
                      for a in row.fixed_ips],
        "allowed_address_pairs": [
            {"ip_address": p["ip_address"], "mac_address": p.get("mac_address")
             or row.mac_address} for p in row.allowed_address_pairs or []],
        "extra_dhcp_opts": [],
        "security_groups": row.security_group_ids,
        "port_security_enabled": row.port_security_enabled,
        "binding:host_id": row.host, "binding:vif_type": row.vif_type,
        "binding:vif_details": dict(row.vif_details or {}),
        "binding:vnic_type": row.vnic_type, "binding:profile": dict(row.profile or {}),
        "ip_allocation": "immediate",
        **_standard(row, row.project_id),
    }


def security_group_rule(row: SecurityGroupRuleRow,
                        default_group: bool = False) -> dict[str, Any]:
    return {
        "id": row.id, "security_group_id": row.security_group_id,
        "direction": row.direction, "ethertype": row.ethertype, "protocol": row.protocol,
        "port_range_min": row.port_range_min, "port_range_max": row.port_range_max,
        "remote_ip_prefix": row.remote_ip_prefix, "remote_group_id": row.remote_group_id,
        "remote_address_group_id": None,
        "normalized_cidr": normalized_cidr(row.remote_ip_prefix),
        "belongs_to_default_sg": default_group,
        **_standard(row, row.project_id),
    }


def normalized_cidr(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    return str(ipaddress.ip_network(prefix, strict=False))


def security_group(row: SecurityGroupRow, default_group: bool = False) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "stateful": row.stateful, "shared": False,
        "security_group_rules": [security_group_rule(r, default_group) for r in row.rules],
        **_standard(row, row.project_id),
    }


def router(row: RouterRow) -> dict[str, Any]:
    gateway = None
    if row.gw_port is not None:
        gateway = {"network_id": row.gw_port.network_id, "enable_snat": row.enable_snat,
                   "external_fixed_ips": [{"subnet_id": a.subnet_id,
                                           "ip_address": a.ip_address}
                                          for a in row.gw_port.fixed_ips]}
    return {
        "id": row.id, "name": row.name, "admin_state_up": row.admin_state_up,
        "status": row.status, "external_gateway_info": gateway,
        "routes": [dict(r) for r in row.routes or []],
        "distributed": False, "ha": False, "flavor_id": None,
        "availability_zone_hints": list(row.availability_zone_hints or []),
        "availability_zones": [DEFAULT_ZONE] if row.host else [],
        **_standard(row, row.project_id),
    }


def floatingip(row: FloatingIPRow) -> dict[str, Any]:
    details = None
    fixed = row.fixed_port
    if fixed is not None:
        details = {"name": fixed.name, "network_id": fixed.network_id,
                   "mac_address": fixed.mac_address, "admin_state_up": fixed.admin_state_up,
                   "status": fixed.status, "device_id": fixed.device_id,
                   "device_owner": fixed.device_owner}
    return {
        "id": row.id, "floating_ip_address": row.floating_ip_address,
        "floating_network_id": row.floating_network_id, "router_id": row.router_id,
        "port_id": row.fixed_port_id, "fixed_ip_address": row.fixed_ip_address,
        "status": row.status, "port_details": details, "port_forwardings": [],
        "qos_policy_id": None,
        **_standard(row, row.project_id),
    }


def agent_time(when: float) -> str:
    """Agents' timestamps as neutron shows them: 2026-11-21 09:04:04."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))


def agent(row: AgentRow, alive: bool) -> dict[str, Any]:
    return {
        "id": row.id, "agent_type": row.agent_type, "binary": row.binary,
        "topic": row.topic, "host": row.host, "admin_state_up": row.admin_state_up,
        "alive": alive, "availability_zone": row.availability_zone,
        "configurations": dict(row.configurations or {}), "description": row.description,
        "created_at": agent_time(row.created_at), "started_at": agent_time(row.started_at),
        "heartbeat_timestamp": agent_time(row.heartbeat_timestamp),
        "resources_synced": None,
    }
