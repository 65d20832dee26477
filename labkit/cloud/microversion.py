"""Microversions as nova and cinder handle them: a version ("2.47", "3.71") compared as
numbers, and the middleware that negotiates it and echoes it on every answer."""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labkit.cloud.errors import BadRequest, ServiceError

LOG = logging.getLogger(__name__)

_FORMAT = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


@dataclass(frozen=True, order=True)
class APIVersion:
    """One microversion, ordered as numbers (2.10 > 2.9)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> APIVersion:
        """'2.47' as a version; BadRequest in the services' words when it is not
        MajorNum.MinorNum."""
        match = _FORMAT.match(text.strip())
        if not match:
            raise BadRequest(f"API Version String {text} is of invalid format. "
                             "Must be of format MajorNum.MinorNum.")
        return cls(int(match.group(1)), int(match.group(2)))

    def at_least(self, other: str | APIVersion) -> bool:
        """Does this request see the change made in microversion `other`?"""
        if isinstance(other, str):
            other = _parsed(other)
        return self >= other

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> APIVersion:
    """The versions handlers compare against are a few literals: parse each once."""
    return APIVersion.parse(text)


class VersionMiddleware:
    """What nova's and cinder's APIs do before any handler runs, and around each answer.

    The version a request asks for is worked out from its headers (`negotiate`; a
    malformed or unsupported one is refused in the service's error body, with no version
    to echo), kept in `scope["state"][state_key]`, and echoed on every response, errors
    included. An unexpected exception becomes the service's own 500 (`unexpected`) inside
    the echo, rather than in Starlette's outermost error middleware.
    """

    state_key: str
    service: str  # for the log: "compute", "volume"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def negotiate(self, headers: dict[str, str]) -> APIVersion:
        """The version the (lower-cased) headers ask for; BadRequest or NotAcceptable."""
        raise NotImplementedError

    def echo(self, found: APIVersion) -> list[tuple[bytes, bytes]]:
        """The headers every versioned response carries."""
        raise NotImplementedError

    def refusal(self, error: ServiceError) -> Response:
        """The error in the service's own body."""
        raise NotImplementedError

    def unexpected(self, exc: Exception) -> ServiceError:
        """The 500 the service answers when a handler fails unexpectedly."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        try:
            found = self.negotiate(headers)
        except ServiceError as refused:
            await self.refusal(refused)(scope, receive, send)
            return
        scope.setdefault("state", {})[self.state_key] = found
        started = False

        async def send_with_version(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *self.echo(found)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        except Exception as exc:
            LOG.exception("unexpected error in the %s API", self.service)
            if started:
                raise
            await self.refusal(self.unexpected(exc))(scope, receive, send_with_version)
