"""Keystone v3's HTTP face: parse requests, check policy, shape replies, map errors.

Holds no state: everything goes through `IdentityBackend`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from labkit.cloud.errors import BadRequest, Forbidden, NotFound
from labkit.cloud.http import context, is_true, read_json, request_info
from labkit.cloud.identity.backend import IdentityBackend, TokenInfo
from labkit.cloud.identity.exceptions import exception_handlers
from labkit.cloud.identity.models import Domain, Endpoint, Project, Region, Role, Service, User

VERSION = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z"}
PLURALS = {"domain": "domains", "project": "projects", "user": "users", "role": "roles",
           "region": "regions", "service": "services", "endpoint": "endpoints"}
Handler = Callable[[Request], Awaitable[Response]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
READABLE_BY_ANY_TOKEN = ("region",)  # keystone's list_regions and get_region need no role


def iso(timestamp: float) -> str:
    """Keystone's timestamp format: microseconds and a Z.

    Counted in whole microseconds, as the token payload stores them: converting the float
    directly can round the last digit differently for the same instant.
    """
    moment = EPOCH + timedelta(microseconds=round(timestamp * 1_000_000))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def v3_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}/identity/v3"


def version_document(request: Request) -> dict[str, Any]:
    return {**VERSION,
            "links": [{"rel": "self", "href": v3_url(request) + "/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}


# -- views: the JSON keystone returns for each kind ---------------------------------------

def view(kind: str, entity: Any, request: Request) -> dict[str, Any]:
    links = {"self": f"{v3_url(request)}/{PLURALS[kind]}/{entity.id}"}
    if isinstance(entity, Domain):
        body = {"id": entity.id, "name": entity.name, "description": entity.description,
                "enabled": entity.enabled, "tags": [], "options": {}}
    elif isinstance(entity, Project):
        body = {"id": entity.id, "name": entity.name, "domain_id": entity.domain_id,
                "description": entity.description, "enabled": entity.enabled,
                "parent_id": entity.domain_id, "is_domain": False, "tags": [], "options": {}}
    elif isinstance(entity, User):
        body = {"id": entity.id, "name": entity.name, "domain_id": entity.domain_id,
                "enabled": entity.enabled, "password_expires_at": None, "options": {}}
        for optional in ("email", "description", "default_project_id"):
            if getattr(entity, optional):
                body[optional] = getattr(entity, optional)
    elif isinstance(entity, Role):
        body = {"id": entity.id, "name": entity.name, "domain_id": None,
                "description": entity.description, "options": {}}
    elif isinstance(entity, Region):
        body = {"id": entity.id, "description": entity.description,
                "parent_region_id": entity.parent_region_id}
    elif isinstance(entity, Service):
        body = {"id": entity.id, "type": entity.type, "name": entity.name,
                "description": entity.description, "enabled": entity.enabled}
    elif isinstance(entity, Endpoint):
        body = {"id": entity.id, "service_id": entity.service_id,
                "interface": entity.interface, "region": entity.region_id,
                "region_id": entity.region_id, "url": entity.url, "enabled": entity.enabled}
    else:  # pragma: no cover - every kind is listed above
        raise TypeError(kind)
    return {**body, "links": links}


def collection(kind: str, entities: list[Any], request: Request) -> JSONResponse:
    return JSONResponse({
        PLURALS[kind]: [view(kind, e, request) for e in entities],
        "links": {"self": str(request.url), "previous": None, "next": None},
    })


def token_body(info: TokenInfo, backend: IdentityBackend, catalog: bool) -> dict[str, Any]:
    token: dict[str, Any] = {
        "methods": info.methods,
        "user": info.user,
        "audit_ids": info.audit_ids,
        "expires_at": iso(info.expires_at),
        "issued_at": iso(info.issued_at),
    }
    if info.project:
        token.update(project=info.project, is_domain=False, roles=info.roles)
    elif info.domain:
        token.update(domain=info.domain, roles=info.roles)
    if catalog and (info.project or info.domain):
        token["catalog"] = backend.catalog(info.project_id)
    return {"token": token}


# -- policy: keystone's defaults, reduced to the rules this lab needs ----------------------

def require_admin(token: TokenInfo) -> None:
    if not token.is_admin:
        raise Forbidden("You are not authorized to perform the requested action: "
                        "this needs the admin role.")


def require_admin_or(token: TokenInfo, allowed: bool, action: str) -> None:
    if not (token.is_admin or allowed):
        raise Forbidden(f"You are not authorized to perform the requested action: {action}.")


# -- the application ----------------------------------------------------------------------

async def versions(request: Request) -> Response:
    """GET /identity: the versions keystone offers, with 300 Multiple Choices as keystone does."""
    return JSONResponse({"versions": {"values": [version_document(request)]}}, status_code=300)


def build_identity_app(backend: IdentityBackend) -> Starlette:
    routes: list[Route] = []

    def route(path: str, methods: list[str]) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            routes.append(Route(path, handler, methods=methods))
            return handler
        return add

    routes.append(Route("/", versions, methods=["GET"]))

    @route("/v3", ["GET"])
    async def version(request: Request) -> Response:
        return JSONResponse({"version": version_document(request)})

    routes.append(Route("/v3/", version, methods=["GET"]))

    # -- tokens

    @route("/v3/auth/tokens", ["POST"])
    async def issue_token(request: Request) -> Response:
        body = await read_json(request)
        auth = body.get("auth")
        if not isinstance(auth, dict):
            raise BadRequest("Expecting to find auth in request body. The server could not "
                             "comply with the request since it is either malformed or "
                             "otherwise incorrect.")
        info = backend.authenticate(auth)
        request_info(request).user_id = info.user_id
        request_info(request).project_id = info.project_id
        with_catalog = "nocatalog" not in request.query_params
        return JSONResponse(token_body(info, backend, with_catalog), status_code=201,
                            headers={"X-Subject-Token": info.token})

    def subject_token(request: Request) -> TokenInfo:
        caller = context(request)
        subject = request.headers.get("x-subject-token")
        if not subject:
            raise NotFound("Could not find token: no X-Subject-Token header was sent.")
        info = caller if subject == caller.token else backend.validate(subject)
        require_admin_or(caller, info.user_id == caller.user_id, "validate another user's token")
        return info

    @route("/v3/auth/tokens", ["GET", "HEAD"])
    async def validate_token(request: Request) -> Response:
        info = subject_token(request)
        if request.method == "HEAD":
            return Response(status_code=200, headers={"X-Subject-Token": info.token})
        with_catalog = "nocatalog" not in request.query_params
        return JSONResponse(token_body(info, backend, with_catalog),
                            headers={"X-Subject-Token": info.token})

    @route("/v3/auth/tokens", ["DELETE"])
    async def revoke_token(request: Request) -> Response:
        backend.revoke_token(subject_token(request))
        return Response(status_code=204)

    @route("/v3/auth/catalog", ["GET"])
    async def auth_catalog(request: Request) -> Response:
        token = context(request)
        if not (token.project or token.domain):
            raise Forbidden("The service catalog is not available for an unscoped token.")
        return JSONResponse({"catalog": backend.catalog(token.project_id),
                             "links": {"self": str(request.url), "previous": None,
                                       "next": None}})

    @route("/v3/auth/projects", ["GET"])
    async def auth_projects(request: Request) -> Response:
        return collection("project", backend.user_projects(context(request).user_id), request)

    @route("/v3/auth/domains", ["GET"])
    async def auth_domains(request: Request) -> Response:
        return collection("domain", backend.user_domains(context(request).user_id), request)

    @route("/v3/auth/system", ["GET"])
    async def auth_system(request: Request) -> Response:
        context(request)
        return JSONResponse({"system": [], "links": {"self": str(request.url)}})

    # -- users' own views

    @route("/v3/users/{user_id}/projects", ["GET"])
    async def user_projects(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        token = context(request)
        require_admin_or(token, token.user_id == user_id, "list another user's projects")
        return collection("project", backend.user_projects(user_id), request)

    @route("/v3/users/{user_id}/password", ["POST"])
    async def change_password(request: Request) -> Response:
        # keystone asks for no token here: the original password is the proof, so a user
        # whose password has expired can still set a new one
        user_id = request.path_params["user_id"]
        user = (await read_json(request)).get("user")
        if not isinstance(user, dict) or not isinstance(user.get("password"), str) \
                or not isinstance(user.get("original_password"), str):
            raise BadRequest("Expecting to find user with password and original_password.")
        backend.change_password(user_id, user["original_password"], user["password"])
        return Response(status_code=204)

    # -- role assignments and grants

    @route("/v3/role_assignments", ["GET"])
    async def role_assignments(request: Request) -> Response:
        token = context(request)
        params = request.query_params
        own = params.get("user.id") == token.user_id
        require_admin_or(token, own, "list role assignments")
        rows = backend.role_assignments(
            dict(params),
            effective="effective" in params,
            include_names=is_true(params.get("include_names")),
        )
        for row in rows:
            row["links"] = {"assignment": _assignment_link(request, row)}
        return JSONResponse({"role_assignments": rows,
                             "links": {"self": str(request.url), "previous": None,
                                       "next": None}})

    for target in ("project", "domain"):
        base = f"/v3/{PLURALS[target]}/{{target_id}}/users/{{user_id}}/roles"
        routes.append(Route(base, _list_grants(backend, target), methods=["GET"]))
        routes.append(Route(base + "/{role_id}", _grant(backend, target),
                            methods=["PUT", "GET", "HEAD", "DELETE"]))

    # -- plain entities

    for kind in PLURALS:
        routes.append(Route(f"/v3/{PLURALS[kind]}", _entity_collection(backend, kind),
                            methods=["GET", "POST"]))
        routes.append(Route(f"/v3/{PLURALS[kind]}/{{entity_id}}", _entity_member(backend, kind),
                            methods=["GET", "PATCH", "DELETE"]))

    return Starlette(routes=routes, exception_handlers=exception_handlers())


def _assignment_link(request: Request, row: dict[str, Any]) -> str:
    (target_type, target), = row["scope"].items()
    return (f"{v3_url(request)}/{PLURALS[target_type]}/{target['id']}/users/"
            f"{row['user']['id']}/roles/{row['role']['id']}")


def _list_grants(backend: IdentityBackend, target: str) -> Handler:
    async def handler(request: Request) -> Response:
        require_admin(context(request))
        p = request.path_params
        return collection("role", backend.list_grants(p["user_id"], target, p["target_id"]),
                          request)
    return handler


def _grant(backend: IdentityBackend, target: str) -> Handler:
    async def handler(request: Request) -> Response:
        require_admin(context(request))
        p = request.path_params
        parts = (p["user_id"], target, p["target_id"], p["role_id"])
        if request.method == "PUT":
            backend.grant(*parts)
        elif request.method == "DELETE":
            backend.revoke_grant(*parts)
        elif not backend.has_grant(*parts):
            raise NotFound(f"Could not find role assignment with role: {p['role_id']}, "
                           f"user or group: {p['user_id']}, {target}: {p['target_id']}.")
        return Response(status_code=204)
    return handler


def _entity_collection(backend: IdentityBackend, kind: str) -> Handler:
    async def handler(request: Request) -> Response:
        token = context(request)
        if request.method == "GET":
            if kind not in READABLE_BY_ANY_TOKEN:
                require_admin(token)
            return collection(kind, backend.list(kind, dict(request.query_params)), request)
        require_admin(token)
        body = (await read_json(request)).get(kind)
        if not isinstance(body, dict):
            raise BadRequest(f"Expecting to find {kind} in request body.")
        if kind in ("project", "user") and "domain_id" not in body and token.project:
            body = {**body, "domain_id": token.project["domain"]["id"]}
        entity = backend.create(kind, body)
        return JSONResponse({kind: view(kind, entity, request)}, status_code=201)
    return handler


def _entity_member(backend: IdentityBackend, kind: str) -> Handler:
    async def handler(request: Request) -> Response:
        token = context(request)
        entity_id = request.path_params["entity_id"]
        if request.method == "GET":
            own = kind in READABLE_BY_ANY_TOKEN or (
                kind == "user" and entity_id == token.user_id) or (
                kind == "project" and entity_id == token.project_id) or (
                kind == "domain" and token.project is not None
                and token.project["domain"]["id"] == entity_id)
            require_admin_or(token, own, f"get {kind} {entity_id}")
            return JSONResponse({kind: view(kind, backend.get(kind, entity_id), request)})
        require_admin(token)
        if request.method == "DELETE":
            backend.delete(kind, entity_id)
            return Response(status_code=204)
        body = (await read_json(request)).get(kind)
        if not isinstance(body, dict):
            raise BadRequest(f"Expecting to find {kind} in request body.")
        entity = backend.update(kind, entity_id, body)
        return JSONResponse({kind: view(kind, entity, request)})
    return handler


def anonymous_paths(app: Starlette) -> Callable[[str, str], bool]:
    """What keystone answers without a token: version documents, issuing a token, and
    unknown paths (keystone routes first, so those get its 404 rather than a 401)."""
    def anonymous(method: str, path: str) -> bool:
        if path in ("/", "/v3", "/v3/") or (path == "/v3/auth/tokens" and method == "POST"):
            return True
        if method == "POST" and path.startswith("/v3/users/") and path.endswith("/password"):
            return True
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
        return all(route.matches(scope)[0] == Match.NONE for route in app.routes)
    return anonymous


