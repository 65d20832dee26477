"""Nova's version documents: the list at /compute/ and the v2.1 document at /compute/v2.1/.

They are the only things the compute API answers without a token: clients read
them to learn the microversion range before they authenticate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labkit.cloud.compute.api.microversion import MAX, MIN
from labkit.cloud.errors import BadRequest

T = TypeVar("T")

MOUNT = "/compute"
MEDIA_TYPE = "application/vnd.openstack.compute+json;version={}"
DESCRIBED_BY = {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}
# As nova of the 2.79 era (Ussuri) listed them.
VERSIONS: dict[str, dict[str, Any]] = {
    "v2.0": {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
             "updated": "2011-01-21T11:33:21Z", "path": "v2", "media": "2"},
    "v2.1": {"id": "v2.1", "status": "CURRENT", "version": str(MAX), "min_version": str(MIN),
             "updated": "2013-07-23T11:33:21Z", "path": "v2.1", "media": "2.1"},
}
# What may be asked without a token, relative to the mount point.
ANONYMOUS_PATHS = ("/", "/v2.1", "/v2.1/")


def compute_url(request: Request) -> str:
    """http://host:port/compute, whatever the request's own path."""
    return f"{request.url.scheme}://{request.url.netloc}{MOUNT}"


def _summary(request: Request, entry: dict[str, Any]) -> dict[str, Any]:
    return {key: entry[key] for key in ("id", "status", "version", "min_version", "updated")}


async def root(request: Request) -> Response:
    """GET /compute and /compute/: every API version nova serves."""
    base = compute_url(request)
    versions = [{**_summary(request, entry),
                 "links": [{"rel": "self", "href": f"{base}/{entry['path']}/"}]}
                for entry in VERSIONS.values()]
    return JSONResponse({"versions": versions})


def version_document(request: Request) -> dict[str, Any]:
    """The v2.1 document; its self link matches the catalog's compute URL."""
    entry = VERSIONS["v2.1"]
    return {"version": {
        **_summary(request, entry),
        "links": [{"rel": "self", "href": f"{compute_url(request)}/v2.1/"}, DESCRIBED_BY],
        "media-types": [{"base": "application/json",
                         "type": MEDIA_TYPE.format(entry["media"])}],
    }}


async def v21(request: Request) -> Response:
    """GET /compute/v2.1 and /compute/v2.1/."""
    return JSONResponse(version_document(request))


def anonymous(method: str, path: str) -> bool:
    """Only the version documents need no token (path is relative to /compute)."""
    return method in ("GET", "HEAD") and path in ANONYMOUS_PATHS


# -- links every resource carries, and pagination as nova's common.py does it ------------

MAX_LIMIT = 1000  # nova's [api] max_limit


def resource_links(request: Request, collection: str, identifier: str) -> list[dict[str, str]]:
    """A resource's self link (under /v2.1) and bookmark link (unversioned), as nova gives."""
    base = compute_url(request)
    return [{"rel": "self", "href": f"{base}/v2.1/{collection}/{identifier}"},
            {"rel": "bookmark", "href": f"{base}/{collection}/{identifier}"}]


def _int_param(request: Request, name: str) -> int:
    try:
        value = int(request.query_params[name])
    except ValueError as exc:
        raise BadRequest(f"{name} param must be an integer") from exc
    if value < 0:
        raise BadRequest(f"{name} param must be positive")
    return value


def limit_and_marker(request: Request) -> tuple[int, str | None]:
    """?limit= (capped at MAX_LIMIT) and ?marker= from the query, as nova reads them."""
    limit = MAX_LIMIT
    if "limit" in request.query_params:
        limit = min(MAX_LIMIT, _int_param(request, "limit"))
    return limit, request.query_params.get("marker")


def page(request: Request, items: list[T], key: Callable[[T], str]) -> list[T]:
    """The page ?marker= and ?limit= ask for: the items after the marker, up to the limit."""
    limit, marker = limit_and_marker(request)
    if marker:
        keys = [key(item) for item in items]
        if marker not in keys:
            raise BadRequest(f"marker [{marker}] not found")
        items = items[keys.index(marker) + 1:]
    return items[:limit]


def next_links(request: Request, items: list[dict[str, Any]], collection: str,
               id_key: str = "id") -> list[dict[str, str]]:
    """A 'next' link when the page is full, carrying the query with the last item as marker."""
    wanted = MAX_LIMIT
    if "limit" in request.query_params:
        wanted = min(MAX_LIMIT, _int_param(request, "limit"))
    if not wanted or len(items) != wanted:
        return []
    params = dict(sorted(request.query_params.items()))
    params["marker"] = str(items[-1][id_key])
    return [{"rel": "next",
             "href": f"{compute_url(request)}/v2.1/{collection}?{urlencode(params)}"}]
