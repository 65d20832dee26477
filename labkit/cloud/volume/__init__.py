"""Cinder: the block storage service, mounted at /volume (API under /volume/v3/{project_id}).

`VolumeService` owns cinder.sqlite and cinder's components: cinder-api (the HTTP app and
`api`, cinder/volume/api.py's checks), cinder-scheduler and cinder-volume for the
controller's LVM backend (lvmdriver-1) on the bus, and `targets`, the iSCSI target helper
compute hosts log in to (`targets.login(data, initiator) -> Path`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.bus import MessageContext
from labkit.cloud.db import Database
from labkit.cloud.labfiles import lab_hosts
from labkit.cloud.service_client import ServiceClient, service_password
from labkit.cloud.volume.backend import LVMBackend, TargetLoginFailed, Targets
from labkit.cloud.volume.manager import SchedulerManager, VolumeManager, heartbeat
from labkit.cloud.volume.models import Service, VolumeBase, utcnow
from labkit.cloud.volume.quotas import Quotas
from labkit.cloud.volume.types import VolumeTypes
from labkit.cloud.volume.volumes import VolumeAPI

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud

__all__ = ["TargetLoginFailed", "Targets", "VolumeService"]

# seconds each step of a volume's work takes: none in tests, enough to watch in class
STEP_SECONDS = {"fast": 0.0, "teach": 1.5}
# cinder's report_interval and service_down_time
REPORT_INTERVAL = 10.0
SERVICE_DOWN_TIME = 60.0


class VolumeService:
    """cinder-api, cinder-scheduler and cinder-volume, as one Service of the embedded cloud."""

    name = "cinder-api"
    path = "/volume"
    base = VolumeBase

    def __init__(self, cloud: Cloud) -> None:
        from labkit.cloud.volume.api import build_volume_app, versions

        self._cloud = cloud
        settings = cloud.settings
        self.ids = cloud.ids
        self.trace = cloud.trace
        self.bus = cloud.bus
        self.step_seconds = STEP_SECONDS[settings.pace]
        self.images = cloud.image.images
        controller = next(h for h in lab_hosts(settings.lab) if h.get("role") == "controller")
        self.node = str(controller["name"])
        self.backend_name = str(controller.get("volume_backend_name", "lvmdriver-1"))
        self.volume_group = str(controller.get("volume_group", "cinder-volumes"))
        self.group_gb = int(controller.get("volume_group_gb", 24))
        self.availability_zone = str(controller.get("availability_zone", "nova"))
        # cinder's host string: <host>@<backend>#<pool>, the pool named after the backend
        self.backend_host = f"{self.node}@{self.backend_name}"
        self.host = f"{self.backend_host}#{self.backend_name}"
        self.volume_topic = f"cinder-volume.{self.backend_host}"
        self.database = Database(settings.home / "cinder.sqlite", VolumeBase)
        self.backend = LVMBackend(settings.home / "hosts" / self.node / self.volume_group)
        self.targets = Targets(self.database, self.backend, self.ids,
                               str(controller["management_ip"]))
        self.types = VolumeTypes(self.database, self.ids, self.backend_name)
        self.types.bootstrap()
        self.quotas = Quotas(self.database)
        self.api = VolumeAPI(self)
        self.scheduler = SchedulerManager(self)
        self.volume = VolumeManager(self)
        self.volume_service_uuid = self._register_services()
        self.bus.register(self.scheduler.topic, self.scheduler.component, self.scheduler)
        self.bus.register(self.volume_topic, self.volume.component, self.volume)
        self._client: ServiceClient | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._versions = versions
        self.app = build_volume_app(self)

    def _register_services(self) -> str:
        """The services table's rows (cinder-scheduler@controller, cinder-volume@backend)."""
        wanted = [("cinder-scheduler", self.node, "cinder-scheduler"),
                  ("cinder-volume", self.backend_host, self.volume_topic)]
        with self.database.session() as s:
            uuids = {}
            for binary, host, topic in wanted:
                row = s.scalars(select(Service).where(Service.binary == binary,
                                                      Service.host == host)).first()
                if row is None:
                    row = Service(uuid=self.ids.uuid("cinder-service"), binary=binary,
                                  host=host, topic=topic, availability_zone=self.availability_zone)
                    s.add(row)
                uuids[binary] = row.uuid
            return uuids["cinder-volume"]

    def report_state(self) -> None:
        with self.database.session() as s:
            for row in s.scalars(select(Service)):
                row.updated_at = utcnow()
                row.report_count += 1

    def services(self) -> list[Service]:
        with self.database.session() as s:
            return list(s.scalars(select(Service).order_by(Service.id)))

    def service_client(self) -> ServiceClient:
        """cinder's HTTP client to glance and nova, as service user cinder."""
        if self._client is None:
            self._client = ServiceClient(self._cloud, "cinder", service_password(
                self._cloud.settings.lab, "cinder"), component=self.volume.component)
        return self._client

    async def pace(self) -> None:
        if self.step_seconds:
            await asyncio.sleep(self.step_seconds)

    async def notify_nova_extended(self, ctx: MessageContext, volume_id: str) -> None:
        """Tell nova an attached volume grew (os-server-external-events volume-extended)."""
        servers = [a.instance_uuid for a in self.api.attachments_of([volume_id])[volume_id]
                   if a.instance_uuid]
        if not servers or getattr(self._cloud, "compute", None) is None:
            return
        body: dict[str, Any] = {"events": [{"name": "volume-extended", "server_uuid": server,
                                            "tag": volume_id} for server in servers]}
        # nova's answer does not change the volume's state
        with contextlib.suppress(Exception):
            await self.service_client().send(
                "POST", "/compute/v2.1/os-server-external-events", json=body,
                request_id=ctx.request_id, component=self.volume.component,
                headers={"OpenStack-API-Version": "compute 2.51"})

    # -- the Service protocol

    async def root(self, request: Request) -> Response:
        return await self._versions.root(request)

    def anonymous(self, method: str, path: str) -> bool:
        return self._versions.anonymous(method, path)

    async def start(self) -> None:
        self.report_state()
        await self.volume.init_host(MessageContext(request_id=None,
                                                   source=self.volume.component))
        self._heartbeat = asyncio.get_running_loop().create_task(
            heartbeat(self, REPORT_INTERVAL))

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.bus.drain(timeout=30)
        if self._client is not None:
            await self._client.aclose()

    def close(self) -> None:
        self.database.close()
