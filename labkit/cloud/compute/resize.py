"""nova-compute's side of a resize (a cold migration to a new flavor), and the auto-confirm.

The steps, each an RPC cast from one host to the other, as nova's compute manager does:

- prep_resize on the destination (the scheduler already claimed the new flavor there):
  checks the task is still resize_prep, casts resize_instance to the source;
- resize_instance on the source: resize_migrating; the driver powers the guest off and
  copies its disk to the destination (keeping `<uuid>_resize`); the volumes leave this
  host, the ports are unplugged; the instance's host is now the destination
  (resize_migrated); casts finish_resize to it;
- finish_resize on the destination: the new flavor; the ports bound here, plugged; the
  volumes connected here; the driver starts the guest (if it ran before): VERIFY_RESIZE
  (vm_state resized), the migration "finished".

Then either confirm_resize on the source (the kept files go, the migration's
allocation is dropped) or revert_resize on the destination (the guest there goes, the
allocation moves back) and finish_revert_resize on the source (the old flavor, the
guest back from `<uuid>_resize`).

A failure in any step leaves the instance in ERROR with a fault, the step's event in
error and the migration in "error", as nova's compute manager leaves a failed move.
`ResizeSteps` is a part of ComputeManager (compute/manager.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute import vif as os_vif
from labkit.cloud.compute.instances import SHUTDOWN, Instance
from labkit.cloud.compute.migrations import Migration, move_allocation
from labkit.cloud.errors import NotFound

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from labkit.cloud.compute.host_volumes import HostVolumes
    from labkit.cloud.compute.service import ComputeService
    from labkit.cloud.virt.driver import Driver, GuestSpec

log = logging.getLogger(__name__)
RESIZE_TASKS = ("resize_prep", "resize_migrating", "resize_migrated", "resize_finish",
                "resize_reverting")


class TaskChanged(Exception):
    """The instance is no longer in the task this operation was started for (deleted)."""


class ResizeSteps:
    """The resize steps of one compute host (mixed into ComputeManager)."""

    # what ComputeManager provides
    nova: ComputeService
    host: str
    component: str
    driver: Driver
    volumes: HostVolumes

    if TYPE_CHECKING:
        def _lock(self, uuid: str) -> asyncio.Lock: ...
        def _row(self, uuid: str) -> Instance: ...
        def _state(self, ctx: MessageContext, uuid: str, **values: Any) -> None: ...
        def _step(self, ctx: MessageContext, uuid: str, expected: tuple[str | None, ...],
                  **values: Any) -> None: ...
        def _driver_call(self, ctx: MessageContext, summary: str, **detail: Any) -> None: ...
        def _unplug_vifs(self, ctx: MessageContext, uuid: str) -> None: ...
        async def _pause(self, uuid: str | None = None) -> None: ...

        @staticmethod
        def _guest_spec(ctx: MessageContext, instance: Instance, spec: dict[str, Any],
                        network_info: list[dict[str, Any]]) -> GuestSpec: ...

    async def _move_step(self, ctx: MessageContext, uuid: str, migration_id: int,
                         event: str, work: Callable[[Migration], Awaitable[None]]) -> None:
        """nova's wrap_instance_event and the error handling around one step: the event
        says how it went; a failure is ERROR, a fault, and the migration in error."""
        instances = self.nova.instances
        async with self._lock(uuid):
            instances.start_event(uuid, ctx.request_id, event, self.host)
            try:
                await work(self.nova.migrations.get(migration_id))
            except Exception as exc:
                if not isinstance(exc, (NotFound, TaskChanged)):
                    log.exception("%s of %s on %s failed", event, uuid, self.host)
                instances.finish_event(uuid, ctx.request_id, event, error=str(exc),
                                       traceback=f"{type(exc).__name__}: {exc}")
                self.nova.migrations.update(migration_id, status="error")
                row = self._row(uuid)
                if not row.deleted and row.task_state != "deleting":
                    instances.add_fault(uuid, getattr(exc, "status", 500), str(exc),
                                        details=f"{type(exc).__name__}: {exc}",
                                        host=self.host)
                    self._state(ctx, uuid, vm_state="error", task_state=None)
                return
            instances.finish_event(uuid, ctx.request_id, event)

    def _image(self, instance: Instance) -> dict[str, Any]:
        try:
            return self.nova.images.get_image(instance.image_ref, instance.project_id,
                                              is_admin=True)
        except NotFound:  # deleted since the boot: the disk has what it needs
            return {"id": instance.image_ref}

    async def _arrive(self, ctx: MessageContext, uuid: str
                      ) -> tuple[list[dict[str, Any]], list[Any]]:
        """The instance is (again) on this host: its ports bound and plugged here, its
        volumes connected here. (network info, volumes for the driver)."""
        row = self._row(uuid)
        await self.nova.network.migrate_instance_finish(ctx, row, self.host)
        network_info = await self.nova.network.get_instance_nw_info(ctx, row)
        for vif in network_info:
            os_vif.plug(self.nova.bus, self.nova.trace, ctx, self.host, uuid, vif)
        volumes = await self.volumes.move_in(ctx, row)
        return network_info, volumes

    # -- destination: prep_resize

    async def prep_resize(self, ctx: MessageContext, instance_uuid: str, migration_id: int,
                          flavor: dict[str, Any], request_spec: dict[str, Any]) -> None:
        async def work(migration: Migration) -> None:
            self._step(ctx, instance_uuid, ("resize_prep",))
            await self._pause(instance_uuid)
            self._step(ctx, instance_uuid, ("resize_prep",))
            self.nova.bus.cast(ctx, f"compute.{migration.source_compute}", "resize_instance",
                               instance_uuid=instance_uuid, migration_id=migration_id)
        await self._move_step(ctx, instance_uuid, migration_id, "compute_prep_resize", work)

    # -- source: resize_instance

    async def resize_instance(self, ctx: MessageContext, instance_uuid: str,
                              migration_id: int) -> None:
        async def work(migration: Migration) -> None:
            uuid, dest = instance_uuid, migration.dest_compute or self.host
            self._step(ctx, uuid, ("resize_prep",), task_state="resize_migrating")
            self.nova.migrations.update(migration_id, status="migrating")
            await self._pause(uuid)
            self._driver_call(ctx, f"migrate_disk_and_power_off {uuid[:8]} → {dest}",
                              dest_host=dest, flavor=migration.new_flavor.get("name"))
            disk_info = await self.driver.migrate_disk_and_power_off(
                uuid, dest, dict(migration.new_flavor), request_id=ctx.request_id)
            await self.volumes.move_out(ctx, self._row(uuid))
            self._unplug_vifs(ctx, uuid)
            self.nova.migrations.update(migration_id, status="post-migrating")
            node = self.nova.hosts.node_for(dest)
            self._step(ctx, uuid, ("resize_migrating",), task_state="resize_migrated",
                       host=dest, node=node.hypervisor_hostname,
                       availability_zone=node.availability_zone, power_state=SHUTDOWN)
            self.nova.bus.cast(ctx, f"compute.{dest}", "finish_resize", instance_uuid=uuid,
                               migration_id=migration_id, disk_info=disk_info)
        await self._move_step(ctx, instance_uuid, migration_id, "compute_resize_instance",
                              work)

    # -- destination: finish_resize

    async def finish_resize(self, ctx: MessageContext, instance_uuid: str, migration_id: int,
                            disk_info: dict[str, Any]) -> None:
        async def work(migration: Migration) -> None:
            uuid = instance_uuid
            # the new flavor is the instance's from here on (the old one stays on the
            # migration for a revert)
            self._step(ctx, uuid, ("resize_migrated",), flavor=dict(migration.new_flavor))
            await self._pause(uuid)
            network_info, volumes = await self._arrive(ctx, uuid)
            self._step(ctx, uuid, ("resize_migrated",), task_state="resize_finish")
            await self._pause(uuid)
            instance = self._row(uuid)
            guest = self._guest_spec(ctx, instance, {"flavor": migration.new_flavor,
                                                     "image": self._image(instance)},
                                     network_info)
            power_on = migration.old_vm_state != "stopped"
            self._driver_call(ctx, f"finish_migration {guest.name}", vcpus=guest.vcpus,
                              memory_mb=guest.memory_mb, root_gb=guest.root_gb,
                              power_on=power_on)
            await self.driver.finish_migration(guest, disk_info, volumes, power_on)
            await self.driver.network_changed(uuid, network_info)
            self.nova.migrations.update(migration_id, status="finished")
            self._step(ctx, uuid, ("resize_finish",), vm_state="resized", task_state=None,
                       power_state=self.driver.power_state(uuid), launched_at=time.time())
        await self._move_step(ctx, instance_uuid, migration_id, "compute_finish_resize",
                              work)

    # -- source: confirm_resize

    async def confirm_resize(self, ctx: MessageContext, instance_uuid: str,
                             migration_id: int) -> None:
        async def work(migration: Migration) -> None:
            uuid = instance_uuid
            if migration.status == "confirmed":
                return  # confirmed already (nova: "Migration is already confirmed")
            # a delete of a VERIFY_RESIZE server confirms first: it may be gone by now
            row = self._row(uuid)
            if not row.deleted and row.task_state not in (None, "deleting"):
                raise TaskChanged(f"{uuid} is now {row.vm_state}/{row.task_state}")
            await self._pause(uuid)
            self._driver_call(ctx, f"confirm_migration {uuid[:8]}")
            await self.driver.confirm_migration(uuid, request_id=ctx.request_id)
            # the old flavor's allocation on the source is no longer needed
            self.nova.release_allocation(ctx, migration.uuid, self.component)
            self.nova.migrations.update(migration_id, status="confirmed")
            row = self._row(uuid)
            if row.deleted or row.task_state == "deleting":
                return
            # a server stopped before, or since, the resize stays stopped (nova reads
            # the power state)
            stopped = row.power_state == SHUTDOWN
            self._step(ctx, uuid, (None,), vm_state="stopped" if stopped else "active",
                       task_state=None)
        await self._move_step(ctx, instance_uuid, migration_id, "compute_confirm_resize",
                              work)

    # -- destination: revert_resize

    async def revert_resize(self, ctx: MessageContext, instance_uuid: str,
                            migration_id: int) -> None:
        async def work(migration: Migration) -> None:
            uuid = instance_uuid
            self._step(ctx, uuid, ("resize_reverting",))
            await self._pause(uuid)
            self._driver_call(ctx, f"destroy {uuid[:8]} (the resized guest)")
            await self.driver.destroy(uuid)
            self._unplug_vifs(ctx, uuid)
            await self.volumes.move_out(ctx, self._row(uuid))
            # the instance's new allocation here goes; the old one comes back to it
            move_allocation(self.nova, ctx, self.component, migration.uuid, uuid)
            self.nova.bus.cast(ctx, f"compute.{migration.source_compute}",
                               "finish_revert_resize", instance_uuid=uuid,
                               migration_id=migration_id)
        await self._move_step(ctx, instance_uuid, migration_id, "compute_revert_resize",
                              work)

    # -- source: finish_revert_resize

    async def finish_revert_resize(self, ctx: MessageContext, instance_uuid: str,
                                   migration_id: int) -> None:
        async def work(migration: Migration) -> None:
            uuid = instance_uuid
            node = self.nova.hosts.node_for(self.host)
            self._step(ctx, uuid, ("resize_reverting",), flavor=dict(migration.old_flavor),
                       host=self.host, node=node.hypervisor_hostname,
                       availability_zone=node.availability_zone)
            network_info, volumes = await self._arrive(ctx, uuid)
            await self._pause(uuid)
            instance = self._row(uuid)
            guest = self._guest_spec(ctx, instance, {"flavor": migration.old_flavor,
                                                     "image": self._image(instance)},
                                     network_info)
            power_on = migration.old_vm_state != "stopped"
            self._driver_call(ctx, f"finish_revert_migration {guest.name}",
                              vcpus=guest.vcpus, memory_mb=guest.memory_mb,
                              power_on=power_on)
            await self.driver.finish_revert_migration(guest, volumes, power_on)
            await self.driver.network_changed(uuid, network_info)
            self.nova.migrations.update(migration_id, status="reverted")
            self._step(ctx, uuid, ("resize_reverting",),
                       vm_state="active" if power_on else "stopped", task_state=None,
                       power_state=self.driver.power_state(uuid), launched_at=time.time())
        await self._move_step(ctx, instance_uuid, migration_id,
                              "compute_finish_revert_resize", work)

    def release_move(self, ctx: MessageContext, uuid: str) -> None:
        """A delete during a resize: the migration's hold on the source goes too, and the
        migration ends in error (one being confirmed is left to its confirm)."""
        migration = self.nova.migrations.in_progress(uuid)
        if migration is None or migration.status == "confirming":
            return
        self.nova.release_allocation(ctx, migration.uuid, self.component)
        self.nova.migrations.update(migration.id, status="error")

    # -- a restart in the middle of a resize

    async def recover_resize(self, ctx: MessageContext, instance: Instance) -> bool:
        """At init_host: what to do with an instance here a restart caught in a resize.
        True when handled (the caller adopts nothing more).

        - VERIFY_RESIZE (resized, no task): the guest is adopted as any other; the
          migration stays "finished", so confirm and revert work after the restart;
        - a resize still under way (task resize_*): its messages were lost with the
          cloud. As nova's init_host leaves such an instance for the user to act on, it
          goes to ERROR with a fault and its migration to "error"; its placement
          allocations stay as they were (nova's do too), so an admin's reset-state and
          a delete clean up.
        """
        if instance.task_state not in RESIZE_TASKS:
            return False
        migration = self.nova.migrations.in_progress(instance.uuid)
        if migration is not None:
            self.nova.migrations.update(migration.id, status="error")
            # the migration's hold on the source goes back to the instance, unless the
            # instance already holds the destination; then it is freed
            if self.nova.placement.allocations_for(migration.uuid):
                if self.nova.placement.allocations_for(instance.uuid):
                    self.nova.release_allocation(ctx, migration.uuid, self.component)
                else:
                    move_allocation(self.nova, ctx, self.component, migration.uuid,
                                    instance.uuid)
        self.nova.instances.add_fault(
            instance.uuid, 500, f"The cloud restarted during the resize of instance "
            f"{instance.uuid} (task {instance.task_state}); it cannot go on",
            host=self.host)
        self._state(ctx, instance.uuid, vm_state="error", task_state=None)
        return True


async def poll_unconfirmed_resizes(nova: ComputeService) -> None:
    """nova's _poll_unconfirmed_resizes, every report_interval seconds: a resize
    "finished" for longer than resize_confirm_window is confirmed by nova itself,
    through the API's path (an action confirmResize by the nova service user)."""
    while True:
        settings = nova.cloud.settings
        await asyncio.sleep(settings.report_interval)
        window = settings.resize_confirm_window
        if window <= 0:
            continue
        try:
            await confirm_unconfirmed(nova, time.time() - window)
        except Exception:  # one bad row must not end the periodic task
            log.exception("auto-confirm of resizes failed")


async def confirm_unconfirmed(nova: ComputeService, older_than: float) -> list[str]:
    """Confirm each finished resize last updated before `older_than`; the instance
    uuids confirmed."""
    from labkit.cloud.compute.servers import ServersAPI

    done = []
    for migration in nova.migrations.unconfirmed(older_than):
        with nova.database.session() as s:
            try:
                instance = nova.instances.get(s, migration.instance_uuid)
            except NotFound:
                nova.migrations.update(migration.id, status="error")
                continue
        if instance.vm_state != "resized" or instance.task_state is not None:
            continue  # nova skips these ("In states ... will not confirm")
        if not nova.compute_running(migration.dest_compute or ""):
            continue  # the periodic task runs in the destination's nova-compute
        user_id, project_id = _service_user(nova)
        ctx = MessageContext(request_id=nova.ids.request_id(),
                             source=f"nova-compute@{migration.dest_compute}",
                             user_id=user_id, project_id=project_id, is_admin=True)
        ServersAPI(nova).start_confirm(ctx, instance, migration)
        done.append(instance.uuid)
    return done


def _service_user(nova: ComputeService) -> tuple[str, str]:
    """The ids of nova's service user and the service project (the action's user)."""
    try:
        identity = nova.cloud.identity
        user = identity.list("user", {"name": "nova"})[0]
        project = identity.list("project", {"name": "service"})[0]
        return str(user.id), str(project.id)
    except Exception:  # no identity in this cloud: the names stand in
        return "nova", "service"
