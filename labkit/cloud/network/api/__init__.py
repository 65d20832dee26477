"""Neutron's v2.0 API as one Starlette app, mounted at /networking.

`build_network_app(neutron)` answers every route of urls.py over the model (`Neutron`,
models.py); `versions` is the version document the cloud serves at /networking itself;
`anonymous(method, path)` says what needs no token (only that document, as in neutron's
paste pipeline, where only the version composite skips keystone's auth).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from labkit.cloud.network.api.responses import (
    METHOD_NOT_ALLOWED,
    error_response,
    exception_handlers,
    versions,
)
from labkit.cloud.network.api.urls import routes

__all__ = ["anonymous", "build_network_app", "versions"]


class PecanQuirks:
    """Two habits of neutron's pecan app the routes alone would not have: `/v2.0/networks.json`
    is `/v2.0/networks` (old clients send it), and HEAD is refused with 405 (Starlette would
    answer it wherever GET is answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "HEAD":
                await error_response(405, "HTTPMethodNotAllowed", METHOD_NOT_ALLOWED)(
                    scope, receive, send)
                return
            if scope["path"].endswith(".json"):
                scope = {**scope, "path": scope["path"][:-len(".json")]}
        await self.app(scope, receive, send)


def build_network_app(neutron: Any) -> ASGIApp:
    """Neutron's routes over `neutron`, every refusal in neutron's error body."""
    app = Starlette(routes=routes(neutron), exception_handlers=exception_handlers())
    app.router.redirect_slashes = False
    app.state.neutron = neutron
    return PecanQuirks(app)


def anonymous(method: str, path: str) -> bool:
    """Only the version document (GET /networking/) is served without a token."""
    return path.strip("/") == ""
