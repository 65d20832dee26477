"""Keystone's refusals and its error body: {"error": {"code", "title", "message"}}."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labkit.cloud.errors import BadRequest, Conflict, MethodNotAllowed, NotFound, ServiceError


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


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    known = {404: NotFound(), 405: MethodNotAllowed()}
    return error_response(known.get(exc.status_code) or BadRequest(str(exc.detail)))


async def _integrity_error(request: Request, exc: Exception) -> Response:
    return error_response(Conflict("The request conflicts with what is stored: "
                                   f"{getattr(exc, 'orig', exc)}."))


async def _unexpected(request: Request, exc: Exception) -> Response:
    return error_response(ServiceError())


def exception_handlers() -> dict[type[Exception], object]:
    """Starlette handlers that answer every failure in keystone's error body."""
    return {ServiceError: _service_error, HTTPException: _http_error,
            IntegrityError: _integrity_error, Exception: _unexpected}
