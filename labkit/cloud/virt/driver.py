"""The driver interface nova-compute talks to, as nova.virt.driver.ComputeDriver.

The compute manager never asks which driver it has. `model` runs no process (nova's
fake driver plays this role); the qemu driver (a later issue) boots real guests.
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
    image: dict[str, Any]
    image_path: str | None = None  # the image's bytes on disk, when the driver needs them
    user_data: str | None = None
    key_data: str | None = None
    network_info: list[dict[str, Any]] = field(default_factory=list)


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
