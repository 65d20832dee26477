"""The driver interface nova-compute talks to, as nova.virt.driver.ComputeDriver.

The compute manager never asks which driver it has. `model` runs no process (nova's
fake driver plays this role); `qemu` boots real guests (labkit/cloud/virt/qemu.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class GuestNotFound(LookupError):
    """The hypervisor has no such guest."""


class SpawnFailed(Exception):
    """The hypervisor could not start the guest; nova reschedules to an alternate host."""


@dataclass
class GuestSpec:
    """What the driver needs to build one guest."""

    uuid: str
    name: str  # instance-0000000a
    vcpus: int
    memory_mb: int
    root_gb: int
    image: dict[str, Any]  # glance's image: id, name, disk_format, properties (kernel_id ...)
    image_path: str | None = None  # the image's bytes on disk, when the driver needs them
    user_data: str | None = None
    key_data: str | None = None
    network_info: list[dict[str, Any]] = field(default_factory=list)
    hostname: str = ""
    display_name: str = ""
    project_id: str = ""
    user_id: str = ""
    # the flavor as nova keeps a copy: name, memory_mb, vcpus, root_gb, ephemeral_gb, swap,
    # flavorid, extra_specs
    flavor: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None  # the build's request, so the driver's steps join its trace
    created_at: float = 0.0


@dataclass
class VolumeAttachment:
    """One cinder volume as the driver plugs it (nova's DriverVolumeBlockDevice).

    `path` is the host-side device os-brick connected (labkit.cloud.compute.brick);
    the guest sees the disk as `device` with `serial` (the volume id) as its serial."""

    volume_id: str
    device: str  # /dev/vdb: the name nova reserved on the compute host
    path: str  # the host's block device for the volume (a symlink to the target's file)
    serial: str  # what the guest reads as the disk's serial: the volume id
    connection_info: dict[str, Any] = field(default_factory=dict)  # cinder's, as nova keeps it
    read_only: bool = False
    request_id: str | None = None  # the attach's request, so the driver's steps join its trace


class VolumeAttachFailed(Exception):
    """The hypervisor could not plug (or unplug) the disk; nova rolls the attach back."""


class Driver(Protocol):
    name: str  # "model" or "qemu", shown in notebooks

    async def spawn(self, guest: GuestSpec) -> None: ...

    async def destroy(self, uuid: str) -> None: ...

    async def power_off(self, uuid: str) -> None: ...

    async def power_on(self, uuid: str) -> None: ...

    async def reboot(self, uuid: str, hard: bool) -> None: ...

    def power_state(self, uuid: str) -> int: ...

    def adopt(self, uuid: str, power_state: int) -> None:
        """After a restart of the cloud: take charge of a guest the records say is here."""

    def console_output(self, uuid: str, lines: int | None = None) -> str:
        """The guest's serial console log, the last `lines` lines (all when None)."""

    async def network_changed(self, uuid: str, network_info: list[dict[str, Any]]) -> None:
        """The instance's ports changed (a floating IP, say): apply what the host must."""

    def describe(self, uuid: str) -> dict[str, Any]:
        """What the hypervisor holds for this guest, for the inspection API."""

    async def attach_volume(self, uuid: str, volume: VolumeAttachment) -> None:
        """Plug the volume into the guest (hot-plug when it runs; at its next start if not)."""

    async def detach_volume(self, uuid: str, volume_id: str,
                            request_id: str | None = None) -> None:
        """Unplug the volume; on return the guest no longer uses the host's device."""

    async def migrate_disk_and_power_off(self, uuid: str, dest_host: str,
                                         flavor: dict[str, Any],
                                         request_id: str | None = None) -> dict[str, Any]:
        """Source host: stop the guest (clean shutdown) and copy its disk to dest_host's
        instance dir. Keep the source's own files as `<uuid>_resize` so a revert can
        restore them. Returns disk_info (what finish_migration needs, JSON-able)."""

    async def finish_migration(self, guest: GuestSpec, disk_info: dict[str, Any],
                               volumes: list[VolumeAttachment], power_on: bool) -> None:
        """Dest host: define the guest from the migrated disk with guest.vcpus/memory_mb/
        root_gb (grow the root disk when root_gb grew), its volumes and
        guest.network_info; start it when power_on."""

    async def confirm_migration(self, uuid: str, request_id: str | None = None) -> None:
        """Source host: delete the kept `<uuid>_resize` files (the old guest is already
        off)."""

    async def finish_revert_migration(self, guest: GuestSpec, volumes: list[VolumeAttachment],
                                      power_on: bool) -> None:
        """Source host: restore `<uuid>_resize` and start the guest with the old flavor."""

    async def shutdown(self) -> None:
        """The compute service is stopping."""
