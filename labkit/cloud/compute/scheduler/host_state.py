"""What the scheduler knows about one compute host: nova's HostState, cut to what we use.

Nova's scheduler builds a HostState per compute node from the node's row (what
its resource tracker last reported) and the service's row (enabled, up). Its
filters and weighers read only this object, so a HostState is all a reader
needs to predict them.
"""

from __future__ import annotations

import math
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from labkit.paths import lab_dir

DEFAULT_ZONE = "nova"  # nova's [DEFAULT] default_availability_zone
DEFAULT_HYPERVISOR_VERSION = 8002002  # qemu 8.2.2, written as libvirt reports versions
# Resource provider uuids for hosts built from the lab file alone (the playground,
# tests). The running cloud gives its providers uuids of its own.
_LAB_NAMESPACE = uuidlib.UUID("0b5e9a52-6c1e-4f0e-9d7a-6c61626b6974")


@dataclass
class HostState:
    """One compute node as the scheduler sees it.

    Usage fields count what instances use. Nova's compute node row also counts
    the reserved memory in memory_mb_used; here it stays apart in
    reserved_host_memory_mb, as placement keeps it (in the inventory, not the
    usage). The free_* properties add it back, so they read as nova's do.
    """

    host: str
    node: str = ""
    uuid: str = ""  # the node's resource provider in placement
    availability_zone: str = DEFAULT_ZONE
    service_enabled: bool = True
    service_up: bool = True
    disabled_reason: str | None = None
    vcpus: int = 0
    vcpus_used: int = 0
    memory_mb: int = 0
    memory_mb_used: int = 0
    disk_gb: int = 0
    disk_gb_used: int = 0
    cpu_allocation_ratio: float = 4.0  # nova's initial_cpu_allocation_ratio
    ram_allocation_ratio: float = 1.0  # initial_ram_allocation_ratio
    disk_allocation_ratio: float = 1.0  # initial_disk_allocation_ratio
    reserved_host_memory_mb: int = 512  # nova's default
    reserved_host_disk_mb: int = 0
    hypervisor_type: str = "QEMU"
    hypervisor_version: int = DEFAULT_HYPERVISOR_VERSION
    cpu_arch: str = "x86_64"
    # (architecture, hypervisor type, vm mode), lower case, as the libvirt driver reports them
    supported_instances: list[tuple[str, str, str]] = field(default_factory=list)
    instances: set[str] = field(default_factory=set)  # uuids of the instances on the host
    num_instances: int = 0

    def __post_init__(self) -> None:
        self.node = self.node or self.host
        if not self.supported_instances:
            self.supported_instances = [(self.cpu_arch.lower(), self.hypervisor_type.lower(),
                                         "hvm")]
        self.supported_instances = [tuple(s) for s in self.supported_instances]
        self.instances = set(self.instances)
        self.num_instances = max(self.num_instances, len(self.instances))

    # -- what nova's weighers read --------------------------------------------------------------

    @property
    def vcpus_total(self) -> int:
        """Nova's name for the host's vCPU count."""
        return self.vcpus

    @property
    def total_usable_ram_mb(self) -> int:
        """Nova's name for the host's memory, reserved part included."""
        return self.memory_mb

    @property
    def free_ram_mb(self) -> int:
        """memory_mb minus reserved and used, not overcommitted (nova: can be negative)."""
        return self.memory_mb - self.reserved_host_memory_mb - self.memory_mb_used

    @property
    def free_disk_mb(self) -> int:
        """(disk_gb minus reserved and used) in MB, not overcommitted."""
        return (self.disk_gb - self.disk_gb_used) * 1024 - self.reserved_host_disk_mb

    @property
    def vcpus_free(self) -> float:
        """What the CPUWeigher weighs: vcpus_total × cpu_allocation_ratio − vcpus_used."""
        return self.vcpus * self.cpu_allocation_ratio - self.vcpus_used

    @property
    def cpu_info(self) -> dict[str, Any]:
        """The part of nova's cpu_info JSON we model, so `capabilities:cpu_info:arch` works."""
        return {"arch": self.cpu_arch}

    @property
    def reserved_disk_gb(self) -> int:
        """reserved_host_disk_mb as placement's DISK_GB reserved (rounded up, as nova does)."""
        return math.ceil(self.reserved_host_disk_mb / 1024)

    # -- building and copying -------------------------------------------------------------------

    def copy(self, **changes: Any) -> HostState:
        """A copy with some fields changed (the instance set is copied, not shared)."""
        return replace(self, instances=set(self.instances), **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["supported_instances"] = [list(s) for s in self.supported_instances]
        data["instances"] = sorted(self.instances)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_lab_entry(cls, entry: dict[str, Any]) -> HostState:
        """A host of data/hosts.yaml (a role: compute entry), with nothing used."""
        name = entry["name"]
        return cls(
            host=name,
            node=entry.get("hypervisor_hostname", name),
            uuid=entry.get("uuid") or str(uuidlib.uuid5(_LAB_NAMESPACE, name)),
            availability_zone=entry.get("availability_zone", DEFAULT_ZONE),
            vcpus=int(entry.get("vcpus", 0)),
            memory_mb=int(entry.get("memory_mb", 0)),
            disk_gb=int(entry.get("disk_gb", 0)),
            cpu_allocation_ratio=float(entry.get("cpu_allocation_ratio", 4.0)),
            ram_allocation_ratio=float(entry.get("ram_allocation_ratio", 1.0)),
            disk_allocation_ratio=float(entry.get("disk_allocation_ratio", 1.0)),
            reserved_host_memory_mb=int(entry.get("reserved_host_memory_mb", 512)),
            reserved_host_disk_mb=int(entry.get("reserved_host_disk_mb", 0)),
            hypervisor_type=entry.get("hypervisor_type", "QEMU"),
            hypervisor_version=int(entry.get("hypervisor_version", DEFAULT_HYPERVISOR_VERSION)),
            cpu_arch=entry.get("cpu_arch", "x86_64"),
            supported_instances=[tuple(s) for s in entry.get("supported_instances", [])],
        )

    @classmethod
    def from_lab(cls, lab: Path | str | None = None) -> list[HostState]:
        """The lab's compute hosts (hosts.yaml under `lab`, default data/), nothing used."""
        path = Path(lab) if lab is not None else lab_dir()
        if path.is_dir():
            path = path / "hosts.yaml"
        entries = (yaml.safe_load(path.read_text()) or {}).get("hosts", [])
        return [cls.from_lab_entry(e) for e in entries if e.get("role") == "compute"]
