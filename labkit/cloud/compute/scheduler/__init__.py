"""nova-scheduler's logic as pure code: host states, filters, weighers, one decision.

Nothing here does I/O. The cloud's scheduler component builds the HostStates
and asks placement for candidates, then calls `decide`; the scheduler
playground (labkit.scheduling) calls the same `decide`, so what a reader
predicts is what the cloud does.
"""

from labkit.cloud.compute.scheduler.config import DEFAULT_FILTERS, SchedulerConfig
from labkit.cloud.compute.scheduler.decide import (
    Candidate,
    CandidateRow,
    Decision,
    FilterStage,
    HostVerdict,
    RankEntry,
    decide,
)
from labkit.cloud.compute.scheduler.filters import (
    FILTERS,
    HISTORICAL_FILTERS,
    HostFilter,
    Verdict,
    get_filter,
)
from labkit.cloud.compute.scheduler.host_state import HostState
from labkit.cloud.compute.scheduler.request import Flavor, Image, RequestSpec, ServerGroup
from labkit.cloud.compute.scheduler.weighers import WEIGHERS, WeightRow, WeightTerm, normalize

__all__ = [
    "DEFAULT_FILTERS", "FILTERS", "HISTORICAL_FILTERS", "WEIGHERS", "Candidate", "CandidateRow",
    "Decision", "FilterStage", "Flavor", "HostFilter", "HostState", "HostVerdict", "Image",
    "RankEntry", "RequestSpec", "SchedulerConfig", "ServerGroup", "Verdict", "WeightRow",
    "WeightTerm", "decide", "get_filter", "normalize",
]
