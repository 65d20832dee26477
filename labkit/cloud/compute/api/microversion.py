"""Nova's microversions: which version a request asked for, and the headers that echo it.

A client asks with `OpenStack-API-Version: compute 2.x` (or the older
`X-OpenStack-Nova-API-Version: 2.x`); without either header it gets 2.1, the
behaviour of the first v2.1 API. Every change a later microversion made is
switched on by `version(request).at_least("2.NN")` in the handlers.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.compute.api.errors import error_response
from labkit.cloud.errors import NotAcceptable, ServiceError
from labkit.cloud.microversion import APIVersion, VersionMiddleware

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 79)
HEADER = "OpenStack-API-Version"
LEGACY_HEADER = "X-OpenStack-Nova-API-Version"


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


class VersionHeaderMiddleware(VersionMiddleware):
    """Nova's version negotiation and echo (labkit.cloud.microversion.VersionMiddleware):
    400 or 406 before any handler runs, the version headers on every response, and an
    unexpected exception as nova's 500 computeFault."""

    state_key = "compute_version"
    service = "compute"

    def negotiate(self, headers: dict[str, str]) -> APIVersion:
        return parse_requested(_asked(headers))

    def echo(self, found: APIVersion) -> list[tuple[bytes, bytes]]:
        return version_headers(found)

    def refusal(self, error: ServiceError) -> Response:
        return error_response(error)

    def unexpected(self, exc: Exception) -> ServiceError:
        # nova's own 500 wording, pointing at this cloud's log instead of launchpad
        return ServiceError("Unexpected API Error. Please report this with the embedded "
                            f"cloud's log if possible.\n{type(exc)}")
