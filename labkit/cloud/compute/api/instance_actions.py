"""/v2.1/servers/{id}/os-instance-actions: what was done to a server, and its events.

One action per request (create, stop, delete, ...) with its request id; each action
has events (compute__do_build_and_run_instance, compute_stop_instance, and
conductor_schedule_and_build_instances when scheduling fails) with start, finish,
result and host, as nova records them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.microversion import version
from labkit.cloud.compute.api.servers import host_id, iso_micro
from labkit.cloud.compute.instances import InstanceAction, InstanceActionEvent
from labkit.cloud.errors import NotFound
from labkit.cloud.http import context


def _action(row: InstanceAction, v: Any) -> dict[str, Any]:
    shown = {"action": row.action, "instance_uuid": row.instance_uuid,
             "request_id": row.request_id, "user_id": row.user_id,
             "project_id": row.project_id, "start_time": iso_micro(row.start_time),
             "message": row.message}
    if v.at_least("2.58"):
        shown["updated_at"] = iso_micro(row.updated_at)
    return shown


def routes(nova: Any) -> list[Route]:
    def instance(request: Request) -> Any:
        token = context(request)
        with nova.database.session() as s:
            # a deleted server's history can be read from 2.21
            return nova.instances.get(s, request.path_params["server_id"],
                                      None if token.is_admin else token.project_id,
                                      include_deleted=version(request).at_least("2.21"))

    async def index(request: Request) -> Response:
        server = instance(request)
        v = version(request)
        with nova.database.session() as s:
            rows = s.scalars(select(InstanceAction)
                             .where(InstanceAction.instance_uuid == server.uuid)
                             .order_by(InstanceAction.start_time.desc(),
                                       InstanceAction.id.desc())).all()
            return JSONResponse({"instanceActions": [_action(r, v) for r in rows]})

    async def show(request: Request) -> Response:
        server = instance(request)
        v = version(request)
        admin = context(request).is_admin
        request_id = request.path_params["request_id"]
        with nova.database.session() as s:
            row = s.scalar(select(InstanceAction).where(
                InstanceAction.instance_uuid == server.uuid,
                InstanceAction.request_id == request_id))
            if row is None:
                raise NotFound(f"Action {request_id} not found")
            events = s.scalars(select(InstanceActionEvent)
                               .where(InstanceActionEvent.action_id == row.id)
                               .order_by(InstanceActionEvent.id)).all()
            shown = _action(row, v)
            listed = []
            for e in events:
                event: dict[str, Any] = {"event": e.event, "start_time": iso_micro(e.start_time),
                                         "finish_time": iso_micro(e.finish_time),
                                         "result": e.result}
                # tracebacks are for admins, and so was the host until 2.62
                if admin:
                    event["traceback"] = e.traceback
                if v.at_least("2.62"):
                    event["hostId"] = host_id(server.project_id, e.host)
                    if admin:
                        event["host"] = e.host or ""
                listed.append(event)
            # before 2.51 only admins see the events
            if admin or v.at_least("2.51"):
                shown["events"] = listed
            return JSONResponse({"instanceAction": shown})

    return [
        Route("/v2.1/servers/{server_id}/os-instance-actions", index, methods=["GET"]),
        Route("/v2.1/servers/{server_id}/os-instance-actions/{request_id}", show,
              methods=["GET"]),
    ]
