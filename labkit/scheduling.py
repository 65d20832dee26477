"""The scheduler playground's model: predict where a flavor lands, with nova's own rules.

Pure: no widgets, no cloud. It does what the embedded cloud does when a server
is created, with the lab's hosts as data instead of database rows:

- each host's resource provider gets the inventories nova-compute's libvirt
  driver reports to placement (`inventories_of`) and the usage of what runs on
  it (`usages_of`);
- placement's fit rule (labkit.cloud.placement.capacity) says which providers
  the request fits;
- the scheduler's filters and weighers (labkit.cloud.compute.scheduler.decide)
  choose among those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from labkit.cloud.placement.capacity import Inventory, refusals
from labkit.paths import lab_dir

if TYPE_CHECKING:
    from labkit.cloud.compute.scheduler import (
        Candidate,
        Decision,
        Flavor,
        HostState,
        RequestSpec,
        SchedulerConfig,
        ServerGroup,
    )

# The scheduler package is imported inside the functions below, not here: importing it
# loads labkit.cloud.compute, whose service imports inventories_of from this module.


def inventories_of(host: HostState) -> dict[str, Inventory]:
    """The inventories a compute host reports to placement, as nova's libvirt driver does.

    max_unit is the host's whole amount (one server can never have more than the
    host has, whatever the allocation ratio); the reserved amounts come from
    nova.conf's reserved_host_memory_mb and reserved_host_disk_mb.
    """
    return {
        "VCPU": Inventory(total=host.vcpus, reserved=0, max_unit=host.vcpus,
                          allocation_ratio=host.cpu_allocation_ratio),
        "MEMORY_MB": Inventory(total=host.memory_mb, reserved=host.reserved_host_memory_mb,
                               max_unit=host.memory_mb,
                               allocation_ratio=host.ram_allocation_ratio),
        "DISK_GB": Inventory(total=host.disk_gb, reserved=host.reserved_disk_gb,
                             max_unit=host.disk_gb, allocation_ratio=host.disk_allocation_ratio),
    }


def usages_of(host: HostState) -> dict[str, int]:
    """What the host's instances hold in placement (the reserve is in the inventory)."""
    return {"VCPU": host.vcpus_used, "MEMORY_MB": host.memory_mb_used,
            "DISK_GB": host.disk_gb_used}


def candidates_for(spec: RequestSpec, hosts: Sequence[HostState]) -> list[Candidate]:
    """Placement's answer per host's provider: does the request fit, and if not why."""
    from labkit.cloud.compute.scheduler import Candidate

    wanted = spec.resources()
    out = []
    for host in hosts:
        reasons = refusals(wanted, inventories_of(host), usages_of(host))
        out.append(Candidate(uuid=host.uuid, name=host.node, fits=not reasons, reasons=reasons))
    return out


def lab_hosts(lab: Path | str | None = None) -> list[HostState]:
    """The lab's compute hosts (data/hosts.yaml), with nothing running on them."""
    from labkit.cloud.compute.scheduler import HostState

    return HostState.from_lab(lab)


def lab_flavors(lab: Path | str | None = None) -> list[dict[str, Any]]:
    """The lab's flavors (data/flavors.yaml) as nova's flavor fields."""
    from labkit.cloud.compute.scheduler import Flavor

    path = Path(lab) if lab is not None else lab_dir()
    if path.is_dir():
        path = path / "flavors.yaml"
    entries = (yaml.safe_load(path.read_text()) or {}).get("flavors", [])
    return [vars(Flavor.from_dict(e)) for e in entries]


def predict(hosts: Sequence[HostState], flavor: Mapping[str, Any] | Flavor,
            config: SchedulerConfig | None = None,
            image_properties: Mapping[str, Any] | None = None,
            availability_zone: str | None = None,
            group: Mapping[str, Any] | ServerGroup | None = None,
            ignore_hosts: Sequence[str] = ()) -> Decision:
    """Where would nova put a server of `flavor` on these hosts? The whole decision.

    `group` is a server group ({"policy": "anti-affinity", "hosts": ["compute-2"],
    "rules": {"max_server_per_host": 1}}); its `hosts` may repeat a host to mean
    several of the group's servers there.
    """
    from labkit.cloud.compute.scheduler import (
        Flavor,
        Image,
        RequestSpec,
        SchedulerConfig,
        ServerGroup,
        decide,
    )

    flavor = flavor if isinstance(flavor, Flavor) else Flavor.from_dict(dict(flavor))
    server_group = None
    if group is not None:
        server_group = group if isinstance(group, ServerGroup) else ServerGroup.from_dict(
            dict(group))
    spec = RequestSpec(flavor=flavor, image=Image(properties=dict(image_properties or {})),
                       availability_zone=availability_zone, group=server_group,
                       ignore_hosts=list(ignore_hosts))
    return decide(spec, hosts, candidates_for(spec, hosts), config or SchedulerConfig())
