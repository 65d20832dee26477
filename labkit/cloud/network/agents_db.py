"""Neutron's agents table: which agent runs on which host, and whether it is alive.

At start every agent of the lab gets its row (or a fresh heartbeat on a restart), from
data/hosts.yaml: an Open vSwitch agent on each host with a tunnel address, and the DHCP,
L3 and metadata agents on the network node. The agents' runtime then calls
`Neutron.report_state` every report interval; an agent whose last heartbeat is older
than agent_down_time (neutron's 75 s; the lab's follows nova's service_down_time) is
dead, and a port cannot bind to a host whose OVS agent is dead.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from labkit.cloud.network import views
from labkit.cloud.network.common import Env, Tx
from labkit.cloud.network.exceptions import NeutronNotFound
from labkit.cloud.network.tables import AgentRow

OVS = "Open vSwitch agent"
DHCP = "DHCP agent"
L3 = "L3 agent"
METADATA = "Metadata agent"
# agent type -> (binary, topic, availability zone or None)
KINDS = {
    OVS: ("neutron-openvswitch-agent", "N/A", None),
    DHCP: ("neutron-dhcp-agent", "dhcp_agent", views.DEFAULT_ZONE),
    L3: ("neutron-l3-agent", "l3_agent", views.DEFAULT_ZONE),
    METADATA: ("neutron-metadata-agent", "N/A", None),
}
BY_BINARY = {binary: kind for kind, (binary, _topic, _zone) in KINDS.items()}


def agents_of(env: Env, host: dict[str, Any]) -> list[str]:
    """The agent types that run on a host of the lab."""
    kinds = [OVS] if host.get("local_ip") else []
    if host.get("role") == "network":
        kinds += [DHCP, L3, METADATA]
    return kinds


def configurations(env: Env, kind: str, host: dict[str, Any]) -> dict[str, Any]:
    """What each agent reports about itself, after a DevStack agent's report."""
    if kind == OVS:
        mappings = dict(env.lab.bridge_mappings) if host.get("role") == "network" else {}
        return {"tunnel_types": [env.lab.tunnel_type], "tunneling_ip": host.get("local_ip"),
                "bridge_mappings": mappings, "integration_bridge": "br-int",
                "tunnel_bridge": "br-tun", "datapath_type": "system",
                "ovs_hybrid_plug": True, "l2_population": False, "arp_responder_enabled": False,
                "enable_distributed_routing": False, "in_distributed_mode": False,
                "extensions": [], "log_agent_heartbeats": False}
    if kind == DHCP:
        return {"dhcp_driver": "neutron.agent.linux.dhcp.Dnsmasq", "dhcp_lease_duration": 86400,
                "notifies_port_ready": True, "log_agent_heartbeats": False}
    if kind == L3:
        return {"agent_mode": "legacy", "interface_driver": "openvswitch",
                "handle_internal_only_routers": True, "gateway_external_network_id": "",
                "external_network_bridge": "", "log_agent_heartbeats": False}
    controller = next((h.get("management_ip") for h in env.hosts
                       if h.get("role") == "controller"), None)
    return {"metadata_proxy_socket": "/var/lib/neutron/metadata_proxy",
            "nova_metadata_host": controller, "nova_metadata_port": 8775,
            "log_agent_heartbeats": False}


def register(tx: Tx) -> None:
    """Each agent of the lab starts: its row made if missing, its heartbeat now."""
    now = tx.env.clock()
    for host in tx.env.hosts:
        for kind in agents_of(tx.env, host):
            row = _row(tx, kind, host["name"])
            if row is None:
                _create(tx, kind, host, now)
            else:
                row.started_at = row.heartbeat_timestamp = now
                row.configurations = configurations(tx.env, kind, host)


def _row(tx: Tx, kind: str, host: str) -> AgentRow | None:
    return tx.session.scalar(select(AgentRow).where(AgentRow.agent_type == kind,
                                                    AgentRow.host == host))


def _create(tx: Tx, kind: str, host: dict[str, Any], now: float) -> AgentRow:
    binary, topic, zone = KINDS[kind]
    row = AgentRow(id=tx.env.ids.uuid("agent"), agent_type=kind, binary=binary, topic=topic,
                   host=host["name"], admin_state_up=True, availability_zone=zone,
                   configurations=configurations(tx.env, kind, host), description="",
                   created_at=now, started_at=now, heartbeat_timestamp=now)
    tx.session.add(row)
    return row


def report_state(tx: Tx, host: str, binary: str) -> None:
    """A heartbeat. An agent deleted by an admin comes back, as in neutron."""
    kind = BY_BINARY.get(binary)
    if kind is None:
        raise ValueError(f"unknown agent binary {binary!r}")
    now = tx.env.clock()
    row = _row(tx, kind, host)
    if row is not None:
        row.heartbeat_timestamp = now
        return
    spec = tx.env.host(host) or {"name": host}
    _create(tx, kind, spec, now)


def is_alive(env: Env, row: AgentRow) -> bool:
    return env.clock() - row.heartbeat_timestamp <= env.agent_down_time


def can_bind(tx: Tx, host: str) -> bool:
    """Is there an OVS agent on `host`, up and alive, to wire a port there?"""
    row = _row(tx, OVS, host)
    return row is not None and row.admin_state_up and is_alive(tx.env, row)


def l3_host(tx: Tx) -> str | None:
    """Where a new router goes: the first L3 agent that is up (else the network node)."""
    rows = tx.session.scalars(select(AgentRow).where(AgentRow.agent_type == L3).order_by(
        AgentRow.seq)).all()
    for row in rows:
        if row.admin_state_up and is_alive(tx.env, row):
            return row.host
    return rows[0].host if rows else tx.env.network_node


def view(tx: Tx, row: AgentRow) -> dict[str, Any]:
    return views.agent(row, is_alive(tx.env, row))


def visible(tx: Tx, agent_id: str) -> AgentRow:
    """Agents are the admin's business: to anyone else they do not exist."""
    row = tx.session.scalar(select(AgentRow).where(AgentRow.id == agent_id))
    if row is None or not tx.admin:
        raise NeutronNotFound("agent", agent_id)
    return row


def listing(tx: Tx) -> list[dict[str, Any]]:
    if not tx.admin:
        return []
    return [view(tx, r) for r in tx.session.scalars(select(AgentRow).order_by(AgentRow.seq))]


def update(tx: Tx, row: AgentRow, body: dict[str, Any]) -> None:
    for key in ("admin_state_up", "description"):
        if key in body:
            setattr(row, key, body[key])


def delete(tx: Tx, row: AgentRow) -> None:
    tx.session.delete(row)
