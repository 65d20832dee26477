"""/v3/{project_id}/types: volume types and their extra specs (managing them is admin only)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.errors import BadRequest
from labkit.cloud.http import is_true
from labkit.cloud.volume.api.common import admin_only, body, caller, cinder, entity

MANAGE = "volume_extension:types_manage"
SPECS = "volume_extension:types_extra_specs"


async def index(request: Request) -> Response:
    q = request.query_params
    is_public = None
    who = caller(request)
    if who.is_admin and "is_public" in q and q["is_public"].lower() != "none":
        is_public = is_true(q["is_public"])
    return JSONResponse({"volume_types": cinder(request).types.list(who, is_public)})


async def show(request: Request) -> Response:
    return JSONResponse({"volume_type": cinder(request).types.get(
        caller(request), request.path_params["type_id"])})


async def create(request: Request) -> Response:
    admin_only(request, f"{MANAGE}:create")
    spec = entity(await body(request), "volume_type")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise BadRequest("Invalid input for field/attribute name. Value: "
                         f"{name}. {name!r} is not a valid name")
    specs = spec.get("extra_specs") or {}
    if not isinstance(specs, dict):
        raise BadRequest("Invalid input for field/attribute extra_specs.")
    public = spec.get("os-volume-type-access:is_public", True)
    view = cinder(request).types.create(name.strip(), spec.get("description"),
                                        is_true(str(public)),
                                        {str(k): str(v) for k, v in specs.items()})
    return JSONResponse({"volume_type": view})


async def update(request: Request) -> Response:
    admin_only(request, f"{MANAGE}:update")
    spec = entity(await body(request), "volume_type")
    fields = {k: spec[k] for k in ("name", "description") if k in spec}
    if "is_public" in spec:
        fields["is_public"] = is_true(str(spec["is_public"]))
    if not fields:
        raise BadRequest("Specify volume type name, description, is_public or a combination "
                         "thereof.")
    return JSONResponse({"volume_type": cinder(request).types.update(
        request.path_params["type_id"], fields)})


async def delete(request: Request) -> Response:
    admin_only(request, f"{MANAGE}:delete")
    cinder(request).types.delete(request.path_params["type_id"])
    return Response(status_code=202)


async def specs_index(request: Request) -> Response:
    return JSONResponse({"extra_specs": cinder(request).types.extra_specs(
        caller(request), request.path_params["type_id"])})


async def specs_create(request: Request) -> Response:
    admin_only(request, f"{SPECS}:create")
    specs = (await body(request)).get("extra_specs")
    if not isinstance(specs, dict):
        raise BadRequest("Malformed request body")
    result = cinder(request).types.set_extra_specs(request.path_params["type_id"],
                                                   {str(k): str(v) for k, v in specs.items()})
    return JSONResponse({"extra_specs": {k: result[k] for k in specs}})


async def specs_item(request: Request) -> Response:
    svc = cinder(request)
    type_id, key = request.path_params["type_id"], request.path_params["key"]
    if request.method == "DELETE":
        admin_only(request, f"{SPECS}:delete")
        svc.types.delete_extra_spec(type_id, key)
        return Response(status_code=202)
    if request.method == "PUT":
        admin_only(request, f"{SPECS}:update")
        found = await body(request)
        if key not in found or len(found) != 1:
            raise BadRequest("Request body and URI mismatch")
        svc.types.set_extra_specs(type_id, {key: str(found[key])})
        return JSONResponse({key: str(found[key])})
    specs = svc.types.extra_specs(caller(request), type_id)
    if key not in specs:
        from labkit.cloud.errors import NotFound
        raise NotFound(f"Volume Type {type_id} has no extra specs with key {key}.")
    return JSONResponse({key: specs[key]})


def routes() -> list[Route]:
    return [
        Route("/v3/types", index, methods=["GET"]),
        Route("/v3/types", create, methods=["POST"]),
        Route("/v3/types/{type_id}", show, methods=["GET"]),
        Route("/v3/types/{type_id}", update, methods=["PUT"]),
        Route("/v3/types/{type_id}", delete, methods=["DELETE"]),
        Route("/v3/types/{type_id}/extra_specs", specs_index, methods=["GET"]),
        Route("/v3/types/{type_id}/extra_specs", specs_create, methods=["POST"]),
        Route("/v3/types/{type_id}/extra_specs/{key}", specs_item,
              methods=["GET", "PUT", "DELETE"]),
    ]
