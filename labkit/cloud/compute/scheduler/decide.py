"""One scheduling decision, step by step, with every step kept: nova's select_destinations.

1. Placement: only hosts whose resource provider placement found room on go on.
2. ignore_hosts, then each enabled filter in order, over the hosts still in.
3. The weighers weigh the survivors.
4. The heaviest host is chosen; the next ones are its alternates (for reschedules).

The result, a `Decision`, records why each host left or stayed, so a diagram,
a table, the inspection API and a notebook can all show the same reasoning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit.cloud.compute.scheduler.config import SchedulerConfig
from labkit.cloud.compute.scheduler.filters import get_filter
from labkit.cloud.compute.scheduler.host_state import HostState
from labkit.cloud.compute.scheduler.request import RequestSpec
from labkit.cloud.compute.scheduler.weighers import WeightRow, WeightTerm, weigh

# nova's NoValidHost message ("No valid host was found. %(reason)s") with the reasons
# the scheduler gives: none when placement returned no candidates, this one when the
# filters left no host.
NO_VALID_HOST = "No valid host was found. {}"
NOT_ENOUGH_HOSTS = "There are not enough hosts available."
NOT_A_CANDIDATE = "placement returned no allocation candidate on this host's provider"


@dataclass
class Candidate:
    """What placement said about one resource provider: does the request fit, and if not why."""

    uuid: str
    name: str
    fits: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class CandidateRow:
    """The placement stage's verdict on one host the scheduler knows."""

    host: str
    uuid: str
    fits: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class HostVerdict:
    host: str
    passed: bool
    reason: str


@dataclass
class FilterStage:
    """One filter's pass over the hosts still in.

    `ran` is False when no host was left to ask: nova stops filtering there.
    """

    name: str
    description: str
    verdicts: list[HostVerdict] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    historical: bool = False
    ran: bool = True

    @property
    def removed(self) -> list[HostVerdict]:
        return [v for v in self.verdicts if not v.passed]


@dataclass
class RankEntry:
    host: str
    weight: float


@dataclass
class Decision:
    """Everything the scheduler did for one request, JSON-safe through to_dict()."""

    spec: dict[str, Any]  # flavor name, resources, zone, group, image properties, ...
    hosts: list[str]  # the hosts the scheduler knew, in the order given
    candidates: list[CandidateRow]
    filters: list[FilterStage]
    weights: list[WeightRow]
    ranking: list[RankEntry]
    chosen: str | None
    alternates: list[str]
    no_valid_host_reason: str | None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def survivors(self) -> list[str]:
        """The hosts that passed every stage (the ones weighed)."""
        return [r.host for r in self.ranking]

    def removed_by(self) -> dict[str, str]:
        """host -> the stage and reason that removed it (hosts still in are absent)."""
        out = {c.host: "placement: " + "; ".join(c.reasons) for c in self.candidates
               if not c.fits}
        for stage in self.filters:
            for v in stage.removed:
                out[v.host] = f"{stage.name}: {v.reason}"
        return out

    def explain(self) -> str:
        """The decision in one or two plain sentences."""
        if self.chosen is None:
            why = "; ".join(f"{h}, by {r}" for h, r in self.removed_by().items())
            return f"{self.no_valid_host_reason.strip()} Removed: {why}."
        top = self.ranking[0]
        if len(self.ranking) == 1:
            text = f"{self.chosen} is chosen: the only host left after the filters"
        else:
            text = f"{self.chosen} is chosen, with the highest weight ({top.weight:.3f})"
        if self.alternates:
            text += "; alternates: " + ", ".join(self.alternates)
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            spec=dict(data["spec"]),
            hosts=list(data["hosts"]),
            candidates=[CandidateRow(**c) for c in data["candidates"]],
            filters=[FilterStage(**{**s, "verdicts": [HostVerdict(**v) for v in s["verdicts"]]})
                     for s in data["filters"]],
            weights=[WeightRow(w["host"], [WeightTerm(**t) for t in w["terms"]], w["total"])
                     for w in data["weights"]],
            ranking=[RankEntry(**r) for r in data["ranking"]],
            chosen=data["chosen"],
            alternates=list(data["alternates"]),
            no_valid_host_reason=data["no_valid_host_reason"],
            config=dict(data.get("config") or {}),
        )


def as_candidate(item: Any) -> Candidate:
    """A Candidate from a Candidate, a placement verdict object or a dict."""
    if isinstance(item, Candidate):
        return item
    get = item.get if isinstance(item, Mapping) else lambda k, d=None: getattr(item, k, d)
    return Candidate(uuid=str(get("uuid", "") or ""), name=str(get("name", "") or ""),
                     fits=bool(get("fits", False)), reasons=list(get("reasons", []) or []))


def _placement_stage(hosts: Sequence[HostState],
                     candidates: Iterable[Any]) -> list[CandidateRow]:
    by_uuid: dict[str, Candidate] = {}
    by_name: dict[str, Candidate] = {}
    for item in candidates:
        c = as_candidate(item)
        if c.uuid:
            by_uuid[c.uuid] = c
        if c.name:
            by_name[c.name] = c
    rows = []
    for h in hosts:
        c = by_uuid.get(h.uuid) or by_name.get(h.node) or by_name.get(h.host)
        if c is None:
            rows.append(CandidateRow(h.host, h.uuid, False, [NOT_A_CANDIDATE]))
        else:
            rows.append(CandidateRow(h.host, h.uuid, c.fits, [] if c.fits else list(c.reasons)))
    return rows


def _spec_summary(spec: RequestSpec) -> dict[str, Any]:
    group = spec.group
    return {
        "instance_uuid": spec.instance_uuid,
        "project_id": spec.project_id,
        "flavor": spec.flavor.name,
        "resources": spec.resources(),
        "extra_specs": dict(spec.flavor.extra_specs),
        "image_properties": dict(spec.image.properties),
        "availability_zone": spec.availability_zone,
        "group": None if group is None else {
            "policy": group.policy, "rules": dict(group.rules), "hosts": list(group.hosts)},
        "ignore_hosts": list(spec.ignore_hosts),
    }


def decide(spec: RequestSpec, hosts: Sequence[HostState], candidates: Iterable[Any],
           config: SchedulerConfig | None = None) -> Decision:
    """Choose a host for `spec` among `hosts`, as nova's scheduler does, keeping every step.

    `hosts` are the compute nodes the scheduler knows; `candidates` what
    placement said per resource provider (uuid, name, fits, reasons: a
    `Candidate`, an object with those attributes, or a dict).
    """
    config = config or SchedulerConfig()
    rows = _placement_stage(hosts, candidates)
    fitting = {r.host for r in rows if r.fits}
    alive = [h for h in hosts if h.host in fitting]

    stages: list[FilterStage] = []
    if spec.ignore_hosts:
        # nova drops ignored hosts before any filter runs (host_manager.get_filtered_hosts)
        stage = FilterStage("ignore_hosts", "hosts the request (or a reschedule) rules out")
        for h in alive:
            out = h.host in spec.ignore_hosts
            stage.verdicts.append(HostVerdict(
                h.host, not out,
                f"{h.host} is in the request's ignore_hosts" if out
                else f"{h.host} is not in ignore_hosts ({', '.join(spec.ignore_hosts)})"))
        alive = [h for h in alive if h.host not in spec.ignore_hosts]
        stage.survivors = [h.host for h in alive]
        stages.append(stage)

    for name in config.enabled_filters:
        host_filter = get_filter(name)
        stage = FilterStage(host_filter.name, host_filter.description,
                            historical=host_filter.historical, ran=bool(alive))
        kept = []
        for h in alive:
            verdict = host_filter.host_passes(h, spec)
            stage.verdicts.append(HostVerdict(h.host, verdict.passed, verdict.reason))
            if verdict.passed:
                kept.append(h)
        alive = kept
        stage.survivors = [h.host for h in alive]
        stages.append(stage)

    weights = weigh(alive, config)
    # Heaviest first; equal weights in host-name order. Nova sorts by weight alone, may
    # shuffle hosts of equal best weight, then picks at random among the best
    # host_subset_size (1 by default): we always take the first, so the lab is reproducible.
    ranked = sorted(weights, key=lambda row: (-row.total, row.host))
    ranking = [RankEntry(r.host, r.total) for r in ranked]
    chosen = ranking[0].host if ranking else None
    alternates = [r.host for r in ranking[1:1 + config.num_alternates]]
    if chosen is not None:
        reason = None
    elif not fitting:
        reason = NO_VALID_HOST.format("")
    else:
        reason = NO_VALID_HOST.format(NOT_ENOUGH_HOSTS)
    return Decision(spec=_spec_summary(spec), hosts=[h.host for h in hosts], candidates=rows,
                    filters=stages, weights=weights, ranking=ranking, chosen=chosen,
                    alternates=alternates, no_valid_host_reason=reason,
                    config=config.to_dict())
