"""/v2.1/servers/{id}/os-volume_attachments: attach, list, show and detach volumes.

An attachment is named by its volume's id. What one shows depends on the
microversion: id, volumeId, serverId and device; tag from 2.70; delete_on_termination
from 2.79; from 2.89 attachment_id and bdm_uuid in place of id (shown only if the
cloud advertises 2.89). The request body takes tag from 2.49 and
delete_on_termination from 2.79. A `device` in the body is checked for its form and
then ignored, as nova's libvirt driver ignores it: the compute host picks the name.

Attach answers 200 with the attachment (the attach itself goes on on the compute
host; the volume is in-use once it is done); detach answers 202. Swapping a volume
(PUT) is cinder's migration tool and is not offered here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.api.errors import BOOLEAN, as_bool, validate
from labkit.cloud.compute.api.microversion import APIVersion, version
from labkit.cloud.compute.api.versions import MAX_LIMIT
from labkit.cloud.compute.block_devices import BlockDeviceMapping
from labkit.cloud.compute.servers import ServersAPI, is_uuid_like
from labkit.cloud.errors import BadRequest, NotFound
from labkit.cloud.http import context, read_json, request_info

COLLECTION = "/v2.1/servers/{server_id}/os-volume_attachments"
# nova's block_device.match_device, as the schema's pattern
DEVICE: dict[str, Any] = {"type": ["string", "null"],
                          "pattern": "(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$"}
TAG: dict[str, Any] = {"type": "string", "pattern": "^[^,/]*$", "minLength": 1,
                       "maxLength": 60}


def create_schema(v: APIVersion) -> dict[str, Any]:
    properties: dict[str, Any] = {"volumeId": {"type": "string"}, "device": DEVICE}
    if v.at_least("2.49"):
        properties["tag"] = TAG
    if v.at_least("2.79"):
        properties["delete_on_termination"] = BOOLEAN
    return {"type": "object", "properties": {"volumeAttachment": {
        "type": "object", "properties": properties, "required": ["volumeId"],
        "additionalProperties": False}},
        "required": ["volumeAttachment"], "additionalProperties": False}


def _ctx(request: Request) -> MessageContext:
    token = context(request)
    return MessageContext(request_id=request_info(request).request_id, source="nova-api",
                          user_id=token.user_id, project_id=token.project_id,
                          is_admin=token.is_admin)


def attachment_view(bdm: BlockDeviceMapping, v: APIVersion) -> dict[str, Any]:
    """nova's _translate_attachment_detail_view at version `v`."""
    new_ids = v.at_least("2.89")
    shown: dict[str, Any] = {} if new_ids else {"id": bdm.volume_id}
    shown.update(volumeId=bdm.volume_id, serverId=bdm.instance_uuid)
    if bdm.device_name:
        shown["device"] = bdm.device_name
    if v.at_least("2.70"):
        shown["tag"] = bdm.tag
    if v.at_least("2.79"):
        shown["delete_on_termination"] = bdm.delete_on_termination
    if new_ids:
        shown.update(attachment_id=bdm.attachment_id, bdm_uuid=bdm.uuid)
    return shown


def _count(request: Request, name: str) -> int | None:
    """?limit= and ?offset= as nova's common.limited reads them."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} param must be an integer") from exc
    if value < 0:
        raise BadRequest(f"{name} param must be positive")
    return value


def _limited(request: Request, items: list[BlockDeviceMapping]) -> list[BlockDeviceMapping]:
    if version(request).at_least("2.75"):
        unknown = sorted(set(request.query_params) - {"limit", "offset"})
        if unknown:
            listed = ", ".join(f"'{k}'" for k in unknown)
            raise BadRequest(f"Additional properties are not allowed ({listed} "
                             f"{'was' if len(unknown) == 1 else 'were'} unexpected)")
    offset = _count(request, "offset") or 0
    limit = _count(request, "limit")
    limit = MAX_LIMIT if limit is None else min(limit, MAX_LIMIT)
    return items[offset:offset + limit]


def routes(nova: Any) -> list[Route]:
    servers = ServersAPI(nova)

    def mappings(request: Request) -> tuple[str, list[BlockDeviceMapping]]:
        uuid = servers.instance(_ctx(request), request.path_params["server_id"]).uuid
        v = version(request)
        # from 2.89 an attachment is shown with its cinder attachment id, so one still
        # being reserved is left out
        return uuid, [b for b in nova.block_devices.for_instance(uuid)
                      if b.volume_id and (b.attachment_id or not v.at_least("2.89"))]

    async def index(request: Request) -> Response:
        _, bdms = mappings(request)
        v = version(request)
        return JSONResponse({"volumeAttachments": [attachment_view(b, v)
                                                   for b in _limited(request, bdms)]})

    async def show(request: Request) -> Response:
        uuid, bdms = mappings(request)
        volume_id = request.path_params["volume_id"]
        found = next((b for b in bdms if b.volume_id == volume_id), None)
        if found is None:
            raise NotFound(f"Instance {uuid} is not attached to volume {volume_id}")
        return JSONResponse({"volumeAttachment": attachment_view(found, version(request))})

    async def create(request: Request) -> Response:
        v = version(request)
        body = await read_json(request)
        validate(body, create_schema(v))
        asked = body["volumeAttachment"]
        volume_id = asked["volumeId"]
        if not is_uuid_like(volume_id):
            raise BadRequest(f"Invalid input for field/attribute volumeId. Value: "
                             f"{volume_id}. '{volume_id}' is not a 'uuid'")
        server_id = request.path_params["server_id"]
        bdm = await servers.attach_volume(
            _ctx(request), server_id, volume_id, device=asked.get("device"),
            tag=asked.get("tag"),
            delete_on_termination=as_bool(asked.get("delete_on_termination", False)))
        # nova answers with what it reserved; it never showed 2.89's ids here
        shown: dict[str, Any] = {"id": volume_id, "serverId": server_id,
                                 "volumeId": volume_id, "device": bdm.device_name}
        if v.at_least("2.70"):
            shown["tag"] = bdm.tag
        if v.at_least("2.79"):
            shown["delete_on_termination"] = bdm.delete_on_termination
        return JSONResponse({"volumeAttachment": shown})

    async def delete(request: Request) -> Response:
        await servers.detach_volume(_ctx(request), request.path_params["server_id"],
                                    request.path_params["volume_id"])
        return Response(status_code=202)

    return [
        Route(COLLECTION, index, methods=["GET"]),
        Route(COLLECTION, create, methods=["POST"]),
        Route(COLLECTION + "/{volume_id}", show, methods=["GET"]),
        Route(COLLECTION + "/{volume_id}", delete, methods=["DELETE"]),
    ]
