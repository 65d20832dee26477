"""Cinder's v3 API as one Starlette app, mounted at /volume.

Resources live under /v3/{project_id}/... (and, from 3.67, /v3/...): `ProjectInURL`
takes the project id out of the path (remembering it for links) so each module's
routes are written once. Every answer carries the negotiated microversion and every
refusal cinder's fault body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from labkit.cloud.errors import MethodNotAllowed, NotFound, ServiceError
from labkit.cloud.volume.api import attachments, quotas, snapshots, types, versions, volumes
from labkit.cloud.volume.api.microversion import CinderVersionMiddleware
from labkit.cloud.volume.errors import fault_response

if TYPE_CHECKING:
    from labkit.cloud.volume import VolumeService

# the first segment after /v3 when a URL names no project (3.67)
RESOURCES = {"volumes", "attachments", "snapshots", "types", "os-quota-sets", "limits",
             "os-services", "os-availability-zone", "extensions", "backups", "messages"}


class ProjectInURL:
    """/v3/<project_id>/volumes → /v3/volumes, the project id kept in the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            relative = scope["path"][len(root):]
            parts = relative.lstrip("/").split("/", 2)
            if len(parts) >= 3 and parts[0] == "v3" and parts[1] not in RESOURCES:
                scope = {**scope, "path": f"{root}/v3/{parts[2]}",
                         "cinder.url_project": parts[1]}
        await self.app(scope, receive, send)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return fault_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return fault_response(MethodNotAllowed("The method is not allowed for this "
                                               "resource."))
    return fault_response(NotFound("The resource could not be found."))


def build_volume_app(svc: VolumeService) -> ASGIApp:
    routes: list[BaseRoute] = [
        Route("/", versions.root, methods=["GET"]),
        Route("/v3", versions.v3, methods=["GET"]),
        Route("/v3/", versions.v3, methods=["GET"]),
    ]
    for module in (volumes, attachments, snapshots, types, quotas):
        routes.extend(module.routes())
    app = Starlette(routes=routes, middleware=[Middleware(CinderVersionMiddleware)],
                    exception_handlers={ServiceError: _service_error,  # type: ignore[dict-item]
                                        HTTPException: _http_error})
    app.state.cinder = svc
    return ProjectInURL(app)
