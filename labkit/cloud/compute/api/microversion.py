"""Nova's microversions: which version a request asked for, and the headers that echo it.

A client asks with `OpenStack-API-Version: compute 2.x` (or the older
`X-OpenStack-Nova-API-Version: 2.x`); without either header it gets 2.1, the
behaviour of the first v2.1 API. Every change a later microversion made is
switched on by `version(request).at_least("2.NN")` in the handlers.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labkit.cloud.compute.api.errors import error_response
from labkit.cloud.errors import NotAcceptable, ServiceError
from labkit.cloud.microversion import APIVersion

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 79)
HEADER = "OpenStack-API-Version"
LEGACY_HEADER = "X-OpenStack-Nova-API-Version"
LOG = logging.getLogger(__name__)


MIN = APIVersion(*MIN_VERSION)
MAX = APIVersion(*MAX_VERSION)


def _asked(headers: dict[str, str] | object) -> str | None:
    """The version string the headers ask for: the new header wins over the legacy one."""
    new = headers.get(HEADER.lower())  # type: ignore[attr-defined]
    if new:
        # the header may name several services, comma-separated: "compute 2.47, image 2.5"
        for part in new.split(","):
            words = part.strip().split()
            if len(words) == 2 and words[0].lower() == "compute":
                return words[1]
    legacy = headers.get(LEGACY_HEADER.lower())  # type: ignore[attr-defined]
    return legacy.strip() if legacy else None


def parse_requested(asked: str | None) -> APIVersion:
    """The version a header value asks for: absent is 2.1, 'latest' the maximum.

    BadRequest when malformed; NotAcceptable (406) when outside MIN..MAX.
    """
    if asked is None:
        return MIN
    if asked.strip().lower() == "latest":
        return MAX
    wanted = APIVersion.parse(asked)
    if not MIN <= wanted <= MAX:
        raise NotAcceptable(f"Version {wanted} is not supported by the API. "
                            f"Minimum is {MIN} and maximum is {MAX}.")
    return wanted


def requested_version(request: Request) -> APIVersion:
    """The microversion this request asked for (raises BadRequest or NotAcceptable)."""
    return parse_requested(_asked(request.headers))


def version(request: Request) -> APIVersion:
    """The request's microversion, worked out once and kept in request.state."""
    found = getattr(request.state, "compute_version", None)
    if found is None:
        found = requested_version(request)
        request.state.compute_version = found
    return found


def version_headers(found: APIVersion) -> list[tuple[bytes, bytes]]:
    """The headers nova adds to every versioned response, errors included."""
    return [(HEADER.lower().encode(), f"compute {found}".encode()),
            (LEGACY_HEADER.lower().encode(), str(found).encode()),
            (b"vary", f"{HEADER}, {LEGACY_HEADER}".encode())]


class VersionHeaderMiddleware:
    """Echo the negotiated microversion on every response of the compute app, errors included.

    It also refuses a malformed (400) or unsupported (406) version before any handler
    runs, as nova does; those refusals carry no version headers, there being no version
    to echo. An unexpected exception becomes nova's 500 computeFault here, inside the
    echo, rather than in Starlette's outermost error middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        try:
            found = parse_requested(_asked(headers))
        except ServiceError as refused:
            await error_response(refused)(scope, receive, send)
            return
        scope.setdefault("state", {})["compute_version"] = found
        started = False

        async def send_with_version(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *version_headers(found)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        except Exception as exc:
            LOG.exception("unexpected error in the compute API")
            if started:
                raise
            # nova's own 500 wording, pointing at this cloud's log instead of launchpad
            fault = ServiceError("Unexpected API Error. Please report this with the embedded "
                                 f"cloud's log if possible.\n{type(exc)}")
            await error_response(fault)(scope, receive, send_with_version)
