"""Placement: resource providers, their inventories, and the allocations consumers hold.

`PlacementService.backend` is the model nova's scheduler and compute hosts call in
process; the HTTP API at /placement speaks placement's real API to every client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.db import Database
from labkit.cloud.placement.handlers import anonymous, build_placement_app, root_response
from labkit.cloud.placement.models import Placement, PlacementBase

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud


class PlacementService:
    """placement-api, mounted at /placement."""

    name = "placement-api"
    path = "/placement"
    base = PlacementBase

    def __init__(self, cloud: Cloud) -> None:
        self.database = Database(cloud.settings.home / "placement.sqlite", PlacementBase)
        self.backend = Placement(self.database, cloud.ids)
        self.app = build_placement_app(self.backend)

    async def root(self, request: Request) -> Response:
        """GET /placement: the version document, no token needed."""
        return root_response(request)

    def anonymous(self, method: str, path: str) -> bool:
        return anonymous(method, path)

    async def start(self) -> None:
        """Placement has no background work."""

    async def stop(self) -> None:
        """Nothing runs in the background; state is already on disk."""

    def close(self) -> None:
        self.database.close()
