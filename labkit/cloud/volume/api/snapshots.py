"""/v3/{project_id}/snapshots: point-in-time copies of a volume (sparse copies of its LV)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.errors import BadRequest
from labkit.cloud.http import is_true
from labkit.cloud.volume.api.common import (
    admin_only,
    body,
    caller,
    cinder,
    entity,
    next_links,
    snapshot_view,
)
from labkit.cloud.volume.api.microversion import version
from labkit.cloud.volume.api.volumes import ctx
from labkit.cloud.volume.volumes import parse_limit

IN_USE_FLAG = ("Since microversion 3.66 the 'force' flag is invalid for this request.  For "
               "backward compatability, however, when the 'force' flag is passed with a value "
               "evaluating to True, it is silently ignored.")
TRUE = ("1", "t", "true", "on", "y", "yes")
FALSE = ("0", "f", "false", "off", "n", "no")


async def _list(request: Request, detail: bool) -> Response:
    params = dict(request.query_params)
    rows, count = cinder(request).api.list_snapshots(caller(request), params)
    if detail:
        items = [snapshot_view(request, r) for r in rows]
    else:
        items = [{k: v for k, v in snapshot_view(request, r).items()
                  if not k.startswith("os-extended")} for r in rows]
    out: dict[str, Any] = {"snapshots": items}
    more = next_links(request, rows, "snapshots", parse_limit(params))
    if more:
        out["snapshots_links"] = more
    if version(request).at_least("3.45") and is_true(params.get("with_count")):
        out["count"] = count
    return JSONResponse(out)


async def index(request: Request) -> Response:
    return await _list(request, False)


async def detail(request: Request) -> Response:
    return await _list(request, True)


async def create(request: Request) -> Response:
    spec = entity(await body(request), "snapshot")
    if not isinstance(spec.get("volume_id"), str):
        raise BadRequest("Invalid input for field/attribute snapshot. Value: "
                         f"{spec}. 'volume_id' is a required property")
    force = False
    if spec.get("force") is not None:
        word = str(spec["force"]).lower()
        if word not in TRUE + FALSE:
            raise BadRequest(f"Invalid input for field/attribute force. Value: {spec['force']}.")
        force = word in TRUE
        if version(request).at_least("3.66") and not force:
            raise BadRequest(IN_USE_FLAG)
    row = cinder(request).api.create_snapshot(
        ctx(request), caller(request), spec["volume_id"],
        spec.get("name", spec.get("display_name")),
        spec.get("description", spec.get("display_description")),
        spec.get("metadata") or {}, force, version(request).at_least("3.66"))
    return JSONResponse({"snapshot": snapshot_view(request, row)}, status_code=202)


async def show(request: Request) -> Response:
    row = cinder(request).api.get_snapshot(caller(request), request.path_params["snapshot_id"])
    return JSONResponse({"snapshot": snapshot_view(request, row)})


async def update(request: Request) -> Response:
    spec = entity(await body(request), "snapshot")
    fields = {k: spec[k] for k in ("name", "description", "metadata") if k in spec}
    if not fields:
        raise BadRequest("Invalid input for field/attribute snapshot. Value: "
                         f"{spec}. {spec} does not have enough properties")
    row = cinder(request).api.update_snapshot(caller(request),
                                              request.path_params["snapshot_id"], fields)
    return JSONResponse({"snapshot": snapshot_view(request, row)})


async def delete(request: Request) -> Response:
    cinder(request).api.delete_snapshot(ctx(request), caller(request),
                                        request.path_params["snapshot_id"])
    return Response(status_code=202)


async def action(request: Request) -> Response:
    found = await body(request)
    name = next(iter(found), "")
    svc = cinder(request)
    snapshot_id = request.path_params["snapshot_id"]
    if name == "os-force_delete":
        who = admin_only(request, "volume_extension:snapshot_admin_actions:force_delete")
        svc.api.delete_snapshot(ctx(request), who, snapshot_id, force=True)
    elif name == "os-reset_status":
        who = admin_only(request, "volume_extension:snapshot_admin_actions:reset_status")
        status = (found[name] or {}).get("status")
        if status not in ("available", "error", "creating", "deleting", "error_deleting"):
            raise BadRequest("Must specify a valid status")
        svc.api.get_snapshot(who, snapshot_id)
        svc.api.set_snapshot_status(ctx(request), snapshot_id, status=status)
    else:
        raise BadRequest(f"There is no such action: {name}")
    return Response(status_code=202)


def routes() -> list[Route]:
    return [
        Route("/v3/snapshots", index, methods=["GET"]),
        Route("/v3/snapshots", create, methods=["POST"]),
        Route("/v3/snapshots/detail", detail, methods=["GET"]),
        Route("/v3/snapshots/{snapshot_id}", show, methods=["GET"]),
        Route("/v3/snapshots/{snapshot_id}", update, methods=["PUT"]),
        Route("/v3/snapshots/{snapshot_id}", delete, methods=["DELETE"]),
        Route("/v3/snapshots/{snapshot_id}/action", action, methods=["POST"]),
    ]


