"""GET/POST/PUT/DELETE /v2.1/flavors, their extra specs and who may use private ones.

The fields a flavor shows depend on the microversion: description from 2.55,
extra_specs from 2.61, and swap as 0 rather than "" from 2.75.
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.errors import (
    BOOLEAN,
    FALSE_WORDS,
    NAME,
    NON_NEGATIVE,
    POSITIVE,
    TRUE_WORDS,
    as_bool,
    policy_check,
    validate,
)
from labkit.cloud.compute.api.microversion import APIVersion, version
from labkit.cloud.compute.api.versions import limit_and_marker, next_links, resource_links
from labkit.cloud.compute.flavors import Flavors
from labkit.cloud.errors import BadRequest, NotFound
from labkit.cloud.http import context, read_json

MANAGE = "os_compute_api:os-flavor-manage:{}"
EXTRA_SPECS = "os_compute_api:os-flavor-extra-specs:{}"
ACCESS = "os_compute_api:os-flavor-access"

DESCRIPTION: dict[str, Any] = {"type": ["string", "null"], "minLength": 0, "maxLength": 65535}
CREATE: dict[str, Any] = {
    "type": "object",
    "properties": {"flavor": {
        "type": "object",
        "properties": {
            "name": NAME,
            "id": {"type": ["string", "number", "null"], "minLength": 1, "maxLength": 255,
                   "pattern": "^(?! )[a-zA-Z0-9. _-]+(?<! )$"},
            "ram": POSITIVE, "vcpus": POSITIVE, "disk": NON_NEGATIVE,
            "OS-FLV-EXT-DATA:ephemeral": NON_NEGATIVE, "swap": NON_NEGATIVE,
            "rxtx_factor": {"type": ["number", "string"], "pattern": r"^[0-9]+(\.[0-9]+)?$",
                            "minimum": 0, "exclusiveMinimum": True, "maximum": 3.40282e+38},
            "os-flavor-access:is_public": BOOLEAN,
        },
        "required": ["name", "ram", "vcpus", "disk"],
        "additionalProperties": False,
    }},
    "required": ["flavor"],
    "additionalProperties": False,
}
CREATE_255 = copy.deepcopy(CREATE)
CREATE_255["properties"]["flavor"]["properties"]["description"] = DESCRIPTION
UPDATE: dict[str, Any] = {
    "type": "object",
    "properties": {"flavor": {"type": "object", "properties": {"description": DESCRIPTION},
                              "required": ["description"], "additionalProperties": False}},
    "required": ["flavor"], "additionalProperties": False}
# keys and values of extra specs: nova's pattern forbids '/' in keys
SPEC_KEY = "^[a-zA-Z0-9-_:. ]{1,255}$"
SPEC_VALUES: dict[str, Any] = {
    "type": "object",
    "patternProperties": {SPEC_KEY: {"type": ["string", "number", "boolean"],
                                     "minLength": 1, "maxLength": 255}},
    "additionalProperties": False}
EXTRA_SPECS_CREATE: dict[str, Any] = {
    "type": "object", "properties": {"extra_specs": SPEC_VALUES},
    "required": ["extra_specs"], "additionalProperties": False}
TENANT_ACTION: dict[str, Any] = {
    "type": "object",
    "properties": {"tenant": {"type": "string", "pattern": "^[a-zA-Z0-9-]*$",
                              "minLength": 1, "maxLength": 255}},
    "required": ["tenant"], "additionalProperties": False}


# -- views ------------------------------------------------------------------------------

def brief(request: Request, flavor: dict[str, Any]) -> dict[str, Any]:
    """A flavor in GET /flavors: id, name, links (and description from 2.55)."""
    shown: dict[str, Any] = {"id": flavor["flavorid"], "name": flavor["name"],
                             "links": resource_links(request, "flavors", flavor["flavorid"])}
    if version(request).at_least("2.55"):
        shown["description"] = flavor["description"]
    return shown


def detail(request: Request, flavor: dict[str, Any]) -> dict[str, Any]:
    """A flavor in full, as GET /flavors/{id} shows it at the request's microversion."""
    v: APIVersion = version(request)
    shown: dict[str, Any] = {
        "id": flavor["flavorid"], "name": flavor["name"], "ram": flavor["memory_mb"],
        "disk": flavor["root_gb"],
        # before 2.75 nova showed no swap as an empty string
        "swap": flavor["swap"] if v.at_least("2.75") else (flavor["swap"] or ""),
        "OS-FLV-EXT-DATA:ephemeral": flavor["ephemeral_gb"],
        "OS-FLV-DISABLED:disabled": flavor["disabled"], "vcpus": flavor["vcpus"],
        "os-flavor-access:is_public": flavor["is_public"],
        "rxtx_factor": flavor["rxtx_factor"] or "",
        "links": resource_links(request, "flavors", flavor["flavorid"]),
    }
    if v.at_least("2.55"):
        shown["description"] = flavor["description"]
    if v.at_least("2.61"):
        # nova's os-flavor-extra-specs:index policy lets every caller read them
        shown["extra_specs"] = dict(flavor["extra_specs"])
    return shown


def _flavors(request: Request) -> Flavors:
    return request.app.state.nova.flavors


# -- reading ----------------------------------------------------------------------------

def _is_public_filter(raw: str | None, is_admin: bool) -> bool | None:
    """?is_public=: only admins may choose; 'None' (any case) means every flavor."""
    if not is_admin or raw is None:
        return True
    if raw.strip().lower() == "none":
        return None
    if raw.strip().lower() in TRUE_WORDS:
        return True
    if raw.strip().lower() in FALSE_WORDS:
        return False
    raise BadRequest(f"Invalid is_public filter [{raw}]")


def _int_filter(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise BadRequest(f"Invalid {name} filter [{raw}]") from exc


def _listed(request: Request) -> list[dict[str, Any]]:
    token = context(request)
    version(request)
    query = request.query_params
    limit, marker = limit_and_marker(request)
    return _flavors(request).list(
        project_id=token.project_id, is_admin=token.is_admin,
        is_public=_is_public_filter(query.get("is_public"), token.is_admin),
        min_ram=_int_filter(request, "minRam"), min_disk=_int_filter(request, "minDisk"),
        # non-admins never see disabled flavors in lists
        disabled=None if token.is_admin else False, name=query.get("name"),
        sort_key=query.get("sort_key") or "flavorid", sort_dir=query.get("sort_dir") or "asc",
        limit=limit, marker=marker)


def _page(request: Request, flavors: list[dict[str, Any]], shown: list[dict[str, Any]],
          collection: str) -> JSONResponse:
    body: dict[str, Any] = {"flavors": shown}
    links = next_links(request, flavors, collection, id_key="flavorid")
    if links:
        body["flavors_links"] = links
    return JSONResponse(body)


async def index(request: Request) -> Response:
    flavors = _listed(request)
    return _page(request, flavors, [brief(request, f) for f in flavors], "flavors")


async def index_detail(request: Request) -> Response:
    flavors = _listed(request)
    return _page(request, flavors, [detail(request, f) for f in flavors], "flavors/detail")


def _visible_flavor(request: Request) -> dict[str, Any]:
    token = context(request)
    return _flavors(request).find_for_project(
        request.path_params["flavor_id"], token.project_id, token.is_admin)


async def show(request: Request) -> Response:
    version(request)
    return JSONResponse({"flavor": detail(request, _visible_flavor(request))})


# -- managing (admin) ------------------------------------------------------------------

async def create(request: Request) -> Response:
    token = context(request)
    v = version(request)
    policy_check(token, MANAGE.format("create"), admin_only=True)
    body = await read_json(request)
    validate(body, CREATE_255 if v.at_least("2.55") else CREATE)
    given = body["flavor"]
    flavor = _flavors(request).create(
        given["name"], int(given["ram"]), int(given["vcpus"]), int(given["disk"]),
        flavorid=None if given.get("id") is None else str(given["id"]),
        ephemeral_gb=int(given.get("OS-FLV-EXT-DATA:ephemeral", 0)),
        swap=int(given.get("swap", 0)), rxtx_factor=float(given.get("rxtx_factor", 1.0)),
        is_public=as_bool(given.get("os-flavor-access:is_public", True)),
        description=given.get("description"))
    # nova answers 200 here, not 201, for backward compatibility
    return JSONResponse({"flavor": detail(request, flavor)})


async def update(request: Request) -> Response:
    token = context(request)
    if not version(request).at_least("2.55"):
        # no PUT on a flavor before 2.55: nova answers as for a method it does not have
        raise NotFound("The resource could not be found.")
    policy_check(token, MANAGE.format("update"), admin_only=True)
    body = await read_json(request)
    validate(body, UPDATE)
    flavor = _flavors(request).set_description(request.path_params["flavor_id"],
                                               body["flavor"]["description"])
    return JSONResponse({"flavor": detail(request, flavor)})


async def delete(request: Request) -> Response:
    token = context(request)
    version(request)
    policy_check(token, MANAGE.format("delete"), admin_only=True)
    _flavors(request).delete(request.path_params["flavor_id"])
    return Response(status_code=202)


# -- extra specs ------------------------------------------------------------------------

async def extra_specs_index(request: Request) -> Response:
    version(request)
    return JSONResponse({"extra_specs": _visible_flavor(request)["extra_specs"]})


async def extra_specs_create(request: Request) -> Response:
    token = context(request)
    version(request)
    policy_check(token, EXTRA_SPECS.format("create"), admin_only=True)
    body = await read_json(request)
    validate(body, EXTRA_SPECS_CREATE)
    flavor = _visible_flavor(request)
    _flavors(request).update_extra_specs(flavor["flavorid"], body["extra_specs"])
    return JSONResponse(body)


async def extra_spec_show(request: Request) -> Response:
    version(request)
    flavor = _visible_flavor(request)
    key = request.path_params["key"]
    return JSONResponse({key: _flavors(request).extra_spec(flavor["flavorid"], key)})


async def extra_spec_update(request: Request) -> Response:
    token = context(request)
    version(request)
    policy_check(token, EXTRA_SPECS.format("update"), admin_only=True)
    body = await read_json(request)
    validate(body, {**SPEC_VALUES, "minProperties": 1, "maxProperties": 1})
    key = request.path_params["key"]
    if key not in body:
        raise BadRequest("Request body and URI mismatch")
    flavor = _visible_flavor(request)
    _flavors(request).update_extra_specs(flavor["flavorid"], body)
    return JSONResponse(body)


async def extra_spec_delete(request: Request) -> Response:
    token = context(request)
    version(request)
    policy_check(token, EXTRA_SPECS.format("delete"), admin_only=True)
    flavor = _visible_flavor(request)
    _flavors(request).delete_extra_spec(flavor["flavorid"], request.path_params["key"])
    return Response(status_code=200)


# -- access to private flavors ---------------------------------------------------------

def _access_body(flavor_id: str, projects: list[str]) -> dict[str, Any]:
    return {"flavor_access": [{"flavor_id": flavor_id, "tenant_id": p} for p in projects]}


async def access_index(request: Request) -> Response:
    token = context(request)
    version(request)
    # admin_or_owner in nova of the 2.79 era, which lets every caller pass (nova bug
    # 1867840): a member lists who shares a private flavor it can see
    policy_check(token, ACCESS, admin_only=False)
    flavor = _visible_flavor(request)
    return JSONResponse(_access_body(flavor["flavorid"],
                                     _flavors(request).access(flavor["flavorid"])))


async def action(request: Request) -> Response:
    """POST /flavors/{id}/action: addTenantAccess or removeTenantAccess."""
    token = context(request)
    v = version(request)
    body = await read_json(request)
    if len(body) != 1 or next(iter(body)) not in ("addTenantAccess", "removeTenantAccess"):
        raise BadRequest(f"There is no such action: {', '.join(body)}")
    name, args = next(iter(body.items()))
    rule = "add_tenant_access" if name == "addTenantAccess" else "remove_tenant_access"
    policy_check(token, f"{ACCESS}:{rule}", admin_only=True)
    validate({name: args}, {"type": "object", "properties": {name: TENANT_ACTION},
                            "required": [name], "additionalProperties": False})
    flavor = _visible_flavor(request)
    flavors = _flavors(request)
    if name == "addTenantAccess":
        projects = flavors.add_access(flavor["flavorid"], args["tenant"],
                                      refuse_public=v.at_least("2.7"))
    else:
        projects = flavors.remove_access(flavor["flavorid"], args["tenant"])
    return JSONResponse(_access_body(flavor["flavorid"], projects))


def routes(nova: Any) -> list[Route]:
    base = "/v2.1/flavors"
    one = base + "/{flavor_id}"
    return [
        Route(base, index, methods=["GET"]),
        Route(base, create, methods=["POST"]),
        Route(base + "/detail", index_detail, methods=["GET"]),
        Route(one, show, methods=["GET"]),
        Route(one, update, methods=["PUT"]),
        Route(one, delete, methods=["DELETE"]),
        Route(one + "/action", action, methods=["POST"]),
        Route(one + "/os-flavor-access", access_index, methods=["GET"]),
        Route(one + "/os-extra_specs", extra_specs_index, methods=["GET"]),
        Route(one + "/os-extra_specs", extra_specs_create, methods=["POST"]),
        Route(one + "/os-extra_specs/{key}", extra_spec_show, methods=["GET"]),
        Route(one + "/os-extra_specs/{key}", extra_spec_update, methods=["PUT"]),
        Route(one + "/os-extra_specs/{key}", extra_spec_delete, methods=["DELETE"]),
    ]
