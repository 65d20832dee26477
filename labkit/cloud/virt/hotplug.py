"""Plugging a volume into a running guest over QMP, as libvirt does for nova.

Attach (libvirt's qemuDomainAttachDiskGeneric): blockdev-add a file node on the host's
device, blockdev-add a raw node over it, device_add a virtio-blk-pci on a free
pcie-root-port with the volume id as its serial. Detach (qemuDomainDetachDeviceLive):
device_del, which only *asks* the guest (a PCIe attention button press; Linux's pciehp
waits about 5 s before it lets go), then wait for the DEVICE_DELETED event naming our
device id (an earlier one names the virtio backend, /machine/peripheral/<id>/virtio-backend),
then blockdev-del both nodes. A guest that never lets go leaves the device in qemu:
the detach fails and may be tried again, as nova retries it.

QMP is blocking socket I/O, so every call runs in a thread; one connection lasts the
whole operation, because qemu sends DEVICE_DELETED only to monitors connected then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit.cloud.virt.driver import VolumeAttachFailed
from labkit.cloud.virt.libvirt_xml import DomainDisk
from labkit.cloud.virt.qemu_command import volume_blockdevs, volume_device
from labkit.cloud.virt.qmp import QMP, QMPError, QMPTimeout

DETACH_TIMEOUT = 30.0  # seconds for the guest to release a device (nova waits 20 s per try)
UNPLUG_PENDING = "already in the process of unplug"  # qemu's answer to a repeated device_del

Trace = Callable[[str, dict[str, Any]], None]


class Hotplug:
    """One guest's monitor, for plugging and unplugging volumes. `trace(summary, detail)`
    is called on the event loop after each step."""

    def __init__(self, qmp_socket: Path | str, trace: Trace, *,
                 detach_timeout: float = DETACH_TIMEOUT) -> None:
        self.qmp_socket = qmp_socket
        self.trace = trace
        self.detach_timeout = detach_timeout

    async def _call(self, q: QMP, cmd: str, **args: Any) -> Any:
        return await asyncio.to_thread(q.execute, cmd, **args)

    async def plug(self, disk: DomainDisk) -> None:
        """blockdev-add, blockdev-add, device_add; on failure, undo what was added."""
        nodes, device = volume_blockdevs(disk), volume_device(disk)
        q = QMP(self.qmp_socket)
        added: list[str] = []
        try:
            await asyncio.to_thread(q.connect)
            for node in nodes:
                await self._call(q, "blockdev-add", **node)
                added.append(node["node-name"])
                self.trace(f"blockdev-add {node['node-name']} ({node['driver']})", node)
            await self._call(q, "device_add", **device)
            self.trace(f"device_add {device['id']} (virtio-blk-pci on {device['bus']}, "
                       f"serial {disk.serial})", device)
        except QMPError as exc:
            for name in reversed(added):
                with contextlib.suppress(QMPError):  # the error below says what failed first
                    await self._call(q, "blockdev-del", **{"node-name": name})
            raise VolumeAttachFailed(
                f"hot-plug of volume {disk.serial} as {disk.target} failed: {exc}") from exc
        finally:
            q.close()

    async def unplug(self, disk: DomainDisk) -> None:
        """device_del, DEVICE_DELETED, blockdev-del. Safe to repeat after a failed try: a
        device already gone or an unplug already pending is waited for, not an error."""
        device_id = volume_device(disk)["id"]
        q = QMP(self.qmp_socket)
        try:
            await asyncio.to_thread(q.connect)
            peripherals = await self._call(q, "qom-list", path="/machine/peripheral")
            if any(p.get("name") == device_id for p in peripherals):
                try:
                    await self._call(q, "device_del", id=device_id)
                    self.trace(f"device_del {device_id}", {"id": device_id})
                except QMPError as exc:
                    if UNPLUG_PENDING not in str(exc):
                        raise
                    self.trace(f"device_del {device_id}: an unplug is already pending",
                               {"id": device_id})
                try:
                    event = await asyncio.to_thread(q.wait_event, "DEVICE_DELETED",
                                                    self.detach_timeout, device=device_id)
                except QMPTimeout as exc:
                    raise VolumeAttachFailed(
                        f"the guest did not release {disk.target} (volume {disk.serial}) "
                        f"within {self.detach_timeout:g} s; the unplug stays pending, try "
                        f"the detach again") from exc
                self.trace("DEVICE_DELETED", event.get("data", {}))
            names = [node["node-name"] for node in volume_blockdevs(disk)]
            present = {n.get("node-name") for n in
                       await self._call(q, "query-named-block-nodes", flat=True)}
            for name in reversed(names):  # the format node first, then its file
                if name in present:
                    await self._call(q, "blockdev-del", **{"node-name": name})
                    self.trace(f"blockdev-del {name}", {"node-name": name})
        except QMPError as exc:
            raise VolumeAttachFailed(
                f"unplugging volume {disk.serial} ({disk.target}) failed: {exc}") from exc
        finally:
            q.close()
