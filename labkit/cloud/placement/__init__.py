"""Placeholder: being written."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import DeclarativeBase
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labkit.cloud.db import Database

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud


class _Base(DeclarativeBase):
    pass


class PlacementService:
    name = "placement"
    path = "/placement"
    base = _Base

    def __init__(self, cloud: Cloud) -> None:
        self.app = Starlette()
        self.database = Database(cloud.settings.home / "placement.sqlite", _Base)

    async def root(self, request: Request) -> Response:
        return JSONResponse({})

    def anonymous(self, method: str, path: str) -> bool:
        return False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def close(self) -> None:
        self.database.close()
