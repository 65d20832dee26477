"""/v2.1/os-server-external-events: how neutron tells nova a port changed (admin only).

Each event names a server, an event (network-vif-plugged, network-vif-unplugged,
network-vif-deleted, network-changed, and the volume and power events of later
microversions) and usually a tag (the port id). As nova does, the API answers for each
event (code 200 accepted, 404 no such server, 422 the server has no host yet, 400 a
volume-extended without its tag) and overall 200, 207 when some failed, 404 when none
was accepted; accepted events are cast to the compute host of their server.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.bus import MessageContext, NoSuchTopic
from labkit.cloud.compute.api.errors import policy_check, validate
from labkit.cloud.compute.api.microversion import APIVersion, version
from labkit.cloud.compute.instances import Instance
from labkit.cloud.errors import NotFound
from labkit.cloud.http import context, read_json, request_info

NETWORK_EVENTS = ["network-changed", "network-vif-plugged", "network-vif-unplugged",
                  "network-vif-deleted"]
# events later microversions added, by the version that added them
LATER_EVENTS = {"volume-extended": "2.51", "power-update": "2.76",
                "accelerator-request-bound": "2.82"}
STATUSES = ["failed", "completed", "in-progress"]
POLICY = "os_compute_api:os-server-external-events:create"


def create_schema(v: APIVersion) -> dict[str, Any]:
    names = NETWORK_EVENTS + [n for n, since in LATER_EVENTS.items() if v.at_least(since)]
    return {
        "type": "object",
        "properties": {"events": {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "properties": {
                "server_uuid": {"type": "string", "format": "uuid"},
                "name": {"type": "string", "enum": names},
                "status": {"type": "string", "enum": STATUSES},
                "tag": {"type": "string", "maxLength": 255}},
                "required": ["server_uuid", "name"], "additionalProperties": False}}},
        "required": ["events"], "additionalProperties": False}


def routes(nova: Any) -> list[Route]:
    async def create(request: Request) -> Response:
        token = context(request)
        policy_check(token, POLICY)
        body = await read_json(request)
        validate(body, create_schema(version(request)))
        events: list[dict[str, Any]] = body["events"]
        uuids = sorted({e["server_uuid"] for e in events})
        with nova.database.session() as s:
            # nova looks them up whatever their state, deleted ones included
            found = {i.uuid: (i.host, i.deleted)
                     for i in s.scalars(select(Instance).where(Instance.uuid.in_(uuids)))}
        answered: list[dict[str, Any]] = []
        accepted: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        result = 200
        for event in events:
            shown = copy.deepcopy(event)
            answered.append(shown)
            sent = {"server_uuid": event["server_uuid"], "name": event["name"],
                    "status": event.get("status", "completed"), "tag": event.get("tag")}
            host, _deleted = found.get(event["server_uuid"], (None, False))
            if event["server_uuid"] not in found:
                shown.update(status="failed", code=404)
                result = 207
            elif event["name"] == "volume-extended" and event.get("tag") is None:
                shown.update(status="failed", code=400)
                result = 207
            elif host:
                accepted[host].append(sent)
                shown.update(status="completed", code=200)
            else:
                shown.update(status="failed", code=422)
                result = 207
        if not accepted:
            raise NotFound("No instances found for any event")
        ctx = MessageContext(request_id=request_info(request).request_id, source="nova-api",
                             user_id=token.user_id, project_id=token.project_id,
                             is_admin=token.is_admin)
        for host, sent_events in accepted.items():
            try:
                nova.bus.cast(ctx, f"compute.{host}", "external_instance_event",
                              events=sent_events)
            except NoSuchTopic:
                continue  # the host's nova-compute is gone: the events are lost, as in nova
        return JSONResponse({"events": answered}, status_code=result)

    return [Route("/v2.1/os-server-external-events", create, methods=["POST"])]
