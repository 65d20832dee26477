"""Events a compute host waits for from outside (nova's InstanceEvents, wait_for_instance_event).

Before it plugs a port, the build says which events it will wait for
("network-vif-plugged" with the port id as tag); neutron's event then reaches the
host through nova's API (os-server-external-events) and the bus, and completes the
wait. An event nobody waits for is dropped, as nova logs "unexpected event" and
goes on.
"""

from __future__ import annotations

import asyncio

EventKey = tuple[str, str | None]  # (name, tag)


class InstanceEvents:
    """The events each instance on one host is waiting for."""

    def __init__(self) -> None:
        self._waiting: dict[str, dict[EventKey, asyncio.Future[str]]] = {}

    def prepare(self, instance_uuid: str, name: str, tag: str | None) -> asyncio.Future[str]:
        """Start waiting for (name, tag): the future's result is the event's status."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(instance_uuid, {})[(name, tag)] = future
        return future

    def pop(self, instance_uuid: str, name: str, tag: str | None,
            status: str) -> bool:
        """Deliver an event: True if someone was waiting for it."""
        waiting = self._waiting.get(instance_uuid, {})
        future = waiting.pop((name, tag), None)
        if not waiting:
            self._waiting.pop(instance_uuid, None)
        if future is None or future.done():
            return False
        future.set_result(status)
        return True

    def clear(self, instance_uuid: str) -> None:
        """Stop waiting for anything for this instance (its build is over)."""
        for future in self._waiting.pop(instance_uuid, {}).values():
            if not future.done():
                future.cancel()

    def waited_for(self, instance_uuid: str) -> list[EventKey]:
        return sorted(self._waiting.get(instance_uuid, {}), key=lambda k: (k[0], k[1] or ""))
