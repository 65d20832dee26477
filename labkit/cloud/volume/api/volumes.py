"""/v3/{project_id}/volumes: list, detail, create, show, update, delete, metadata, actions."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.bus import MessageContext
from labkit.cloud.errors import BadRequest
from labkit.cloud.http import is_true, request_info
from labkit.cloud.volume.api.common import (
    admin_only,
    body,
    caller,
    cinder,
    entity,
    next_links,
    volume_detail,
    volume_summary,
)
from labkit.cloud.volume.api.microversion import version
from labkit.cloud.volume.errors import InvalidInput, InvalidVolume
from labkit.cloud.volume.volumes import parse_limit

STATUSES = ("available", "error", "creating", "deleting", "in-use", "attaching",
            "detaching", "error_deleting", "maintenance", "reserved", "error_extending",
            "extending", "downloading")


def ctx(request: Request) -> MessageContext:
    who = caller(request)
    return MessageContext(request_id=request_info(request).request_id, source="cinder-api",
                          user_id=who.user_id, project_id=who.project_id,
                          is_admin=who.is_admin)


def _detail(request: Request, volume: Any) -> dict[str, Any]:
    svc = cinder(request)
    atts = svc.api.attachments_of([volume.id])[volume.id]
    return volume_detail(request, volume, atts, svc.types.names())


async def _list(request: Request, detail: bool) -> Response:
    svc = cinder(request)
    params = dict(request.query_params)
    ver = version(request)
    rows, count = svc.api.list(caller(request), params, ver.at_least)
    if detail:
        atts = svc.api.attachments_of([r.id for r in rows])
        names = svc.types.names()
        items = [volume_detail(request, r, atts[r.id], names) for r in rows]
    else:
        items = [volume_summary(request, r) for r in rows]
    out: dict[str, Any] = {"volumes": items}
    more = next_links(request, rows, "volumes/detail" if detail else "volumes",
                      parse_limit(params))
    if more:
        out["volumes_links"] = more
    if ver.at_least("3.45") and is_true(params.get("with_count")):
        out["count"] = count
    return JSONResponse(out)


async def index(request: Request) -> Response:
    return await _list(request, detail=False)


async def detail(request: Request) -> Response:
    return await _list(request, detail=True)


async def create(request: Request) -> Response:
    spec = entity(await body(request), "volume")
    metadata = spec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRequest("Invalid input for field/attribute metadata. Value: "
                         f"{metadata}. {metadata!r} is not of type 'object'")
    wanted = {"size": spec.get("size"),
              "name": spec.get("name", spec.get("display_name")),
              "description": spec.get("description", spec.get("display_description")),
              "volume_type": spec.get("volume_type"), "metadata": metadata,
              "image_id": spec.get("imageRef") or spec.get("image_id"),
              "snapshot_id": spec.get("snapshot_id"), "source_volid": spec.get("source_volid"),
              "availability_zone": spec.get("availability_zone"),
              "multiattach": spec.get("multiattach", False)}
    svc = cinder(request)
    volume = svc.api.create(ctx(request), caller(request), wanted)
    return JSONResponse({"volume": _detail(request, volume)}, status_code=202)


async def show(request: Request) -> Response:
    svc = cinder(request)
    volume = svc.api.get(caller(request), request.path_params["volume_id"])
    return JSONResponse({"volume": _detail(request, volume)})


async def update(request: Request) -> Response:
    spec = entity(await body(request), "volume")
    fields = {}
    for key, legacy in (("name", "display_name"), ("description", "display_description")):
        if key in spec or legacy in spec:
            fields[key] = spec.get(key, spec.get(legacy))
    if "metadata" in spec:
        if not isinstance(spec["metadata"], dict):
            raise BadRequest("Invalid input for field/attribute metadata.")
        fields["metadata"] = spec["metadata"]
    if not fields:
        raise BadRequest("Invalid input for field/attribute volume. Value: "
                         f"{spec}. {spec} does not have enough properties")
    svc = cinder(request)
    volume = svc.api.update(caller(request), request.path_params["volume_id"], fields)
    return JSONResponse({"volume": _detail(request, volume)})


async def delete(request: Request) -> Response:
    q = request.query_params
    cinder(request).api.delete(ctx(request), caller(request), request.path_params["volume_id"],
                               cascade=is_true(q.get("cascade")), force=is_true(q.get("force")))
    return Response(status_code=202)


# -- metadata ------------------------------------------------------------------------------

async def metadata_show(request: Request) -> Response:
    volume = cinder(request).api.get(caller(request), request.path_params["volume_id"])
    return JSONResponse({"metadata": dict(volume.metadata_)})


async def metadata_set(request: Request) -> Response:
    found = await body(request)
    metadata = found.get("metadata")
    if not isinstance(metadata, dict):
        raise BadRequest("Malformed request body")
    result = cinder(request).api.set_metadata(caller(request), request.path_params["volume_id"],
                                              metadata, replace=request.method == "PUT")
    return JSONResponse({"metadata": result})


async def metadata_item(request: Request) -> Response:
    svc = cinder(request)
    volume_id, key = request.path_params["volume_id"], request.path_params["key"]
    who = caller(request)
    if request.method == "DELETE":
        svc.api.delete_metadata(who, volume_id, key)
        return Response(status_code=200)
    if request.method == "PUT":
        meta = (await body(request)).get("meta")
        if not isinstance(meta, dict) or key not in meta or len(meta) != 1:
            raise BadRequest("Request body and URI mismatch")
        svc.api.set_metadata(who, volume_id, meta, replace=False)
        return JSONResponse({"meta": meta})
    volume = svc.api.get(who, volume_id)
    if key not in volume.metadata_:
        from labkit.cloud.errors import NotFound
        raise NotFound(f"Volume {volume_id} has no metadata with key {key}.")
    return JSONResponse({"meta": {key: volume.metadata_[key]}})


# -- actions -------------------------------------------------------------------------------

async def action(request: Request) -> Response:
    found = await body(request)
    if len(found) != 1:
        raise BadRequest("Malformed request body")
    name, args = next(iter(found.items()))
    svc = cinder(request)
    volume_id = request.path_params["volume_id"]
    who = caller(request)
    c = ctx(request)
    ver = version(request)
    if name == "os-extend":
        if not isinstance(args, dict) or "new_size" not in args:
            raise BadRequest("Invalid input for field/attribute os-extend. Value: "
                             f"{args}. 'new_size' is a required property")
        svc.api.extend(c, who, volume_id, args["new_size"], ver.at_least("3.42"))
    elif name == "os-reset_status":
        admin_only(request, "volume_extension:volume_admin_actions:reset_status")
        values = _reset_values(args)
        svc.api.reset_status(c, who, volume_id, values)
    elif name == "os-force_delete":
        admin_only(request, "volume_extension:volume_admin_actions:force_delete")
        svc.api.delete(c, who, volume_id, force=True)
    elif name == "os-begin_detaching":
        svc.api.begin_detaching(c, who, volume_id)
    elif name == "os-roll_detaching":
        svc.api.roll_detaching(c, who, volume_id)
    elif name == "os-reserve":
        svc.api.reserve(c, who, volume_id)
    elif name == "os-unreserve":
        svc.api.unreserve(c, who, volume_id)
    elif name == "os-extend_volume_completion" and ver.at_least("3.71"):
        admin_only(request, "volume:extend_volume_completion")
        volume = svc.api.get(who, volume_id)
        if volume.status != "extending":
            raise InvalidVolume("Volume is not being extended.")
        # this backend extends at once, never waiting for nova: nothing was stored to finish
        raise InvalidVolume("Required volume admin metadata is malformed or missing.")
    else:
        raise BadRequest(f"There is no such action: {name}")
    return Response(status_code=202)


def _reset_values(args: Any) -> dict[str, Any]:
    if not isinstance(args, dict) or not args:
        raise BadRequest("Must specify 'status', 'attach_status' or 'migration_status' for "
                         "update.")
    values: dict[str, Any] = {}
    if "status" in args:
        if args["status"] not in STATUSES:
            raise InvalidInput("Must specify a valid status")
        values["status"] = args["status"]
    if "attach_status" in args:
        if args["attach_status"] not in ("attached", "detached"):
            raise InvalidInput("Must specify a valid attach status")
        values["attach_status"] = args["attach_status"]
    if "migration_status" in args:
        values["migration_status"] = args["migration_status"]
    if not values:
        raise BadRequest("Must specify 'status', 'attach_status' or 'migration_status' for "
                         "update.")
    return values


def routes() -> list[Route]:
    return [
        Route("/v3/volumes", index, methods=["GET"]),
        Route("/v3/volumes", create, methods=["POST"]),
        Route("/v3/volumes/detail", detail, methods=["GET"]),
        Route("/v3/volumes/{volume_id}", show, methods=["GET"]),
        Route("/v3/volumes/{volume_id}", update, methods=["PUT"]),
        Route("/v3/volumes/{volume_id}", delete, methods=["DELETE"]),
        Route("/v3/volumes/{volume_id}/action", action, methods=["POST"]),
        Route("/v3/volumes/{volume_id}/metadata", metadata_show, methods=["GET"]),
        Route("/v3/volumes/{volume_id}/metadata", metadata_set, methods=["POST", "PUT"]),
        Route("/v3/volumes/{volume_id}/metadata/{key}", metadata_item,
              methods=["GET", "PUT", "DELETE"]),
    ]
