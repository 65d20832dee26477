"""Nova's RAM, CPU and disk weighers, with every number they produce kept for the reader.

As in nova (nova/weights.py): each weigher gives every host a raw value, the
values are normalised to 0..1 over the hosts being weighed, and a host's
weight is the sum of multiplier × normalised value. The three weighers here
declare minval = 0 as nova's do, so normalising divides by the largest value
(free RAM 1000, 3000, 5000 -> 0.2, 0.6, 1.0), and a negative raw value (an
overcommitted host) counts as 0. A positive multiplier spreads servers over
the hosts, a negative one stacks them.

Nova enables all of its weighers by default; we model these three, the ones
about capacity. With only one host left, nova does not weigh at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from labkit.cloud.compute.scheduler.config import SchedulerConfig
from labkit.cloud.compute.scheduler.host_state import HostState


def normalize(values: Sequence[float], minval: float | None = None,
              maxval: float | None = None) -> list[float]:
    """Scale values to 0..1 between min and max (or the given bounds); all equal -> 0."""
    if not values:
        return []
    high = float(max(values) if maxval is None else maxval)
    low = float(min(values) if minval is None else minval)
    if high == low:
        return [0.0] * len(values)
    return [(v - low) / (high - low) for v in values]


@dataclass(frozen=True)
class Weigher:
    """One weigher: what it measures, and which multiplier scales it."""

    name: str
    measures: str  # for the reader: what the raw value is
    unit: str
    raw: Callable[[HostState], float]
    multiplier_option: str  # the SchedulerConfig field (nova's option of the same name)
    minval: float | None = 0.0
    maxval: float | None = None

    def clamp(self, value: float) -> float:
        """Keep a raw value within [minval, maxval], as nova does before normalising."""
        if self.minval is not None:
            value = max(value, self.minval)
        if self.maxval is not None:
            value = min(value, self.maxval)
        return value

    def multiplier(self, config: SchedulerConfig) -> float:
        return float(getattr(config, self.multiplier_option))


WEIGHERS: tuple[Weigher, ...] = (
    Weigher("RAMWeigher", "free RAM (free_ram_mb)", "MB", lambda h: h.free_ram_mb,
            "ram_weight_multiplier"),
    Weigher("CPUWeigher", "free vCPUs (vcpus × cpu_allocation_ratio − vcpus_used)", "vCPUs",
            lambda h: h.vcpus_free, "cpu_weight_multiplier"),
    Weigher("DiskWeigher", "free disk (free_disk_mb)", "MB", lambda h: h.free_disk_mb,
            "disk_weight_multiplier"),
)


@dataclass
class WeightTerm:
    """One weigher's part of one host's weight."""

    weigher: str
    raw: float
    normalized: float
    multiplier: float
    contribution: float


@dataclass
class WeightRow:
    """One host's weight, term by term."""

    host: str
    terms: list[WeightTerm]
    total: float


def weigh(hosts: Sequence[HostState], config: SchedulerConfig,
          weighers: Sequence[Weigher] = WEIGHERS) -> list[WeightRow]:
    """Every host's weight, in the order of `hosts` (sorting is the caller's)."""
    rows = [WeightRow(h.host, [], 0.0) for h in hosts]
    skip = len(hosts) <= 1  # nova: a lone host is not weighed; its weight stays 0
    for weigher in weighers:
        raws = [float(weigher.raw(h)) for h in hosts]
        clamped = [weigher.clamp(r) for r in raws]
        normalized = ([0.0] * len(hosts) if skip
                      else normalize(clamped, weigher.minval, weigher.maxval))
        multiplier = weigher.multiplier(config)
        for row, raw, norm in zip(rows, raws, normalized, strict=True):
            contribution = multiplier * norm
            row.terms.append(WeightTerm(weigher.name, raw, norm, multiplier, contribution))
            row.total += contribution
    return rows
