"""The embedded cloud: its components, and the one HTTP app that mounts every service."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sqlalchemy.orm import DeclarativeBase
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from labkit.cloud.bus import MessageBus
from labkit.cloud.compute import ComputeService
from labkit.cloud.compute.api.metadata import build_metadata_app, load_or_create_secret
from labkit.cloud.db import Database
from labkit.cloud.faults import Faults
from labkit.cloud.identity.backend import IdentityBackend
from labkit.cloud.identity.bootstrap import bootstrap
from labkit.cloud.identity.exceptions import TokenNotFound
from labkit.cloud.identity.handlers import anonymous_paths, build_identity_app, versions
from labkit.cloud.identity.models import IdentityBase
from labkit.cloud.identity.tokens import FernetTokens
from labkit.cloud.ids import IdSource
from labkit.cloud.image import ImageService
from labkit.cloud.inspection import build_inspection_app, never_anonymous
from labkit.cloud.middleware import TokenMiddleware, TraceMiddleware
from labkit.cloud.network import NetworkService
from labkit.cloud.placement import PlacementService
from labkit.cloud.service import Service
from labkit.cloud.settings import CloudSettings
from labkit.cloud.trace import Trace
from labkit.cloud.volume import VolumeService


class Cloud:
    """Every component of one embedded cloud, wired together. State lives under settings.home."""

    def __init__(self, settings: CloudSettings, base_url: str, boot: int = 0) -> None:
        self.settings = settings
        self.base_url = base_url
        self.started_at = time.time()
        home = settings.home
        self.ids = IdSource(settings.deterministic, settings.seed, boot)
        self.trace = Trace(home / "labkit.sqlite")
        self.identity_db = Database(home / "keystone.sqlite", IdentityBase)
        self.identity = IdentityBackend(
            self.identity_db, FernetTokens(home / "fernet-keys", self.ids), self.ids,
            bcrypt_rounds=settings.bcrypt_rounds, token_ttl=settings.token_ttl)
        served = ("/identity", ImageService.path, PlacementService.path, NetworkService.path,
                  VolumeService.path, ComputeService.path)
        bootstrap(self.identity, settings.lab, base_url, served)
        self.bus = MessageBus(self.trace)
        # the troubleshooting lab's faults: made first, as the services' hooks ask it
        self.faults = Faults(self)
        # order matters: nova talks to glance, placement, neutron and cinder
        self.image = ImageService(self)
        self.placement = PlacementService(self)
        self.network = NetworkService(self)
        # neutron's model reaches the faults (a host where ports cannot bind) through its env
        self.network.neutron.env.cloud = self  # type: ignore[attr-defined]
        self.volume = VolumeService(self)
        self.compute = ComputeService(self)
        # what nova-api-metadata and the metadata proxies share (neutron's
        # metadata_proxy_shared_secret): the proxies sign each guest's instance id with it
        self.metadata_secret = load_or_create_secret(home)
        self.mounted: dict[str, Service] = {
            "image": self.image, "placement": self.placement, "network": self.network,
            "volume": self.volume, "compute": self.compute}
        self.services = {"keystone": "/identity", "labkit-inspector": "/labkit/v1",
                         "nova-api-metadata": "/metadata"}
        self.services.update({s.name: s.path for s in self.mounted.values()})

    def databases(self) -> dict[str, tuple[Database, type[DeclarativeBase]]]:
        """Each service's database and its tables, for the inspection API."""
        found: dict[str, tuple[Database, type[DeclarativeBase]]] = {
            "identity": (self.identity_db, IdentityBase)}
        found.update({key: (s.database, s.base) for key, s in self.mounted.items()})
        return found

    async def start(self) -> None:
        for service in self.mounted.values():
            await service.start()
        # a stopped compute or a dead agent does not survive a restart: break them again
        await self.faults.reapply()

    async def stop(self) -> None:
        for service in reversed(self.mounted.values()):
            await service.stop()

    def protected(self, app: Starlette, service: str, anonymous) -> TokenMiddleware:  # type: ignore[no-untyped-def]
        """A service's app behind the one token middleware every service mounts."""
        return TokenMiddleware(app, service=service, validate=self._validator(service),
                               trace=self.trace, anonymous=anonymous)

    def _validator(self, service: str) -> Callable[[str], object]:
        """How `service`'s auth_token validates a token: with keystone, unless the
        service-password fault keeps the service from authenticating itself, when
        keystonemiddleware refuses every token (a 401, whoever asks)."""
        def validate(token: str) -> object:
            if self.faults.token_refused(service):
                raise TokenNotFound(f"{service} could not authenticate to keystone to "
                                    "validate the token (its service password is wrong)")
            return self.identity.validate(token)
        return validate

    def close(self) -> None:
        for service in self.mounted.values():
            service.close()
        self.identity_db.close()
        self.trace.close()


def build_app(cloud: Cloud, on_stop: Callable[[], None] | None = None) -> TraceMiddleware:
    """The whole cloud as one ASGI app. On shutdown it writes what is pending and closes."""
    async def root(request: Request) -> Response:
        return JSONResponse({"labkit": "the embedded cloud", "services": cloud.services})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await cloud.start()
        yield
        await cloud.stop()
        # uvicorn re-raises SIGTERM once it has shut down, so no code after serve() runs
        cloud.close()
        if on_stop:
            on_stop()

    identity = build_identity_app(cloud.identity)
    app = Starlette(lifespan=lifespan, routes=[
        Route("/", root),
        # without this, Starlette's Mount would redirect /identity to /identity/
        Route("/identity", versions, methods=["GET"]),
        Mount("/identity", app=cloud.protected(identity, "keystone", anonymous_paths(identity))),
        *service_routes(cloud),
        # nova-api-metadata: no token, each request signed by the metadata proxy instead
        Mount("/metadata", app=build_metadata_app(cloud.compute, cloud.metadata_secret)),
        Mount("/labkit/v1", app=cloud.protected(build_inspection_app(cloud), "labkit-inspector",
                                                never_anonymous)),
    ])
    traced = TraceMiddleware(app, cloud.trace, cloud.ids)
    # the services' own clients (labkit.cloud.service_client) call the cloud through it
    cloud.app = traced  # type: ignore[attr-defined]
    return traced


def service_routes(cloud: Cloud) -> list[Route | Mount]:
    """Each mounted service: its root (the version document, with no redirect), then its API."""
    routes: list[Route | Mount] = []
    for service in cloud.mounted.values():
        routes.append(Route(service.path, service.root, methods=["GET"]))
        routes.append(Mount(service.path, app=cloud.protected(service.app, service.name,
                                                               service.anonymous)))
    return routes


def next_boot(home: Path) -> int:
    """0 on a fresh state folder, one more at each start after."""
    path = home / "boot"
    boot = int(path.read_text()) + 1 if path.exists() else 0
    path.write_text(str(boot))
    return boot
