"""Glance v2's HTTP face: parse requests, shape replies, map errors to glance's bodies.

Holds no state: everything goes through `Images` (models.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from labkit.cloud.errors import BadRequest, Forbidden, PayloadTooLarge
from labkit.cloud.http import MAX_BODY, context
from labkit.cloud.image.exceptions import UnsupportedMediaType, exception_handlers
from labkit.cloud.image.models import (
    READ_ONLY,
    RESERVED,
    RESERVED_PREFIX,
    SORT_KEYS,
    Caller,
    Change,
    Images,
    ListQuery,
    image_schema,
    images_schema,
    member_schema,
    members_schema,
    validate_against_schema,
)

Handler = Callable[[Request], Awaitable[Response]]

# The versions we answer, newest first, up to the last whose changes this glance has
# (deactivate in 2.3, os_hidden in 2.7). Interoperable import (2.6) is not offered, which
# clients learn as glance tells them: no OpenStack-image-import-methods header on create.
VERSIONS = [("2.7", "CURRENT")] + [(f"2.{n}", "SUPPORTED") for n in range(6, -1, -1)]
# what the URL may name as the version (glance's version negotiation maps each to v2)
URL_VERSIONS = {"v2"} | {f"v{v}" for v, _ in VERSIONS}
PATCH_TYPES = {"application/openstack-images-v2.0-json-patch": 4,
               "application/openstack-images-v2.1-json-patch": 10}
DISALLOWED_ON_CREATE = ("direct_url", "self", "file", "schema", "stores")
# what POST /v2/images takes as attributes; everything else becomes a property
CREATE_ATTRIBUTES = ("checksum", "created_at", "container_format", "disk_format", "id",
                     "min_disk", "min_ram", "name", "size", "virtual_size", "status", "owner",
                     "updated_at", "visibility", "protected", "os_hidden")


# -- versions -----------------------------------------------------------------------------

def versions_body(request: Request) -> dict[str, Any]:
    href = f"{request.url.scheme}://{request.url.netloc}/image/v2/"
    return {"versions": [{"id": f"v{version}", "status": status,
                          "links": [{"rel": "self", "href": href}]}
                         for version, status in VERSIONS]}


async def versions(request: Request) -> Response:
    """GET /image: the versions glance offers, with 300 Multiple Choices as glance does."""
    return JSONResponse(versions_body(request), status_code=300)


async def explicit_versions(request: Request) -> Response:
    """GET /image/versions: the same list, asked for by name, so 200."""
    return JSONResponse(versions_body(request))


class VersionNegotiation:
    """glance's versionnegotiation filter: /v2.N/... is /v2/...; an unknown version gets
    the version list (before any token is asked for, as in glance's pipeline)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            relative = scope["path"][len(root):]
            segment, slash, rest = relative.lstrip("/").partition("/")
            if segment == "versions":
                await (await explicit_versions(Request(scope)))(scope, receive, send)
                return
            if segment not in URL_VERSIONS:
                await (await versions(Request(scope)))(scope, receive, send)
                return
            if segment != "v2":
                scope = {**scope, "path": f"{root}/v2{slash}{rest}"}
        await self.app(scope, receive, send)


def anonymous(method: str, path: str) -> bool:
    """What glance answers without a token: only the version documents."""
    return path.lstrip("/").partition("/")[0] not in URL_VERSIONS


# -- request helpers ----------------------------------------------------------------------

def caller(request: Request) -> Caller:
    token = context(request)
    return Caller(project_id=token.project_id, is_admin=token.is_admin,
                  roles=tuple(token.role_names))


async def read_body(request: Request) -> Any:
    """The JSON body, with glance's words for a missing or malformed one."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge("Request is too large. Larger than max_request_body_size "
                                  f"({MAX_BODY}).")
    if not raw:
        raise BadRequest("Body expected in request.")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("Malformed JSON in request body.") from exc


def image_url(request: Request, image_id: str) -> str:
    return f"{request.url.scheme}://{request.url.netloc}/image/v2/images/{image_id}"


# -- parsing what glance parses -----------------------------------------------------------

def parse_create(body: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """POST /v2/images: split the body into attributes, properties and tags."""
    if isinstance(body, dict):
        for key in DISALLOWED_ON_CREATE:
            if key in body:
                raise Forbidden(f"Attribute '{key}' is read-only.")
    validate_against_schema(body)
    body = dict(body)
    tags = body.pop("tags", [])
    attributes = {k: body.pop(k) for k in CREATE_ATTRIBUTES if k in body}
    return attributes, body, tags


def _decode_pointer(pointer: Any) -> list[str]:
    if not isinstance(pointer, str):
        raise BadRequest(f"Pointer `{pointer}` does not start with \"/\".")
    if not pointer.startswith("/"):
        raise BadRequest(f"Pointer `{pointer}` does not start with \"/\".")
    if re.search(r"/\s*?/", pointer[1:]):
        raise BadRequest(f"Pointer `{pointer}` contains adjacent \"/\".")
    if len(pointer) > 1 and pointer.endswith("/"):
        raise BadRequest(f"Pointer `{pointer}` end with \"/\".")
    if pointer[1:].strip() == "/":
        raise BadRequest(f"Pointer `{pointer}` does not contains valid token.")
    if re.search("~[^01]", pointer) or pointer.endswith("~"):
        raise BadRequest(f"Pointer `{pointer}` contains \"~\" not part of a recognized "
                         "escape sequence.")
    return [part.replace("~1", "/").replace("~0", "~").strip()
            for part in pointer.lstrip("/").split("/")]


def parse_patch(content_type: str, body: Any) -> list[Change]:
    """PATCH /v2/images/{id}: glance's JSON-patch dialects, checked as glance checks them."""
    draft = PATCH_TYPES[content_type]
    if not isinstance(body, list):
        raise BadRequest("Request body must be a JSON array of operation objects.")
    ops = ("add", "remove", "replace")
    changes = []
    for raw in body:
        if not isinstance(raw, dict):
            raise BadRequest("Operations must be JSON objects.")
        if draft == 10:
            op = raw.get("op")
            if op is None:
                raise BadRequest("Unable to find `op` in JSON Schema change. It must be one "
                                 f"of the following: {', '.join(ops)}.")
            if op not in ops:
                raise BadRequest(f"Invalid operation: `{op}`. It must be one of the "
                                 f"following: {', '.join(ops)}.")
            if "path" not in raw:
                raise BadRequest("Unable to find 'path' in JSON Schema change")
            pointer = raw["path"]
        else:
            named = [k for k in ops if k in raw]
            if len(named) != 1:
                raise BadRequest("Operation objects must contain exactly one member named "
                                 '"add", "remove", or "replace".' if not named else
                                 "Operation objects must contain only one member named "
                                 '"add", "remove", or "replace".')
            op = named[0]
            pointer = raw[op]
        path = _decode_pointer(pointer)
        depth = {"add": 2, "remove": 2, "replace": 1}[op] if path[0] == "locations" else 1
        if len(path) != depth:
            raise BadRequest(f"Invalid JSON pointer for this resource: '/{'/'.join(path)}'")
        root = path[0]
        if op != "remove" and "value" not in raw:
            raise BadRequest(f'Operation "{op}" requires a member named "value".')
        if root in READ_ONLY:
            raise Forbidden(f"Attribute '{root}' is read-only.")
        if root in RESERVED or root.startswith(RESERVED_PREFIX):
            raise Forbidden(f"Attribute '{root}' is reserved.")
        if op != "remove" and len(path) == 1:
            validate_against_schema({root: raw["value"]})
        changes.append(Change(op=op, path=root, value=raw.get("value"), draft=draft))
    return changes


def parse_list(request: Request) -> ListQuery:
    """GET /v2/images: paging, sorting, tags and member status; the rest are filters."""
    items = list(request.query_params.multi_items())
    query = ListQuery()
    filters: dict[str, str] = {}
    sort_keys: list[str] = []
    sort_dirs: list[str] = []
    sort: str | None = None
    for key, value in items:
        if key == "limit":
            try:
                query.limit = int(value)
            except ValueError as exc:
                raise BadRequest("limit param must be an integer") from exc
            if query.limit < 0:
                raise BadRequest("limit param must be positive")
        elif key == "marker":
            query.marker = value
        elif key == "member_status":
            if value not in ("pending", "accepted", "rejected", "all"):
                raise BadRequest(f"Invalid status: {value}")
            query.member_status = value
        elif key == "tag":
            query.tags.append(value.strip())
        elif key == "sort_key":
            sort_keys.append(_sort_key(value.strip()))
        elif key == "sort_dir":
            sort_dirs.append(_sort_dir(value.strip()))
        elif key == "sort":
            sort = value
        else:
            filters[key] = value
    if sort is not None:
        if sort_keys or sort_dirs:
            raise BadRequest("Old and new sorting syntax cannot be combined")
        for part in sort.strip().split(","):
            key, _, direction = part.partition(":")
            sort_keys.append(_sort_key(key.strip()))
            sort_dirs.append(_sort_dir(direction.strip() or "desc"))
    elif len(sort_dirs) > 1 and len(sort_dirs) != len(sort_keys):
        raise BadRequest("Number of sort dirs does not match the number of sort keys")
    query.sort_keys = sort_keys or ["created_at"]
    query.sort_dirs = sort_dirs or ["desc"]
    visibility = filters.get("visibility")
    if visibility and visibility not in ("community", "public", "private", "shared", "all"):
        raise BadRequest(f"Invalid visibility value: {visibility}")
    if "changes-since" in filters:
        raise BadRequest('The "changes-since" filter is no longer available on v2.')
    hidden = filters.get("os_hidden", "false").lower()
    if hidden not in ("true", "false"):
        raise BadRequest(f"Invalid value '{hidden}' for 'os_hidden' filter. Valid values are "
                         "'true' or 'false'.")
    filters["os_hidden"] = hidden
    protected = filters.get("protected")
    if protected is not None and protected not in ("true", "false"):
        raise BadRequest(f"Invalid value '{protected}' for 'protected' filter. Valid values "
                         "are 'true' or 'false'.")
    query.filters = filters
    return query


def _sort_key(key: str) -> str:
    if key not in SORT_KEYS:
        raise BadRequest(f"Invalid sort key: {key}. It must be one of the following: "
                         f"{', '.join(SORT_KEYS)}.")
    return key


def _sort_dir(direction: str) -> str:
    if direction not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort direction: {direction}")
    return direction


def list_links(request: Request, next_marker: str | None) -> dict[str, str]:
    """`first` (the query without its marker) and `next` (with the next page's marker)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "marker"]
    links = {"first": "/v2/images" + (f"?{urlencode(params)}" if params else ""),
             "schema": "/v2/schemas/images"}
    if next_marker is not None:
        links["next"] = f"/v2/images?{urlencode([*params, ('marker', next_marker)])}"
    return links


def image_size(request: Request) -> int | None:
    value = request.headers.get("x-openstack-image-size") or request.headers.get(
        "content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise BadRequest("Invalid or missing image size in request headers.") from exc


# -- the application ----------------------------------------------------------------------

def build_image_app(images: Images) -> ASGIApp:
    routes: list[Route] = [
        Route("/", versions, methods=["GET"]),
    ]

    def route(path: str, methods: list[str]) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            routes.append(Route(path, handler, methods=methods))
            return handler
        return add

    # -- images

    @route("/v2/images", ["GET"])
    async def list_images(request: Request) -> Response:
        who = caller(request)
        page, next_marker = images.list_images(who, parse_list(request))
        return JSONResponse({"images": page, **list_links(request, next_marker)})

    @route("/v2/images", ["POST"])
    async def create_image(request: Request) -> Response:
        who = caller(request)
        attributes, properties, tags = parse_create(await read_body(request))
        image = images.create_image(who, attributes, properties, tags)
        return JSONResponse(image, status_code=201,
                            headers={"Location": image_url(request, image["id"])})

    @route("/v2/images/{image_id}", ["GET"])
    async def show_image(request: Request) -> Response:
        return JSONResponse(images.show(caller(request), request.path_params["image_id"]))

    @route("/v2/images/{image_id}", ["PATCH"])
    async def update_image(request: Request) -> Response:
        who = caller(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in PATCH_TYPES:
            allowed = ", ".join(sorted(PATCH_TYPES))
            raise UnsupportedMediaType(content_type,
                                       f"Image PATCH expects Content-Type one of: {allowed}",
                                       headers={"Accept-Patch": allowed})
        changes = parse_patch(content_type, await read_body(request))
        return JSONResponse(images.update_image(who, request.path_params["image_id"], changes))

    @route("/v2/images/{image_id}", ["DELETE"])
    async def delete_image(request: Request) -> Response:
        images.delete_image(caller(request), request.path_params["image_id"])
        return Response(status_code=204)

    # -- data

    @route("/v2/images/{image_id}/file", ["PUT"])
    async def upload(request: Request) -> Response:
        who = caller(request)
        content_type = request.headers.get("content-type")
        if content_type is None or content_type.split(";")[0].strip() != \
                "application/octet-stream":
            raise UnsupportedMediaType(content_type or "None",
                                       f"Invalid content type {content_type}")
        await images.upload(who, request.path_params["image_id"], request.stream(),
                            image_size(request))
        return Response(status_code=204)

    @route("/v2/images/{image_id}/file", ["GET"])
    async def download(request: Request) -> Response:
        path, image = images.data(caller(request), request.path_params["image_id"])
        if path is None:
            return Response(status_code=204)
        headers = {"Content-MD5": image["checksum"]} if image["checksum"] else {}
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    # -- actions and tags

    for action in ("deactivate", "reactivate"):
        routes.append(Route(f"/v2/images/{{image_id}}/actions/{action}",
                            _action(images, action), methods=["POST"]))

    @route("/v2/images/{image_id}/tags/{tag}", ["PUT"])
    async def add_tag(request: Request) -> Response:
        p = request.path_params
        images.add_tag(caller(request), p["image_id"], p["tag"])
        return Response(status_code=204)

    @route("/v2/images/{image_id}/tags/{tag}", ["DELETE"])
    async def delete_tag(request: Request) -> Response:
        p = request.path_params
        images.delete_tag(caller(request), p["image_id"], p["tag"])
        return Response(status_code=204)

    # -- members

    @route("/v2/images/{image_id}/members", ["GET"])
    async def list_members(request: Request) -> Response:
        members = images.list_members(caller(request), request.path_params["image_id"])
        return JSONResponse({"members": members, "schema": "/v2/schemas/members"})

    @route("/v2/images/{image_id}/members", ["POST"])
    async def add_member(request: Request) -> Response:
        who = caller(request)
        body = await read_body(request)
        if not isinstance(body, dict):
            raise BadRequest('Expected a member in the form: {"member": "image_id"}')
        if "member" not in body:
            raise BadRequest("Member to be added not specified")
        if not body["member"]:
            raise BadRequest("Member can't be empty")
        if not isinstance(body["member"], str):
            raise BadRequest('Expected a member in the form: {"member": "image_id"}')
        member = images.add_member(who, request.path_params["image_id"], body["member"])
        return JSONResponse(member)

    @route("/v2/images/{image_id}/members/{member_id}", ["GET"])
    async def show_member(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(images.get_member(caller(request), p["image_id"], p["member_id"]))

    @route("/v2/images/{image_id}/members/{member_id}", ["PUT"])
    async def update_member(request: Request) -> Response:
        who = caller(request)
        body = await read_body(request)
        if not isinstance(body, dict):
            raise BadRequest('Expected a status in the form: {"status": "status"}')
        if "status" not in body:
            raise BadRequest("Status not specified")
        p = request.path_params
        return JSONResponse(images.update_member(who, p["image_id"], p["member_id"],
                                                 body["status"]))

    @route("/v2/images/{image_id}/members/{member_id}", ["DELETE"])
    async def delete_member(request: Request) -> Response:
        p = request.path_params
        images.delete_member(caller(request), p["image_id"], p["member_id"])
        return Response(status_code=204)

    # -- schemas

    for name, schema in (("image", image_schema), ("images", images_schema),
                         ("member", member_schema), ("members", members_schema)):
        routes.append(Route(f"/v2/schemas/{name}", _schema(schema), methods=["GET"]))

    app = Starlette(routes=routes, exception_handlers=exception_handlers())
    return VersionNegotiation(app)


def _action(images: Images, action: str) -> Handler:
    async def handler(request: Request) -> Response:
        images.set_status(caller(request), request.path_params["image_id"], action)
        return Response(status_code=204)
    return handler


def _schema(schema: Callable[[], dict[str, Any]]) -> Handler:
    async def handler(request: Request) -> Response:
        context(request)
        return JSONResponse(schema())
    return handler
