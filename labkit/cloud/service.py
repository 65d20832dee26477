"""What the cloud needs from each service it mounts (glance, placement, nova, ...)."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import DeclarativeBase
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from labkit.cloud.db import Database


class Service(Protocol):
    """One OpenStack service inside the embedded cloud.

    `name` is how the trace names it ("glance-api"); `path` is where it is mounted
    ("/image"), and `root` answers that exact path (its version document) without
    the redirect a Mount would send. `anonymous(method, path)` says what needs no token.
    """

    name: str
    path: str
    app: ASGIApp
    database: Database
    base: type[DeclarativeBase]

    async def root(self, request: Request) -> Response: ...

    def anonymous(self, method: str, path: str) -> bool: ...

    async def start(self) -> None:
        """Start background work (components, timers) once the event loop runs."""

    async def stop(self) -> None:
        """Stop background work; state is already on disk."""

    def close(self) -> None: ...
