"""Placement's refusals and its error body.

Placement answers every error as `{"errors": [{"status", "title", "detail", "request_id"}]}`,
adding `"code"` from microversion 1.23 on. The refusals below carry the code placement
gives that case (`placement.undefined_code` when it gives none).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labkit.cloud.errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    ServiceError,
)
from labkit.cloud.http import request_info

DEFAULT_CODE = "placement.undefined_code"
MICROVERSION_KEY = "placement.microversion"  # where the request's microversion is kept


class ConcurrentUpdate(Conflict):
    """A generation did not match: someone else changed the provider or consumer first."""

    code = "placement.concurrent_update"


class InventoryInUse(Conflict):
    code = "placement.inventory.inuse"


class DuplicateName(Conflict):
    code = "placement.duplicate_name"


class ProviderInUse(Conflict):
    code = "placement.resource_provider.inuse"


class CannotDeleteParent(Conflict):
    code = "placement.resource_provider.cannot_delete_parent"


class ProviderNotFound(NotFound):
    code = "placement.resource_provider.not_found"


class DuplicateQueryParam(BadRequest):
    code = "placement.query.duplicate_key"


def error_body(error: ServiceError, request_id: str | None, with_code: bool) -> dict:
    entry: dict[str, object] = {"status": error.status, "title": error.title,
                                "detail": error.message, "request_id": request_id}
    if with_code:
        entry["code"] = getattr(error, "code", DEFAULT_CODE)
    return {"errors": [entry]}


def error_response(request: Request, error: ServiceError) -> JSONResponse:
    """The error in placement's body, with the code when the microversion shows codes."""
    try:
        request_id: str | None = request_info(request).request_id
    except KeyError:
        request_id = None
    version = request.scope.get(MICROVERSION_KEY, (1, 0))
    return JSONResponse(error_body(error, request_id, version >= (1, 23)),
                        status_code=error.status)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    known: dict[int, ServiceError] = {404: NotFound(), 405: MethodNotAllowed()}
    return error_response(request, known.get(exc.status_code) or BadRequest(str(exc.detail)))


async def _integrity_error(request: Request, exc: Exception) -> Response:
    return error_response(request, Conflict(
        f"The request conflicts with what is stored: {getattr(exc, 'orig', exc)}."))


async def _unexpected(request: Request, exc: Exception) -> Response:
    return error_response(request, ServiceError())


def exception_handlers() -> dict[type[Exception], Callable]:
    """Starlette handlers that answer every failure in placement's error body."""
    return {ServiceError: _service_error, HTTPException: _http_error,
            IntegrityError: _integrity_error, Exception: _unexpected}
