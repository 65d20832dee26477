"""Nova's error body, `{"<kind>": {"code": N, "message": "..."}}`, and its policy refusal.

Models raise the shared errors of labkit.cloud.errors; the handlers here turn
them (and Starlette's own 404/405) into the body nova sends, with the kind named
after the status as nova's Fault does.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labkit.cloud.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, ServiceError
from labkit.cloud.identity.backend import TokenInfo

# nova.api.openstack.wsgi.Fault's names; anything else is a computeFault
KINDS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
         405: "badMethod", 406: "notAcceptable", 409: "conflictingRequest",
         413: "overLimit", 415: "badMediaType", 429: "overLimit", 501: "notImplemented",
         503: "serviceUnavailable"}


class OverLimit(ServiceError):
    """413 overLimit: nova's OverQuota where it is not turned into a 403 (e.g. metadata items)."""

    status = 413
    title = "Request Entity Too Large"
    default_message = "Quota exceeded."


class QuotaExceeded(Forbidden):
    """Quota exceeded at create: nova's API turns OverQuota into 403 forbidden there."""

    default_message = "Quota exceeded."


def error_body(error: ServiceError) -> dict[str, dict[str, object]]:
    kind = KINDS.get(error.status, "computeFault")
    return {kind: {"code": error.status, "message": error.message}}


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.status)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("The resource could not be found."))
    if exc.status_code == 405:
        return error_response(MethodNotAllowed("The method is not allowed for this resource."))
    error = ServiceError(str(exc.detail))
    error.status = exc.status_code
    return error_response(error)


def exception_handlers() -> dict[type[Exception], object]:
    """Starlette handlers answering refusals in nova's body.

    Unexpected exceptions are caught by the compute app's outer middleware
    (`microversion.VersionHeaderMiddleware`), so the 500 carries the version headers too.
    """
    return {ServiceError: _service_error, HTTPException: _http_error}


def policy_check(token: TokenInfo, rule: str, admin_only: bool = True) -> None:
    """Nova's policy enforcement, reduced to 'admin only or anyone': Forbidden with its wording.

    `rule` is nova's policy name, e.g. "os_compute_api:os-flavor-manage:create".
    """
    if admin_only and not token.is_admin:
        raise Forbidden(f"Policy doesn't allow {rule} to be performed.")


# -- request bodies, validated as nova does: JSON Schema, and its message format ---------

MAX_INT = 0x7FFFFFFF
TRUE_WORDS = ("true", "1", "on", "yes", "y", "t")
FALSE_WORDS = ("false", "0", "off", "no", "n", "f")
BOOLEAN: dict[str, Any] = {
    "type": ["boolean", "string"],
    "enum": [True, False, *TRUE_WORDS, *FALSE_WORDS,
             *(w.upper() for w in TRUE_WORDS + FALSE_WORDS),
             *(w.capitalize() for w in TRUE_WORDS + FALSE_WORDS)]}
NAME: dict[str, Any] = {"type": "string", "format": "name", "minLength": 1, "maxLength": 255}
POSITIVE: dict[str, Any] = {"type": ["integer", "string"], "pattern": "^[0-9]+$",
                            "minimum": 1, "maximum": MAX_INT}
NON_NEGATIVE: dict[str, Any] = {**POSITIVE, "minimum": 0}

_formats = jsonschema.FormatChecker()


@_formats.checks("name", raises=ValueError)
def _printable_name(value: object) -> bool:
    """Nova's 'name' format: printable, no leading or trailing whitespace."""
    if not isinstance(value, str):
        return True
    if not value.isprintable() or value != value.strip():
        raise ValueError("An invalid 'name' value was provided. The name must be: "
                         "printable characters. Can not start or end with whitespace.")
    return True


def _number(instance: object) -> object:
    """Nova compares numeric strings ("512") against minimum and maximum as numbers."""
    if isinstance(instance, str):
        try:
            return int(instance)
        except ValueError:
            try:
                return float(instance)
            except ValueError:
                return None
    return instance


def _bounded(keyword: str):  # type: ignore[no-untyped-def]
    original = jsonschema.Draft4Validator.VALIDATORS[keyword]

    def check(validator, bound, instance, schema):  # type: ignore[no-untyped-def]
        value = _number(instance)
        if value is None or isinstance(value, bool):
            return None
        return original(validator, bound, value, schema)
    return check


_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {
    "minimum": _bounded("minimum"), "maximum": _bounded("maximum")})


def validate(body: object, schema: dict[str, Any]) -> None:
    """BadRequest in nova's words when `body` does not match the JSON schema."""
    error = jsonschema.exceptions.best_match(
        _Validator(schema, format_checker=_formats).iter_errors(body))
    if error is None:
        return
    if isinstance(error.cause, ValueError) and error.validator == "format":
        detail = str(error.cause)
    elif error.path:
        detail = (f"Invalid input for field/attribute {error.path[-1]}. "
                  f"Value: {error.instance}. {error.message}")
    else:
        detail = error.message
    raise BadRequest(detail)


def as_bool(value: object) -> bool:
    """A boolean that passed the BOOLEAN schema, as a bool."""
    if isinstance(value, bool):
        return value
    return str(value).lower() in TRUE_WORDS
