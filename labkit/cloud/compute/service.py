"""Nova: the API, and behind it the conductor, the scheduler and one compute service per host.

`ComputeService` owns nova's database and its components. The components talk
over the cloud's message bus (topics `conductor`, `scheduler`, `compute.<host>`);
the API only casts to the conductor, as nova-api does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute import api
from labkit.cloud.compute.api import versions
from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.compute.block_devices import BlockDevices
from labkit.cloud.compute.cinder import CinderVolumeAPI, NoVolumeAPI, VolumeAPI
from labkit.cloud.compute.conductor import ConductorManager
from labkit.cloud.compute.drivers import driver_name, make_driver
from labkit.cloud.compute.flavors import Flavors
from labkit.cloud.compute.hosts import Hosts
from labkit.cloud.compute.instances import NOSTATE, Instance, Instances
from labkit.cloud.compute.keypairs import Keypairs
from labkit.cloud.compute.manager import ComputeManager
from labkit.cloud.compute.migrations import Migrations
from labkit.cloud.compute.network import NetworkAPI, NoNetwork
from labkit.cloud.compute.neutron import NeutronNetworkAPI
from labkit.cloud.compute.quotas import Quotas
from labkit.cloud.compute.resize import poll_unconfirmed_resizes
from labkit.cloud.compute.scheduler.request import RequestSpec
from labkit.cloud.compute.scheduler_manager import SchedulerManager
from labkit.cloud.compute.server_groups import ServerGroups
from labkit.cloud.compute.servicegroup import Heartbeats, is_up
from labkit.cloud.compute.states import set_state
from labkit.cloud.db import Database
from labkit.cloud.errors import Conflict
from labkit.cloud.service_client import ServiceClient, service_password
from labkit.cloud.trace import TraceEvent
from labkit.scheduling import inventories_of

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud
    from labkit.cloud.placement.models import Placement

log = logging.getLogger(__name__)

# seconds each step of a build or an action takes: none in tests, enough to watch in class
STEP_SECONDS = {"fast": 0.0, "teach": 1.5}
# nova's [DEFAULT] vif_plugging_timeout and vif_plugging_is_fatal
VIF_PLUGGING_TIMEOUT = 300.0


class ComputeService:
    name = "nova-api"
    path = "/compute"
    base = ComputeBase

    def __init__(self, cloud: Cloud) -> None:
        settings = cloud.settings
        self.ids = cloud.ids
        self.trace = cloud.trace
        self.bus = cloud.bus
        self.step_seconds = STEP_SECONDS[settings.pace]
        self.database = Database(settings.home / "nova.sqlite", ComputeBase)
        self.placement: Placement = cloud.placement.backend
        self.images = cloud.image.images
        self._client: ServiceClient | None = None
        self._cloud = cloud
        self.network: NetworkAPI = self._network_api(cloud)
        self.volume: VolumeAPI = self._volume_api(cloud)
        # how long a build waits for neutron's network-vif-plugged, and whether not
        # hearing it fails the build
        self.vif_plugging_timeout = VIF_PLUGGING_TIMEOUT
        self.vif_plugging_is_fatal = True
        self.instances = Instances(self.database)
        self.block_devices = BlockDevices(self.database, self.ids)
        self.hosts = Hosts(self.database, self.ids, settings.lab)
        self.flavors = Flavors(self.database, self.ids)
        self.migrations = Migrations(self.database, self.ids)
        self.flavors.bootstrap(settings.lab)
        self.keypairs = Keypairs(self.database, self.ids)
        self.server_groups = ServerGroups(self.database, self.ids)
        self.quotas = Quotas(self.database)
        self.conductor = ConductorManager(self)
        self.scheduler = SchedulerManager(self)
        # nova's compute_driver, the same on every host
        self.driver_name = driver_name(cloud)
        self.computes = {h["name"]: ComputeManager(
            self, h["name"], make_driver(cloud, self, h["name"], self.driver_name))
            for h in self.hosts.compute_hosts()}
        self.power_sync_interval = settings.power_sync_interval
        self._power_sync: asyncio.Task[None] | None = None
        self._resize_poll: asyncio.Task[None] | None = None
        # nova's servicegroup: each service's heartbeat, and how old one may be
        self.service_down_time = settings.service_down_time
        self.heartbeats = Heartbeats(self.hosts.report_state, settings.report_interval)
        self._register()
        self.app = api.build_compute_app(self)

    def _network_api(self, cloud: Cloud) -> NetworkAPI:
        """Neutron over HTTP, as nova's service user, when the cloud has a networking
        service (mounted before nova); else no ports at all."""
        if getattr(cloud, "network", None) is None:
            return NoNetwork()
        return NeutronNetworkAPI(self, self.service_client())

    def _volume_api(self, cloud: Cloud) -> VolumeAPI:
        """Cinder over HTTP, as nova's service user, when the cloud has a block storage
        service (mounted before nova); else every volume call fails as nova's does when
        it cannot reach cinder."""
        if getattr(cloud, "volume", None) is None:
            return NoVolumeAPI()
        return CinderVolumeAPI(self.service_client())

    @property
    def cloud(self) -> Cloud:
        """The cloud nova runs in (os-brick on a compute host reaches cinder's target)."""
        return self._cloud

    def service_client(self) -> ServiceClient:
        """nova's one HTTP client to the other services (neutron, glance, cinder), as
        user nova."""
        if self._client is None:
            self._client = ServiceClient(self._cloud, "nova", service_password(
                self._cloud.settings.lab, "nova"), component="nova-compute")
        return self._client

    def driver_event(self, host: str, request_id: str | None, summary: str,
                     detail: dict[str, Any]) -> None:
        """A step the hypervisor driver took (the image cache, the qemu process)."""
        self.trace.record(TraceEvent(
            kind="event", source=f"nova-compute@{host}",
            target=f"{self.driver_name} driver@{host}", summary=summary,
            request_id=request_id, detail=detail))

    def _register(self) -> None:
        """What each nova service does when it starts: its row, its node, its inventory."""
        self.hosts.register()
        for component in (self.conductor, self.scheduler, *self.computes.values()):
            self.bus.register(component.topic, component.component, component)
        for state in self.scheduler.host_states():
            self.placement.ensure_provider(state.uuid, state.node, inventories_of(state))

    def _fail_lost_builds(self, ctx: MessageContext) -> None:
        """Builds still waiting for a host when the cloud stopped have lost their messages."""
        for instance in self.instances_on(None):
            if instance.vm_state == "building":
                self.release_allocation(ctx, instance.uuid, ctx.source)
                self.instances.add_fault(instance.uuid, 500, "The cloud restarted while "
                                         "the instance was being scheduled")
                set_state(self.trace, self.instances, ctx, instance.uuid, vm_state="error",
                          task_state=None)

    # -- the Service protocol

    async def root(self, request: Request) -> Response:
        return await versions.root(request)

    def anonymous(self, method: str, path: str) -> bool:
        return versions.anonymous(method, path)

    async def start(self) -> None:
        """What each service does once it runs: pick up what a restart interrupted."""
        ctx = MessageContext(request_id=None, source="nova-compute")
        for manager in self.computes.values():
            await manager.init_host(ctx.sent_by(manager.component))
        self._fail_lost_builds(ctx.sent_by("nova-conductor"))
        self._power_sync = asyncio.get_running_loop().create_task(self._sync_power_states())
        # nova's _poll_unconfirmed_resizes (it confirms only with resize_confirm_window)
        self._resize_poll = asyncio.get_running_loop().create_task(
            poll_unconfirmed_resizes(self))
        self._start_heartbeats()

    async def _sync_power_states(self) -> None:
        """nova's periodic _sync_power_states, on every host, every power_sync_interval."""
        while True:
            await asyncio.sleep(self.power_sync_interval)
            for manager in self.computes.values():
                if not self.compute_running(manager.host):
                    continue  # a stopped nova-compute runs no periodic tasks
                try:
                    await manager.sync_power_states()
                except Exception:  # one bad guest must not end the periodic task
                    log.exception("power state sync on %s failed", manager.host)

    async def stop(self) -> None:
        if self._power_sync is not None:
            self._power_sync.cancel()
        if self._resize_poll is not None:
            self._resize_poll.cancel()
        await self.heartbeats.stop_all()
        # long enough for a build at the teach pace to finish rather than be cut off
        await self.bus.drain(timeout=30)
        # the hosts go down with the cloud: no guest outlives it
        for manager in self.computes.values():
            await manager.driver.shutdown()
        if self._client is not None:
            await self._client.aclose()

    def close(self) -> None:
        self.database.close()

    # -- services up and down (nova's servicegroup; labkit's compute-down fault)

    def _start_heartbeats(self) -> None:
        controller = self.hosts.controller()
        for component in (self.conductor, self.scheduler):
            self.heartbeats.start(controller, component.component)
        for host in self.computes:
            if self.compute_running(host):
                self.heartbeats.start(host, "nova-compute")

    def service_is_up(self, service: Any) -> bool:
        """nova's servicegroup is_up: heard from within service_down_time, not forced down."""
        return is_up(service, time.time(), self.service_down_time)

    def compute_running(self, host: str) -> bool:
        """Whether nova-compute on `host` runs (it may still look up for a while after it
        stopped, and down for a while after it started: see service_is_up)."""
        # a stopped nova-compute is one whose topic nobody consumes
        return host in self.computes and not self.bus.paused(self.computes[host].topic)

    def stop_compute(self, host: str) -> None:
        """nova-compute on `host` stops: no more heartbeats; what is cast to it waits in
        its queue, calls to it time out. Its guests keep running, as on a real host."""
        if host not in self.computes:
            raise KeyError(f"no compute host {host!r}")
        self.heartbeats.stop(host, "nova-compute")
        self.bus.pause(self.computes[host].topic)
        self.trace.record(TraceEvent(
            kind="event", source="labkit", target=self.computes[host].component,
            summary=f"nova-compute on {host} stopped: no heartbeats, messages queue up",
            request_id=None, detail={"host": host}))

    def start_compute(self, host: str) -> None:
        """nova-compute on `host` starts again: it reports at once (up again) and handles
        what waited in its queue, in order."""
        if host not in self.computes:
            raise KeyError(f"no compute host {host!r}")
        was_stopped = not self.compute_running(host)
        topic = self.computes[host].topic
        queued = self.bus.queued(topic)
        self.bus.resume(topic)
        self.heartbeats.start(host, "nova-compute")
        if was_stopped:
            self.trace.record(TraceEvent(
                kind="event", source="labkit", target=self.computes[host].component,
                summary=f"nova-compute on {host} started: {queued} queued message(s) "
                        "delivered", request_id=None, detail={"host": host,
                                                              "queued": queued}))

    # -- what the components share

    def is_deleted(self, instance_uuid: str) -> bool:
        with self.database.session() as s:
            return self.instances.get(s, instance_uuid, include_deleted=True).deleted

    def bus_has(self, topic: str) -> bool:
        return topic in self.bus.topics()

    def instances_on(self, host: str | None) -> list[Instance]:
        with self.database.session() as s:
            return list(s.scalars(select(Instance).where(Instance.host.is_(None) if host is None
                                                         else Instance.host == host,
                                                         Instance.deleted.is_(False))))

    def group_hosts(self, group: dict[str, Any]) -> list[str]:
        """The hosts the group's members are on now."""
        members = group.get("members") or []
        if not members:
            return []
        with self.database.session() as s:
            return sorted(set(s.scalars(select(Instance.host).where(
                Instance.uuid.in_(members), Instance.deleted.is_(False),
                Instance.host.is_not(None)))))

    @staticmethod
    def resources_of(request_spec: dict[str, Any]) -> dict[str, int]:
        """What one instance of the request asks placement for (VCPU, MEMORY_MB, DISK_GB)."""
        return RequestSpec.from_dict(request_spec).resources()

    def claim_on(self, ctx: MessageContext, source: str, instance_uuid: str, host: str,
                 resources: dict[str, int]) -> None:
        """Claim the instance's resources on `host` in placement; Conflict if they no
        longer fit."""
        node = self.hosts.node_for(host)
        with self.database.session() as s:
            instance = self.instances.get(s, instance_uuid, include_deleted=True)
            project_id, user_id = instance.project_id, instance.user_id
        try:
            self.placement.claim(instance_uuid, {node.uuid: resources}, project_id, user_id)
        except Conflict as exc:
            self.placement_event(ctx, source, f"PUT /allocations/{instance_uuid[:8]}… → 409",
                                 host=host, resources=resources, outcome=exc.message)
            raise
        self.placement_event(ctx, source, f"PUT /allocations/{instance_uuid[:8]}… → 204",
                             host=host, resources=resources, outcome="claimed")

    def release_allocation(self, ctx: MessageContext, instance_uuid: str, source: str) -> None:
        if not self.placement.allocations_for(instance_uuid):
            return
        self.placement.release(instance_uuid)
        self.placement_event(ctx, source, f"DELETE /allocations/{instance_uuid[:8]}… → 204",
                             outcome="released")

    def placement_event(self, ctx: MessageContext, source: str, summary: str,
                        **detail: Any) -> None:
        """Record a call to placement (real nova makes these over HTTP)."""
        self.trace.record(TraceEvent(kind="http", source=source, target="placement-api",
                                     summary=summary, request_id=ctx.request_id,
                                     detail=detail))

    def finish_delete(self, ctx: MessageContext, instance_uuid: str) -> None:
        """The last step of a delete: the row is marked deleted and leaves its group."""
        self.server_groups.remove_member(instance_uuid)
        set_state(self.trace, self.instances, ctx, instance_uuid, vm_state="deleted",
                  task_state=None, power_state=NOSTATE, deleted=True,
                  terminated_at=time.time())
