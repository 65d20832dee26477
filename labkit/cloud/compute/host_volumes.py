"""nova-compute's side of volumes: reserve a device, attach, detach, and clean up.

What nova's compute manager and nova/virt/block_device.py do with the attachments API:

- reserve_block_device_name: under the instance's lock, the next free /dev/vdX (vda is
  the root disk) and the block device mapping that holds it;
- attach: the host's connector from os-brick (with the reserved device as its
  mountpoint) goes to cinder in the attachment update, which answers the connection
  info (kept in the mapping); os-brick logs in and gives the host's device; the
  hypervisor driver plugs it into the guest; the attachment is completed (in-use).
  Any failure undoes what was done (driver, os-brick, the attachment, the mapping),
  so the volume is available again;
- detach: the driver unplugs the disk (a refusal rolls cinder's detaching back), os-brick
  logs out, the attachment is deleted (cinder removes the export), the mapping goes;
- a server's delete: after the driver destroyed the guest, os-brick logs out and the
  attachments are deleted; a volume attached with delete_on_termination is deleted;
- a restart: the guests' volumes are connected and plugged again where the hypervisor
  no longer has them;
- a resize: `move_out` on the host the guest leaves (log out, a fresh attachment
  without a connector replaces this host's), `move_in` on the host it arrives at (the
  new host's connector, log in, complete).

Each step is in the trace: cinder's HTTP calls by themselves, the os-brick and driver
steps as events of this host.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute import brick
from labkit.cloud.compute.block_devices import BlockDeviceMapping
from labkit.cloud.compute.cinder import InvalidVolume
from labkit.cloud.trace import TraceEvent
from labkit.cloud.virt.driver import GuestNotFound, VolumeAttachment

if TYPE_CHECKING:
    from labkit.cloud.compute.instances import Instance
    from labkit.cloud.compute.manager import ComputeManager

log = logging.getLogger(__name__)


class HostVolumes:
    """The volume work of one compute host (its manager holds the instance locks)."""

    def __init__(self, manager: ComputeManager) -> None:
        self.manager = manager
        self.nova = manager.nova
        self.host = manager.host

    # -- helpers

    @staticmethod
    def for_instance(ctx: MessageContext, instance: Instance) -> MessageContext:
        """Work nobody asked for (a restart) talks to cinder in the instance's project."""
        if ctx.project_id:
            return ctx
        return dataclasses.replace(ctx, project_id=instance.project_id)

    def _brick_event(self, ctx: MessageContext, summary: str, **detail: Any) -> None:
        self.nova.trace.record(TraceEvent(
            kind="call", source=self.manager.component, target=f"os-brick@{self.host}",
            summary=summary, request_id=ctx.request_id, detail=detail))

    def _host_record(self) -> dict[str, Any]:
        return next(h for h in self.nova.hosts.compute_hosts() if h["name"] == self.host)

    def connector(self, device: str | None) -> dict[str, Any]:
        """os-brick's connector for this host, with nova's mountpoint in it."""
        connector = brick.connector_properties(self._host_record())
        if device:
            connector["mountpoint"] = device
        return connector

    def _connect(self, ctx: MessageContext, bdm: BlockDeviceMapping,
                 connection_info: dict[str, Any]) -> str:
        data = connection_info.get("data") or {}
        device = brick.connect_volume(self.nova.cloud, self.host, connection_info)
        self._brick_event(ctx, f"connect_volume {connection_info.get('driver_volume_type')} "
                          f"{data.get('target_iqn')} → {device['path']}",
                          volume_id=bdm.volume_id, target_portal=data.get("target_portal"),
                          target_iqn=data.get("target_iqn"), target_lun=data.get("target_lun"),
                          initiator=brick.initiator_name(self.host), path=device["path"])
        return str(device["path"])

    def _disconnect(self, ctx: MessageContext, bdm: BlockDeviceMapping) -> None:
        info = bdm.connection_info or {}
        if not info:
            return
        try:
            brick.disconnect_volume(self.nova.cloud, self.host, info)
        except brick.BrickError as exc:
            log.warning("disconnect of volume %s on %s: %s", bdm.volume_id, self.host, exc)
            return
        self._brick_event(ctx, f"disconnect_volume {(info.get('data') or {}).get('target_iqn')}",
                          volume_id=bdm.volume_id)

    def _attachment(self, bdm: BlockDeviceMapping, path: str,
                    ctx: MessageContext) -> VolumeAttachment:
        info = dict(bdm.connection_info or {})
        return VolumeAttachment(
            volume_id=bdm.volume_id or "", device=bdm.device_name or "", path=path,
            serial=info.get("serial") or bdm.volume_id or "", connection_info=info,
            read_only=(info.get("data") or {}).get("access_mode") == "ro",
            request_id=ctx.request_id)

    # -- reserve

    def reserve(self, instance_uuid: str, volume_id: str, tag: str | None,
                delete_on_termination: bool) -> BlockDeviceMapping:
        bdm = self.nova.block_devices.reserve(instance_uuid, volume_id, tag=tag,
                                              delete_on_termination=delete_on_termination)
        if bdm is None:
            # a request that raced another one for the same volume
            raise InvalidVolume(f"volume {volume_id} already attached")
        return bdm

    # -- attach

    async def attach(self, ctx: MessageContext, instance: Instance,
                     bdm: BlockDeviceMapping) -> None:
        """nova's _volume_attach with do_driver_attach; undone entirely on any failure."""
        volume_api, blocks = self.nova.volume, self.nova.block_devices
        ctx = self.for_instance(ctx, instance)
        path: str | None = None
        plugged = False
        try:
            connector = self.connector(bdm.device_name)
            attachment = await volume_api.attachment_update(
                ctx, bdm.attachment_id or "", connector, bdm.volume_id or "")
            bdm = blocks.update(bdm.uuid, connection_info=attachment["connection_info"])
            path = self._connect(ctx, bdm, bdm.connection_info or {})
            volume = self._attachment(bdm, path, ctx)
            self.manager._driver_call(ctx, f"attach_volume {volume.volume_id[:8]}… at "
                                      f"{volume.device}", volume_id=volume.volume_id,
                                      device=volume.device, path=path)
            await self.manager.driver.attach_volume(instance.uuid, volume)
            plugged = True
            await volume_api.attachment_complete(ctx, bdm.attachment_id or "")
        except Exception:
            await self._undo_attach(ctx, instance, bdm, plugged, path is not None)
            raise

    async def _undo_attach(self, ctx: MessageContext, instance: Instance,
                           bdm: BlockDeviceMapping, plugged: bool, connected: bool) -> None:
        """Leave the volume as the attach found it: unplugged, logged out, available."""
        if plugged:
            try:
                await self.manager.driver.detach_volume(instance.uuid, bdm.volume_id or "",
                                                        ctx.request_id)
            except Exception:
                log.warning("driver failed to detach volume %s", bdm.volume_id, exc_info=True)
        if connected:
            self._disconnect(ctx, bdm)
        if bdm.attachment_id:
            try:
                await self.nova.volume.attachment_delete(ctx, bdm.attachment_id)
            except Exception:
                log.warning("could not delete attachment %s", bdm.attachment_id,
                            exc_info=True)
        self.nova.block_devices.destroy(bdm.uuid)

    # -- detach

    async def detach(self, ctx: MessageContext, instance: Instance,
                     bdm: BlockDeviceMapping) -> None:
        """nova's _detach_volume with the attachments API."""
        ctx = self.for_instance(ctx, instance)
        volume_id = bdm.volume_id or ""
        self.manager._driver_call(ctx, f"detach_volume {volume_id[:8]}… from {bdm.device_name}",
                                  volume_id=volume_id, device=bdm.device_name)
        try:
            await self.manager.driver.detach_volume(instance.uuid, volume_id, ctx.request_id)
        except GuestNotFound:
            # nova: "Detaching volume from unknown instance", and it goes on
            log.warning("detaching volume %s from unknown instance %s", volume_id,
                        instance.uuid)
        except Exception:
            # the guest still has the disk: the volume goes back to in-use
            await self.nova.volume.roll_detaching(ctx, volume_id)
            raise
        self._disconnect(ctx, bdm)
        if bdm.attachment_id:
            await self.nova.volume.attachment_delete(ctx, bdm.attachment_id)
        self.nova.block_devices.destroy(bdm.uuid)

    # -- delete of the server

    async def release_all(self, ctx: MessageContext, instance: Instance) -> None:
        """After the driver destroyed the guest (nova's _shutdown_instance and
        _cleanup_volumes): log out, delete each attachment, delete the volumes marked
        delete_on_termination. Failures are logged and the delete goes on, as in nova."""
        ctx = self.for_instance(ctx, instance)
        bdms = self.nova.block_devices.for_instance(instance.uuid)
        for bdm in bdms:
            self._disconnect(ctx, bdm)
            if bdm.attachment_id:
                try:
                    await self.nova.volume.attachment_delete(ctx, bdm.attachment_id)
                except Exception as exc:
                    log.warning("Ignoring exception for volume %s: %s", bdm.volume_id, exc)
        for bdm in bdms:
            if bdm.volume_id and bdm.delete_on_termination:
                try:
                    await self.nova.volume.delete(ctx, bdm.volume_id)
                except Exception as exc:
                    log.warning("Failed to delete volume: %s due to %s", bdm.volume_id, exc)
        for bdm in bdms:
            self.nova.block_devices.destroy(bdm.uuid)

    # -- a move (resize): the volumes leave one host and join another

    async def move_out(self, ctx: MessageContext, instance: Instance) -> None:
        """The guest left this host (nova's _terminate_volume_connections): os-brick logs
        out here, and each volume gets a new attachment with no connector before the
        old one (this host's) is deleted, so cinder keeps it reserved for the instance
        and stops exporting it here."""
        ctx = self.for_instance(ctx, instance)
        for bdm in self.nova.block_devices.for_instance(instance.uuid):
            self._disconnect(ctx, bdm)
            if not bdm.attachment_id or not bdm.volume_id:
                continue
            new = await self.nova.volume.attachment_create(ctx, bdm.volume_id, instance.uuid)
            old = bdm.attachment_id
            self.nova.block_devices.update(bdm.uuid, attachment_id=new["id"])
            await self.nova.volume.attachment_delete(ctx, old)

    async def move_in(self, ctx: MessageContext, instance: Instance) -> list[VolumeAttachment]:
        """The guest arrives on this host (nova's _update_volume_attachments and
        _complete_volume_attachments): this host's connector goes to cinder, which
        exports the volume here; os-brick logs in; the attachment is completed. What the
        driver needs to plug each one into the guest."""
        ctx = self.for_instance(ctx, instance)
        volume_api, blocks = self.nova.volume, self.nova.block_devices
        volumes: list[VolumeAttachment] = []
        for bdm in blocks.for_instance(instance.uuid):
            if not bdm.attachment_id or not bdm.volume_id:
                continue
            attachment = await volume_api.attachment_update(
                ctx, bdm.attachment_id, self.connector(bdm.device_name), bdm.volume_id)
            bdm = blocks.update(bdm.uuid, connection_info=attachment["connection_info"])
            path = self._connect(ctx, bdm, bdm.connection_info or {})
            await volume_api.attachment_complete(ctx, bdm.attachment_id or "")
            volumes.append(self._attachment(bdm, path, ctx))
        return volumes

    # -- restart

    async def restore(self, ctx: MessageContext, instance: Instance) -> None:
        """After a restart: a mapping whose attach was cut off is undone; a volume the
        hypervisor no longer has (the model driver forgets, qemu keeps its XML) is
        connected and plugged again."""
        ctx = self.for_instance(ctx, instance)
        for bdm in self.nova.block_devices.for_instance(instance.uuid):
            if not bdm.connection_info:
                await self._undo_attach(ctx, instance, bdm, plugged=False, connected=False)
                continue
            try:
                known = {v.get("volume_id") for v in
                         self.manager.driver.describe(instance.uuid).get("volumes", [])}
            except GuestNotFound:
                continue
            if bdm.volume_id in known:
                continue
            try:
                path = self._connect(ctx, bdm, bdm.connection_info)
                await self.manager.driver.attach_volume(instance.uuid,
                                                        self._attachment(bdm, path, ctx))
            except Exception:
                log.exception("could not plug volume %s into %s again", bdm.volume_id,
                              instance.uuid)
