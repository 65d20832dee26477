"""nova-compute: one per compute host, listening on topic `compute.<host>`.

It builds an instance through the task states nova walks (networking,
block_device_mapping, spawning) with its hypervisor driver, and stops, starts,
reboots, resizes (compute/resize.py) and deletes it. A build the driver cannot
finish, or whose port neutron cannot bind here, is sent back to the conductor, which
retries on an alternate host.

With a networking service, the build makes or binds the ports at "networking", plugs
them (os-vif) before the spawn and waits for neutron's network-vif-plugged for each
(nova's wait_for_instance_event); neutron's events reach it through nova-api's
os-server-external-events (`external_instance_event`).

As nova's compute manager does, it works on one instance at a time (a lock per
instance), checks before each write that the task it is doing is still the one
asked for (a delete may have come in), and on any unexpected failure leaves the
instance in a state the user can act on (ERROR, or its task state cleared).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute import vif as os_vif
from labkit.cloud.compute.block_devices import BlockDeviceMapping
from labkit.cloud.compute.host_volumes import HostVolumes
from labkit.cloud.compute.instance_events import InstanceEvents
from labkit.cloud.compute.instances import CRASHED, NOSTATE, RUNNING, SHUTDOWN, Instance
from labkit.cloud.compute.network import NetworkAllocationFailed, PortBindingFailed
from labkit.cloud.compute.resize import ResizeSteps, TaskChanged
from labkit.cloud.compute.states import set_state
from labkit.cloud.errors import NotFound
from labkit.cloud.faults import faults_of
from labkit.cloud.service_client import ServiceClientError
from labkit.cloud.trace import TraceEvent
from labkit.cloud.virt.driver import Driver, GuestSpec, SpawnFailed

if TYPE_CHECKING:
    from labkit.cloud.compute.service import ComputeService

log = logging.getLogger(__name__)
BUILD_EVENT = "compute__do_build_and_run_instance"
ATTACH_EVENT = "compute_attach_volume"
DETACH_EVENT = "compute_detach_volume"
MAX_CONSOLE_BYTES = 100 * 1024
POWER_NAMES = {NOSTATE: "NOSTATE", RUNNING: "Running", SHUTDOWN: "Shutdown",
               CRASHED: "Crashed", 3: "Paused", 7: "Suspended"}


class BuildAborted(Exception):
    """nova's BuildAbortException: the build fails here and is not rescheduled."""


PLUGGED = "network-vif-plugged"
# power states the hypervisor reports for a guest that no longer runs (NOSTATE, a guest
# the hypervisor does not know, nova only logs)
STOPPED_POWER = (SHUTDOWN, CRASHED)
# the request a driver call works for: the driver's own HTTP calls (the image download
# from glance) carry it, so the trace shows them inside the build
current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request", default=None)


class ComputeManager(ResizeSteps):
    """One host's nova-compute (the resize steps are in compute/resize.py)."""

    def __init__(self, nova: ComputeService, host: str, driver: Driver) -> None:
        self.nova = nova
        self.host = host
        self.driver = driver
        self.component = f"nova-compute@{host}"
        self.topic = f"compute.{host}"
        # one operation at a time per instance; a lock lives while someone holds it
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())
        # what builds here wait for from neutron (network-vif-plugged per port)
        self.events = InstanceEvents()
        # the volumes of the instances here (os-brick, cinder's attachments, the driver)
        self.volumes = HostVolumes(self)
        self._background: set[asyncio.Task[None]] = set()

    def _lock(self, uuid: str) -> asyncio.Lock:
        lock = self._locks.get(uuid)
        if lock is None:
            lock = self._locks[uuid] = asyncio.Lock()
        return lock

    def _state(self, ctx: MessageContext, uuid: str, **values: Any) -> None:
        set_state(self.nova.trace, self.nova.instances, ctx, uuid, **values)

    def _row(self, uuid: str) -> Instance:
        with self.nova.database.session() as s:
            return self.nova.instances.get(s, uuid, include_deleted=True)

    def _step(self, ctx: MessageContext, uuid: str, expected: tuple[str | None, ...],
              **values: Any) -> None:
        """Write the next step, if the instance is still in one of the `expected` task
        states (nova's expected_task_state): a delete that came in meanwhile wins."""
        row = self._row(uuid)
        if row.deleted or row.task_state not in expected:
            raise TaskChanged(f"{uuid} is now {row.vm_state}/{row.task_state}")
        if values:
            self._state(ctx, uuid, **values)

    async def _pause(self, uuid: str | None = None) -> None:
        """The pace's pause in a step; longer while a slow-step fault names the task state
        the instance is in now (on this host or every host)."""
        seconds = self.nova.step_seconds
        if uuid is not None:
            row = self._row(uuid)
            seconds += faults_of(self.nova.cloud).slow_step(row.task_state, self.host)
        if seconds:
            await asyncio.sleep(seconds)

    def _driver_call(self, ctx: MessageContext, summary: str, **detail: Any) -> None:
        self.nova.trace.record(TraceEvent(
            kind="call", source=self.component, target=f"{self.driver.name} driver@{self.host}",
            summary=summary, request_id=ctx.request_id, detail=detail))

    # -- building

    async def build_and_run_instance(self, ctx: MessageContext, instance_uuid: str,
                                     request_spec: dict[str, Any],
                                     alternates: list[str]) -> None:
        async with self._lock(instance_uuid):
            await self._build_and_run(ctx, instance_uuid, request_spec, alternates)

    async def _build_and_run(self, ctx: MessageContext, uuid: str,
                             request_spec: dict[str, Any], alternates: list[str]) -> None:
        nova, instances = self.nova, self.nova.instances
        if nova.is_deleted(uuid):
            # deleted while it waited for a host: give back what the scheduler claimed
            nova.release_allocation(ctx, uuid, self.component)
            return
        instances.start_event(uuid, ctx.request_id, BUILD_EVENT, self.host)
        node = nova.hosts.node_for(self.host)
        try:
            # nova: vm_state building, task_state None, once the host has the instance
            self._step(ctx, uuid, ("scheduling",), host=self.host,
                       node=node.hypervisor_hostname,
                       availability_zone=node.availability_zone, task_state=None)
            await self._build(ctx, uuid, request_spec)
        except (SpawnFailed, PortBindingFailed) as exc:
            # nova's build returns normally when it reschedules: the event says Success
            instances.finish_event(uuid, ctx.request_id, BUILD_EVENT)
            if await self._undo_build(ctx, uuid, reschedule=True):
                nova.bus.cast(ctx, "conductor", "build_instances", instance_uuid=uuid,
                              request_spec=request_spec, alternates=alternates,
                              failed_host=self.host, reason=str(exc))
            return
        except (NotFound, TaskChanged):
            # deleted during the build: undo it here; the delete does the rest
            await self._undo_build(ctx, uuid, reschedule=False)
            instances.finish_event(uuid, ctx.request_id, BUILD_EVENT,
                                   error="the instance was deleted during the build")
            return
        except Exception as exc:  # an abort, or a failure nobody planned for
            if not isinstance(exc, BuildAborted):
                log.exception("build of %s on %s failed", uuid, self.host)
            await self._undo_build(ctx, uuid, reschedule=False)
            instances.finish_event(uuid, ctx.request_id, BUILD_EVENT, error=str(exc),
                                   traceback=f"{type(exc).__name__}: {exc}")
            if not nova.is_deleted(uuid):
                instances.add_fault(uuid, 500, f"Build of instance {uuid} aborted: {exc}",
                                    details=f"{type(exc).__name__}: {exc}", host=self.host)
                self._state(ctx, uuid, vm_state="error", task_state=None)
            return
        instances.finish_event(uuid, ctx.request_id, BUILD_EVENT)

    async def _build(self, ctx: MessageContext, uuid: str, spec: dict[str, Any]) -> None:
        self._step(ctx, uuid, (None,), task_state="networking")
        await self._pause(uuid)
        try:
            network_info = await self.nova.network.allocate_for_instance(
                ctx, self._row(uuid), self.host, spec.get("requested_networks"))
        except NetworkAllocationFailed as exc:
            raise BuildAborted(f"Failed to allocate the network(s) with error {exc}, not "
                               f"rescheduling.") from exc
        except ServiceClientError as exc:
            # keystone refused nova's service user (its [neutron] password is wrong)
            raise BuildAborted("Failed to allocate the network(s), not rescheduling.") \
                from exc
        self._step(ctx, uuid, ("networking",), task_state="block_device_mapping")
        await self._pause(uuid)
        self._step(ctx, uuid, ("block_device_mapping",), task_state="spawning")
        await self._pause(uuid)
        instance = self._row(uuid)
        # the whole image, properties and all (kernel_id, ramdisk_id), as the conductor
        # hands nova-compute the image's metadata
        try:
            image = self.nova.images.get_image(instance.image_ref, instance.project_id,
                                               is_admin=True)
        except NotFound as exc:  # deleted since the API checked it
            raise BuildAborted(f"Image {instance.image_ref} could not be found.") from exc
        guest = self._guest_spec(ctx, instance, {**spec, "image": image}, network_info)
        await self._plug_vifs(ctx, uuid, network_info)
        self._driver_call(ctx, f"spawn {guest.name}", vcpus=guest.vcpus,
                          memory_mb=guest.memory_mb)
        faults_of(self.nova.cloud).check_instances_disk(self.host, uuid, ctx.request_id)
        current_request.set(ctx.request_id)
        await self.driver.spawn(guest)
        # the floating IPs the ports have now: one associated while the guest was being
        # spawned came as network-changed before the driver knew the guest
        with self.nova.database.session() as s:
            await self.driver.network_changed(uuid, self.nova.instances.network_info(s, uuid))
        self._step(ctx, uuid, ("spawning",), vm_state="active", task_state=None,
                   power_state=self.driver.power_state(uuid), launched_at=time.time())

    @staticmethod
    def _guest_spec(ctx: MessageContext, instance: Instance, spec: dict[str, Any],
                    network_info: list[dict[str, Any]]) -> GuestSpec:
        flavor = spec["flavor"]
        return GuestSpec(
            uuid=instance.uuid, name=instance.name, vcpus=flavor["vcpus"],
            memory_mb=flavor["memory_mb"], root_gb=flavor["root_gb"],
            image=spec.get("image", {}), user_data=instance.user_data,
            key_data=instance.key_data, network_info=network_info,
            hostname=instance.hostname, display_name=instance.display_name,
            project_id=instance.project_id, user_id=instance.user_id,
            flavor=dict(instance.flavor or flavor), request_id=ctx.request_id,
            created_at=instance.created_at)

    def _event(self, ctx: MessageContext, uuid: str, summary: str, **detail: Any) -> None:
        self.nova.trace.record(TraceEvent(
            kind="event", source=self.component, target=self.component, summary=summary,
            request_id=ctx.request_id, detail={"instance_uuid": uuid, **detail}))

    async def _plug_vifs(self, ctx: MessageContext, uuid: str,
                         network_info: list[dict[str, Any]]) -> None:
        """Plug the ports (os-vif), then wait until neutron says each one is wired (its
        network-vif-plugged event): the libvirt driver's _create_guest_with_network.
        Only ports not yet ACTIVE are waited for; no word within vif_plugging_timeout is
        fatal, as nova's vif_plugging_is_fatal makes it."""
        waiting = {vif["id"]: self.events.prepare(uuid, PLUGGED, vif["id"])
                   for vif in network_info if not vif.get("active", True)}
        try:
            for vif in network_info:
                os_vif.plug(self.nova.bus, self.nova.trace, ctx, self.host, uuid, vif)
            if not waiting:
                return
            self._event(ctx, uuid, f"wait for {PLUGGED} of {len(waiting)} port(s)",
                        ports=sorted(waiting), timeout=self.nova.vif_plugging_timeout)
            done, pending = await asyncio.wait(set(waiting.values()),
                                               timeout=self.nova.vif_plugging_timeout)
        finally:
            self.events.clear(uuid)
        if any(f.cancelled() for f in done):
            raise TaskChanged(f"{uuid} was deleted while it waited for {PLUGGED}")
        late = sorted(port for port, f in waiting.items() if f in pending)
        failed = sorted(port for port, f in waiting.items()
                        if f in done and f.result() == "failed")
        if late:
            self._event(ctx, uuid, f"timeout waiting for {PLUGGED} of {len(late)} port(s)",
                        ports=late, timeout=self.nova.vif_plugging_timeout)
            if self.nova.vif_plugging_is_fatal:
                raise BuildAborted("Failed to allocate the network(s), not rescheduling.")
        if failed:
            raise BuildAborted("Failed to allocate the network(s), not rescheduling.")

    def _unplug_vifs(self, ctx: MessageContext, uuid: str) -> None:
        """os-vif's unplug of every port the instance has on this host."""
        with self.nova.database.session() as s:
            network_info = self.nova.instances.network_info(s, uuid)
        for vif in network_info:
            os_vif.unplug(self.nova.bus, self.nova.trace, ctx, self.host, uuid, vif)

    async def _undo_build(self, ctx: MessageContext, uuid: str, reschedule: bool) -> bool:
        """Leave the host as the build found it: no guest, no ports, no allocation.
        With `reschedule`, put the instance back to scheduling, unless a delete came in:
        True when it is ready to go to another host."""
        await self.driver.destroy(uuid)
        self._unplug_vifs(ctx, uuid)
        try:
            await self.nova.network.deallocate_for_instance(ctx, self._row(uuid))
        except Exception:  # nova's _cleanup_allocated_networks: log it, go on failing
            log.exception("Failed to deallocate networks of %s on %s", uuid, self.host)
        self.nova.release_allocation(ctx, uuid, self.component)
        row = self._row(uuid)
        if not reschedule or row.deleted or row.task_state == "deleting":
            return False
        self._state(ctx, uuid, host=None, node=None, task_state="scheduling",
                    power_state=NOSTATE)
        return True

    # -- life after the build

    async def stop_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        await self._power_action(ctx, instance_uuid, "compute_stop_instance", "powering-off",
                                 self.driver.power_off, vm_state="stopped")

    async def start_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        await self._power_action(ctx, instance_uuid, "compute_start_instance", "powering-on",
                                 self.driver.power_on, vm_state="active")

    async def reboot_instance(self, ctx: MessageContext, instance_uuid: str,
                              reboot_type: str) -> None:
        hard = reboot_type == "HARD"

        async def reboot(uuid: str) -> None:
            await self.driver.reboot(uuid, hard=hard)
        await self._power_action(ctx, instance_uuid, "compute_reboot_instance",
                                 "rebooting_hard" if hard else "rebooting", reboot,
                                 vm_state="active")

    async def _power_action(self, ctx: MessageContext, uuid: str, event: str, task: str,
                            operation: Callable[[str], Awaitable[None]],
                            vm_state: str) -> None:
        async with self._lock(uuid):
            instances = self.nova.instances
            instances.start_event(uuid, ctx.request_id, event, self.host)
            try:
                self._step(ctx, uuid, (task,))  # still asked for, and not deleted
                await self._pause(uuid)
                self._driver_call(ctx, f"{operation.__name__} {uuid[:8]}")
                await operation(uuid)
                self._step(ctx, uuid, (task,), vm_state=vm_state, task_state=None,
                           power_state=self.driver.power_state(uuid))
            except TaskChanged as exc:
                instances.finish_event(uuid, ctx.request_id, event, error=str(exc))
                return
            except Exception as exc:
                # nova's reverts_task_state: the task is over, whatever happened
                log.exception("%s of %s on %s failed", event, uuid, self.host)
                instances.finish_event(uuid, ctx.request_id, event, error=str(exc),
                                       traceback=f"{type(exc).__name__}: {exc}")
                if not self._row(uuid).deleted:
                    self._state(ctx, uuid, task_state=None)
                return
            instances.finish_event(uuid, ctx.request_id, event)

    async def terminate_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        # a build waiting for neutron's events stops waiting, so the delete need not wait
        self.events.clear(instance_uuid)
        async with self._lock(instance_uuid):
            await self._terminate(ctx, instance_uuid)

    async def _terminate(self, ctx: MessageContext, uuid: str) -> None:
        event = "compute_terminate_instance"
        self.nova.instances.start_event(uuid, ctx.request_id, event, self.host)
        try:
            await self._pause(uuid)
            self._driver_call(ctx, f"destroy {uuid[:8]}")
            await self.driver.destroy(uuid)
            self._unplug_vifs(ctx, uuid)
            await self.nova.network.deallocate_for_instance(ctx, self._row(uuid))
            # the guest is gone: its volumes are logged out and given back to cinder
            await self.volumes.release_all(ctx, self._row(uuid))
        except Exception as exc:
            log.exception("delete of %s on %s failed", uuid, self.host)
            self.nova.instances.finish_event(uuid, ctx.request_id, event, error=str(exc),
                                             traceback=f"{type(exc).__name__}: {exc}")
            self._state(ctx, uuid, vm_state="error", task_state=None)
            return
        self.nova.release_allocation(ctx, uuid, self.component)
        self.release_move(ctx, uuid)
        self.nova.instances.finish_event(uuid, ctx.request_id, event)
        self.nova.finish_delete(ctx, uuid)

    # -- volumes (nova's reserve_block_device_name, attach_volume, detach_volume)

    async def reserve_block_device_name(self, ctx: MessageContext, instance_uuid: str,
                                        volume_id: str, tag: str | None = None,
                                        delete_on_termination: bool = False
                                        ) -> dict[str, Any]:
        """An RPC call from nova-api: the next free device name, held by a new block
        device mapping (InvalidVolume if the volume already has one here)."""
        async with self._lock(instance_uuid):
            bdm = self.volumes.reserve(instance_uuid, volume_id, tag, delete_on_termination)
        return {"uuid": bdm.uuid, "device_name": bdm.device_name}

    async def attach_volume(self, ctx: MessageContext, instance_uuid: str,
                            bdm_uuid: str) -> None:
        async with self._lock(instance_uuid):
            bdm = self._bdm(instance_uuid, bdm_uuid)
            await self._volume_action(ctx, instance_uuid, ATTACH_EVENT, bdm,
                                      self.volumes.attach)

    async def detach_volume(self, ctx: MessageContext, instance_uuid: str, volume_id: str,
                            attachment_id: str | None = None) -> None:
        async with self._lock(instance_uuid):
            bdm = next((b for b in self.nova.block_devices.for_instance(instance_uuid)
                        if b.volume_id == volume_id), None)
            await self._volume_action(ctx, instance_uuid, DETACH_EVENT, bdm,
                                      self.volumes.detach)

    def _bdm(self, instance_uuid: str, bdm_uuid: str) -> BlockDeviceMapping | None:
        return next((b for b in self.nova.block_devices.for_instance(instance_uuid)
                     if b.uuid == bdm_uuid), None)

    async def _volume_action(self, ctx: MessageContext, uuid: str, event: str,
                             bdm: BlockDeviceMapping | None,
                             operation: Callable[[MessageContext, Instance,
                                                  BlockDeviceMapping], Awaitable[None]]
                             ) -> None:
        """nova's wrap_instance_event and wrap_instance_fault around an attach or a
        detach: the action's event says how it went; a failure leaves a fault."""
        instances = self.nova.instances
        instances.start_event(uuid, ctx.request_id, event, self.host)
        try:
            row = self._row(uuid)
            if row.deleted or bdm is None:
                raise TaskChanged(f"{uuid} was deleted, or the volume's mapping is gone")
            await operation(ctx, row, bdm)
        except Exception as exc:
            log.warning("%s of %s on %s failed: %s", event, uuid, self.host, exc)
            instances.finish_event(uuid, ctx.request_id, event, error=str(exc),
                                   traceback=f"{type(exc).__name__}: {exc}")
            if not self._row(uuid).deleted:
                instances.add_fault(uuid, getattr(exc, "status", 500), str(exc),
                                    details=f"{type(exc).__name__}: {exc}", host=self.host)
            return
        instances.finish_event(uuid, ctx.request_id, event)

    # -- what neutron tells nova (os-server-external-events, through nova-api)

    async def external_instance_event(self, ctx: MessageContext,
                                      events: list[dict[str, Any]]) -> None:
        """nova's external_instance_event: refresh the info cache on network-changed, drop
        a deleted port from it, and hand any other event to the build waiting for it."""
        for event in events:
            uuid, name, tag = event["server_uuid"], event["name"], event.get("tag")
            status = event.get("status", "completed")
            key = f"{name}:{tag}" if tag else name
            row = self._row(uuid)
            if row.deleted or row.host != self.host:
                self._event(ctx, uuid, f"dropped {key}: the instance is not here")
                continue
            if name == "network-changed":
                network_info = await self.nova.network.get_instance_nw_info(ctx, row)
                self._event(ctx, uuid, f"{key}: network info cache refreshed", event=name,
                            tag=tag)
                # a floating IP came or went: the hypervisor forwards it (or stops)
                await self.driver.network_changed(uuid, network_info)
            elif name == "network-vif-deleted":
                self._forget_vif(uuid, tag)
                self._event(ctx, uuid, f"{key}: port removed from the network info cache",
                            event=name, tag=tag)
            elif self.events.pop(uuid, name, tag, status):
                self._event(ctx, uuid, f"received {key} ({status}): the build goes on",
                            event=name, tag=tag, status=status)
            else:
                # nova logs "Received unexpected event" and drops it
                self._event(ctx, uuid, f"received unexpected event {key}", event=name,
                            tag=tag, status=status)

    def _forget_vif(self, uuid: str, port_id: str | None) -> None:
        with self.nova.database.session() as s:
            network_info = self.nova.instances.network_info(s, uuid)
        kept = [vif for vif in network_info if vif["id"] != port_id]
        if len(kept) != len(network_info):
            self.nova.instances.set_network_info(uuid, kept)

    # -- the console

    async def get_console_output(self, ctx: MessageContext, instance_uuid: str,
                                 tail_length: int | None) -> str:
        """nova-compute's get_console_output: the driver reads the guest's console log."""
        self._driver_call(ctx, f"get_console_output {instance_uuid[:8]}",
                          tail_length=tail_length)
        output = self.driver.console_output(instance_uuid, tail_length)
        # nova's compute host sends at most the log's last 100 KiB (MAX_CONSOLE_BYTES)
        return output[-MAX_CONSOLE_BYTES:]

    # -- power state sync (nova's _sync_power_states periodic task)

    def power_changed(self, uuid: str) -> None:
        """The driver saw a guest stop on its own (its qemu exited): sync now, not at the
        next periodic run, as libvirt's lifecycle events make nova do."""
        task = asyncio.get_running_loop().create_task(self.sync_power_state(uuid))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def sync_power_states(self) -> None:
        for instance in self.nova.instances_on(self.host):
            await self.sync_power_state(instance.uuid)

    async def sync_power_state(self, uuid: str) -> None:
        """Compare the database with the hypervisor. A guest that stopped by itself while
        the database says active is stopped through the stop path, as nova's
        _sync_instance_power_state does; an instance with a task under way is left to it."""
        lock = self._lock(uuid)
        if lock.locked():
            return  # an operation is under way; the next sync looks again
        async with lock:
            row = self._row(uuid)
            if row.deleted or row.host != self.host or row.task_state is not None:
                return
            # the hypervisor may take a moment to answer (qemu's monitor): not on the loop
            power = await asyncio.to_thread(self.driver.power_state, uuid)
            row = self._row(uuid)
            if power == row.power_state or row.deleted or row.task_state is not None:
                return
            if power == NOSTATE:
                # nova: "Instance is unexpectedly not found. Ignore."
                return
            ctx = MessageContext(request_id=None, source=self.component)
            self._event(ctx, uuid, f"power state sync: database {POWER_NAMES.get(row.power_state)}"
                        f", hypervisor {POWER_NAMES.get(power)}", vm_state=row.vm_state,
                        db_power_state=row.power_state, vm_power_state=power)
            if row.vm_state == "active" and power in STOPPED_POWER:
                # "Instance shutdown by itself. Calling the stop API."
                await self._stopped_by_itself(ctx, row, power)
            elif row.vm_state == "stopped" and power not in (SHUTDOWN, CRASHED):
                # running although stopped: nova stops it again
                await self.driver.power_off(uuid)
                self._state(ctx, uuid, power_state=self.driver.power_state(uuid))
            else:
                self._state(ctx, uuid, power_state=power)

    async def _stopped_by_itself(self, ctx: MessageContext, row: Instance, power: int) -> None:
        # nova's periodic task makes its own request context, so its own request id
        request_id = self.nova.ids.request_id()
        ctx = MessageContext(request_id=request_id, source=self.component)
        with self.nova.database.session() as s:
            self.nova.instances.start_action(s, row.uuid, "stop", request_id, "", "")
        self.nova.instances.start_event(row.uuid, request_id, "compute_stop_instance",
                                        self.host)
        if power == CRASHED:
            # a crashed guest's process still runs: the stop powers it off, so a start
            # can boot it again
            await self.driver.power_off(row.uuid)
            power = await asyncio.to_thread(self.driver.power_state, row.uuid)
        self._state(ctx, row.uuid, vm_state="stopped", task_state=None, power_state=power)
        self.nova.instances.finish_event(row.uuid, request_id, "compute_stop_instance")

    # -- start of the service

    async def init_host(self, ctx: MessageContext) -> None:
        """After a restart, as nova-compute does: adopt the guests the records say are
        here, fail builds that were cut off, finish deletes that were under way."""
        for instance in self.nova.instances_on(self.host):
            if instance.vm_state == "building":
                await self._undo_build(ctx, instance.uuid, reschedule=False)
                self.nova.instances.add_fault(
                    instance.uuid, 500, "Instance was building when its compute host "
                    "restarted", host=self.host)
                self._state(ctx, instance.uuid, vm_state="error", task_state=None)
            elif instance.task_state == "deleting":
                await self._terminate(ctx, instance.uuid)
            else:
                # a resize cut off: ERROR (VERIFY_RESIZE is adopted as it is)
                recovered = await self.recover_resize(ctx, instance)
                if instance.task_state is not None and not recovered:
                    self._state(ctx, instance.uuid, task_state=None)
                power = RUNNING if instance.vm_state == "active" else SHUTDOWN
                if instance.vm_state == "resized":
                    power = instance.power_state
                self.driver.adopt(instance.uuid, power)
                await self.volumes.restore(ctx, instance)
        # what the hypervisor found may differ from the records (a guest that died while
        # the cloud was down): the first sync runs now
        await self.sync_power_states()
