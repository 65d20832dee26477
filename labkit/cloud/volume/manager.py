"""cinder-scheduler and cinder-volume, the components on the bus behind cinder-api.

cinder-api casts create_volume to the scheduler (topic `cinder-scheduler`), which picks
the backend whose pool has room (the capacity filter, thin provisioned as DevStack's LVM)
and casts to that backend's cinder-volume (topic `cinder-volume.controller@lvmdriver-1`).
cinder-volume does the work on the LVM backend and answers attachment_update, an RPC call,
with the connection info its iSCSI target helper builds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from labkit.cloud.bus import MessageContext
from labkit.cloud.faults import faults_of
from labkit.cloud.trace import TraceEvent
from labkit.cloud.volume.backend import GIB, BackendError
from labkit.cloud.volume.models import Attachment, Snapshot, Volume, utcnow

if TYPE_CHECKING:
    from labkit.cloud.volume import VolumeService

log = logging.getLogger(__name__)
# cinder's max_over_subscription_ratio default, for a thin LVM pool
OVER_SUBSCRIPTION = 20.0


class SchedulerManager:
    component = "cinder-scheduler"
    topic = "cinder-scheduler"

    def __init__(self, svc: VolumeService) -> None:
        self.svc = svc

    def pools(self) -> list[dict[str, Any]]:
        """The backend's pool as cinder-volume reports it to the scheduler (get_pools)."""
        svc = self.svc
        with svc.database.session() as s:
            provisioned = sum(v.size for v in s.scalars(select(Volume).where(
                Volume.deleted.is_(False), Volume.host.is_not(None))))
        # a thin pool's free space: all of it in this model, none when the lab's
        # volume-backend-full fault says the backend is full
        free = 0 if faults_of(getattr(svc, "_cloud", None)).backend_full() else svc.group_gb
        return [{"name": svc.host, "capabilities": {
            "volume_backend_name": svc.backend_name, "total_capacity_gb": svc.group_gb,
            "free_capacity_gb": free,
            "provisioned_capacity_gb": provisioned, "thin_provisioning_support": True,
            "max_over_subscription_ratio": OVER_SUBSCRIPTION, "storage_protocol": "iSCSI",
            "backend_state": "up"}}]

    async def create_volume(self, ctx: MessageContext, volume_id: str,
                            request_spec: dict[str, Any]) -> None:
        svc = self.svc
        await svc.pace()
        size = int(request_spec["size"])
        chosen = None
        for pool in self.pools():
            caps = pool["capabilities"]
            room = caps["total_capacity_gb"] * caps["max_over_subscription_ratio"]
            # cinder's CapacityFilter: a backend with no free space takes nothing
            if caps["free_capacity_gb"] > 0 and caps["provisioned_capacity_gb"] + size <= room:
                chosen = pool["name"]
        if chosen is None:
            reason = "No valid backend was found. No weighed backends available"
            # what cinder-scheduler logs as its error: the only word of why, besides the row
            svc.trace.record(TraceEvent(kind="event", source=self.component,
                                        target=self.component,
                                        summary=f"volume {volume_id[:8]}…: {reason}",
                                        request_id=ctx.request_id,
                                        detail={"volume_id": volume_id, "error": reason,
                                                "pools": [p["name"] for p in self.pools()]}))
            svc.api.set_status(ctx, volume_id, status="error", error=reason)
            return
        svc.trace.record(TraceEvent(kind="event", source=self.component, target="cinder-db",
                                    summary=f"volume {volume_id[:8]}… → {chosen}",
                                    request_id=ctx.request_id,
                                    detail={"volume_id": volume_id, "host": chosen}))
        with svc.database.session() as s:
            row = s.get(Volume, volume_id)
            assert row is not None
            row.host = chosen
            row.service_uuid = svc.volume_service_uuid
        svc.bus.cast(ctx, svc.volume_topic, "create_volume", volume_id=volume_id,
                     request_spec=request_spec)


class VolumeManager:
    """cinder-volume for the controller's lvmdriver-1 backend."""

    def __init__(self, svc: VolumeService) -> None:
        self.svc = svc
        self.component = f"cinder-volume@{svc.node}"
        self.topic = svc.volume_topic

    def _event(self, ctx: MessageContext, summary: str, **detail: Any) -> None:
        self.svc.trace.record(TraceEvent(kind="event", source=self.component,
                                         target=f"lvm@{self.svc.node}", summary=summary,
                                         request_id=ctx.request_id, detail=detail))

    async def create_volume(self, ctx: MessageContext, volume_id: str,
                            request_spec: dict[str, Any]) -> None:
        svc = self.svc
        backend = svc.backend
        volume = svc.api.get_any(volume_id)
        try:
            await svc.pace()
            dest = backend.path(volume_id)
            if volume.snapshot_id:
                await backend.copy(backend.snapshot_path(volume.snapshot_id), dest, volume.size)
                self._event(ctx, f"lvcreate --snapshot … volume-{volume_id[:8]}…",
                            source=volume.snapshot_id)
            elif volume.source_volid:
                await backend.copy(backend.path(volume.source_volid), dest, volume.size)
                self._event(ctx, f"clone volume-{volume.source_volid[:8]}…",
                            source=volume.source_volid)
            else:
                backend.create(volume_id, volume.size)
                self._event(ctx, f"lvcreate -T -V {volume.size}g -n volume-{volume_id[:8]}… "
                                 f"{svc.volume_group}/{svc.volume_group}-pool",
                            path=str(dest), size_bytes=volume.size * GIB)
                if volume.image_id:
                    svc.api.set_status(ctx, volume_id, status="downloading")
                    await self._copy_image(ctx, volume)
        except Exception as exc:  # a cast has nobody to answer: the volume says what failed
            log.warning("creating volume %s failed: %s", volume_id, exc)
            backend.delete(volume_id)
            svc.api.set_status(ctx, volume_id, status="error", error=str(exc))
            return
        if svc.api.get_any(volume_id).deleted:
            return
        svc.api.set_status(ctx, volume_id, status="available", launched_at=utcnow(),
                           bootable=bool(volume.image_id) or self._bootable_source(volume))

    def _bootable_source(self, volume: Volume) -> bool:
        with self.svc.database.session() as s:
            if volume.source_volid:
                src = s.get(Volume, volume.source_volid)
                return bool(src and src.bootable)
            if volume.snapshot_id:
                snap = s.get(Snapshot, volume.snapshot_id)
                src = s.get(Volume, snap.volume_id) if snap else None
                return bool(src and src.bootable)
        return False

    async def _copy_image(self, ctx: MessageContext, volume: Volume) -> None:
        """copy_image_to_volume: glance's bytes over HTTP as user cinder, then raw on the LV."""
        client = self.svc.service_client()
        meta = await client.send("GET", f"/image/v2/images/{volume.image_id}",
                                 request_id=ctx.request_id, component=self.component)
        if meta.status_code != 200:
            raise BackendError(f"Image {volume.image_id} could not be found.")
        image = meta.json()
        data = await client.send("GET", f"/image/v2/images/{volume.image_id}/file",
                                 request_id=ctx.request_id, component=self.component,
                                 headers={"Accept": "application/octet-stream"})
        if data.status_code != 200:
            raise BackendError(f"Image {volume.image_id} could not be downloaded: glance "
                               f"answered {data.status_code}")
        disk_format = image.get("disk_format")
        await self.svc.backend.write_image(data.content, disk_format,
                                           self.svc.backend.path(volume.id), volume.size)
        self._event(ctx, f"copy image {image.get('name')} to volume-{volume.id[:8]}… "
                         f"({disk_format} → raw)", image_id=volume.image_id,
                    disk_format=disk_format, bytes=len(data.content))
        keep = ("checksum", "container_format", "disk_format", "min_disk", "min_ram", "size")
        with self.svc.database.session() as s:
            row = s.get(Volume, volume.id)
            assert row is not None
            row.image_metadata = {"image_id": image["id"], "image_name": image.get("name"),
                                  **{k: str(image[k]) for k in keep
                                     if image.get(k) is not None}}

    async def delete_volume(self, ctx: MessageContext, volume_id: str,
                            cascade: bool = False) -> None:
        svc = self.svc
        await svc.pace()
        try:
            if cascade:
                with svc.database.session() as s:
                    snaps = [sn.id for sn in s.scalars(select(Snapshot).where(
                        Snapshot.volume_id == volume_id, Snapshot.deleted.is_(False)))]
                for snap_id in snaps:
                    await self.delete_snapshot(ctx, snap_id, paced=False)
            svc.targets.remove_export(volume_id)
            svc.backend.delete(volume_id)
            self._event(ctx, f"lvremove -f {svc.volume_group}/volume-{volume_id[:8]}…")
        except Exception as exc:
            svc.api.set_status(ctx, volume_id, status="error_deleting", error=str(exc))
            return
        svc.api.set_status(ctx, volume_id, status="deleted", deleted=True,
                           terminated_at=utcnow())

    async def extend_volume(self, ctx: MessageContext, volume_id: str, new_size: int) -> None:
        svc = self.svc
        await svc.pace()
        volume = svc.api.get_any(volume_id)
        try:
            svc.backend.extend(volume_id, new_size)
        except BackendError as exc:
            svc.api.set_status(ctx, volume_id, status="error_extending", error=str(exc))
            return
        self._event(ctx, f"lvextend -L {new_size}g {svc.volume_group}/volume-{volume_id[:8]}…")
        status = volume.previous_status or "available"
        svc.api.set_status(ctx, volume_id, status=status, size=new_size, previous_status=None)
        if status == "in-use":
            await svc.notify_nova_extended(ctx, volume_id)

    async def create_snapshot(self, ctx: MessageContext, snapshot_id: str,
                              volume_id: str) -> None:
        svc = self.svc
        await svc.pace()
        volume = svc.api.get_any(volume_id)
        try:
            await svc.backend.copy(svc.backend.path(volume_id),
                                   svc.backend.snapshot_path(snapshot_id), volume.size)
        except Exception as exc:
            svc.api.set_snapshot_status(ctx, snapshot_id, status="error")
            log.warning("snapshot %s failed: %s", snapshot_id, exc)
            return
        self._event(ctx, f"lvcreate --snapshot -n _snapshot-{snapshot_id[:8]}… "
                         f"{svc.volume_group}/volume-{volume_id[:8]}…")
        svc.api.set_snapshot_status(ctx, snapshot_id, status="available", progress="100%")

    async def delete_snapshot(self, ctx: MessageContext, snapshot_id: str,
                              paced: bool = True) -> None:
        svc = self.svc
        if paced:
            await svc.pace()
        svc.backend.delete_snapshot(snapshot_id)
        self._event(ctx, f"lvremove -f {svc.volume_group}/_snapshot-{snapshot_id[:8]}…")
        svc.api.set_snapshot_status(ctx, snapshot_id, status="deleted", deleted=True)

    async def attachment_update(self, ctx: MessageContext, volume_id: str,
                                connector: dict[str, Any], attachment_id: str) -> dict[str, Any]:
        """create_export, initialize_connection: the target, and the connection info."""
        svc = self.svc
        export = svc.targets.create_export(volume_id, connector.get("initiator"))
        location, auth = svc.targets.provider_location(export), svc.targets.provider_auth(export)
        self._event(ctx, f"tgtadm --op new --tid {export.tid} --targetname {export.iqn}",
                    volume_id=volume_id, initiator=connector.get("initiator"),
                    provider_location=location)
        with svc.database.session() as s:
            attachment = s.get(Attachment, attachment_id)
            volume = s.get(Volume, volume_id)
            assert attachment is not None and volume is not None
            volume.provider_location, volume.provider_auth = location, auth
            mode = attachment.attach_mode if attachment.attach_mode != "null" else (
                connector.get("mode") or "rw")
            attachment.attach_mode = mode
            attachment.connector = dict(connector)
            attachment.attach_status = "attaching"
            attachment.attached_host = connector.get("host", "")
            attachment.mountpoint = connector.get("mountpoint", "na")
            attachment.attach_time = utcnow()
            encrypted = False
        data = {"target_discovered": False, "target_portal": export.portal,
                "target_iqn": export.iqn, "target_lun": export.lun, "volume_id": volume_id,
                "auth_method": "CHAP", "auth_username": export.auth_username,
                "auth_password": export.auth_password, "encrypted": encrypted,
                "qos_specs": None, "access_mode": mode, "cacheable": False}
        svc.api.set_status(ctx, volume_id, status="attaching", attach_status="attaching")
        # cinder flattens the driver's {"driver_volume_type", "data"} for the attachment
        return {**data, "driver_volume_type": "iscsi", "attachment_id": attachment_id,
                "enforce_multipath": bool(connector.get("enforce_multipath", False))}

    async def attachment_delete(self, ctx: MessageContext, volume_id: str,
                                attachment_id: str) -> None:
        """terminate_connection, and remove_export when the volume's last connection goes."""
        svc = self.svc
        with svc.database.session() as s:
            others = [a for a in s.scalars(select(Attachment).where(
                Attachment.volume_id == volume_id, Attachment.deleted.is_(False),
                Attachment.id != attachment_id)) if a.connection_info]
        if not others and svc.targets.remove_export(volume_id):
            self._event(ctx, f"tgtadm --op delete (target of volume-{volume_id[:8]}…)",
                        volume_id=volume_id)
            with svc.database.session() as s:
                volume = s.get(Volume, volume_id)
                if volume is not None:
                    volume.provider_location = None
                    volume.provider_auth = None

    async def init_host(self, ctx: MessageContext) -> None:
        """What cinder-volume does at start: volumes left creating go to error; deletes finish."""
        with self.svc.database.session() as s:
            rows = list(s.scalars(select(Volume).where(Volume.deleted.is_(False),
                                                       Volume.status.in_(
                                                           ("creating", "downloading",
                                                            "deleting", "extending")))))
            snaps = list(s.scalars(select(Snapshot).where(Snapshot.deleted.is_(False),
                                                          Snapshot.status.in_(
                                                              ("creating", "deleting")))))
        for row in rows:
            if row.status == "deleting":
                await self.delete_volume(ctx, row.id)
            elif row.status == "extending":
                self.svc.api.set_status(ctx, row.id, status="error_extending",
                                        error="cinder-volume restarted during the extend")
            else:
                self.svc.backend.delete(row.id)
                self.svc.api.set_status(ctx, row.id, status="error",
                                        error="cinder-volume restarted while the volume "
                                              "was being created")
        for snap in snaps:
            if snap.status == "deleting":
                await self.delete_snapshot(ctx, snap.id, paced=False)
            else:
                self.svc.api.set_snapshot_status(ctx, snap.id, status="error")


async def heartbeat(svc: VolumeService, interval: float) -> None:
    """Each cinder service's report_state: its row's updated_at, every report_interval."""
    while True:
        svc.report_state()
        await asyncio.sleep(interval)
