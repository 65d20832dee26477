"""Glance's refusals and its error body.

Glance answers errors with WebOb's default error pages, not a JSON envelope of its own:
what the body looks like depends on the request's Accept header. Clients that ask for
JSON (keystoneauth sends `Accept: application/json`) get
`{"message": "<explanation><br /><br />\\n<detail>\\n\\n", "code": "404 Not Found",
"title": "Not Found"}`; browsers and curl (no Accept, or */*) get a small HTML page;
anything else gets plain text. We follow the same negotiation so the SDK, the CLI and a
curl in a notebook each see what a real glance shows them.
"""

from __future__ import annotations

import html
import json
import logging
import re

from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from labkit.cloud.errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    ServiceError,
)

log = logging.getLogger(__name__)

# WebOb's own explanation for each status, used when glance raises without one.
EXPLANATIONS = {
    400: "The server could not comply with the request since\r\n"
         "it is either malformed or otherwise incorrect.\r\n",
    401: "This server could not verify that you are authorized to\r\n"
         "access the document you requested.  Either you supplied the\r\n"
         "wrong credentials (e.g., bad password), or your browser\r\n"
         "does not understand how to supply the credentials required.\r\n",
    403: "Access was denied to this resource.",
    404: "The resource could not be found.",
    409: "There was a conflict when trying to complete your request.",
    410: "This resource is no longer available.  No forwarding address is given.",
    413: "The request is larger than the server is willing or able to process.",
    500: "The server has either erred or is incapable of performing\r\n"
         "the requested operation.\r\n",
}


class UnsupportedMediaType(ServiceError):
    """415: glance names the content types it does accept (and, for PATCH, an Accept-Patch)."""

    status = 415
    title = "Unsupported Media Type"
    default_message = ""

    def __init__(self, content_type: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.content_type = content_type
        self.headers = headers or {}


class StoreUnavailable(ServiceError):
    """503: the store holding the image's data cannot be read (glance_store's
    RemoteServiceUnavailable); nova's download fails and its build is rescheduled."""

    status = 503
    title = "Service Unavailable"
    default_message = "Remote server where the image is present is unavailable."


class Gone(ServiceError):
    status = 410
    title = "Gone"
    default_message = EXPLANATIONS[410]


class GlanceMethodNotAllowed(MethodNotAllowed):
    """405 with the method named, as WebOb's template does, and the Allow header glance sends."""

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__()
        self.method = method
        self.allowed = allowed


def _wants(accept: str) -> str:
    """WebOb's choice among text/html and application/json for this Accept header.

    No header, or one that allows anything, picks HTML (WebOb lists it first); a header
    that names neither gives plain text.
    """
    offers: list[tuple[float, int, str]] = []
    for position, part in enumerate(p for p in accept.split(",") if p.strip()):
        media, *params = (x.strip() for x in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        offers.append((quality, position, media.lower()))
    if not offers:
        return "text/html"
    best: tuple[float, str] | None = None
    for choice in ("text/html", "application/json"):
        kind = choice.split("/")[0]
        q = max((q for q, _, m in offers if m in (choice, f"{kind}/*", "*/*")), default=0.0)
        if q > 0 and (best is None or q > best[0]):
            best = (q, choice)
    return best[1] if best else "text/plain"


def _body_text(error: ServiceError) -> str:
    """The middle of WebOb's page: explanation, then detail (glance fills the explanation)."""
    if isinstance(error, UnsupportedMediaType):
        return (f"The request media type {error.content_type} is not supported by this "
                f"server.\n<br /><br />\n{error.message}")
    if isinstance(error, GlanceMethodNotAllowed):
        return f"The method {error.method} is not allowed for this resource. <br /><br />\n"
    explanation = error.message or EXPLANATIONS.get(error.status, "")
    return f"{explanation}<br /><br />\n\n\n"


def _strip_tags(text: str) -> str:
    text = re.sub(r"<br\s*/?>", "\n", text.replace("\r", ""))
    return re.sub(r"<[^>]*>", "", text)


def error_response(error: ServiceError, accept: str = "") -> Response:
    """The error as glance (WebOb) renders it for a client sending this Accept header."""
    status_line = f"{error.status} {error.title}"
    headers: dict[str, str] = {}
    if isinstance(error, UnsupportedMediaType):
        headers.update(error.headers)
    if isinstance(error, GlanceMethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    body = _body_text(error)
    media = _wants(accept)
    if media == "application/json":
        content = json.dumps({"message": body, "code": status_line, "title": error.title})
    elif media == "text/html":
        content = (f"<html>\n <head>\n  <title>{status_line}</title>\n </head>\n <body>\n"
                   f"  <h1>{status_line}</h1>\n  {_escape_html(body)}\n </body>\n</html>")
    else:
        content = f"{status_line}\n\n{_strip_tags(body)}"
    return Response(content, status_code=error.status, media_type=media, headers=headers)


def _escape_html(body: str) -> str:
    # WebOb escapes the explanation and detail but keeps its own <br /> markup
    parts = body.split("<br /><br />")
    return "<br /><br />".join(html.escape(part, quote=False) for part in parts)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc, request.headers.get("accept", ""))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    accept = request.headers.get("accept", "")
    if exc.status_code == 404:
        return error_response(NotFound(EXPLANATIONS[404]), accept)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "").split(", ")
        return error_response(GlanceMethodNotAllowed(request.method, allowed), accept)
    return error_response(BadRequest(str(exc.detail)), accept)


async def _integrity_error(request: Request, exc: Exception) -> Response:
    return error_response(Conflict(f"The request conflicts with what is stored: "
                                   f"{getattr(exc, 'orig', exc)}."),
                          request.headers.get("accept", ""))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("glance-api: unexpected error on %s %s", request.method, request.url.path)
    return error_response(ServiceError(EXPLANATIONS[500]), request.headers.get("accept", ""))


def exception_handlers() -> dict[type[Exception], object]:
    """Starlette handlers that answer every failure the way glance does."""
    return {ServiceError: _service_error, HTTPException: _http_error,
            IntegrityError: _integrity_error, Exception: _unexpected}
