"""/v2.1/os-simple-tenant-usage: what each project's servers used over a period.

As nova computes it: every instance launched before the period's end and not
terminated before its start counts for the hours it ran inside the period (deleted
ones too, as "terminated"); a project's totals multiply each server's vCPUs, RAM and
disk by those hours. The period ends no later than now. Listing every project is
for admins; a member may see its own project. From 2.40 the server usages page with
limit and marker (ordered by project, then instance uuid).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.errors import policy_check
from labkit.cloud.compute.api.microversion import version
from labkit.cloud.compute.api.versions import MAX_LIMIT, limit_and_marker, next_links
from labkit.cloud.compute.instances import Instance
from labkit.cloud.errors import BadRequest, Forbidden
from labkit.cloud.http import context

COLLECTION = "os-simple-tenant-usage"
# the forms nova's _parse_datetime accepts for start and end
FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S.%f")


def parse_moment(text: str | None, now: float) -> float:
    """A query's start or end as seconds since the epoch (UTC); none given: now."""
    if not text:
        return now
    for fmt in FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise BadRequest("Invalid datetime string: Datetime is in invalid format")


def shown_time(moment: float | None) -> str | None:
    """As nova serialises its naive UTC datetimes: microseconds, no zone."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def hours_in(instance: Instance, start: float, stop: float) -> float:
    """The hours the instance ran inside [start, stop] (nova's _hours_for)."""
    launched, terminated = instance.launched_at, instance.terminated_at
    if launched is None or launched > stop:
        return 0.0
    if terminated is not None and terminated < start:
        return 0.0
    end = min(stop, terminated) if terminated is not None else stop
    return (end - max(launched, start)) / 3600.0


def server_usage(instance: Instance, start: float, stop: float, now: float) -> dict[str, Any]:
    flavor = instance.flavor
    ended = instance.terminated_at
    started = instance.launched_at or instance.created_at
    return {
        "instance_id": instance.uuid, "name": instance.display_name,
        "tenant_id": instance.project_id, "hours": hours_in(instance, start, stop),
        "flavor": flavor.get("name", ""), "vcpus": flavor["vcpus"],
        "memory_mb": flavor["memory_mb"],
        "local_gb": flavor["root_gb"] + flavor.get("ephemeral_gb", 0),
        "state": "terminated" if ended is not None else instance.vm_state,
        "started_at": shown_time(started), "ended_at": shown_time(ended),
        "uptime": int((ended if ended is not None else now) - started)}


def tenant_usages(nova: Any, start: float, stop: float, project_id: str | None,
                  detailed: bool, limit: int, marker: str | None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per project: totals (and server_usages when detailed); and every server usage
    of the page (for the next link)."""
    with nova.database.session() as s:
        query = select(Instance).where(
            or_(Instance.terminated_at.is_(None), Instance.terminated_at > start),
            Instance.launched_at < stop)
        if project_id is not None:
            query = query.where(Instance.project_id == project_id)
        if marker is not None:
            after = s.scalar(select(Instance).where(Instance.uuid == marker))
            if after is None:
                raise BadRequest(f"Marker {marker} could not be found.")
            query = query.where(or_(
                Instance.project_id > after.project_id,
                (Instance.project_id == after.project_id) & (Instance.uuid > after.uuid)))
        instances = list(s.scalars(query.order_by(Instance.project_id, Instance.uuid)
                                   .limit(limit)))
    now = datetime.now(UTC).timestamp()
    by_project: dict[str, dict[str, Any]] = {}
    servers = []
    for instance in instances:
        info = server_usage(instance, start, stop, now)
        summary = by_project.get(info["tenant_id"])
        if summary is None:
            summary = by_project[info["tenant_id"]] = {
                "tenant_id": info["tenant_id"], "total_local_gb_usage": 0,
                "total_vcpus_usage": 0, "total_memory_mb_usage": 0, "total_hours": 0,
                "start": shown_time(start), "stop": shown_time(stop)}
            if detailed:
                summary["server_usages"] = []
        summary["total_local_gb_usage"] += info["local_gb"] * info["hours"]
        summary["total_vcpus_usage"] += info["vcpus"] * info["hours"]
        summary["total_memory_mb_usage"] += info["memory_mb"] * info["hours"]
        summary["total_hours"] += info["hours"]
        servers.append(info)
        if detailed:
            summary["server_usages"].append(info)
    return list(by_project.values()), servers


def routes(nova: Any) -> list[Route]:
    def period(request: Request) -> tuple[float, float]:
        now = datetime.now(UTC).timestamp()
        start = parse_moment(request.query_params.get("start"), now)
        stop = parse_moment(request.query_params.get("end"), now + 1e-6)
        if not start < stop:
            raise BadRequest("Invalid start time. The start time cannot occur after the "
                             "end time.")
        return start, min(stop, now)

    def paging(request: Request) -> tuple[int, str | None, bool]:
        """limit and marker from 2.40 (and a next link); before, nova still stops at its
        max_limit (1000) servers."""
        if version(request).at_least("2.40"):
            limit, marker = limit_and_marker(request)
            return limit, marker, True
        return MAX_LIMIT, None, False

    async def index(request: Request) -> Response:
        policy_check(context(request), "os_compute_api:os-simple-tenant-usage:list")
        start, stop = period(request)
        detailed = request.query_params.get("detailed", "0") == "1"
        limit, marker, links = paging(request)
        usages, servers = tenant_usages(nova, start, stop, None, detailed, limit, marker)
        body: dict[str, Any] = {"tenant_usages": usages}
        found = next_links(request, servers, COLLECTION, "instance_id") if links else []
        if found:
            body["tenant_usages_links"] = found
        return JSONResponse(body)

    async def show(request: Request) -> Response:
        token = context(request)
        project_id = request.path_params["tenant_id"]
        # a member reads its own project's usage; another project's is for admins
        if not token.is_admin and project_id != token.project_id:
            raise Forbidden("Policy doesn't allow os_compute_api:os-simple-tenant-usage:show "
                            "to be performed.")
        start, stop = period(request)
        limit, marker, links = paging(request)
        usages, servers = tenant_usages(nova, start, stop, project_id, True, limit, marker)
        body: dict[str, Any] = {"tenant_usage": usages[0] if usages else {}}
        found = (next_links(request, servers, f"{COLLECTION}/{project_id}", "instance_id")
                 if links else [])
        if found:
            body["tenant_usage_links"] = found
        return JSONResponse(body)

    return [
        Route(f"/v2.1/{COLLECTION}", index, methods=["GET"]),
        Route(f"/v2.1/{COLLECTION}/{{tenant_id}}", show, methods=["GET"]),
    ]
