"""Cinder's microversions: `OpenStack-API-Version: volume 3.x` in, the same header out.

No header is 3.0. A malformed version is 400, one outside 3.0..MAX is 406, both in
cinder's fault body. Every response of the v3 API, errors included, echoes the version
with `Vary: OpenStack-API-Version`, as cinder's wsgi.Resource and Fault do.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.errors import BadRequest, NotAcceptable, ServiceError
from labkit.cloud.microversion import APIVersion, VersionMiddleware
from labkit.cloud.volume.errors import WEBOB_400, fault_response

HEADER = "OpenStack-API-Version"
# cinder's microversions compare as nova's do
Version = APIVersion


MIN = Version(3, 0)
# every change up to 3.71 is honoured for the resources this cinder serves
MAX = Version(3, 71)
UPDATED = "2023-08-31T00:00:00Z"


def requested(header: str | None) -> Version:
    """The version a request asks for (BadRequest or NotAcceptable when it cannot have it)."""
    if header is None:
        return MIN
    asked = None
    for part in header.split(","):
        words = part.split()
        if words and words[0] == "volume":
            if len(words) != 2:
                raise BadRequest(WEBOB_400)
            asked = words[1]
            break
    if asked is None:
        # cinder raises VersionNotFoundForAPIMethod, which its fault wrapper answers with
        # webob's bare 400
        raise BadRequest(WEBOB_400)
    if asked == "latest":
        return MAX
    wanted = Version.parse(asked)
    if not MIN <= wanted <= MAX:
        raise NotAcceptable(f"Version {wanted} is not supported by the API. Minimum is "
                            f"{MIN} and maximum is {MAX}.")
    return wanted


def version(request: Request) -> Version:
    return request.scope.get("state", {}).get("volume_version", MIN)


class CinderVersionMiddleware(VersionMiddleware):
    """Cinder's version negotiation and echo (labkit.cloud.microversion.VersionMiddleware),
    with cinder's fault body and its 500 wording."""

    state_key = "volume_version"
    service = "volume"

    def negotiate(self, headers: dict[str, str]) -> Version:
        return requested(headers.get(HEADER.lower()))

    def echo(self, found: Version) -> list[tuple[bytes, bytes]]:
        return [(HEADER.lower().encode(), f"volume {found}".encode()),
                (b"vary", HEADER.encode())]

    def refusal(self, error: ServiceError) -> Response:
        return fault_response(error)

    def unexpected(self, exc: Exception) -> ServiceError:
        return ServiceError("The server has either erred or is incapable of performing "
                            f"the requested operation. ({type(exc).__name__})")
