"""/v2.1/limits and /v2.1/os-quota-sets: a project's quotas and what it uses of them."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.errors import BOOLEAN, MAX_INT, as_bool, policy_check, validate
from labkit.cloud.compute.api.microversion import version
from labkit.cloud.compute.quotas import DEFAULTS
from labkit.cloud.errors import Forbidden
from labkit.cloud.http import context, read_json

# quotas nova dropped from the API at 2.36 (proxies) and 2.57 (personality files)
NETWORK_QUOTAS = {"floating_ips": 10, "fixed_ips": -1, "security_groups": 10,
                  "security_group_rules": 20}
FILE_QUOTAS = ("injected_files", "injected_file_content_bytes", "injected_file_path_bytes")


QUOTA_VALUE: dict[str, Any] = {"type": ["integer", "string"], "pattern": "^-?[0-9]+$",
                               "minimum": -1, "maximum": MAX_INT}


def update_schema(v: Any) -> dict[str, Any]:
    """nova's PUT os-quota-sets body: the quotas shown at this version, and `force`."""
    names = [*DEFAULTS, *NETWORK_QUOTAS]
    if v.at_least("2.36"):
        names = [n for n in names if n not in NETWORK_QUOTAS]
    if v.at_least("2.57"):
        names = [n for n in names if n not in FILE_QUOTAS]
    properties: dict[str, Any] = {n: QUOTA_VALUE for n in names}
    properties["force"] = BOOLEAN
    return {"type": "object", "properties": {"quota_set": {
        "type": "object", "properties": properties, "additionalProperties": False}},
        "required": ["quota_set"], "additionalProperties": False}


def _shown(limits: dict[str, int], v: Any) -> dict[str, int]:
    shown = dict(limits)
    if not v.at_least("2.36"):
        shown.update(NETWORK_QUOTAS)
    if v.at_least("2.57"):
        for key in FILE_QUOTAS:
            shown.pop(key, None)
    return shown


def routes(nova: Any) -> list[Route]:
    async def limits(request: Request) -> Response:
        token = context(request)
        v = version(request)
        project = token.project_id or ""
        if "tenant_id" in request.query_params:
            # another project's limits are for admins (nova's limits:other_project)
            policy_check(token, "os_compute_api:limits:other_project")
            project = request.query_params["tenant_id"]
        q, used = nova.quotas.limits(project), nova.quotas.usage(project)
        groups = nova.server_groups.count(project)
        absolute = {
            "maxTotalInstances": q["instances"], "maxTotalCores": q["cores"],
            "maxTotalRAMSize": q["ram"], "maxServerMeta": q["metadata_items"],
            "maxTotalKeypairs": q["key_pairs"], "maxServerGroups": q["server_groups"],
            "maxServerGroupMembers": q["server_group_members"],
            "totalInstancesUsed": used["instances"], "totalCoresUsed": used["cores"],
            "totalRAMUsed": used["ram"], "totalServerGroupsUsed": groups}
        if not v.at_least("2.36"):
            absolute.update({"maxTotalFloatingIps": 10, "totalFloatingIpsUsed": 0,
                             "maxSecurityGroups": 10, "totalSecurityGroupsUsed": 0,
                             "maxSecurityGroupRules": 20})
        if not v.at_least("2.39"):
            absolute["maxImageMeta"] = 128
        if not v.at_least("2.57"):
            absolute.update({"maxPersonality": q["injected_files"],
                             "maxPersonalitySize": q["injected_file_content_bytes"]})
        return JSONResponse({"limits": {"rate": [], "absolute": absolute}})

    def _project(request: Request) -> str:
        token = context(request)
        project = request.path_params["project_id"]
        if not token.is_admin and project != token.project_id:
            raise Forbidden("Policy doesn't allow os_compute_api:os-quota-sets:show to be "
                            "performed.")
        return project

    async def show(request: Request) -> Response:
        project = _project(request)
        v = version(request)
        limits = _shown(nova.quotas.limits(project), v)
        if request.url.path.endswith("/detail"):
            used = nova.quotas.usage(project)
            body = {k: {"limit": val, "in_use": used.get(k, 0), "reserved": 0}
                    for k, val in limits.items()}
            return JSONResponse({"quota_set": {"id": project, **body}})
        return JSONResponse({"quota_set": {"id": project, **limits}})

    async def defaults(request: Request) -> Response:
        v = version(request)
        return JSONResponse({"quota_set": {"id": request.path_params["project_id"],
                                           **_shown(DEFAULTS, v)}})

    async def update(request: Request) -> Response:
        policy_check(context(request), "os_compute_api:os-quota-sets:update")
        body = await read_json(request)
        validate(body, update_schema(version(request)))
        asked = body["quota_set"]
        # the network quotas of old microversions are accepted but kept by neutron, not here
        values = {k: int(v) for k, v in asked.items() if k in DEFAULTS and v is not None}
        project = request.path_params["project_id"]
        limits = nova.quotas.set_limits(project, values,
                                        force=as_bool(asked.get("force", False)))
        return JSONResponse({"quota_set": _shown(limits, version(request))})

    async def reset(request: Request) -> Response:
        policy_check(context(request), "os_compute_api:os-quota-sets:delete")
        nova.quotas.reset(request.path_params["project_id"])
        return Response(status_code=202)

    return [
        Route("/v2.1/limits", limits, methods=["GET"]),
        Route("/v2.1/os-quota-sets/{project_id}/defaults", defaults, methods=["GET"]),
        Route("/v2.1/os-quota-sets/{project_id}/detail", show, methods=["GET"]),
        Route("/v2.1/os-quota-sets/{project_id}", show, methods=["GET"]),
        Route("/v2.1/os-quota-sets/{project_id}", update, methods=["PUT"]),
        Route("/v2.1/os-quota-sets/{project_id}", reset, methods=["DELETE"]),
    ]
