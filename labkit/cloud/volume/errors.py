"""Cinder's refusals and its fault body, `{"<kind>": {"code": N, "message": "..."}}`.

The models raise these (or the shared errors of labkit.cloud.errors) and never see
HTTP; the API turns them into the body cinder's `wsgi.Fault` writes, the kind named
after the status (badRequest, itemNotFound, overLimit, ...; computeFault otherwise).
Cinder's own exceptions put their class's prefix in the message ("Invalid volume: ...",
"Invalid input received: ..."); the helpers here build those messages.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceError

# cinder.api.openstack.wsgi.Fault._fault_names
KINDS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
         405: "badMethod", 409: "conflictingRequest", 413: "overLimit",
         415: "badMediaType", 501: "notImplemented", 503: "serviceUnavailable"}
# webob's explanation for a bare HTTPBadRequest (what cinder answers for a TypeError)
WEBOB_400 = ("The server could not comply with the request since it is either malformed "
             "or otherwise incorrect.")


class InvalidVolume(BadRequest):
    """cinder.exception.InvalidVolume."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid volume: {reason}")


class InvalidInput(BadRequest):
    """cinder.exception.InvalidInput."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid input received: {reason}")


class InvalidSnapshot(BadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid snapshot: {reason}")


class ResourceConflict(Conflict):
    def __init__(self, reason: str) -> None:
        super().__init__(f"Resource conflict: {reason}")


class QuotaError(ServiceError):
    """413 overLimit; cinder's FaultWrapper names the exception class before its message
    (QuotaError is 'safe') and adds retryAfter from its Retry-After header."""

    status = 413
    title = "Request Entity Too Large"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")


def volume_limit_exceeded(allowed: int, name: str = "volumes") -> QuotaError:
    return QuotaError("VolumeLimitExceeded", f"Maximum number of volumes allowed ({allowed}) "
                      f"exceeded for quota '{name}'.")


def snapshot_limit_exceeded(allowed: int) -> QuotaError:
    return QuotaError("SnapshotLimitExceeded",
                      f"Maximum number of snapshots allowed ({allowed}) exceeded")


def size_exceeds_quota(name: str, requested: int, quota: int, consumed: int) -> QuotaError:
    return QuotaError("VolumeSizeExceedsAvailableQuota",
                      f"Requested volume or snapshot exceeds allowed {name} quota. Requested "
                      f"{requested}G, quota is {quota}G and {consumed}G has been consumed.")


def volume_not_found(volume_id: str) -> NotFound:
    return NotFound(f"Volume {volume_id} could not be found.")


def snapshot_not_found(snapshot_id: str) -> NotFound:
    return NotFound(f"Snapshot {snapshot_id} could not be found.")


def type_not_found(type_id: str) -> NotFound:
    return NotFound(f"Volume type {type_id} could not be found.")


def attachment_not_found(attachment_id: str) -> NotFound:
    return NotFound(f"Volume attachment could not be found with filter: "
                    f"attachment_id = {attachment_id}.")


def policy_refused(rule: str) -> Forbidden:
    """cinder's PolicyNotAuthorized wording."""
    return Forbidden(f"Policy doesn't allow {rule} to be performed.")


def fault_body(error: ServiceError) -> dict[str, dict[str, object]]:
    kind = KINDS.get(error.status, "computeFault")
    body: dict[str, object] = {"code": error.status, "message": error.message}
    if isinstance(error, QuotaError):
        body["retryAfter"] = "0"
    return {kind: body}


def fault_response(error: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    extra = dict(headers or {})
    if isinstance(error, QuotaError):
        extra["Retry-After"] = "0"
    return JSONResponse(fault_body(error), status_code=error.status, headers=extra)
