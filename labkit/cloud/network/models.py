"""Neutron's plugin interface: one object that creates, reads, changes and deletes every resource.

`Neutron` is what the API layer (api/) and the agents (agents.py) call. It takes and
returns plain dicts in the API's shape, with every field; the API layer trims what the
caller may not see. Each call is one transaction under one lock: a request that fails
leaves nothing half made, and fifty concurrent port creates cannot hand out one address
twice. After a change commits, each listener hears of it (see `listeners`).

The rules live in one module per resource: networks.py (networks, subnets), ports.py,
security_groups.py, routers.py (routers, floating IPs), agents_db.py, quotas.py; IPAM
in ipam.py, local VLANs in local_vlans.py, the tables in tables.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from labkit.cloud.db import Database
from labkit.cloud.ids import IdSource
from labkit.cloud.network import (
    agents_db,
    local_vlans,
    networks,
    ports,
    quotas,
    routers,
    snapshot,
    views,
)
from labkit.cloud.network import lab as lab_spec
from labkit.cloud.network import security_groups as groups
from labkit.cloud.network.common import Env, NetContext, Tx
from labkit.cloud.network.exceptions import NeutronNotFound
from labkit.cloud.network.tables import NetworkBase
from labkit.cloud.network.topology import Topology
from labkit.cloud.trace import Trace

__all__ = ["RESOURCES", "NetContext", "NetworkBase", "Neutron"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Listener = Callable[[str, dict[str, Any]], None]
# what the agents and the model itself act as
SYSTEM = NetContext(project_id=None, is_admin=True)


@dataclass(frozen=True)
class Kind:
    """How one resource is found, shown, listed, made, changed and removed."""

    visible: Callable[[Tx, str], Any]
    view: Callable[[Tx, Any], dict[str, Any]]
    listing: Callable[[Tx], list[dict[str, Any]]]
    create: Callable[[Tx, dict[str, Any]], Any] | None
    update: Callable[[Tx, Any, dict[str, Any]], None]
    delete: Callable[[Tx, Any], None]


def _delete_port(tx: Tx, row: Any) -> None:
    ports.check_deletable(tx, row)
    ports.delete(tx, row)


KINDS: dict[str, Kind] = {
    "network": Kind(networks.visible, networks.view, networks.listing, networks.create,
                    networks.update, networks.delete),
    "subnet": Kind(networks.visible_subnet, lambda tx, r: views.subnet(r),
                   networks.subnet_listing, networks.create_subnet, networks.update_subnet,
                   networks.delete_subnet),
    "port": Kind(ports.visible, lambda tx, r: views.port(r), ports.listing, ports.create,
                 ports.update, _delete_port),
    "security_group": Kind(groups.visible, groups.view, groups.listing, groups.create,
                           groups.update, groups.delete),
    "security_group_rule": Kind(groups.visible_rule, groups.rule_view, groups.rule_listing,
                                groups.create_rule, groups.update_rule, groups.delete_rule),
    "router": Kind(routers.visible, lambda tx, r: views.router(r), routers.listing,
                   routers.create, routers.update, routers.delete),
    "floatingip": Kind(routers.visible_fip, lambda tx, r: views.floatingip(r),
                       routers.fip_listing, routers.create_fip, routers.update_fip,
                       routers.delete_fip),
    "agent": Kind(agents_db.visible, agents_db.view, agents_db.listing, None,
                  agents_db.update, agents_db.delete),
}
RESOURCES = tuple(KINDS)


class Neutron:
    """neutron-server's plugin (ml2 with the OVS mechanism driver, l3, security groups)."""

    def __init__(self, database: Database, ids: IdSource, trace: Trace, lab: Path,
                 hosts: list[dict[str, Any]]) -> None:
        self.database = database
        self.lab = lab
        self.env = Env(ids=ids, trace=trace, lab=lab_spec.config(lab), hosts=list(hosts))
        self.listeners: list[Listener] = []
        # one request at a time through the model, whatever thread it comes from
        self._lock = threading.RLock()
        self._defaulted: set[str] = set()  # projects known to have their default group
        self._run(SYSTEM, agents_db.register)

    @property
    def hosts(self) -> list[dict[str, Any]]:
        """The lab's hosts (data/hosts.yaml), as the model was given them."""
        return self.env.hosts

    # -- the clock (tests move it to age heartbeats)

    @property
    def clock(self) -> Callable[[], float]:
        return self.env.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.env.clock = clock

    # -- transactions and events

    def _run(self, ctx: NetContext, work: Callable[[Tx], T]) -> T:
        """`work` in one transaction; listeners hear of its events once it has committed."""
        self._ensure_default_group(ctx.project_id)
        with self._lock, self.database.session() as session:
            tx = Tx(session=session, ctx=ctx, env=self.env)
            result = work(tx)
            session.flush()
            events = tx.settle()
        self._fire(events)
        return result

    def _ensure_default_group(self, project_id: str | None) -> None:
        """A project's first request makes its default security group (its own transaction)."""
        if not project_id or project_id in self._defaulted:
            return
        with self._lock, self.database.session() as session:
            groups.ensure_default(Tx(session=session, ctx=SYSTEM, env=self.env), project_id)
        self._defaulted.add(project_id)

    def _fire(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for event, payload in events:
            for listener in list(self.listeners):
                try:
                    listener(event, payload)
                except Exception:  # a listener's trouble is its own
                    log.exception("neutron listener failed on %s", event)

    @staticmethod
    def _kind(resource: str) -> Kind:
        kind = KINDS.get(resource)
        if kind is None:
            raise NeutronNotFound(resource, "")
        return kind

    # -- resources

    def create(self, ctx: NetContext, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.create_bulk(ctx, resource, [body])[0]

    def create_bulk(self, ctx: NetContext, resource: str,
                    bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All made, or (on any refusal) none."""
        kind = self._kind(resource)
        if kind.create is None:
            raise NeutronNotFound(resource, "")
        make = kind.create

        def work(tx: Tx) -> list[dict[str, Any]]:
            rows = [make(tx, body) for body in bodies]
            tx.session.flush()
            return [kind.view(tx, row) for row in rows]
        return self._run(ctx, work)

    def get(self, ctx: NetContext, resource: str, id: str) -> dict[str, Any]:
        kind = self._kind(resource)
        return self._run(ctx, lambda tx: kind.view(tx, kind.visible(tx, id)))

    def list(self, ctx: NetContext, resource: str) -> list[dict[str, Any]]:
        """Every `resource` visible to `ctx`, in the order made."""
        kind = self._kind(resource)
        return self._run(ctx, kind.listing)

    def update(self, ctx: NetContext, resource: str, id: str,
               body: dict[str, Any]) -> dict[str, Any]:
        kind = self._kind(resource)

        def work(tx: Tx) -> dict[str, Any]:
            row = kind.visible(tx, id)
            kind.update(tx, row, body)
            tx.session.flush()
            return kind.view(tx, row)
        return self._run(ctx, work)

    def delete(self, ctx: NetContext, resource: str, id: str) -> None:
        kind = self._kind(resource)

        def work(tx: Tx) -> None:
            row = kind.visible(tx, id)
            project = getattr(row, "project_id", None)
            kind.delete(tx, row)
            if resource == "security_group" and project:
                self._defaulted.discard(project)
        self._run(ctx, work)

    def add_router_interface(self, ctx: NetContext, router_id: str,
                             body: dict[str, Any]) -> dict[str, Any]:
        return self._run(ctx, lambda tx: routers.add_interface(tx, router_id, body))

    def remove_router_interface(self, ctx: NetContext, router_id: str,
                                body: dict[str, Any]) -> dict[str, Any]:
        return self._run(ctx, lambda tx: routers.remove_interface(tx, router_id, body))

    # -- quotas

    def get_quota(self, ctx: NetContext, project_id: str) -> dict[str, int]:
        return self._run(ctx, lambda tx: quotas.get(tx, project_id))

    def quota_details(self, ctx: NetContext, project_id: str) -> dict[str, dict[str, int]]:
        return self._run(ctx, lambda tx: quotas.details(tx, project_id))

    def update_quota(self, ctx: NetContext, project_id: str,
                     body: dict[str, Any]) -> dict[str, int]:
        return self._run(ctx, lambda tx: quotas.update(tx, project_id, body))

    def delete_quota(self, ctx: NetContext, project_id: str) -> None:
        self._run(ctx, lambda tx: quotas.reset(tx, project_id))

    def list_quotas(self, ctx: NetContext) -> list[dict[str, Any]]:
        return self._run(ctx, quotas.listing)

    # -- the agents' side

    def report_state(self, host: str, binary: str) -> None:
        """An agent's heartbeat: heartbeat_timestamp = now."""
        self._run(SYSTEM, lambda tx: agents_db.report_state(tx, host, binary))

    def device_up(self, port_id: str, host: str) -> dict[str, Any] | None:
        """The agent wired the port on `host`: status ACTIVE. None if the port is gone."""
        return self._run(SYSTEM, lambda tx: ports.device_state(tx, port_id, host, "ACTIVE"))

    def device_down(self, port_id: str, host: str) -> dict[str, Any] | None:
        return self._run(SYSTEM, lambda tx: ports.device_state(tx, port_id, host, "DOWN"))

    def local_vlan(self, host: str, network_id: str) -> int:
        """The network's local VLAN on `host`: the lowest free tag from 1, kept until freed."""
        return self._run(SYSTEM, lambda tx: local_vlans.allocate(tx, host, network_id))

    def release_local_vlan(self, host: str, network_id: str) -> None:
        """Free the tag now (the model also frees it when the network's last port leaves)."""
        self._run(SYSTEM, lambda tx: local_vlans.release(tx, host, network_id))

    def topology(self) -> Topology:
        return self._run(SYSTEM, snapshot.build)

    # -- the lab

    def load_lab(self, projects: Mapping[str, str]) -> None:
        """Create data/networks.yaml's networks, subnets and routers that are missing.

        `projects` maps the lab's project names to their keystone ids.
        """
        lab_spec.load(self, self.lab, projects)
