"""Admin views of the deployment: os-services, os-hypervisors, os-availability-zone and
os-aggregates.

Services and hypervisors are identified by UUID (microversion 2.53 on). A service
is "up" while its heartbeats are recent (within service_down_time) and it is not
forced down (servicegroup.is_up). A hypervisor's usage is what placement holds on its
resource provider (so a resize waiting for confirmation shows on both hosts), plus
the host's reserve, as nova's resource tracker reports it.
The lab defines no host aggregates, so os-aggregates lists none; clients such as
`openstack hypervisor show` read the list anyway.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.errors import BOOLEAN, as_bool, policy_check, validate
from labkit.cloud.compute.api.microversion import version
from labkit.cloud.compute.api.servers import iso_micro
from labkit.cloud.compute.api.versions import next_links, page
from labkit.cloud.compute.hosts import INTERNAL_ZONE, ComputeNode, Service
from labkit.cloud.errors import BadRequest, NotFound, ServiceError
from labkit.cloud.http import context, read_json


class HostUptimeNotImplemented(ServiceError):
    """nova's answer when the virt driver cannot say how long its host has been up."""

    status = 501
    title = "Not Implemented"
    default_message = "Virt driver does not implement host uptime function."


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _up(nova: Any, service: Service) -> bool:
    return bool(nova.service_is_up(service))


def _usage(nova: Any, node: ComputeNode) -> dict[str, int]:
    """vCPUs, RAM and disk from placement's usages of the node's provider; running VMs
    from the instances on the host (nova's resource tracker counts those)."""
    try:
        used = nova.placement.usages(node.uuid)
    except NotFound:  # not in placement yet: nothing allocated
        used = {}
    return {"vcpus": used.get("VCPU", 0), "memory_mb": used.get("MEMORY_MB", 0),
            "local_gb": used.get("DISK_GB", 0),
            "running_vms": len(nova.hosts.instance_uuids(node.host))}


def _service(nova: Any, row: Service, request: Request) -> dict[str, Any]:
    shown = {"id": row.uuid, "binary": row.binary, "host": row.host, "zone": row.zone,
             "status": "disabled" if row.disabled else "enabled",
             "state": "up" if _up(nova, row) else "down",
             "disabled_reason": row.disabled_reason,
             "updated_at": iso_micro(row.updated_at)}
    if version(request).at_least("2.11"):  # forced_down came with 2.11
        shown["forced_down"] = row.forced_down
    return shown


def _hypervisor(nova: Any, node: ComputeNode, detail: bool) -> dict[str, Any]:
    service = nova.hosts.compute_service(node.host)
    shown: dict[str, Any] = {
        "id": node.uuid, "hypervisor_hostname": node.hypervisor_hostname,
        "state": "up" if service and _up(nova, service) else "down",
        "status": "disabled" if service and service.disabled else "enabled"}
    if not detail:
        return shown
    used = _usage(nova, node)
    memory_used = used["memory_mb"] + node.reserved_host_memory_mb
    shown.update({
        "vcpus": node.vcpus, "memory_mb": node.memory_mb, "local_gb": node.local_gb,
        "vcpus_used": used["vcpus"], "memory_mb_used": memory_used,
        "local_gb_used": used["local_gb"], "free_ram_mb": node.memory_mb - memory_used,
        "free_disk_gb": node.local_gb - used["local_gb"], "current_workload": 0,
        "running_vms": used["running_vms"],
        "disk_available_least": node.local_gb - used["local_gb"],
        "hypervisor_type": node.hypervisor_type,
        "hypervisor_version": node.hypervisor_version, "host_ip": node.host_ip,
        "cpu_info": node.cpu_info,
        "service": {"host": node.host, "id": service.uuid if service else None,
                    "disabled_reason": service.disabled_reason if service else None}})
    return shown


def routes(nova: Any) -> list[Route]:
    def admin(request: Request, rule: str) -> None:
        policy_check(context(request), rule)

    async def services(request: Request) -> Response:
        admin(request, "os_compute_api:os-services:list")
        q = request.query_params
        rows = [r for r in nova.hosts.services()
                if q.get("host", r.host) == r.host and q.get("binary", r.binary) == r.binary]
        return JSONResponse({"services": [_service(nova, r, request) for r in rows]})

    async def update_service(request: Request) -> Response:
        admin(request, "os_compute_api:os-services:update")
        body = await read_json(request)
        validate(body, {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["enabled", "disabled"]},
            "disabled_reason": {"type": "string", "minLength": 1, "maxLength": 255},
            "forced_down": BOOLEAN}, "additionalProperties": False})
        if not body:
            raise BadRequest("No updates were requested. Fields 'status' or 'forced_down' "
                             "should be specified.")
        if "disabled_reason" in body and body.get("status") != "disabled":
            raise BadRequest("Specifying 'disabled_reason' with status 'enabled' is invalid.")
        values: dict[str, Any] = {}
        if "status" in body:
            values["disabled"] = body["status"] == "disabled"
            values["disabled_reason"] = body.get("disabled_reason")
        if "forced_down" in body:
            values["forced_down"] = as_bool(body["forced_down"])
        row = nova.hosts.set_service(request.path_params["service_id"], **values)
        return JSONResponse({"service": _service(nova, row, request)})

    def _nodes(request: Request) -> list[ComputeNode]:
        nodes = nova.hosts.nodes()
        pattern = request.query_params.get("hypervisor_hostname_pattern")
        if pattern:
            nodes = [n for n in nodes if pattern in n.hypervisor_hostname]
        return page(request, nodes, lambda n: n.uuid)

    def _hypervisors(request: Request, detail: bool) -> Response:
        admin(request, "os_compute_api:os-hypervisors:list")
        with_servers = as_bool(request.query_params.get("with_servers", "false"))
        shown = []
        for node in _nodes(request):
            entry = _hypervisor(nova, node, detail)
            if with_servers:
                entry["servers"] = [{"uuid": i.uuid, "name": i.name}
                                    for i in nova.instances_on(node.host)]
            shown.append(entry)
        body: dict[str, Any] = {"hypervisors": shown}
        links = next_links(request, shown, "os-hypervisors/detail" if detail
                           else "os-hypervisors")
        if links:
            body["hypervisors_links"] = links
        return JSONResponse(body)

    async def hypervisors(request: Request) -> Response:
        return _hypervisors(request, detail=False)

    async def hypervisors_detail(request: Request) -> Response:
        return _hypervisors(request, detail=True)

    def _node(request: Request) -> ComputeNode:
        wanted = request.path_params["hypervisor_id"]
        # ids are UUIDs from 2.53; clients then fall back to a search by name
        if version(request).at_least("2.53") and not _is_uuid(wanted):
            raise BadRequest(f"Invalid uuid {wanted}")
        return nova.hosts.node(wanted)

    async def hypervisor(request: Request) -> Response:
        admin(request, "os_compute_api:os-hypervisors:show")
        return JSONResponse({"hypervisor": _hypervisor(nova, _node(request), detail=True)})

    async def uptime(request: Request) -> Response:
        admin(request, "os_compute_api:os-hypervisors:uptime")
        _node(request)
        # neither driver reads a real host's uptime (the lab's hosts are pretend)
        raise HostUptimeNotImplemented()

    async def aggregates(request: Request) -> Response:
        admin(request, "os_compute_api:os-aggregates:index")
        return JSONResponse({"aggregates": []})

    async def statistics(request: Request) -> Response:
        admin(request, "os_compute_api:os-hypervisors:statistics")
        rows = [_hypervisor(nova, n, detail=True) for n in nova.hosts.nodes()]
        keys = ("vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
                "local_gb_used", "free_ram_mb", "free_disk_gb", "current_workload",
                "running_vms", "disk_available_least")
        totals = {k: sum(r[k] for r in rows) for k in keys}
        return JSONResponse({"hypervisor_statistics": {"count": len(rows), **totals}})

    async def zones(request: Request) -> Response:
        names = sorted({n.availability_zone for n in nova.hosts.nodes()})
        return JSONResponse({"availabilityZoneInfo": [
            {"zoneName": z, "zoneState": {"available": True}, "hosts": None}
            for z in names]})

    async def zones_detail(request: Request) -> Response:
        admin(request, "os_compute_api:os-availability-zone:detail")
        by_zone: dict[str, dict[str, dict[str, Any]]] = {}
        for row in nova.hosts.services():
            hosts = by_zone.setdefault(row.zone, {})
            hosts.setdefault(row.host, {})[row.binary] = {
                "available": _up(nova, row) and not row.disabled,
                "active": not row.disabled, "updated_at": iso_micro(row.updated_at)}
        ordered = sorted(by_zone, key=lambda z: (z == INTERNAL_ZONE, z))
        return JSONResponse({"availabilityZoneInfo": [
            {"zoneName": z, "zoneState": {"available": True}, "hosts": by_zone[z]}
            for z in ordered]})

    return [
        Route("/v2.1/os-services", services, methods=["GET"]),
        Route("/v2.1/os-services/{service_id}", update_service, methods=["PUT"]),
        Route("/v2.1/os-hypervisors", hypervisors, methods=["GET"]),
        Route("/v2.1/os-hypervisors/detail", hypervisors_detail, methods=["GET"]),
        Route("/v2.1/os-hypervisors/statistics", statistics, methods=["GET"]),
        Route("/v2.1/os-hypervisors/{hypervisor_id}", hypervisor, methods=["GET"]),
        Route("/v2.1/os-hypervisors/{hypervisor_id}/uptime", uptime, methods=["GET"]),
        Route("/v2.1/os-aggregates", aggregates, methods=["GET"]),
        Route("/v2.1/os-availability-zone", zones, methods=["GET"]),
        Route("/v2.1/os-availability-zone/detail", zones_detail, methods=["GET"]),
    ]
