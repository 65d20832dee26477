"""A cold resize on the qemu driver, as nova's libvirt driver does a cold migration.

nova's resize moves the guest to a host with room for the new flavor (or keeps it on
its host, with allow_resize_to_same_host) in four driver calls:

- migrate_disk_and_power_off, on the source: stop the guest, rename its folder to
  `<uuid>_resize` (kept for a revert) and copy the root disk (and kernel, ramdisk) into
  the dest host's instances folder;
- finish_migration, on the dest: point the overlay at the dest's own cached base
  (qemu_img.py), grow it for a bigger root_gb, write libvirt.xml with the new flavor,
  volumes and ports, and start the guest with the new flavor;
- confirm_migration, on the source: delete `<uuid>_resize`;
- finish_revert_migration, on the source: rename `<uuid>_resize` back and start the
  old guest with the old flavor.

`ColdResize` holds these steps and their helpers; QemuDriver (qemu.py) inherits them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labkit.cloud.virt.driver import GuestSpec, VolumeAttachment
    from labkit.cloud.virt.imagecache import ImageCache
    from labkit.cloud.virt.libvirt_xml import GuestPaths
    from labkit.cloud.virt.qemu import _Guest


class ResizeFailed(RuntimeError):
    """A cold migration step could not be done (nova's ResizeError, MigrationError)."""


class ColdResize:
    """The cold-migration steps of one host's qemu driver (mixed into QemuDriver)."""

    # what QemuDriver provides
    host: str
    instances_dir: Path
    image_cache: ImageCache
    virt_type: str
    guests: dict[str, _Guest]

    if TYPE_CHECKING:
        def _trace(self, request_id: str | None, summary: str, **detail: Any) -> None: ...
        def _lock(self, uuid: str) -> asyncio.Lock: ...
        def _proxy_command(self, uuid: str, project_id: str) -> str: ...
        def _save(self, g: _Guest) -> None: ...
        def _load(self, uuid: str) -> _Guest | None: ...
        def _alive(self, g: _Guest) -> bool: ...
        async def _fetch(self, image_id: str, role: str,
                         cache_log: list[dict[str, Any]]) -> Path: ...
        async def _start(self, g: _Guest, rid: str | None = None) -> None: ...
        async def _stop(self, g: _Guest, grace: float = ...) -> None: ...
        async def network_changed(self, uuid: str, network_info: list[dict[str, Any]],
                                  request_id: str | None = None) -> None: ...

    def _host_instances_dir(self, host: str) -> Path:
        """Another lab host's instances path: hosts/<host>/instances next to ours (nova
        copies to the dest's instances_path over ssh; the lab's hosts share this disk)."""
        if host == self.host:
            return self.instances_dir
        return self.instances_dir.parent.parent / host / self.instances_dir.name

    def resize_folder(self, uuid: str) -> Path:
        """Where the source keeps the guest's files until confirm or revert (nova's
        `<instances_path>/<uuid>_resize`)."""
        return self.instances_dir / f"{uuid}_resize"

    async def _stop_any(self, uuid: str) -> None:
        """Stop whatever qemu this host runs for `uuid` (known, or named by its folder)."""
        from labkit.cloud.virt.qemu import _owns, _recorded_pids

        g = self.guests.pop(uuid, None) or self._load(uuid)
        if g is None:
            return
        if g.pid is None:
            g.pid = next((p for p in _recorded_pids(g.paths.folder)
                          if _owns(p, g.paths.folder)), None)
        await self._stop(g)

    @staticmethod
    def _drop_socket_dir(g: _Guest) -> None:
        sock_dir = g.paths.qmp_socket.parent
        if sock_dir.name.startswith("labkit-qmp-"):
            shutil.rmtree(sock_dir, ignore_errors=True)

    async def migrate_disk_and_power_off(self, uuid: str, dest_host: str,
                                         flavor: dict[str, Any],
                                         request_id: str | None = None) -> dict[str, Any]:
        """Source host: power the guest off, move its folder aside to `<uuid>_resize`
        and copy the root disk (a qcow2 overlay; its base image stays in the cache),
        kernel and ramdisk into dest_host's instances folder. A same-host resize
        copies into a fresh `<uuid>` next to `<uuid>_resize`. Returns nova's disk_info.
        The guest has no ACPI daemon, so the "clean" shutdown is QMP quit, as power_off."""
        from labkit.cloud.virt import qemu_img
        from labkit.cloud.virt.driver import GuestNotFound
        from labkit.cloud.virt.qemu import _owns, _recorded_pids

        rid = request_id
        g = self.guests.get(uuid) or self._load(uuid)
        if g is None:
            raise GuestNotFound(f"no guest {uuid} on the qemu hypervisor of {self.host}")
        async with self._lock(uuid):
            folder, resize = self.instances_dir / uuid, self.resize_folder(uuid)
            dest_folder = self._host_instances_dir(dest_host) / uuid
            disk = await qemu_img.info(g.paths.disk)
            root_gb = int(flavor.get("root_gb") or 0)
            if root_gb and root_gb * qemu_img.GiB < disk.virtual_size:
                raise ResizeFailed("Resize error: Unable to resize disk down.")
            if dest_folder != folder and any(_owns(p, dest_folder)
                                              for p in _recorded_pids(dest_folder)):
                raise ResizeFailed(f"a qemu already runs for {uuid} on {dest_host}")
            was_running = g.pid is not None and self._alive(g)
            await self._stop(g)
            self._save(g)
            self._drop_socket_dir(g)
            self._trace(rid, f"power off {g.name} for the move to {dest_host}",
                        was_running=was_running)
            # leftovers of an earlier move that was never confirmed, or a failed copy
            for stale in (resize, dest_folder if dest_folder != folder else None):
                if stale is not None and stale.exists():
                    await asyncio.to_thread(shutil.rmtree, stale, True)
            os.rename(folder, resize)
            self.guests.pop(uuid, None)
            self._trace(rid, f"keep {g.name}'s files as {resize.name} for a revert",
                        source=str(folder), kept=str(resize))
            copied: list[str] = []
            try:
                dest_folder.mkdir(parents=True)
                for name in ("disk", "kernel", "ramdisk"):
                    if (resize / name).exists():
                        await asyncio.to_thread(shutil.copyfile, resize / name,
                                                dest_folder / name)
                        copied.append(name)
            except Exception:
                # nova's _cleanup_remote_migration: the dest's copy goes, the folder comes back
                await asyncio.to_thread(shutil.rmtree, dest_folder, True)
                os.rename(resize, folder)
                self.guests[uuid] = g
                raise
            self._trace(rid, f"copy {', '.join(copied)} of {g.name} to "
                             f"{dest_host}:{dest_folder}", files=copied,
                        source=str(resize), dest=str(dest_folder), bytes=disk.disk_size)
        return {"source_host": self.host, "dest_host": dest_host,
                "source_folder": str(resize), "folder": str(dest_folder),
                "was_running": was_running, "files": copied,
                "image_cache": [dict(e) for e in g.image_cache],
                "disks": [{"name": "disk", "path": str(dest_folder / "disk"),
                           "type": disk.format, "virt_disk_size": disk.virtual_size,
                           "disk_size": disk.disk_size, "backing_file": disk.backing_file,
                           "backing_format": disk.backing_format}]}

    async def _migrated_base(self, rid: str | None, guest: GuestSpec, entry: dict[str, Any],
                             source_host: str, cache_log: list[dict[str, Any]]) -> Path:
        """The overlay's base image in THIS host's cache: downloaded from glance on a
        miss; when glance cannot deliver it, copied from the source host's cache (nova's
        fallback_from_host)."""
        image_id = guest.image["id"]
        try:
            return await self._fetch(image_id, "machine image", cache_log)
        except Exception as exc:
            source = Path(entry["backing_file"])
            if not source.exists():
                raise ResizeFailed(f"the base image {image_id} of {guest.name} is neither in "
                                   f"glance ({exc}) nor on {source_host}") from exc
            dest = self.image_cache.path(image_id)
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(f"{dest.name}.part.{os.getpid()}")
            await asyncio.to_thread(shutil.copyfile, source, part)
            os.replace(part, dest)
            self._trace(rid, f"image {image_id[:8]} not downloadable ({exc}): copy the base "
                             f"from {source_host}'s cache", source=str(source), dest=str(dest))
            cache_log.append({"image_id": image_id, "role": "machine image",
                              "path": str(dest), "hit": False, "copied_from": source_host})
            return dest

    async def _define(self, guest: GuestSpec, paths: GuestPaths, volumes: list[VolumeAttachment],
                      cache_log: list[dict[str, Any]], rid: str | None) -> _Guest:
        """Write libvirt.xml for `guest` (its flavor, its volumes on root ports 1, 2 ...,
        its ports) and derive the qemu command from it: the guest as this host defines it,
        not yet started."""
        from labkit.cloud.virt.libvirt_xml import (
            PCIE_ROOT_PORTS,
            direct_io_file,
            direct_io_supported,
            domain_xml,
            volume_disk,
        )
        from labkit.cloud.virt.qemu import _Guest
        from labkit.cloud.virt.qemu_command import UserNet, qemu_command, volume_node_names

        disks, records = [], []
        for port, volume in enumerate(volumes, start=1):
            if not os.path.exists(volume.path):
                raise ResizeFailed(f"the host has no device {volume.path} for volume "
                                   f"{volume.volume_id} (is the volume connected?)")
            if port > PCIE_ROOT_PORTS:
                raise ResizeFailed(f"{guest.name} has more volumes than PCIe root ports")
            disk = volume_disk(path=volume.path, target=volume.device, serial=volume.serial,
                               pci_bus=port, read_only=volume.read_only,
                               direct_io=await asyncio.to_thread(direct_io_file, volume.path))
            disks.append(disk)
            records.append({"volume_id": volume.volume_id, "device": f"/dev/{disk.target}",
                            "serial": volume.serial, "path": volume.path,
                            "read_only": volume.read_only, "qemu_device": disk.alias,
                            "root_port": f"pci.{port}",
                            "node_names": list(volume_node_names(volume.serial))})
        cache = "none" if direct_io_supported(paths.folder) else "writethrough"
        xml = domain_xml(guest, virt_type=self.virt_type, paths=paths,
                         network_info=guest.network_info, disk_cache=cache, volumes=disks)
        tmp = paths.xml.with_name(paths.xml.name + ".tmp")
        tmp.write_text(xml)
        os.replace(tmp, paths.xml)
        user_net = (UserNet.from_network_info(
            guest.network_info, self._proxy_command(guest.uuid, guest.project_id),
            guest.hostname or None) if guest.network_info else None)
        command = qemu_command(xml, user_net=user_net, qmp_socket=paths.qmp_socket,
                               pidfile=paths.pidfile, console_log=paths.console_log)
        g = _Guest(uuid=guest.uuid, name=guest.name, paths=paths, command=command,
                   virt_type=self.virt_type,
                   netdev=user_net.netdev_id if user_net is not None else None,
                   image_cache=cache_log, volumes=records)
        self.guests[guest.uuid] = g
        self._save(g)
        self._trace(rid, f"write libvirt.xml for {guest.name}: {guest.memory_mb} MiB, "
                         f"{guest.vcpus} vCPU(s), {len(records)} volume(s)",
                    path=str(paths.xml), flavor=(guest.flavor or {}).get("name"),
                    volumes=[r["volume_id"] for r in records])
        return g

    async def finish_migration(self, guest: GuestSpec, disk_info: dict[str, Any],
                               volumes: list[VolumeAttachment], power_on: bool) -> None:
        """Dest host: point the migrated overlay at this host's copy of its base image,
        grow it when the new flavor's root_gb is bigger, define the guest with the new
        memory and vCPUs, its volumes (connected on this host) and its ports, and start
        it when power_on. Floating IPs become this host's forwards."""
        from labkit.cloud.virt import qemu_img
        from labkit.cloud.virt.libvirt_xml import GuestPaths

        rid, uuid = guest.request_id, guest.uuid
        async with self._lock(uuid):
            old = self.guests.get(uuid)
            if old is not None and self._alive(old):
                raise ResizeFailed(f"guest {uuid} already runs on {self.host}")
            folder = self.instances_dir / uuid
            if Path(disk_info.get("folder", "")) != folder or not (folder / "disk").exists():
                raise ResizeFailed(f"the migrated disk of {guest.name} is not in {folder} "
                                   f"(disk_info names {disk_info.get('folder')})")
            paths = GuestPaths.for_folder(folder, kernel=(folder / "kernel").exists(),
                                          ramdisk=(folder / "ramdisk").exists())
            entry = (disk_info.get("disks") or [{}])[0]
            cache_log: list[dict[str, Any]] = []
            if entry.get("backing_file"):
                base = await self._migrated_base(rid, guest, entry,
                                                 disk_info.get("source_host", "?"), cache_log)
                if str(base) != entry["backing_file"]:
                    fmt = entry.get("backing_format") or (
                        "qcow2" if guest.image.get("disk_format") == "qcow2" else "raw")
                    cmd = await qemu_img.rebase_unsafe(paths.disk, base, fmt)
                    self._trace(rid, f"point the root disk at {self.host}'s cached base "
                                     f"{base.name[:12]}", command=cmd)
            size = (await qemu_img.info(paths.disk)).virtual_size
            if guest.root_gb and guest.root_gb * qemu_img.GiB > size:
                cmd = await qemu_img.grow(paths.disk, guest.root_gb)
                self._trace(rid, f"grow the root disk from {size / qemu_img.GiB:g} to "
                                 f"{guest.root_gb} GiB", command=cmd)
            g = await self._define(guest, paths, volumes, cache_log, rid)
            if power_on:
                await self._start(g, rid)
        await self.network_changed(uuid, guest.network_info, request_id=rid)

    async def confirm_migration(self, uuid: str, request_id: str | None = None) -> None:
        """Source host: delete `<uuid>_resize` (nova's _cleanup_resize). The guest that
        runs (on this host after a same-host resize, or on the dest) is not touched."""
        resize = self.resize_folder(uuid)
        if not resize.exists():
            self._trace(request_id, f"nothing kept for {uuid[:8]}: {resize.name} is gone",
                        folder=str(resize))
            return
        async with self._lock(uuid):
            await asyncio.to_thread(shutil.rmtree, resize, True)
        self._trace(request_id, f"delete {resize.name}: the resize is confirmed",
                    folder=str(resize))

    async def finish_revert_migration(self, guest: GuestSpec, volumes: list[VolumeAttachment],
                                      power_on: bool) -> None:
        """Source host: `<uuid>_resize` becomes `<uuid>` again (whatever a failed or
        same-host dest left there goes first), the guest is defined with the old flavor
        and its volumes and started when power_on."""
        from labkit.cloud.virt.libvirt_xml import GuestPaths

        rid, uuid = guest.request_id, guest.uuid
        async with self._lock(uuid):
            folder, resize = self.instances_dir / uuid, self.resize_folder(uuid)
            await self._stop_any(uuid)
            if resize.exists():
                if folder.exists():
                    await asyncio.to_thread(shutil.rmtree, folder, True)
                os.rename(resize, folder)
                self._trace(rid, f"restore {resize.name} as {folder.name}", folder=str(folder))
            elif not (folder / "disk").exists():
                raise ResizeFailed(f"nothing to revert {guest.name} to: neither {resize} nor "
                                   f"{folder / 'disk'} exists")
            old = self._load(uuid)
            paths = GuestPaths.for_folder(folder, kernel=(folder / "kernel").exists(),
                                          ramdisk=(folder / "ramdisk").exists())
            g = await self._define(guest, paths, volumes,
                                   list(old.image_cache) if old is not None else [], rid)
            if power_on:
                await self._start(g, rid)
        await self.network_changed(uuid, guest.network_info, request_id=rid)
