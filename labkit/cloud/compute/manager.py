"""nova-compute: one per compute host, listening on topic `compute.<host>`.

It builds an instance through the task states nova walks (networking,
block_device_mapping, spawning) with its hypervisor driver, and stops, starts,
reboots and deletes it. A build the driver cannot finish is sent back to the
conductor, which retries on an alternate host.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.instances import NOSTATE, RUNNING, SHUTDOWN
from labkit.cloud.compute.states import set_state
from labkit.cloud.errors import NotFound
from labkit.cloud.trace import TraceEvent
from labkit.cloud.virt.driver import Driver, GuestSpec, SpawnFailed

if TYPE_CHECKING:
    from labkit.cloud.compute.service import ComputeService

BUILD_EVENT = "compute__do_build_and_run_instance"


class BuildAborted(Exception):
    """The instance was deleted while it was being built."""


class ComputeManager:
    def __init__(self, nova: ComputeService, host: str, driver: Driver) -> None:
        self.nova = nova
        self.host = host
        self.driver = driver
        self.component = f"nova-compute@{host}"
        self.topic = f"compute.{host}"
        # one operation at a time per instance, as nova's compute manager locks on its uuid
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(uuid, asyncio.Lock())

    def _state(self, ctx: MessageContext, uuid: str, **values: Any) -> None:
        set_state(self.nova.trace, self.nova.instances, ctx, uuid, **values)

    async def _pause(self) -> None:
        if self.nova.step_seconds:
            await asyncio.sleep(self.nova.step_seconds)

    def _record(self, ctx: MessageContext, target: str, summary: str, **detail: Any) -> None:
        self.nova.trace.record(TraceEvent(kind="call", source=self.component, target=target,
                                          summary=summary, request_id=ctx.request_id,
                                          detail=detail))

    # -- building

    async def build_and_run_instance(self, ctx: MessageContext, instance_uuid: str,
                                     request_spec: dict[str, Any],
                                     alternates: list[str]) -> None:
        async with self._lock(instance_uuid):
            await self._build_and_run(ctx, instance_uuid, request_spec, alternates)

    async def _build_and_run(self, ctx: MessageContext, instance_uuid: str,
                             request_spec: dict[str, Any], alternates: list[str]) -> None:
        instances = self.nova.instances
        if self.nova.is_deleted(instance_uuid):
            # deleted while it waited for a host: give back what the scheduler claimed
            self.nova.release_allocation(ctx, instance_uuid, self.component)
            return
        instances.start_event(instance_uuid, ctx.request_id, BUILD_EVENT, self.host)
        node = self.nova.hosts.node_for(self.host)
        self._state(ctx, instance_uuid, host=self.host, node=node.hypervisor_hostname,
                    availability_zone=node.availability_zone, task_state=None)
        try:
            await self._build(ctx, instance_uuid, request_spec)
        except SpawnFailed as exc:
            instances.finish_event(instance_uuid, ctx.request_id, BUILD_EVENT, error=str(exc),
                                   traceback=f"SpawnFailed: {exc}")
            await self._undo_build(ctx, instance_uuid)
            self.nova.bus.cast(ctx, "conductor", "build_instances",
                               instance_uuid=instance_uuid, request_spec=request_spec,
                               alternates=alternates, failed_host=self.host,
                               reason=str(exc))
            return
        except (NotFound, BuildAborted):
            # deleted while building: undo what the build did; the delete finishes the rest
            await self.driver.destroy(instance_uuid)
            await self.nova.network.deallocate_for_instance(ctx, instance_uuid)
            instances.finish_event(instance_uuid, ctx.request_id, BUILD_EVENT,
                                   error="the instance was deleted during the build")
            return
        instances.finish_event(instance_uuid, ctx.request_id, BUILD_EVENT)

    def _step(self, ctx: MessageContext, uuid: str, **values: Any) -> None:
        """The next build step, unless a delete has come in meanwhile."""
        with self.nova.database.session() as s:
            instance = self.nova.instances.get(s, uuid, include_deleted=True)
            if instance.deleted or instance.task_state == "deleting":
                raise BuildAborted(uuid)
        self._state(ctx, uuid, **values)

    async def _build(self, ctx: MessageContext, uuid: str, spec: dict[str, Any]) -> None:
        self._step(ctx, uuid, task_state="networking")
        await self._pause()
        network_info = await self.nova.network.allocate_for_instance(
            ctx, uuid, self.host, spec.get("requested_networks"))
        self._step(ctx, uuid, task_state="block_device_mapping")
        await self._pause()
        self._step(ctx, uuid, task_state="spawning")
        flavor = spec["flavor"]
        with self.nova.database.session() as s:
            instance = self.nova.instances.get(s, uuid)
            guest = GuestSpec(uuid=uuid, name=instance.name, vcpus=flavor["vcpus"],
                              memory_mb=flavor["memory_mb"], root_gb=flavor["root_gb"],
                              image=spec.get("image", {}), user_data=instance.user_data,
                              key_data=instance.key_data, network_info=network_info)
        self._record(ctx, f"{self.driver.name} driver@{self.host}", f"spawn {guest.name}",
                     vcpus=guest.vcpus, memory_mb=guest.memory_mb)
        await self.driver.spawn(guest)
        self._step(ctx, uuid, vm_state="active", task_state=None,
                    power_state=self.driver.power_state(uuid), launched_at=time.time())

    async def _undo_build(self, ctx: MessageContext, uuid: str) -> None:
        """Leave the host as the build found it: no guest, no ports, no allocation."""
        await self.driver.destroy(uuid)
        await self.nova.network.deallocate_for_instance(ctx, uuid)
        self.nova.release_allocation(ctx, uuid, self.component)
        self._state(ctx, uuid, host=None, node=None, task_state="scheduling",
                    power_state=NOSTATE)

    # -- life after the build

    async def stop_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        await self._power_action(ctx, instance_uuid, "compute_stop_instance",
                                 self.driver.power_off, vm_state="stopped")

    async def start_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        await self._power_action(ctx, instance_uuid, "compute_start_instance",
                                 self.driver.power_on, vm_state="active")

    async def reboot_instance(self, ctx: MessageContext, instance_uuid: str,
                              reboot_type: str) -> None:
        async def reboot(uuid: str) -> None:
            await self.driver.reboot(uuid, hard=reboot_type == "HARD")
        await self._power_action(ctx, instance_uuid, "compute_reboot_instance", reboot,
                                 vm_state="active")

    async def _power_action(self, ctx: MessageContext, uuid: str, event: str,
                            operation: Any, vm_state: str) -> None:
        self.nova.instances.start_event(uuid, ctx.request_id, event, self.host)
        await self._pause()
        self._record(ctx, f"{self.driver.name} driver@{self.host}",
                     f"{operation.__name__} {uuid[:8]}")
        await operation(uuid)
        self._state(ctx, uuid, vm_state=vm_state, task_state=None,
                    power_state=self.driver.power_state(uuid))
        self.nova.instances.finish_event(uuid, ctx.request_id, event)

    async def terminate_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        async with self._lock(instance_uuid):
            await self._terminate(ctx, instance_uuid)
        self._locks.pop(instance_uuid, None)

    async def _terminate(self, ctx: MessageContext, instance_uuid: str) -> None:
        event = "compute_terminate_instance"
        self.nova.instances.start_event(instance_uuid, ctx.request_id, event, self.host)
        await self._pause()
        self._record(ctx, f"{self.driver.name} driver@{self.host}",
                     f"destroy {instance_uuid[:8]}")
        await self.driver.destroy(instance_uuid)
        await self.nova.network.deallocate_for_instance(ctx, instance_uuid)
        self.nova.release_allocation(ctx, instance_uuid, self.component)
        self.nova.instances.finish_event(instance_uuid, ctx.request_id, event)
        self.nova.finish_delete(ctx, instance_uuid)

    # -- start of the service

    def init_host(self, ctx: MessageContext) -> None:
        """After a restart, as nova-compute does: adopt running guests, fail broken builds,
        finish deletes that were under way."""
        for instance in self.nova.instances_on(self.host):
            if instance.vm_state == "building":
                self.nova.instances.add_fault(
                    instance.uuid, 500, "Instance was building when its compute host "
                    "restarted", host=self.host)
                self._state(ctx, instance.uuid, vm_state="error", task_state=None)
            elif instance.task_state == "deleting":
                self.nova.release_allocation(ctx, instance.uuid, self.component)
                self.nova.finish_delete(ctx, instance.uuid)
            else:
                if instance.task_state is not None:
                    self._state(ctx, instance.uuid, task_state=None)
                power = RUNNING if instance.vm_state == "active" else SHUTDOWN
                adopt = getattr(self.driver, "adopt", None)
                if adopt:
                    adopt(instance.uuid, power)
