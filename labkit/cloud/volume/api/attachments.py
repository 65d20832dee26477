"""/v3/{project_id}/attachments (3.27+; os-complete 3.44): how nova reserves, connects,
completes and ends a volume's attachment."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.errors import BadRequest, Conflict, NotFound
from labkit.cloud.volume.api.common import attachment_view, body, caller, cinder, entity
from labkit.cloud.volume.api.microversion import version
from labkit.cloud.volume.api.volumes import ctx


def _since(request: Request, wanted: str) -> None:
    """Below the microversion that added the method, cinder answers a bare 404."""
    if not version(request).at_least(wanted):
        raise NotFound("The resource could not be found.")


async def index(request: Request) -> Response:
    _since(request, "3.27")
    rows = cinder(request).api.list_attachments(caller(request), dict(request.query_params))
    return JSONResponse({"attachments": [attachment_view(a, False) for a in rows]})


async def detail(request: Request) -> Response:
    _since(request, "3.27")
    rows = cinder(request).api.list_attachments(caller(request), dict(request.query_params))
    return JSONResponse({"attachments": [attachment_view(a, True) for a in rows]})


async def show(request: Request) -> Response:
    _since(request, "3.27")
    row = cinder(request).api.get_attachment(caller(request),
                                             request.path_params["attachment_id"])
    return JSONResponse({"attachment": attachment_view(row, True)})


async def create(request: Request) -> Response:
    _since(request, "3.27")
    spec = entity(await body(request), "attachment")
    allowed = {"instance_uuid", "connector", "volume_uuid"}
    if version(request).at_least("3.54"):
        allowed.add("mode")
    extra = sorted(set(spec) - allowed)
    if extra:
        raise BadRequest("Additional properties are not allowed ("
                         + ", ".join(f"'{k}'" for k in extra)
                         + (" was" if len(extra) == 1 else " were") + " unexpected)")
    if not isinstance(spec.get("volume_uuid"), str):
        raise BadRequest("Invalid input for field/attribute attachment. Value: "
                         f"{spec}. 'volume_uuid' is a required property")
    connector = spec.get("connector")
    if connector is not None and not isinstance(connector, dict):
        raise BadRequest(f"Invalid input for field/attribute connector. Value: {connector}. "
                         f"{connector!r} is not of type 'object', 'null'")
    mode = spec.get("mode") or "null"
    if mode not in ("null", "rw", "ro"):
        raise BadRequest(f"Invalid input for field/attribute mode. Value: {mode}. "
                         f"'{mode}' is not one of ['rw', 'ro']")
    row = await cinder(request).api.attachment_create(
        ctx(request), caller(request), spec["volume_uuid"], spec.get("instance_uuid"),
        connector, mode)
    return JSONResponse({"attachment": attachment_view(row, True)})


async def update(request: Request) -> Response:
    _since(request, "3.27")
    spec = entity(await body(request), "attachment")
    connector = spec.get("connector")
    if not isinstance(connector, dict) or not connector:
        raise BadRequest("Invalid input for field/attribute attachment. Value: "
                         f"{spec}. 'connector' is a required property")
    row = await cinder(request).api.attachment_update(
        ctx(request), caller(request), request.path_params["attachment_id"], connector)
    return JSONResponse({"attachment": attachment_view(row, True)})


async def delete(request: Request) -> Response:
    _since(request, "3.27")
    svc = cinder(request)
    who = caller(request)
    attachment_id = request.path_params["attachment_id"]
    row = svc.api.get_attachment(who, attachment_id)
    if not (who.is_admin or who.is_service) and row.instance_uuid and row.connection_info:
        # cinder refuses users' deletes of attachments a server still uses (bug #2004555):
        # only nova, with its service token, may end them
        raise Conflict(f"Detach volume from instance {row.instance_uuid} using the Compute "
                       "API")
    left = await svc.api.attachment_delete(ctx(request), who, attachment_id)
    return JSONResponse({"attachments": [attachment_view(a, False) for a in left]})


async def action(request: Request) -> Response:
    found = await body(request)
    if "os-complete" not in found:
        raise BadRequest(f"There is no such action: {next(iter(found), '')}")
    _since(request, "3.44")
    if len(found) != 1:
        raise BadRequest("Additional properties are not allowed")
    cinder(request).api.attachment_complete(ctx(request), caller(request),
                                            request.path_params["attachment_id"])
    return Response(status_code=204)


def routes() -> list[Route]:
    return [
        Route("/v3/attachments", index, methods=["GET"]),
        Route("/v3/attachments", create, methods=["POST"]),
        Route("/v3/attachments/detail", detail, methods=["GET"]),
        Route("/v3/attachments/{attachment_id}", show, methods=["GET"]),
        Route("/v3/attachments/{attachment_id}", update, methods=["PUT"]),
        Route("/v3/attachments/{attachment_id}", delete, methods=["DELETE"]),
        Route("/v3/attachments/{attachment_id}/action", action, methods=["POST"]),
    ]
