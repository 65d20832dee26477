"""Neutron: the networking service, mounted at /networking (API under /networking/v2.0).

Rows in `<home>/neutron.sqlite`. The lab's networks (data/networks.yaml) are created at
start when missing; the agents (agents.py) run as components of the cloud once it
starts. Nova reaches neutron over HTTP as its service user, as a real nova does; the
agents call the model (`NetworkService.neutron`) directly, standing in for their RPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.db import Database
from labkit.cloud.labfiles import lab_hosts
from labkit.cloud.network.common import NetContext
from labkit.cloud.network.lab import read as read_lab
from labkit.cloud.network.models import NetworkBase, Neutron

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud

__all__ = ["NetContext", "NetworkService", "Neutron"]


class NetworkService:
    """neutron-server, its database and its agents, as one Service of the embedded cloud."""

    name = "neutron-server"
    path = "/networking"
    base = NetworkBase

    def __init__(self, cloud: Cloud) -> None:
        # the API and the agents are imported here: both import this package's modules
        from labkit.cloud.network.agents import AgentRuntime
        from labkit.cloud.network.api import anonymous, build_network_app, versions

        settings = cloud.settings
        self.hosts: list[dict[str, Any]] = lab_hosts(settings.lab)
        self.database = Database(settings.home / "neutron.sqlite", NetworkBase)
        self.neutron = Neutron(self.database, cloud.ids, cloud.trace, settings.lab, self.hosts)
        # the lab shortens neutron's heartbeats as it does nova's (report_interval 30 s and
        # agent_down_time 75 s in neutron): an agent is dead after as long as a nova service
        # is down, and never sooner than neutron's rule of two missed reports
        self.neutron.env.agent_down_time = max(settings.service_down_time,
                                               2 * settings.report_interval)
        self.neutron.load_lab(self._lab_projects(cloud))
        self.app = build_network_app(self.neutron)
        self._versions = versions
        self._anonymous = anonymous
        self.agents = AgentRuntime(cloud, self)

    @staticmethod
    def _lab_projects(cloud: Cloud) -> dict[str, str]:
        """Keystone's ids of the projects networks.yaml names."""
        spec = read_lab(cloud.settings.lab)
        names = {n.get("project", "admin") for n in spec.get("networks", [])}
        names |= {r.get("project", "admin") for r in spec.get("routers", [])}
        found: dict[str, str] = {}
        for name in names:
            projects = cloud.identity.list("project", {"name": name})
            if projects:
                found[name] = projects[0].id
        return found

    async def root(self, request: Request) -> Response:
        return await self._versions(request)

    def anonymous(self, method: str, path: str) -> bool:
        return self._anonymous(method, path)

    async def start(self) -> None:
        await self.agents.start()

    async def stop(self) -> None:
        await self.agents.stop()

    def close(self) -> None:
        self.database.close()
