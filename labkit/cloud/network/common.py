"""What all of neutron's model shares: the caller's context, the lab's settings, a transaction.

A `Tx` is one request's unit of work: one database session, the caller, and the events to
send once it commits. Each resource module (networks.py, ports.py, ...) takes a `Tx`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from labkit.cloud.ids import IdSource
from labkit.cloud.network.exceptions import (
    NeutronBadRequest,
    NeutronConflict,
    NeutronNotFound,
    PolicyNotAuthorized,
)
from labkit.cloud.trace import Trace, TraceEvent

# device owners neutron uses for its own ports
DHCP = "network:dhcp"
ROUTER_INTERFACE = "network:router_interface"
ROUTER_GATEWAY = "network:router_gateway"
FLOATINGIP = "network:floatingip"
# ports neutron makes and removes itself: deleting them through /ports is refused
SERVICE_OWNERS = (DHCP, ROUTER_INTERFACE, ROUTER_GATEWAY, FLOATINGIP)
# an agent is dead when its last heartbeat is older than this (neutron's agent_down_time)
AGENT_DOWN_TIME = 75.0
# the largest MTU of each network type on a 1500-byte physical network
MAX_MTU = {"vxlan": 1450, "gre": 1458, "flat": 1500}
TUNNEL_ID_MAX = {"vxlan": 2 ** 24 - 1, "gre": 2 ** 32 - 1}

Payload = dict[str, Any] | Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class NetContext:
    """Who asks: neutron's request context, reduced to what the model decides on."""

    project_id: str | None
    user_id: str | None = None
    is_admin: bool = False
    request_id: str | None = None
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabConfig:
    """The lab's ml2 settings (data/networks.yaml): tenant network type and id range."""

    tunnel_type: str = "vxlan"
    tunnel_id_start: int = 65537
    flat_networks: tuple[str, ...] = ("external",)
    # physical network -> bridge, as the network node's OVS agent maps them
    bridge_mappings: dict[str, str] = field(default_factory=lambda: {"external": "br-ex"})


@dataclass
class Env:
    """What the model needs beside its database: ids, the trace, the lab, the clock."""

    ids: IdSource
    trace: Trace
    lab: LabConfig
    hosts: list[dict[str, Any]]
    clock: Callable[[], float] = time.time
    # neutron's agent_down_time; the networking service sets the lab's (see __init__)
    agent_down_time: float = AGENT_DOWN_TIME

    @property
    def network_node(self) -> str | None:
        """The host of the DHCP and L3 agents (the lab's "network" host)."""
        return next((h["name"] for h in self.hosts if h.get("role") == "network"), None)

    def host(self, name: str) -> dict[str, Any] | None:
        return next((h for h in self.hosts if h["name"] == name), None)


@dataclass
class Tx:
    """One request's work: its session, its caller, and the events to send after commit."""

    session: Session
    ctx: NetContext
    env: Env
    events: list[tuple[str, Payload]] = field(default_factory=list)

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """An event with its payload as it is now (e.g. a port before it is unbound)."""
        self.events.append((event, payload))

    def emit_later(self, event: str, make: Callable[[], dict[str, Any]]) -> None:
        """An event whose payload is taken when the request's work is done."""
        self.events.append((event, make))

    def settle(self) -> list[tuple[str, dict[str, Any]]]:
        """The events with their payloads, taken inside the session before it commits."""
        return [(event, payload() if callable(payload) else payload)
                for event, payload in self.events]

    def now(self) -> str:
        return iso(self.env.clock())

    def trace(self, target: str, summary: str, **detail: Any) -> None:
        self.env.trace.record(TraceEvent(kind="call", source="neutron-server", target=target,
                                         summary=summary, request_id=self.ctx.request_id,
                                         detail=detail))

    # -- who may do what

    @property
    def admin(self) -> bool:
        return self.ctx.is_admin

    def owns(self, project_id: str | None) -> bool:
        return self.ctx.is_admin or (project_id is not None
                                     and project_id == self.ctx.project_id)

    def require_admin(self, rule: str) -> None:
        if not self.ctx.is_admin:
            raise PolicyNotAuthorized(rule)

    def project_for(self, body: dict[str, Any]) -> str:
        """The project a new resource belongs to: the body's, if the caller may name one."""
        project = body.get("project_id") or body.get("tenant_id") or self.ctx.project_id or ""
        if project != self.ctx.project_id and not self.ctx.is_admin:
            raise NeutronBadRequest(
                "Specifying 'project_id' other than the authenticated project in request "
                "is not allowed for the current user.")
        return project


def iso(when: float) -> str:
    """Neutron's timestamps: 2026-11-21T09:04:04Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def touch(row: Any, tx: Tx) -> None:
    """A change to a resource: a new revision and updated_at, as neutron's revision plugin."""
    row.revision_number += 1
    row.updated_at = tx.now()


def standard(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """The standard attributes of a new row."""
    now = tx.now()
    return {"description": body.get("description") or "", "created_at": now,
            "updated_at": now, "revision_number": 0, "tags": list(body.get("tags") or [])}


def bad_request(resource: str, message: str) -> NeutronBadRequest:
    """neutron's BadRequest: `Bad router request: <why>.`"""
    return NeutronBadRequest(f"Bad {resource} request: {message}.", "BadRequest")


def invalid(neutron_type: str, message: str) -> NeutronBadRequest:
    """A 400 of one of neutron's InvalidInput kinds, which carry their own message."""
    return NeutronBadRequest(message, neutron_type)


def in_use(neutron_type: str, message: str) -> NeutronConflict:
    return NeutronConflict(neutron_type, message)


def not_found(resource: str, resource_id: str) -> NeutronNotFound:
    return NeutronNotFound(resource, resource_id)
