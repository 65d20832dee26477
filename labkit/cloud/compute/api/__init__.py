"""Nova's v2.1 API as one Starlette app, mounted at /compute.

Each module in MODULES has `routes(nova) -> list[Route]` (paths under /v2.1);
`nova` is the ComputeService whose models (flavors, keypairs, server_groups,
...) the handlers call; it is also `request.app.state.nova` in every handler.
The app echoes the microversion on every response and answers every refusal in
nova's error body.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from labkit.cloud.compute.api import (
    flavors,
    hosts,
    instance_actions,
    keypairs,
    limits,
    migrations,
    server_external_events,
    server_groups,
    servers,
    usage,
    versions,
    volume_attachments,
)
from labkit.cloud.compute.api.errors import exception_handlers
from labkit.cloud.compute.api.microversion import VersionHeaderMiddleware

# The API's parts; the lead appends servers, os-services, os-hypervisors, ...
MODULES: list[ModuleType] = [flavors, keypairs, server_groups, servers, instance_actions,
                             hosts, limits, server_external_events, volume_attachments,
                             migrations, usage]


def build_compute_app(nova: Any) -> Starlette:
    """Every module's routes behind the version echo and nova's error handlers."""
    routes: list[BaseRoute] = [
        Route("/", versions.root, methods=["GET"]),
        Route("/v2.1", versions.v21, methods=["GET"]),
        Route("/v2.1/", versions.v21, methods=["GET"]),
    ]
    for module in MODULES:
        routes.extend(module.routes(nova))
    app = Starlette(routes=routes, exception_handlers=exception_handlers(),  # type: ignore[arg-type]
                    middleware=[Middleware(VersionHeaderMiddleware)])
    # handlers reach the models as request.app.state.nova (flavors, keypairs, ...)
    app.state.nova = nova
    return app
