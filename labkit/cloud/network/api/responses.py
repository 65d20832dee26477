"""Neutron v2.0's HTTP face: read the request, call the model, shape the reply.

Holds no state: every handler turns the caller's token into a `NetContext`, checks the
body against the attribute maps (attributes.py), calls `Neutron` (models.py) and shows
the result as the caller may see it. Model calls are synchronous and made straight from
the handler on the event loop, so each request's change is atomic against the others.
Every refusal leaves as neutron's `{"NeutronError": {"type", "message", "detail"}}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labkit.cloud.errors import Forbidden, PayloadTooLarge, ServiceError
from labkit.cloud.http import MAX_BODY, context, request_info
from labkit.cloud.network.api.attributes import (
    RESOURCES,
    Caller,
    Resource,
    prepare_request,
    quota_attrs,
    shown,
)
from labkit.cloud.network.api.extensions import EXTENSIONS
from labkit.cloud.network.api.query import page_links, parse_query, run_query
from labkit.cloud.network.common import NetContext
from labkit.cloud.network.exceptions import NeutronBadRequest, PolicyNotAuthorized, neutron_type
from labkit.cloud.network.quotas import DEFAULTS

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]
# the core resources GET /v2.0/ lists (neutron's _CORE_RESOURCES, less subnet pools)
CORE = ("network", "subnet", "port")
# webob's explanation for a 405, which neutron's body carries as the message
METHOD_NOT_ALLOWED = ("The server could not comply with the request since it is either "
                      "malformed or otherwise incorrect.")


# -- errors -------------------------------------------------------------------------------

def error_response(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"NeutronError": {"type": kind, "message": message, "detail": ""}},
                        status_code=status)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, neutron_type(exc), exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing's own refusals, as webob words them inside neutron's body."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, "HTTPNotFound", "The resource could not be found.")
    if exc.status_code == 405:
        return error_response(405, "HTTPMethodNotAllowed", METHOD_NOT_ALLOWED)
    return error_response(exc.status_code, "HTTPBadRequest", str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("neutron-server: unexpected error on %s %s", request.method,
                  request.url.path)
    return error_response(500, "HTTPInternalServerError",
                          "Request Failed: internal server error while processing your "
                          "request.")


def exception_handlers() -> dict[Any, Any]:
    return {ServiceError: _service_error, HTTPException: _http_error, Exception: _unexpected}


# -- request helpers ----------------------------------------------------------------------

def net_context(request: Request) -> NetContext:
    """The caller as the model sees it (the service users of nova and neutron are admins)."""
    token = context(request)
    return NetContext(project_id=token.project_id, user_id=token.user_id,
                      is_admin=token.is_admin, request_id=request_info(request).request_id,
                      roles=tuple(token.role_names))


def caller(ctx: NetContext) -> Caller:
    return Caller(project_id=ctx.project_id, is_admin=ctx.is_admin)


async def read_body(request: Request) -> Any:
    """The JSON body, or None when there is none; neutron's words for a malformed one."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge("Request is too large.")
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise NeutronBadRequest("Body contains invalid data") from exc
    if not isinstance(body, dict):
        raise NeutronBadRequest("Body contains invalid data")
    return body


def page_url(request: Request) -> str:
    """The request's own URL without its query: the base of the pagination links."""
    return str(request.url.replace(query=""))


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


# -- the version documents ----------------------------------------------------------------

def versions_body(request: Request) -> dict[str, Any]:
    href = f"{request.url.scheme}://{request.url.netloc}/networking/v2.0/"
    return {"versions": [{"id": "v2.0", "status": "CURRENT",
                          "links": [{"href": href, "rel": "self"}]}]}


async def versions(request: Request) -> Response:
    """GET /networking: the one version neutron offers."""
    return _json(versions_body(request))


async def resources(request: Request) -> Response:
    """GET /networking/v2.0/: the core collections, each with its link."""
    base = page_url(request).rstrip("/")
    return _json({"resources": [
        {"name": name, "collection": RESOURCES[name].collection,
         "links": [{"rel": "self", "href": f"{base}/{RESOURCES[name].path}"}]}
        for name in CORE]})


async def not_found(request: Request) -> Response:
    """neutron answers /v2.0 (no slash) and any method but GET on extensions with 404."""
    return error_response(404, "HTTPNotFound", "The resource could not be found.")


# -- extensions ---------------------------------------------------------------------------

async def list_extensions(request: Request) -> Response:
    return _json({"extensions": [e.as_dict() for e in EXTENSIONS.values()]})


async def show_extension(request: Request) -> Response:
    alias = request.path_params["alias"]
    extension = EXTENSIONS.get(alias)
    if extension is None:
        return error_response(404, "HTTPNotFound", f"Extension with alias {alias} does not "
                                                   "exist")
    return _json({"extension": extension.as_dict()})


# -- the resources ------------------------------------------------------------------------

class ResourceHandlers:
    """List, show, create, update and delete of one collection, over the model."""

    def __init__(self, neutron: Any, resource: Resource) -> None:
        self.neutron = neutron
        self.resource = resource

    def _show(self, ctx: NetContext, record: dict[str, Any],
              fields: list[str] | None = None) -> dict[str, Any]:
        return shown(record, self.resource.attrs, ctx.is_admin, fields)

    async def index(self, request: Request) -> Response:
        ctx = net_context(request)
        res = self.resource
        params = request.query_params.multi_items()
        query = parse_query(params, res.attrs)
        page = run_query(self.neutron.list(ctx, res.name), query, res.name, res.primary_key)
        body: dict[str, Any] = {res.collection: [self._show(ctx, r, query.fields)
                                                 for r in page]}
        links = page_links(page_url(request), params, page, query, res.primary_key)
        if links:
            body[f"{res.collection}_links"] = links
        return _json(body)

    async def show(self, request: Request) -> Response:
        ctx = net_context(request)
        # filters are checked on a show too (and then unused), as neutron's hook does
        query = parse_query(request.query_params.multi_items(), self.resource.attrs)
        record = self.neutron.get(ctx, self.resource.name, request.path_params["id"])
        return _json({self.resource.name: self._show(ctx, record, query.fields)})

    async def create(self, request: Request) -> Response:
        ctx = net_context(request)
        res = self.resource
        if not res.creatable:
            raise _method_not_allowed()
        body = await read_body(request)
        if body is None:
            raise NeutronBadRequest(f"Unable to find '{res.name}' in request body")
        items, bulk = prepare_request(body, res.name, res.attrs, caller(ctx), create=True,
                                      allow_bulk=res.bulk)
        if bulk:
            made = self.neutron.create_bulk(ctx, res.name, items)
            return _json({res.collection: [self._show(ctx, r) for r in made]}, 201)
        return _json({res.name: self._show(ctx, self.neutron.create(ctx, res.name, items[0]))},
                     201)

    async def update(self, request: Request) -> Response:
        ctx = net_context(request)
        res = self.resource
        body = await read_body(request)
        if body is None:
            raise NeutronBadRequest(f"Unable to find '{res.name}' in request body")
        items, _ = prepare_request(body, res.name, res.attrs, caller(ctx), create=False)
        record = self.neutron.update(ctx, res.name, request.path_params["id"], items[0])
        return _json({res.name: self._show(ctx, record)})

    async def delete(self, request: Request) -> Response:
        ctx = net_context(request)
        if await read_body(request) is not None:
            raise NeutronBadRequest("Request body is not supported in DELETE.")
        self.neutron.delete(ctx, self.resource.name, request.path_params["id"])
        return Response(status_code=204)


def _method_not_allowed() -> ServiceError:
    error = ServiceError(METHOD_NOT_ALLOWED)
    error.status = 405
    return error


def router_action(neutron: Any, action: str) -> Handler:
    """PUT /v2.0/routers/{id}/add_router_interface (or remove_): the body goes as it came."""
    async def handler(request: Request) -> Response:
        ctx = net_context(request)
        body = await read_body(request) or {}
        method = getattr(neutron, action)
        return _json(method(ctx, request.path_params["id"], body))
    return handler


# -- quotas (the quotas and quota_details extensions) -------------------------------------

class QuotaHandlers:
    def __init__(self, neutron: Any) -> None:
        self.neutron = neutron

    async def index(self, request: Request) -> Response:
        return _json({"quotas": self.neutron.list_quotas(net_context(request))})

    async def create(self, request: Request) -> Response:
        error = ServiceError("POST requests are not supported on this resource.")
        error.status = 501
        error.neutron_type = "HTTPNotImplemented"  # type: ignore[attr-defined]
        raise error

    async def own_project(self, request: Request) -> Response:
        """GET /v2.0/quotas/project (and the deprecated /tenant): who am I?"""
        key = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        ctx = net_context(request)
        if not ctx.project_id:
            raise NeutronBadRequest("Tenant-id was missing from quota request.",
                                    "QuotaMissingTenant")
        return _json({key: {f"{key}_id": ctx.project_id}})

    async def show(self, request: Request) -> Response:
        ctx = net_context(request)
        return _json({"quota": self.neutron.get_quota(ctx, request.path_params["project_id"])})

    async def details(self, request: Request) -> Response:
        ctx = net_context(request)
        project_id = request.path_params["project_id"]
        if project_id != ctx.project_id and not ctx.is_admin:
            error = Forbidden("User does not have admin privileges: Only admin is authorized "
                              "to access quotas for another project.")
            error.neutron_type = "AdminRequired"  # type: ignore[attr-defined]
            raise error
        return _json({"quota": self.neutron.quota_details(ctx, project_id)})

    async def default(self, request: Request) -> Response:
        """GET /v2.0/quotas/{project}/default: neutron's [quotas] defaults (the model's)."""
        ctx = net_context(request)
        if request.path_params["project_id"] != ctx.project_id and not ctx.is_admin:
            raise PolicyNotAuthorized("get_quota")
        return _json({"quota": dict(DEFAULTS)})

    async def update(self, request: Request) -> Response:
        ctx = net_context(request)
        project_id = request.path_params["project_id"]
        if not ctx.is_admin:
            raise PolicyNotAuthorized("update_quota")
        body = await read_body(request)
        if body is None:
            raise NeutronBadRequest("Resource body required")
        quota = body.get("quota")
        force = quota.pop("force", None) if isinstance(quota, dict) else None
        if isinstance(quota, dict):
            quota.pop("check_limit", None)
        current = self.neutron.get_quota(ctx, project_id)
        items, _ = prepare_request(body, "quota", quota_attrs(list(current)), caller(ctx),
                                   create=False)
        limits = items[0]
        if force is not True:
            self._check_usage(ctx, project_id, limits)
        return _json({"quota": self.neutron.update_quota(ctx, project_id, limits)})

    def _check_usage(self, ctx: NetContext, project_id: str, limits: dict[str, int]) -> None:
        """neutron refuses a limit below what the project already uses, unless forced."""
        usage = self.neutron.quota_details(ctx, project_id)
        for resource, limit in limits.items():
            used = usage.get(resource, {}).get("used", 0)
            if limit != -1 and used > limit:
                raise NeutronBadRequest(f"Quota limit {limit} for {resource} must be greater "
                                        f"than or equal to already used {used}")

    async def delete(self, request: Request) -> Response:
        self.neutron.delete_quota(net_context(request), request.path_params["project_id"])
        return Response(status_code=204)

