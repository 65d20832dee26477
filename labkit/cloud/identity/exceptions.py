"""Keystone's refusals and its error body: {"error": {"code", "title", "message"}}."""

from __future__ import annotations

from starlette.responses import JSONResponse

from labkit.cloud.errors import NotFound, ServiceError


class TokenNotFound(NotFound):
    """A subject token that is malformed, not ours, expired or revoked."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Could not find token: {reason}")
        self.reason = reason


def error_response(error: ServiceError) -> JSONResponse:
    body = {"error": {"code": error.status, "title": error.title, "message": error.message}}
    headers = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Keystone uri="/identity"'
    return JSONResponse(body, status_code=error.status, headers=headers)
