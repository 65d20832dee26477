"""nova-conductor: between the API and the compute hosts, on topic `conductor`.

For a new server it calls the scheduler for a host (and alternates), then casts
build_and_run_instance to that host. When a build fails on a host, the host casts
build_instances back here and the conductor retries on the next alternate, after
claiming it in placement, until the alternates run out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.states import set_state
from labkit.cloud.errors import Conflict

if TYPE_CHECKING:
    from labkit.cloud.compute.service import ComputeService

SCHEDULE_EVENT = "conductor_schedule_and_build_instances"
RESCHEDULE_EVENT = "conductor_build_instances"
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
        instances = self.nova.instances
        here = self.nova.hosts.controller()
        for uuid in instance_uuids:
            instances.start_event(uuid, ctx.request_id, SCHEDULE_EVENT, here)
        try:
            selections = await self.nova.bus.call(
                ctx, "scheduler", "select_destinations", request_spec=request_spec,
                instance_uuids=instance_uuids)
        except NoValidHost as exc:
            for uuid in instance_uuids:
                self._fail(ctx, uuid, SCHEDULE_EVENT, str(exc))
            return
        for uuid, (host, *alternates) in zip(instance_uuids, selections, strict=True):
            if self.nova.is_deleted(uuid):
                self.nova.release_allocation(ctx, uuid, self.component)
                continue
            instances.finish_event(uuid, ctx.request_id, SCHEDULE_EVENT)
            self.nova.bus.cast(ctx, f"compute.{host}", "build_and_run_instance",
                               instance_uuid=uuid, request_spec=request_spec,
                               alternates=alternates)

    async def build_instances(self, ctx: MessageContext, instance_uuid: str,
                              request_spec: dict[str, Any], alternates: list[str],
                              failed_host: str, reason: str) -> None:
        """A reschedule: claim the next alternate that still fits and build there."""
        instances = self.nova.instances
        instances.start_event(instance_uuid, ctx.request_id, RESCHEDULE_EVENT,
                              self.nova.hosts.controller())
        remaining = list(alternates)
        while remaining:
            host = remaining.pop(0)
            try:
                self.nova.claim_on(ctx, self.component, instance_uuid, host, request_spec)
            except Conflict:
                continue
            instances.finish_event(instance_uuid, ctx.request_id, RESCHEDULE_EVENT)
            self.nova.bus.cast(ctx, f"compute.{host}", "build_and_run_instance",
                               instance_uuid=instance_uuid, request_spec=request_spec,
                               alternates=remaining)
            return
        self._fail(ctx, instance_uuid, RESCHEDULE_EVENT,
                   f"Exceeded maximum number of retries. Exhausted all hosts available for "
                   f"retrying build failures for instance {instance_uuid}. Last failure on "
                   f"{failed_host}: {reason}", exception="MaxRetriesExceeded")

    def _fail(self, ctx: MessageContext, uuid: str, event: str, message: str,
              exception: str = "NoValidHost") -> None:
        """ERROR with nova's fault; the allocation (if any) is given back."""
        nova = self.nova
        nova.release_allocation(ctx, uuid, self.component)
        if nova.is_deleted(uuid):
            return  # deleted while it waited: it stays deleted, not ERROR
        nova.instances.finish_event(uuid, ctx.request_id, event, error=message,
                                    traceback=f"{exception}: {message}")
        nova.instances.add_fault(uuid, 500, message, details=f"{exception}: {message}")
        set_state(nova.trace, nova.instances, ctx, uuid, vm_state="error", task_state=None)
