"""nova-conductor: between the API and the compute hosts, on topic `conductor`.

For a new server it calls the scheduler for a host (and alternates), then casts
build_and_run_instance to that host. When a build fails on a host, the host casts
build_instances back here and the conductor retries on the next alternate, after
claiming it in placement, until the alternates run out.

Like nova, it records an instance action event only when scheduling fails (the
event `conductor_schedule_and_build_instances`, with the error); a successful boot
shows only the compute host's event.

A resize (`migrate_server`) makes the migration record, moves the instance's
allocation on the source to it, and asks the scheduler for a destination with the
new flavor; a failure there leaves the instance as it was (`conductor_migrate_server`
in error).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.migrations import move_allocation
from labkit.cloud.compute.states import set_state
from labkit.cloud.errors import Conflict

if TYPE_CHECKING:
    from labkit.cloud.compute.service import ComputeService

log = logging.getLogger(__name__)
SCHEDULE_EVENT = "conductor_schedule_and_build_instances"
MIGRATE_EVENT = "conductor_migrate_server"
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

    # -- a resize (nova's migrate_server → MigrationTask)

    async def migrate_server(self, ctx: MessageContext, instance_uuid: str,
                             flavor: dict[str, Any], request_spec: dict[str, Any]) -> None:
        """Make the migration record, hand the source's allocation to it, ask the
        scheduler for a destination (which claims the new flavor there for the
        instance), then cast prep_resize to it. No host: the instance stays as it was
        (ACTIVE or SHUTOFF) with the action's event in error, as nova's does."""
        nova = self.nova
        with nova.database.session() as s:
            instance = nova.instances.get(s, instance_uuid)
        migration = nova.migrations.create(
            instance_uuid, migration_type="resize", source_compute=instance.host,
            source_node=instance.node, status="pre-migrating",
            old_flavor=dict(instance.flavor), new_flavor=dict(flavor),
            project_id=instance.project_id, user_id=instance.user_id,
            old_vm_state=instance.vm_state)
        # nova's replace_allocation_with_migration: the old flavor stays held on the
        # source by the migration, so the instance can hold the new one elsewhere
        move_allocation(nova, ctx, self.component, instance_uuid, migration.uuid)
        spec = {**request_spec, "flavor": dict(flavor)}
        if not nova.cloud.settings.allow_resize_to_same_host and instance.host:
            spec["ignore_hosts"] = sorted({*spec.get("ignore_hosts", []), instance.host})
        try:
            selections = await nova.bus.call(ctx, "scheduler", "select_destinations",
                                             request_spec=spec,
                                             instance_uuids=[instance_uuid])
        except Exception as exc:
            if not isinstance(exc, NoValidHost):
                log.exception("scheduling the resize of %s failed", instance_uuid)
            self._fail_migrate(ctx, instance_uuid, migration.id, migration.uuid, str(exc),
                               type(exc).__name__, getattr(exc, "code", 500))
            return
        host = selections[0][0]
        node = nova.hosts.node_for(host)
        nova.migrations.update(migration.id, dest_compute=host,
                               dest_node=node.hypervisor_hostname,
                               dest_host=node.host_ip or None)
        nova.bus.cast(ctx, f"compute.{host}", "prep_resize", instance_uuid=instance_uuid,
                      migration_id=migration.id, flavor=dict(flavor), request_spec=spec)

    def _fail_migrate(self, ctx: MessageContext, uuid: str, migration_id: int,
                      migration_uuid: str, message: str, exception: str,
                      code: int) -> None:
        """nova's _set_vm_state_and_notify for migrate_server: the event and a fault, the
        migration in error, the allocation back with the instance; the vm_state as it
        was and no task."""
        nova = self.nova
        nova.migrations.update(migration_id, status="error")
        if nova.placement.allocations_for(migration_uuid):
            move_allocation(nova, ctx, self.component, migration_uuid, uuid)
        if nova.is_deleted(uuid):
            return
        nova.instances.start_event(uuid, ctx.request_id, MIGRATE_EVENT,
                                   nova.hosts.controller())
        nova.instances.finish_event(uuid, ctx.request_id, MIGRATE_EVENT, error=message,
                                    traceback=f"{exception}: {message}")
        nova.instances.add_fault(uuid, code, message, details=f"{exception}: {message}")
        set_state(nova.trace, nova.instances, ctx, uuid, task_state=None)

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
