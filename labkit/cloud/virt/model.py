"""The model driver: guests that exist only as records, like nova's fake driver.

It keeps what a hypervisor would report (power state, the guest's spec) and takes
no time at the fast pace; at the teach pace each operation takes a moment, so the
steps can be watched. `fail_next_spawns` makes the next spawns fail, which is how
tests and demos see a build rescheduled to an alternate host.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from labkit.cloud.compute.instances import NOSTATE, RUNNING, SHUTDOWN
from labkit.cloud.virt.driver import GuestNotFound, GuestSpec, SpawnFailed, VolumeAttachment
from labkit.cloud.virt.imagecache import ImageCache


class ModelDriver:
    name = "model"

    def __init__(self, host: str, step_seconds: float = 0.0,
                 image_cache: ImageCache | None = None) -> None:
        self.host = host
        self.step_seconds = step_seconds
        # the host's image cache: a spawn fetches the image from glance as nova's
        # libvirt driver does (once per host), so a failing download fails the spawn
        self.image_cache = image_cache
        self.guests: dict[str, dict[str, Any]] = {}
        self.fail_next_spawns = 0

    async def _step(self) -> None:
        if self.step_seconds:
            await asyncio.sleep(self.step_seconds)

    async def spawn(self, guest: GuestSpec) -> None:
        await self._step()
        image_id = (guest.image or {}).get("id")
        if self.image_cache is not None and image_id:
            try:
                await self.image_cache.fetch(image_id)
            except Exception as exc:
                raise SpawnFailed(f"fetching image {image_id} for {guest.name} on {self.host} "
                                  f"failed: {exc}") from exc
        if self.fail_next_spawns:
            self.fail_next_spawns -= 1
            raise SpawnFailed(f"the model hypervisor on {self.host} was told to fail "
                              f"this spawn of {guest.name}")
        self.guests[guest.uuid] = {"spec": asdict(guest), "power_state": RUNNING}

    async def destroy(self, uuid: str) -> None:
        await self._step()
        self.guests.pop(uuid, None)

    def _guest(self, uuid: str) -> dict[str, Any]:
        if uuid not in self.guests:
            raise GuestNotFound(f"no guest {uuid} on the model hypervisor of {self.host}")
        return self.guests[uuid]

    async def power_off(self, uuid: str) -> None:
        await self._step()
        self._guest(uuid)["power_state"] = SHUTDOWN

    async def power_on(self, uuid: str) -> None:
        await self._step()
        self._guest(uuid)["power_state"] = RUNNING

    async def reboot(self, uuid: str, hard: bool) -> None:
        await self._step()
        self._guest(uuid)["power_state"] = RUNNING

    def power_state(self, uuid: str) -> int:
        return self.guests.get(uuid, {}).get("power_state", NOSTATE)

    def adopt(self, uuid: str, power_state: int) -> None:
        """After a restart of the cloud: the records say the guest exists, so it does."""
        self.guests.setdefault(uuid, {"spec": {}, "power_state": power_state})

    def console_output(self, uuid: str, lines: int | None = None) -> str:
        """No guest runs, so no console: say so in the console's place, as nova's fake
        driver answers with fixed lines."""
        self._guest(uuid)
        text = [f"The model driver on {self.host} runs no guest, so there is no console.",
                "Boot on the qemu driver to see a real one (LABKIT_VIRT=qemu)."]
        if lines == 0:
            return ""
        return "\n".join(text[-lines:] if lines else text) + "\n"

    async def network_changed(self, uuid: str, network_info: list[dict[str, Any]]) -> None:
        """Nothing to forward: no guest listens."""

    async def attach_volume(self, uuid: str, volume: VolumeAttachment) -> None:
        """The same API flow as on qemu, with no disk: the guest's record lists the volume."""
        await self._step()
        volumes = self._guest(uuid).setdefault("volumes", {})
        volumes[volume.volume_id] = {"device": volume.device, "serial": volume.serial,
                                     "path": volume.path}

    async def detach_volume(self, uuid: str, volume_id: str,
                            request_id: str | None = None) -> None:
        await self._step()
        self._guest(uuid).setdefault("volumes", {}).pop(volume_id, None)

    def describe(self, uuid: str) -> dict[str, Any]:
        guest = self._guest(uuid)
        volumes = [{"volume_id": vid, **v} for vid, v in guest.get("volumes", {}).items()]
        return {"driver": self.name, "host": self.host, "power_state": guest["power_state"],
                "virt_type": None, "domain_xml": None, "command": None, "pid": None,
                "forwards": [], "image_cache": [], "volumes": volumes,
                "note": "the model driver keeps records only: no domain XML, no process"}

    # -- a cold migration (resize): the guest's record plays the part of its disk

    async def migrate_disk_and_power_off(self, uuid: str, dest_host: str,
                                         flavor: dict[str, Any],
                                         request_id: str | None = None) -> dict[str, Any]:
        """Power off; keep the record as `<uuid>_resize` for a revert (a same-host
        resize's dest then makes a fresh `<uuid>`)."""
        await self._step()
        guest = self._guest(uuid)
        guest["power_state"] = SHUTDOWN
        self.guests[f"{uuid}_resize"] = self.guests.pop(uuid)
        return {"driver": self.name, "source_host": self.host, "dest_host": dest_host,
                "disk": f"hosts/{self.host}/instances/{uuid}_resize (a record only)"}

    async def finish_migration(self, guest: GuestSpec, disk_info: dict[str, Any],
                               volumes: list[VolumeAttachment], power_on: bool) -> None:
        await self._step()
        self.guests[guest.uuid] = {
            "spec": asdict(guest), "power_state": RUNNING if power_on else SHUTDOWN,
            "volumes": {v.volume_id: {"device": v.device, "serial": v.serial, "path": v.path}
                        for v in volumes}}

    async def confirm_migration(self, uuid: str, request_id: str | None = None) -> None:
        await self._step()
        self.guests.pop(f"{uuid}_resize", None)

    async def finish_revert_migration(self, guest: GuestSpec, volumes: list[VolumeAttachment],
                                      power_on: bool) -> None:
        """Bring `<uuid>_resize` back (after a restart the record is gone: make it anew)."""
        await self._step()
        self.guests.pop(f"{guest.uuid}_resize", None)
        self.guests[guest.uuid] = {
            "spec": asdict(guest), "power_state": RUNNING if power_on else SHUTDOWN,
            "volumes": {v.volume_id: {"device": v.device, "serial": v.serial, "path": v.path}
                        for v in volumes}}

    async def shutdown(self) -> None:
        """Records only: nothing runs."""
