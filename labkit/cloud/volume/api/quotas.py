"""/v3/{project_id}/os-quota-sets, /limits, /os-services and /os-availability-zone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.errors import BadRequest
from labkit.cloud.http import is_true
from labkit.cloud.volume.api.common import admin_only, body, caller, cinder, entity
from labkit.cloud.volume.api.microversion import version
from labkit.cloud.volume.errors import InvalidInput, policy_refused
from labkit.cloud.volume.models import iso, utcnow


def _target(request: Request, rule: str) -> str:
    who = caller(request)
    target = request.path_params["target"]
    if not who.is_admin and target != who.project_id:
        raise policy_refused(rule)
    return target


async def quota_show(request: Request) -> Response:
    target = _target(request, "volume_extension:quotas:show")
    svc = cinder(request)
    usage = is_true(request.query_params.get("usage"))
    found = svc.quotas.show(target, svc.types.names(), usage)
    return JSONResponse({"quota_set": {"id": target, **found}})


async def quota_defaults(request: Request) -> Response:
    target = _target(request, "volume_extension:quotas:show")
    svc = cinder(request)
    found = svc.quotas.defaults(sorted(set(svc.types.names().values())))
    return JSONResponse({"quota_set": {"id": target, **found}})


async def quota_update(request: Request) -> Response:
    admin_only(request, "volume_extension:quotas:update")
    target = request.path_params["target"]
    svc = cinder(request)
    spec = entity(await body(request), "quota_set")
    known = svc.quotas.resources(sorted(set(svc.types.names().values())))
    values: dict[str, int] = {}
    for key, value in spec.items():
        if key in ("skip_validation", "id", "tenant_id"):
            continue
        if key not in known:
            raise BadRequest(f"Bad key(s) in quota set: {key}")
        try:
            limit = int(value)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("Quota limit must be specified as an integer value.") from exc
        if limit < -1:
            raise InvalidInput("Quota limit must be -1 or greater.")
        values[key] = limit
    svc.quotas.update(target, values)
    return JSONResponse({"quota_set": svc.quotas.show(target, svc.types.names(), False)})


async def quota_delete(request: Request) -> Response:
    admin_only(request, "volume_extension:quotas:delete")
    cinder(request).quotas.delete(request.path_params["target"])
    return Response(status_code=200)


async def limits(request: Request) -> Response:
    svc = cinder(request)
    project = caller(request).project_id or ""
    if version(request).at_least("3.39") and caller(request).is_admin:
        project = request.query_params.get("project_id", project)
    found: dict[str, Any] = svc.quotas.show(project, svc.types.names(), True)
    absolute = {
        "totalSnapshotsUsed": found["snapshots"]["in_use"],
        "maxTotalBackups": found["backups"]["limit"],
        "maxTotalVolumeGigabytes": found["gigabytes"]["limit"],
        "maxTotalSnapshots": found["snapshots"]["limit"],
        "maxTotalBackupGigabytes": found["backup_gigabytes"]["limit"],
        "totalBackupGigabytesUsed": 0,
        "maxTotalVolumes": found["volumes"]["limit"],
        "totalVolumesUsed": found["volumes"]["in_use"],
        "totalBackupsUsed": 0,
        "totalGigabytesUsed": found["gigabytes"]["in_use"]}
    return JSONResponse({"limits": {"rate": [], "absolute": absolute}})


async def services(request: Request) -> Response:
    admin_only(request, "volume_extension:services:index")
    svc = cinder(request)
    ver = version(request)
    q = request.query_params
    now = utcnow()
    out = []
    for row in svc.services():
        if q.get("host") and row.host != q["host"] or q.get("binary") and row.binary != q[
                "binary"]:
            continue
        seen = row.updated_at or row.created_at
        up = abs((now - seen) / timedelta(seconds=1)) <= 60
        entry: dict[str, Any] = {"binary": row.binary, "host": row.host,
                                 "zone": row.availability_zone,
                                 "status": "disabled" if row.disabled else "enabled",
                                 "state": "up" if up else "down",
                                 "updated_at": iso(row.updated_at)}
        if ver.at_least("3.49") and row.binary == "cinder-volume":
            entry["backend_state"] = "up"
        if ver.at_least("3.7"):
            entry["cluster"] = None
        entry["disabled_reason"] = row.disabled_reason
        if row.binary == "cinder-volume":
            entry.update(replication_status="disabled", active_backend_id=None, frozen=False)
        out.append(entry)
    return JSONResponse({"services": out})


async def availability_zones(request: Request) -> Response:
    caller(request)
    zone = cinder(request).availability_zone
    return JSONResponse({"availabilityZoneInfo": [{"zoneName": zone,
                                                   "zoneState": {"available": True}}]})


def routes() -> list[Route]:
    return [
        Route("/v3/os-quota-sets/{target}", quota_show, methods=["GET"]),
        Route("/v3/os-quota-sets/{target}", quota_update, methods=["PUT"]),
        Route("/v3/os-quota-sets/{target}", quota_delete, methods=["DELETE"]),
        Route("/v3/os-quota-sets/{target}/defaults", quota_defaults, methods=["GET"]),
        Route("/v3/limits", limits, methods=["GET"]),
        Route("/v3/os-services", services, methods=["GET"]),
        Route("/v3/os-availability-zone", availability_zones, methods=["GET"]),
    ]


