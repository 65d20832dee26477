"""Cinder's version documents: GET /volume/ (300, every version) and /volume/v3/ (200).

They need no token: clients (keystoneauth's discovery) read them to learn the
microversion range. The self link is /volume/v3/, the catalog URL without the project.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labkit.cloud.volume.api.microversion import MAX, MIN, UPDATED

MOUNT = "/volume"


def _v3(request: Request) -> dict[str, Any]:
    base = f"{request.url.scheme}://{request.url.netloc}{MOUNT}"
    return {"id": "v3.0", "status": "CURRENT", "version": str(MAX),
            "min_version": str(MIN), "updated": UPDATED,
            "links": [{"rel": "describedby", "type": "text/html",
                       "href": "https://docs.openstack.org/"},
                      {"rel": "self", "href": f"{base}/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.volume+json;version=3"}]}


async def root(request: Request) -> Response:
    """GET /volume and /volume/: 300 Multiple Choices, as cinder's versions app answers."""
    return JSONResponse({"versions": [_v3(request)]}, status_code=300)


async def v3(request: Request) -> Response:
    """GET /volume/v3/: the versions cinder serves from v3 (its VersionsController.index)."""
    return JSONResponse({"versions": [_v3(request)]})


def anonymous(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and path in ("", "/", "/v3", "/v3/")
