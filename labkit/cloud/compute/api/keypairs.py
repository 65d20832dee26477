"""GET/POST /v2.1/os-keypairs and GET/DELETE /v2.1/os-keypairs/{name}.

Microversions: 2.2 adds `type` (ssh or x509) and answers create with 201 and
delete with 204; 2.10 lets an admin act on another user's key pairs
(`user_id` in the body or the query); 2.35 pages the list.
"""

from __future__ import annotations

import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.errors import NAME, validate
from labkit.cloud.compute.api.microversion import version
from labkit.cloud.compute.api.versions import limit_and_marker, next_links
from labkit.cloud.compute.keypairs import Keypairs
from labkit.cloud.errors import Forbidden
from labkit.cloud.http import context, read_json

POLICY = "os_compute_api:os-keypairs:{}"
KEY_NAME: dict[str, Any] = {"allOf": [NAME, {"type": "string", "pattern": r"^[_\- a-zA-Z0-9]+$",
                                             "minLength": 1, "maxLength": 255}]}


def _create_schema(with_type: bool, with_user: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"name": KEY_NAME, "public_key": {"type": "string"}}
    if with_type:
        properties["type"] = {"type": "string", "enum": ["ssh", "x509"]}
    if with_user:
        properties["user_id"] = {"type": "string"}
    return {"type": "object",
            "properties": {"keypair": {"type": "object", "properties": properties,
                                       "required": ["name"], "additionalProperties": False}},
            "required": ["keypair"], "additionalProperties": False}


def timestamp(seconds: float | None) -> str | None:
    """A time as nova's JSON shows a datetime: ISO 8601 with microseconds, no zone."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _keypairs(request: Request) -> Keypairs:
    return request.app.state.nova.keypairs


def _target_user(request: Request, action: str, asked: str | None) -> str:
    """The user whose key pairs these are: the caller's own, or (admins, 2.10) another's."""
    token = context(request)
    user_id = asked if asked and version(request).at_least("2.10") else token.user_id
    if user_id != token.user_id and not token.is_admin:
        raise Forbidden(f"Policy doesn't allow {POLICY.format(action)} to be performed.")
    return user_id


def _fields(keypair: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: keypair[name] for name in names}


async def index(request: Request) -> Response:
    v = version(request)
    user_id = _target_user(request, "index", request.query_params.get("user_id"))
    limit: int | None = None
    marker: str | None = None
    if v.at_least("2.35"):
        limit, marker = limit_and_marker(request)
    keypairs = _keypairs(request).list(user_id, limit=limit, marker=marker)
    names = ("name", "public_key", "fingerprint") + (("type",) if v.at_least("2.2") else ())
    body: dict[str, Any] = {"keypairs": [{"keypair": _fields(k, names)} for k in keypairs]}
    if v.at_least("2.35"):
        links = next_links(request, keypairs, "os-keypairs", id_key="name")
        if links:
            body["keypairs_links"] = links
    return JSONResponse(body)


async def show(request: Request) -> Response:
    v = version(request)
    user_id = _target_user(request, "show", request.query_params.get("user_id"))
    keypair = _keypairs(request).get(user_id, request.path_params["name"])
    shown = {**_fields(keypair, ("name", "public_key", "fingerprint", "user_id", "id")),
             "created_at": timestamp(keypair["created_at"]),
             "updated_at": timestamp(keypair["updated_at"]),
             "deleted": False, "deleted_at": None}
    if v.at_least("2.2"):
        shown["type"] = keypair["type"]
    return JSONResponse({"keypair": shown})


async def create(request: Request) -> Response:
    v = version(request)
    body = await read_json(request)
    validate(body, _create_schema(v.at_least("2.2"), v.at_least("2.10")))
    given = body["keypair"]
    user_id = _target_user(request, "create", given.get("user_id"))
    keypair = _keypairs(request).create(user_id, given["name"].strip(),
                                        public_key=given.get("public_key"),
                                        key_type=given.get("type", "ssh"))
    shown = _fields(keypair, ("name", "public_key", "fingerprint", "user_id"))
    if "private_key" in keypair:
        shown["private_key"] = keypair["private_key"]
    if v.at_least("2.2"):
        shown["type"] = keypair["type"]
    return JSONResponse({"keypair": shown}, status_code=201 if v.at_least("2.2") else 200)


async def delete(request: Request) -> Response:
    v = version(request)
    user_id = _target_user(request, "delete", request.query_params.get("user_id"))
    _keypairs(request).delete(user_id, request.path_params["name"])
    return Response(status_code=204 if v.at_least("2.2") else 202)


def routes(nova: Any) -> list[Route]:
    return [
        Route("/v2.1/os-keypairs", index, methods=["GET"]),
        Route("/v2.1/os-keypairs", create, methods=["POST"]),
        Route("/v2.1/os-keypairs/{name}", show, methods=["GET"]),
        Route("/v2.1/os-keypairs/{name}", delete, methods=["DELETE"]),
    ]
