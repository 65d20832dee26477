"""nova.volume.cinder in the embedded cloud: nova's calls to cinder, over cinder's HTTP API.

Nova talks to cinder as any client does, as its service user (nova, admin in project
service), so every call shows in the trace inside the request that caused it. The
calls are the ones nova's attach and detach make with cinder's attachments API
(microversion 3.44, "the new attach flow" nova has used since Queens):

- GET volumes/{id}: what nova-api checks before an attach or a detach;
- POST attachments (volume and instance, no connector): the volume is reserved;
- PUT attachments/{id} with the compute host's connector: cinder exports the volume
  and answers the connection info;
- POST attachments/{id}/action os-complete: the volume is in-use;
- POST volumes/{id}/action os-begin_detaching (os-roll_detaching to undo);
- DELETE attachments/{id}: the export goes, the volume is available again;
- DELETE volumes/{id}: a volume attached with delete_on_termination, at server delete.

Cinder's refusals become nova's exceptions, carrying the message cinder gave, as
nova's translate_*_exception decorators make them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.errors import BadRequest, Forbidden, NotFound, ServiceError

if TYPE_CHECKING:
    from labkit.cloud.service_client import ServiceClient

log = logging.getLogger(__name__)
CINDER = "/volume/v3"
# nova requires cinder 3.44 (attachment complete) for the attachments API
MICROVERSION = "volume 3.44"
VERSION_HEADERS = {"OpenStack-API-Version": MICROVERSION}


class VolumeNotFound(NotFound):
    def __init__(self, volume_id: str) -> None:
        super().__init__(f"Volume {volume_id} could not be found.")


class VolumeAttachmentNotFound(NotFound):
    def __init__(self, attachment_id: str) -> None:
        super().__init__(f"Volume attachment {attachment_id} could not be found.")


class InvalidInput(BadRequest):
    """cinder's 400, as nova re-raises it: "Invalid input received: <cinder's words>"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid input received: {reason}")


class InvalidVolume(BadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid volume: {reason}")


class OverQuota(Forbidden):
    """cinder's 413 where nova re-raises it (OverQuota, a 403 at nova's API)."""


class CinderConnectionFailed(ServiceError):
    """nova's CinderConnectionFailed: no cinder to talk to (a 500 at nova's API)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Connection to cinder host failed: {reason}")


class CinderError(Exception):
    """What cinder answered to a call: status, message, and the request id it gave,
    worded as cinderclient's ClientException prints it."""

    def __init__(self, status: int, message: str, request_id: str | None) -> None:
        self.status = status
        self.message = message
        self.request_id = request_id
        text = f"{message} (HTTP {status})"
        if request_id:
            text += f" (Request-ID: {request_id})"
        super().__init__(text)


def _error(status: int, body: Any, request_id: str | None) -> CinderError:
    """cinder's body is {"<kind>": {"code": N, "message": "..."}}."""
    if isinstance(body, dict) and len(body) == 1:
        inner = next(iter(body.values()))
        if isinstance(inner, dict) and "message" in inner:
            return CinderError(status, str(inner["message"]), request_id)
    return CinderError(status, str(body), request_id)


def _translate(exc: CinderError) -> ServiceError:
    """nova's translate_cinder_exception: 400 InvalidInput, 403 Forbidden."""
    if exc.status == 400:
        return InvalidInput(str(exc))
    if exc.status == 403:
        return Forbidden(str(exc))
    if exc.status == 413:
        return OverQuota(exc.message)
    return ServiceError(f"cinder answered {exc}")


def connection_info_of(attachment: dict[str, Any], volume_id: str) -> dict[str, Any]:
    """nova's _translate_attachment_ref: cinder's attachment API flattens the driver's
    connection info; nova puts "data" back, keeps the attachment's other fields beside
    it, and adds the volume id as the serial."""
    raw = dict(attachment.get("connection_info") or {})
    if not raw:
        return {}
    if "data" in raw and "driver_volume_type" in raw:
        info = dict(raw)
    else:
        raw.pop("attachment_id", None)
        info = {"driver_volume_type": raw.pop("driver_volume_type", None), "data": raw}
        for key in ("status", "instance", "attached_at", "detached_at"):
            info[key] = attachment.get(key)
        for key, value in attachment.items():
            if key not in ("id", "attach_mode", "connection_info", *info):
                info[key] = value
    info.setdefault("serial", volume_id)
    return info


class CinderVolumeAPI:
    """nova.volume.cinder.API over HTTP to /volume/v3/{project_id}, as nova's service user.

    The path carries the project the work is for (ctx.project_id: the user's, or the
    instance's for work nobody asked for), as the user's catalog would give it."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    async def _call(self, ctx: MessageContext, method: str, path: str, *,
                    json: Any = None) -> dict[str, Any]:
        project = ctx.project_id or "service"
        r = await self.client.send(method, f"{CINDER}/{project}{path}",
                                   request_id=ctx.request_id, json=json,
                                   component=ctx.source, headers=VERSION_HEADERS)
        try:
            body = r.json() if r.content else {}
        except ValueError:
            body = r.text
        if r.status_code >= 400:
            raise _error(r.status_code, body, r.headers.get("x-openstack-request-id"))
        return body if isinstance(body, dict) else {}

    async def _volume_call(self, ctx: MessageContext, volume_id: str, method: str, path: str,
                           **kwargs: Any) -> dict[str, Any]:
        """nova's translate_volume_exception: a 404 is VolumeNotFound."""
        try:
            return await self._call(ctx, method, path, **kwargs)
        except CinderError as exc:
            if exc.status == 404:
                raise VolumeNotFound(volume_id) from exc
            raise _translate(exc) from exc

    async def _attachment_call(self, ctx: MessageContext, attachment_id: str, method: str,
                               path: str, **kwargs: Any) -> dict[str, Any]:
        """nova's translate_attachment_exception: a 404 is VolumeAttachmentNotFound."""
        try:
            return await self._call(ctx, method, path, **kwargs)
        except CinderError as exc:
            if exc.status == 404:
                raise VolumeAttachmentNotFound(attachment_id) from exc
            raise _translate(exc) from exc

    # -- volumes

    async def get(self, ctx: MessageContext, volume_id: str) -> dict[str, Any]:
        """The volume as cinder shows it to nova (an admin: every project's)."""
        body = await self._volume_call(ctx, volume_id, "GET", f"/volumes/{volume_id}")
        return dict(body.get("volume") or {})

    async def begin_detaching(self, ctx: MessageContext, volume_id: str) -> None:
        await self._volume_call(ctx, volume_id, "POST", f"/volumes/{volume_id}/action",
                                json={"os-begin_detaching": {}})

    async def roll_detaching(self, ctx: MessageContext, volume_id: str) -> None:
        await self._volume_call(ctx, volume_id, "POST", f"/volumes/{volume_id}/action",
                                json={"os-roll_detaching": {}})

    async def delete(self, ctx: MessageContext, volume_id: str) -> None:
        await self._volume_call(ctx, volume_id, "DELETE", f"/volumes/{volume_id}")

    # -- attachments

    async def attachment_create(self, ctx: MessageContext, volume_id: str,
                                instance_uuid: str) -> dict[str, Any]:
        """A reservation: no connector yet, so cinder exports nothing."""
        body = await self._volume_call(
            ctx, volume_id, "POST", "/attachments",
            json={"attachment": {"volume_uuid": volume_id, "instance_uuid": instance_uuid,
                                 "connector": None}})
        return dict(body.get("attachment") or {})

    async def attachment_update(self, ctx: MessageContext, attachment_id: str,
                                connector: dict[str, Any], volume_id: str) -> dict[str, Any]:
        """The host's connector (its mountpoint inside, as nova passes it): cinder
        exports the volume to that host and answers the attachment with the connection
        info, translated back to nova's shape."""
        body = await self._attachment_call(ctx, attachment_id, "PUT",
                                           f"/attachments/{attachment_id}",
                                           json={"attachment": {"connector": connector}})
        attachment = dict(body.get("attachment") or {})
        attachment["connection_info"] = connection_info_of(attachment, volume_id)
        return attachment

    async def attachment_complete(self, ctx: MessageContext, attachment_id: str) -> None:
        await self._attachment_call(ctx, attachment_id, "POST",
                                    f"/attachments/{attachment_id}/action",
                                    json={"os-complete": None})

    async def attachment_delete(self, ctx: MessageContext, attachment_id: str) -> None:
        """An attachment already gone is no error (nova logs it and goes on)."""
        try:
            await self._attachment_call(ctx, attachment_id, "DELETE",
                                        f"/attachments/{attachment_id}")
        except VolumeAttachmentNotFound:
            log.warning("Attachment %s does not exist. Ignoring.", attachment_id)


class NoVolumeAPI:
    """A cloud without cinder: every call fails as nova's does when cinder is unreachable."""

    REASON = "this cloud runs no block storage service (cinder)"

    def _fail(self) -> CinderConnectionFailed:
        return CinderConnectionFailed(self.REASON)

    async def get(self, ctx: MessageContext, volume_id: str) -> dict[str, Any]:
        raise self._fail()

    async def begin_detaching(self, ctx: MessageContext, volume_id: str) -> None:
        raise self._fail()

    async def roll_detaching(self, ctx: MessageContext, volume_id: str) -> None:
        raise self._fail()

    async def delete(self, ctx: MessageContext, volume_id: str) -> None:
        raise self._fail()

    async def attachment_create(self, ctx: MessageContext, volume_id: str,
                                instance_uuid: str) -> dict[str, Any]:
        raise self._fail()

    async def attachment_update(self, ctx: MessageContext, attachment_id: str,
                                connector: dict[str, Any], volume_id: str) -> dict[str, Any]:
        raise self._fail()

    async def attachment_complete(self, ctx: MessageContext, attachment_id: str) -> None:
        raise self._fail()

    async def attachment_delete(self, ctx: MessageContext, attachment_id: str) -> None:
        raise self._fail()


VolumeAPI = CinderVolumeAPI | NoVolumeAPI
