"""Nova's servicegroup: is a service up, and the heartbeats that say so.

Every nova service (nova-conductor, nova-scheduler, one nova-compute per host) writes
its row every report_interval (nova's `report_state`: updated_at = now,
report_count + 1). A service is "up" while its last heartbeat is no older than
service_down_time and an admin has not forced it down (nova's DB servicegroup
driver). os-services, os-hypervisors and the scheduler's ComputeFilter all ask
`is_up`, so they agree.

A stopped nova-compute (`ComputeService.stop_compute`) stops its heartbeat at once,
but nobody notices before service_down_time has passed: until then it still looks
up, and the scheduler may still send it work, which waits in its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class ServiceRow(Protocol):
    forced_down: bool
    created_at: float
    updated_at: float | None


def is_up(service: ServiceRow, now: float, service_down_time: float) -> bool:
    """Up: not forced down (2.11) and heard from within service_down_time seconds."""
    if service.forced_down:
        return False
    last_heartbeat = service.updated_at or service.created_at
    # abs(): a clock that went back must not make every service look up forever
    return abs(now - last_heartbeat) <= service_down_time


class Heartbeats:
    """One report_state loop per running service, keyed (host, binary)."""

    def __init__(self, report: Callable[[str, str], None], interval: float) -> None:
        self._report = report
        self.interval = interval
        self._loops: dict[tuple[str, str], asyncio.Task[None]] = {}

    def running(self, host: str, binary: str) -> bool:
        task = self._loops.get((host, binary))
        return task is not None and not task.done()

    def start(self, host: str, binary: str) -> None:
        """Start reporting (at once, as a service reports when it starts, then every
        interval). Starting a running service changes nothing."""
        if self.running(host, binary):
            return
        self._report_once(host, binary)
        self._loops[(host, binary)] = asyncio.get_running_loop().create_task(
            self._beat(host, binary))

    def _report_once(self, host: str, binary: str) -> None:
        try:
            self._report(host, binary)
        except Exception:  # nova logs "model server went away" and tries again
            log.exception("%s on %s could not report its state", binary, host)

    async def _beat(self, host: str, binary: str) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._report_once(host, binary)

    def stop(self, host: str, binary: str) -> None:
        """No more heartbeats from this service (its process is gone). The loop sleeps
        between reports, so cancelling it stops it before its next one."""
        task = self._loops.pop((host, binary), None)
        if task is not None:
            task.cancel()

    async def stop_all(self) -> None:
        tasks = list(self._loops.values())
        self._loops.clear()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
