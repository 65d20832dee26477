"""The scheduler's settings: nova.conf's [filter_scheduler] and [scheduler] options we model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# nova's [filter_scheduler] enabled_filters default today (since Xena, 24.0.0) is
#   ComputeFilter, ComputeCapabilitiesFilter, ImagePropertiesFilter,
#   ServerGroupAntiAffinityFilter, ServerGroupAffinityFilter
# and availability zones are enforced before that, by a placement pre-filter on host
# aggregates (the AvailabilityZoneFilter was deprecated in Xena and removed in
# 2023.2). The lab's placement has no aggregates, so we keep the AvailabilityZoneFilter,
# first, where the Wallaby default had it; the rest is today's list in today's order.
DEFAULT_FILTERS = (
    "AvailabilityZoneFilter",
    "ComputeFilter",
    "ComputeCapabilitiesFilter",
    "ImagePropertiesFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
)


@dataclass
class SchedulerConfig:
    """Which filters run, in order, how much each weigher counts, how many alternates."""

    enabled_filters: list[str] = field(default_factory=lambda: list(DEFAULT_FILTERS))
    ram_weight_multiplier: float = 1.0
    cpu_weight_multiplier: float = 1.0
    disk_weight_multiplier: float = 1.0
    max_attempts: int = 3  # [scheduler] max_attempts: the chosen host + max_attempts-1 alternates
    host_subset_size: int = 1  # nova picks at random among the best this many; see decide()

    @property
    def num_alternates(self) -> int:
        return max(self.max_attempts - 1, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchedulerConfig:
        return cls(**data)
