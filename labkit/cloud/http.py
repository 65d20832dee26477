"""HTTP helpers every service's handlers share: the request's info, JSON bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from labkit.cloud.errors import BadRequest, PayloadTooLarge, Unauthorized

# keystone's [oslo_middleware] max_request_body_size
MAX_BODY = 114_688
FALSE_WORDS = ("0", "f", "false", "n", "no", "off")


def is_true(value: str | None) -> bool:
    """A query flag as OpenStack reads it: present and not one of the words for false."""
    return value is not None and value.strip().lower() not in FALSE_WORDS

if TYPE_CHECKING:
    from labkit.cloud.identity.backend import TokenInfo


@dataclass
class RequestInfo:
    """Filled in as a request passes through: its id, then who sent it."""

    request_id: str
    service: str
    token: TokenInfo | None = None
    user_id: str | None = None
    project_id: str | None = None


def request_info(request: Request) -> RequestInfo:
    return request.scope["labkit.request"]


def context(request: Request) -> TokenInfo:
    """The caller's validated token, set by the token middleware."""
    token = request_info(request).token
    if token is None:
        raise Unauthorized()
    return token


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest saying what is wrong with it."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge(f"Request is too large: the limit is {MAX_BODY} bytes.")
    if not raw:
        raise BadRequest("The request body is empty: expecting a JSON object.")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Malformed request body: it is not valid JSON ({exc}).") from exc
    except RecursionError as exc:
        raise BadRequest("Malformed request body: it is nested too deeply.") from exc
    if not isinstance(body, dict):
        raise BadRequest("Malformed request body: expecting a JSON object.")
    return body
