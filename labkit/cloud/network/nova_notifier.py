"""Neutron's nova notifier: what neutron-server tells nova about its servers' ports.

A model listener. When a compute port (device_owner "compute:...", device_id the
server) goes from DOWN to ACTIVE, nova hears network-vif-plugged (the build it
holds back goes on); ACTIVE to DOWN is network-vif-unplugged; a port that goes to
ERROR is network-vif-plugged with status "failed"; a deleted port is
network-vif-deleted; a floating IP associated, moved or released is network-changed
for the server that had or has it (nova then refreshes its info cache). Events go to
nova's API, POST /compute/v2.1/os-server-external-events, with the neutron service
user's token (neutron/NEUTRON_PASS), carrying the request id of the work that caused
them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from labkit.cloud.errors import NotFound
from labkit.cloud.middleware import current_request_id
from labkit.cloud.network.common import NetContext
from labkit.cloud.service_client import ServiceClient, service_password

log = logging.getLogger(__name__)
EVENTS_PATH = "/compute/v2.1/os-server-external-events"
ADMIN = NetContext(project_id=None, is_admin=True)
Spawn = Callable[[Callable[[], Coroutine[Any, Any, Any]]], None]


def is_compute_port(port: dict[str, Any]) -> bool:
    return bool(port.get("device_id")) and str(port.get("device_owner", "")).startswith(
        "compute:")


def port_events(event: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The events nova hears for one model event about a port."""
    if event == "port.status":
        port, previous = payload["port"], payload.get("previous")
        if not is_compute_port(port):
            return []
        status = port.get("status")
        found = {"server_uuid": port["device_id"], "tag": port["id"]}
        if status == "ACTIVE" and previous != "ACTIVE":
            return [{**found, "name": "network-vif-plugged", "status": "completed"}]
        if status == "ERROR":
            return [{**found, "name": "network-vif-plugged", "status": "failed"}]
        if status == "DOWN" and previous == "ACTIVE":
            return [{**found, "name": "network-vif-unplugged", "status": "completed"}]
        return []
    if event == "port.deleted" and is_compute_port(payload):
        return [{"server_uuid": payload["device_id"], "name": "network-vif-deleted",
                 "tag": payload["id"], "status": "completed"}]
    return []


class NovaNotifier:
    """Sends nova the events of ports it owns, as neutron's nova notifier does."""

    def __init__(self, cloud: Any, neutron: Any, spawn: Spawn) -> None:
        self.neutron = neutron
        self.spawn = spawn
        self.client = ServiceClient(cloud, "neutron", service_password(cloud.settings.lab,
                                                                       "neutron"),
                                    component="neutron-server")
        # each floating IP's port as last seen: a release names the port it leaves
        self._fip_ports: dict[str, str | None] | None = None

    def listener(self, event: str, payload: dict[str, Any]) -> None:
        try:
            events = (self._floating_ip_events(payload) if event == "floatingip.changed"
                      else port_events(event, payload))
        except Exception:
            log.exception("the nova notifier could not read %s", event)
            return
        if not events:
            return
        request_id = current_request_id.get()
        self.spawn(lambda: self.send(events, request_id))

    def _floating_ip_events(self, fip: dict[str, Any]) -> list[dict[str, Any]]:
        known = self._known_fips()
        before, after = known.get(fip["id"]), fip.get("port_id")
        known[fip["id"]] = after
        events = []
        for port_id in dict.fromkeys(p for p in (before, after) if p):
            device = self._compute_device(port_id, fip if port_id == after else None)
            if device:
                events.append({"server_uuid": device, "name": "network-changed",
                               "tag": port_id, "status": "completed"})
        return events

    def _known_fips(self) -> dict[str, str | None]:
        if self._fip_ports is None:
            self._fip_ports = {f["id"]: f.get("port_id")
                               for f in self.neutron.list(ADMIN, "floatingip")}
        return self._fip_ports

    def _compute_device(self, port_id: str, fip: dict[str, Any] | None) -> str | None:
        """The server behind a port, if nova owns it."""
        details = (fip or {}).get("port_details") or {}
        if details.get("device_id") is not None:
            port = details
        else:
            try:
                port = self.neutron.get(ADMIN, "port", port_id)
            except NotFound:
                return None
        return port["device_id"] if is_compute_port(port) else None

    async def send(self, events: list[dict[str, Any]], request_id: str | None) -> None:
        try:
            r = await self.client.send("POST", EVENTS_PATH, json={"events": events},
                                       request_id=request_id)
        except Exception:
            log.exception("sending %s to nova failed", [e["name"] for e in events])
            return
        if r.status_code not in (200, 207, 404):
            # nova did not take them; neutron logs it and goes on
            log.warning("nova answered %s to %s: %s", r.status_code, events, r.text)

    async def aclose(self) -> None:
        await self.client.aclose()
