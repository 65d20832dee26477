"""What a boot asks of the scheduler: nova's RequestSpec, cut to what the filters read."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Flavor:
    """A flavor as the scheduler sees it (nova's field names, not the API's)."""

    name: str
    vcpus: int
    memory_mb: int
    root_gb: int = 0
    ephemeral_gb: int = 0
    swap: int = 0  # MB
    flavorid: str = ""
    extra_specs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Flavor:
        """From nova's names, the API's (ram, disk, id) or data/flavors.yaml's."""
        return cls(
            name=data["name"],
            vcpus=int(data["vcpus"]),
            memory_mb=int(data.get("memory_mb", data.get("ram", 0))),
            root_gb=int(data.get("root_gb", data.get("disk", 0))),
            ephemeral_gb=int(data.get("ephemeral_gb", data.get(
                "OS-FLV-EXT-DATA:ephemeral", data.get("ephemeral", 0))) or 0),
            swap=int(data.get("swap") or 0),
            flavorid=str(data.get("flavorid", data.get("id", ""))),
            extra_specs=dict(data.get("extra_specs") or {}),
        )


@dataclass
class Image:
    """The image's id and properties (hw_architecture, img_hv_type, ...)."""

    id: str = ""
    properties: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Image:
        data = data or {}
        return cls(id=str(data.get("id", "")), properties=dict(data.get("properties") or {}))


@dataclass
class ServerGroup:
    """The server group the new server joins, if any.

    `members` are the uuids of the group's servers and `hosts` the hosts they
    are on, as nova's InstanceGroup gives them to the scheduler. Without
    members, the anti-affinity filter counts a server per mention of a host in
    `hosts` (["compute-2", "compute-2"]: two of the group's servers there).
    """

    policy: str  # "affinity" or "anti-affinity" (soft policies are weighers, not filters)
    rules: dict[str, Any] = field(default_factory=dict)  # e.g. {"max_server_per_host": 2}
    hosts: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    uuid: str = ""
    name: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerGroup:
        policy = data.get("policy") or (data.get("policies") or [""])[0]
        return cls(policy=policy, rules=dict(data.get("rules") or {}),
                   hosts=list(data.get("hosts") or []), members=list(data.get("members") or []),
                   uuid=str(data.get("uuid", "")), name=str(data.get("name", "")))


@dataclass
class RequestSpec:
    """One boot request, as nova-conductor hands it to the scheduler."""

    flavor: Flavor
    instance_uuid: str = ""
    project_id: str = ""
    image: Image = field(default_factory=Image)
    availability_zone: str | None = None
    group: ServerGroup | None = None
    scheduler_hints: dict[str, Any] = field(default_factory=dict)
    ignore_hosts: list[str] = field(default_factory=list)
    num_instances: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.flavor, dict):
            self.flavor = Flavor.from_dict(self.flavor)
        if isinstance(self.image, dict):
            self.image = Image.from_dict(self.image)
        if isinstance(self.group, dict):
            self.group = ServerGroup.from_dict(self.group)

    def resources(self) -> dict[str, int]:
        """What placement is asked for, as nova's resources_from_request_spec computes it.

        DISK_GB is root + ephemeral + swap (MB, rounded up to whole GB), and is
        left out when it comes to 0 (nova does not ask for 0 of anything).
        """
        f = self.flavor
        resources = {"VCPU": f.vcpus, "MEMORY_MB": f.memory_mb}
        disk = f.root_gb + f.ephemeral_gb + math.ceil(f.swap / 1024)
        if disk:
            resources["DISK_GB"] = disk
        return resources

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestSpec:
        """The fields the scheduler reads; nova's request spec carries more (the
        requested networks, for one), which are left aside."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
