"""nova-conductor: between the API and the compute hosts, on topic `conductor`.

For a new server it calls the scheduler for a host (and alternates), then casts
build_and_run_instance to that host. When a build fails on a host, the host casts
build_instances back here and the conductor retries on the next alternate, after
claiming it in placement, until the alternates run out.

Like nova, it records an instance action event only when scheduling fails (the
event `conductor_schedule_and_build_instances`, with the error); a successful boot
shows only the compute host's event.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.states import set_state
from labkit.cloud.errors import Conflict

if TYPE_CHECKING:
    from labkit.cloud.compute.service import ComputeService

log = logging.getLogger(__name__)
SCHEDULE_EVENT = "conductor_schedule_and_build_instances"
NO_VALID_HOST = "No valid host was found. "


class NoValidHost(Exception):
    """The scheduler found no host; the message is nova's."""


class ConductorManager:
    component = "nova-conductor"
    topic = "conductor"

    def __init__(self, nova: ComputeService) -> None:
        self.nova = nova

    async def schedule_and_build_instances(self, ctx: MessageContext,
                                           request_spec: dict[str, Any],
                                           instance_uuids: list[str]) -> None:
        try:
            selections = await self.nova.bus.call(
                ctx, "scheduler", "select_destinations", request_spec=request_spec,
                instance_uuids=instance_uuids)
        except Exception as exc:
            if not isinstance(exc, NoValidHost):
                log.exception("scheduling %s failed", instance_uuids)
            for uuid in instance_uuids:
                self._fail(ctx, uuid, str(exc), type(exc).__name__)
            return
        for uuid, (host, *alternates) in zip(instance_uuids, selections, strict=True):
            if self.nova.is_deleted(uuid):
                self.nova.release_allocation(ctx, uuid, self.component)
                continue
            self.nova.bus.cast(ctx, f"compute.{host}", "build_and_run_instance",
                               instance_uuid=uuid, request_spec=request_spec,
                               alternates=alternates)

    async def build_instances(self, ctx: MessageContext, instance_uuid: str,
                              request_spec: dict[str, Any], alternates: list[str],
                              failed_host: str, reason: str) -> None:
        """A reschedule: claim the next alternate that still fits and build there."""
        remaining = list(alternates)
        while remaining:
            host = remaining.pop(0)
            try:
                self.nova.claim_on(ctx, self.component, instance_uuid, host,
                                   self.nova.resources_of(request_spec))
            except Conflict:
                continue
            self.nova.bus.cast(ctx, f"compute.{host}", "build_and_run_instance",
                               instance_uuid=instance_uuid, request_spec=request_spec,
                               alternates=remaining)
            return
        # nova's MaxRetriesExceeded; the last host's reason stays in the trace
        self._fail(ctx, instance_uuid,
                   f"Exceeded maximum number of retries. Exhausted all hosts available for "
                   f"retrying build failures for instance {instance_uuid}.",
                   "MaxRetriesExceeded", event=None)

    def _fail(self, ctx: MessageContext, uuid: str, message: str, exception: str,
              event: str | None = SCHEDULE_EVENT) -> None:
        """ERROR with nova's fault; the allocation (if any) is given back."""
        nova = self.nova
        nova.release_allocation(ctx, uuid, self.component)
        if nova.is_deleted(uuid):
            return  # deleted while it waited: it stays deleted, not ERROR
        if event:
            nova.instances.start_event(uuid, ctx.request_id, event, nova.hosts.controller())
            nova.instances.finish_event(uuid, ctx.request_id, event, error=message,
                                        traceback=f"{exception}: {message}")
        nova.instances.add_fault(uuid, 500, message, details=f"{exception}: {message}")
        set_state(nova.trace, nova.instances, ctx, uuid, vm_state="error", task_state=None)
