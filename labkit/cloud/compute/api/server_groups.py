"""GET/POST /v2.1/os-server-groups and GET/DELETE /v2.1/os-server-groups/{id}.

Microversions: 2.13 shows project_id and user_id; 2.15 allows the soft
policies; 2.64 replaces "policies": [p] and "metadata" with "policy" and "rules".
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.errors import MAX_INT, NAME, validate
from labkit.cloud.compute.api.microversion import APIVersion, version
from labkit.cloud.compute.server_groups import ServerGroups
from labkit.cloud.errors import BadRequest
from labkit.cloud.http import context, read_json

HARD = ["anti-affinity", "affinity"]
SOFT = ["soft-anti-affinity", "soft-affinity"]


def _create_schema(v: APIVersion) -> dict[str, Any]:
    allowed = HARD + SOFT if v.at_least("2.15") else HARD
    properties: dict[str, Any] = {"name": NAME}
    if v.at_least("2.64"):
        properties["policy"] = {"type": "string", "enum": HARD + SOFT}
        properties["rules"] = {
            "type": "object",
            "properties": {"max_server_per_host": {
                "type": ["integer", "string"], "pattern": "^[0-9]*$",
                "minimum": 1, "maximum": MAX_INT}},
            "additionalProperties": False}
        required = ["name", "policy"]
    else:
        properties["policies"] = {"type": "array", "items": [{"type": "string", "enum": allowed}],
                                  "uniqueItems": True, "minItems": 1, "maxItems": 1,
                                  "additionalItems": False}
        required = ["name", "policies"]
    return {"type": "object",
            "properties": {"server_group": {"type": "object", "properties": properties,
                                            "required": required,
                                            "additionalProperties": False}},
            "required": ["server_group"], "additionalProperties": False}


def view(request: Request, group: dict[str, Any]) -> dict[str, Any]:
    """A group as the request's microversion shows it."""
    v = version(request)
    shown: dict[str, Any] = {"id": group["id"], "name": group["name"]}
    if v.at_least("2.64"):
        shown["policy"] = group["policy"]
        shown["rules"] = group["rules"]
    else:
        shown["policies"] = [group["policy"]]
        shown["metadata"] = {}
    shown["members"] = list(group["members"])
    if v.at_least("2.13"):
        shown["project_id"] = group["project_id"]
        shown["user_id"] = group["user_id"]
    return shown


def _groups(request: Request) -> ServerGroups:
    return request.app.state.nova.server_groups


def _offset_limit(request: Request) -> tuple[int, int | None]:
    """nova's common.limited: ?offset= and ?limit= (0 or absent: no limit but max_limit)."""
    values: dict[str, int] = {}
    for name in ("offset", "limit"):
        raw = request.query_params.get(name)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError as exc:
            raise BadRequest(f"{name} param must be an integer") from exc
        if values[name] < 0:
            raise BadRequest(f"{name} param must be positive")
    return values.get("offset", 0), min(1000, values.get("limit") or 1000)


async def index(request: Request) -> Response:
    token = context(request)
    version(request)
    # nova reads all_projects by its presence, whatever its value
    every = token.is_admin and "all_projects" in request.query_params
    groups = _groups(request).list(token.project_id, all_projects=every)
    offset, limit = _offset_limit(request)
    groups = groups[offset:offset + limit] if limit is not None else groups[offset:]
    return JSONResponse({"server_groups": [view(request, g) for g in groups]})


async def show(request: Request) -> Response:
    token = context(request)
    version(request)
    group = _groups(request).get(request.path_params["group_id"], token.project_id,
                                 token.is_admin)
    return JSONResponse({"server_group": view(request, group)})


async def create(request: Request) -> Response:
    token = context(request)
    v = version(request)
    body = await read_json(request)
    validate(body, _create_schema(v))
    given = body["server_group"]
    if v.at_least("2.64"):
        policy, rules = given["policy"], dict(given.get("rules") or {})
        if "max_server_per_host" in rules:
            rules["max_server_per_host"] = int(rules["max_server_per_host"])
    else:
        policy, rules = given["policies"][0], {}
    group = _groups(request).create(given["name"], policy, token.project_id or "",
                                    token.user_id, rules=rules)
    return JSONResponse({"server_group": view(request, group)})


async def delete(request: Request) -> Response:
    token = context(request)
    version(request)
    _groups(request).delete(request.path_params["group_id"], token.project_id, token.is_admin)
    return Response(status_code=204)


def routes(nova: Any) -> list[Route]:
    return [
        Route("/v2.1/os-server-groups", index, methods=["GET"]),
        Route("/v2.1/os-server-groups", create, methods=["POST"]),
        Route("/v2.1/os-server-groups/{group_id}", show, methods=["GET"]),
        Route("/v2.1/os-server-groups/{group_id}", delete, methods=["DELETE"]),
    ]

