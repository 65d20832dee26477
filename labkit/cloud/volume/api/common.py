"""What every cinder handler shares: the caller, the request body, links and pagination links,
and the views of volumes, snapshots and attachments as cinder's view builders draw them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request

from labkit.cloud.errors import BadRequest
from labkit.cloud.http import MAX_BODY, context
from labkit.cloud.volume.api.microversion import Version, version
from labkit.cloud.volume.errors import policy_refused
from labkit.cloud.volume.models import Attachment, Caller, Snapshot, Volume, iso

if TYPE_CHECKING:
    from labkit.cloud.volume import VolumeService


def cinder(request: Request) -> VolumeService:
    return request.app.state.cinder


def caller(request: Request) -> Caller:
    token = context(request)
    return Caller(project_id=token.project_id, user_id=token.user_id, is_admin=token.is_admin,
                  roles=tuple(token.role_names))


def admin_only(request: Request, rule: str) -> Caller:
    who = caller(request)
    if not who.is_admin:
        raise policy_refused(rule)
    return who


def url_project(request: Request) -> str:
    """The project id the URL names (or the caller's, for 3.67's URLs without one)."""
    return request.scope.get("cinder.url_project") or caller(request).project_id or ""


async def body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest("Request is too large.")
    if not raw:
        raise BadRequest("The server could not comply with the request since it is either "
                         "malformed or otherwise incorrect.")
    try:
        found = json.loads(raw)
    except ValueError as exc:
        raise BadRequest("Malformed request body") from exc
    if not isinstance(found, dict):
        raise BadRequest("Malformed request body")
    return found


def entity(found: dict[str, Any], key: str) -> dict[str, Any]:
    """The body's `key` object, or cinder's 400 when it is missing or not an object."""
    value = found.get(key)
    if not isinstance(value, dict):
        raise BadRequest(f"Missing required element '{key}' in request body.")
    return value


def base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}/volume"


def links(request: Request, collection: str, ident: str) -> list[dict[str, str]]:
    project = url_project(request)
    base = base_url(request)
    return [{"rel": "self", "href": f"{base}/v3/{project}/{collection}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{project}/{collection}/{ident}"}]


def next_links(request: Request, items: list[Any], collection: str,
               limit: int) -> list[dict[str, str]]:
    """cinder's _get_collection_links: a next link when the page came back full."""
    if not items or len(items) < limit:
        return []
    params = dict(request.query_params)
    params["marker"] = items[-1].id
    params["limit"] = str(limit)
    return [{"rel": "next", "href": f"{base_url(request)}/v3/{url_project(request)}/"
                                    f"{collection}?{urlencode(params)}"}]


# -- views ---------------------------------------------------------------------------------

def attachment_summary(a: Attachment, is_admin_or_service: bool) -> dict[str, Any]:
    """An attached attachment as the volume's `attachments` list shows it."""
    return {"id": a.volume_id, "attachment_id": a.id, "volume_id": a.volume_id,
            "server_id": a.instance_uuid,
            "host_name": a.attached_host if is_admin_or_service else None,
            "device": a.mountpoint, "attached_at": iso(a.attach_time)}


def volume_detail(request: Request, v: Volume, attachments: list[Attachment],
                  type_names: dict[str, str]) -> dict[str, Any]:
    who = caller(request)
    ver: Version = version(request)
    type_name = type_names.get(v.volume_type_id or "")
    view: dict[str, Any] = {
        "id": v.id, "status": v.status, "size": v.size,
        "availability_zone": v.availability_zone, "created_at": iso(v.created_at),
        "updated_at": iso(v.updated_at), "name": v.display_name,
        "description": v.display_description,
        "volume_type": type_name if ver.at_least("3.63") else (type_name or v.volume_type_id),
        "snapshot_id": v.snapshot_id, "source_volid": v.source_volid,
        "metadata": dict(v.metadata_), "links": links(request, "volumes", v.id),
        "user_id": v.user_id, "bootable": str(v.bootable).lower(), "encrypted": False,
        "replication_status": "disabled", "consistencygroup_id": None,
        "multiattach": v.multiattach,
        "attachments": [attachment_summary(a, who.is_admin or who.is_service)
                        for a in attachments if a.attach_status == "attached"],
        "os-vol-tenant-attr:tenant_id": v.project_id,
    }
    if who.is_admin:
        view["migration_status"] = v.migration_status
        view["os-vol-host-attr:host"] = v.host
        view["os-vol-mig-status-attr:migstat"] = v.migration_status
        view["os-vol-mig-status-attr:name_id"] = None
    if v.image_metadata:
        view["volume_image_metadata"] = dict(v.image_metadata)
    if ver.at_least("3.13"):
        view["group_id"] = None
    if who.is_admin and ver.at_least("3.21"):
        view["provider_id"] = None
    if ver.at_least("3.48"):
        # tgtadm's targets are one per volume: not shared (SHARED_TARGET is False)
        view["shared_targets"] = False
        view["service_uuid"] = v.service_uuid
    if who.is_admin and ver.at_least("3.61"):
        view["cluster_name"] = None
    if ver.at_least("3.63"):
        view["volume_type_id"] = v.volume_type_id
    if ver.at_least("3.65"):
        view["consumes_quota"] = True
    return view


def volume_summary(request: Request, v: Volume) -> dict[str, Any]:
    return {"id": v.id, "name": v.display_name, "links": links(request, "volumes", v.id)}


def snapshot_view(request: Request, s: Snapshot) -> dict[str, Any]:
    ver = version(request)
    view: dict[str, Any] = {
        "id": s.id, "created_at": iso(s.created_at), "updated_at": iso(s.updated_at),
        "name": s.display_name, "description": s.display_description,
        "volume_id": s.volume_id, "status": s.status, "size": s.volume_size,
        "metadata": dict(s.metadata_),
        "os-extended-snapshot-attributes:progress": s.progress,
        "os-extended-snapshot-attributes:project_id": s.project_id}
    if ver.at_least("3.14"):
        view["group_snapshot_id"] = None
    if ver.at_least("3.41"):
        view["user_id"] = s.user_id
    if ver.at_least("3.65"):
        view["consumes_quota"] = True
    return view


def attachment_view(a: Attachment, detail: bool) -> dict[str, Any]:
    """cinder's attachments view builder: summary, or detail with the connection info."""
    view: dict[str, Any] = {"id": a.id, "status": a.attach_status,
                            "instance": a.instance_uuid, "volume_id": a.volume_id}
    if detail:
        view.update(attached_at=iso(a.attach_time) or "",
                    detached_at=iso(a.detach_time) or "", attach_mode=a.attach_mode,
                    connection_info=a.connection_info)
    return view
