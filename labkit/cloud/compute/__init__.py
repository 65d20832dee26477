"""Nova: the API, the conductor, the scheduler and one compute service per host."""

from labkit.cloud.compute.service import ComputeService

__all__ = ["ComputeService"]
