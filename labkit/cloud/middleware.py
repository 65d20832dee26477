"""ASGI middleware: the trace of every API request, and token validation for every service.

`TraceMiddleware` wraps the whole cloud: it gives each request its
`x-openstack-request-id` and records method, path, status, caller and duration.
`TokenMiddleware` is what keystonemiddleware's auth_token is to a real service:
each service mounts it, it validates `X-Auth-Token` with keystone, records that
in the trace, and hands the handlers the caller's token (user, project, roles).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labkit.cloud.errors import Unauthorized
from labkit.cloud.http import RequestInfo
from labkit.cloud.identity.exceptions import TokenNotFound, error_response
from labkit.cloud.ids import IdSource
from labkit.cloud.trace import Trace, TraceEvent

# The first path segment names the service that answers, as DevStack lays them out.
SERVICES = {
    "identity": "keystone",
    "compute": "nova-api",
    "networking": "neutron-server",
    "image": "glance-api",
    "volume": "cinder-api",
    "placement": "placement-api",
    "labkit": "labkit-inspector",
    "metadata": "nova-api-metadata",
}


PROBE_CALLER = "labkit (is it up?)"
# The cloud's own services calling each other (labkit.cloud.service_client) send a
# User-Agent "labkit-service/<component>": the trace names them, and their
# X-OpenStack-Request-ID (the work they are part of, e.g. a server build) is kept.
INTERNAL_AGENT = "labkit-service/"
REQUEST_ID_FORMAT = re.compile(r"^req-[A-Za-z0-9_-]{1,60}$")
# The request id of the request (or internal message) being handled right now, for code
# that has no context to hand, such as a model listener sending a notification.
current_request_id: ContextVar[str | None] = ContextVar("labkit_request_id", default=None)


def service_for_path(path: str) -> str:
    return SERVICES.get(path.strip("/").split("/", 1)[0], "labkit")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class TraceMiddleware:
    def __init__(self, app: ASGIApp, trace: Trace, ids: IdSource) -> None:
        self.app = app
        self.trace = trace
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.time()
        agent = _header(scope, b"user-agent")
        caller = _client_name(agent)
        inbound = _header(scope, b"x-openstack-request-id") or ""
        if agent and agent.startswith(INTERNAL_AGENT):
            # the services' own calls draw from a stream of their own too: they interleave
            # with a reader's requests, and must not shift the ids those get
            request_id = (inbound if REQUEST_ID_FORMAT.match(inbound)
                          else self.ids.request_id("internal"))
        else:
            # labkit's own probes draw from another stream, so however often the cloud was
            # asked "are you up?", a notebook's requests get the same seeded ids
            request_id = self.ids.request_id("probe" if caller == PROBE_CALLER else "request")
        info = RequestInfo(request_id=request_id, service=service_for_path(scope["path"]))
        scope["labkit.request"] = info
        current = current_request_id.set(request_id)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-openstack-request-id", info.request_id.encode()))
                if info.service == "nova-api":
                    headers.append((b"x-compute-request-id", info.request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(current)
            duration_ms = (time.time() - started) * 1000
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope["path"] + (f"?{query}" if query else "")
            token = info.token
            self.trace.record(TraceEvent(
                kind="api",
                source=caller,
                target=info.service,
                summary=f"{scope['method']} {path} -> {status}",
                request_id=info.request_id,
                time=started,
                detail={
                    "method": scope["method"], "path": path, "status": status,
                    "duration_ms": round(duration_ms, 3),
                    "user_id": info.user_id or (token.user_id if token else None),
                    "user_name": token.user["name"] if token else None,
                    "project_id": info.project_id or (token.project_id if token else None),
                },
            ))


def _client_name(user_agent: str | None) -> str:
    """A short name for the caller: openstacksdk, the openstack CLI, a browser, ..."""
    if user_agent and user_agent.startswith(INTERNAL_AGENT):
        return user_agent[len(INTERNAL_AGENT):]
    ua = (user_agent or "").lower()
    if "python-openstackclient" in ua or "osc-lib" in ua:
        return "openstack CLI"
    if "openstacksdk" in ua:
        return "openstacksdk"
    if "keystoneauth" in ua:
        return "keystoneauth"
    if "labkit-probe" in ua:
        return PROBE_CALLER
    return "client"


class TokenMiddleware:
    """keystonemiddleware's auth_token, in process: validate, trace, then hand on or refuse.

    `anonymous(method, path)` names what a caller may reach without a token
    (version documents, and keystone's own POST /v3/auth/tokens).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        validate: Callable[[str], object],
        trace: Trace,
        anonymous: Callable[[str, str], bool],
    ) -> None:
        self.app = app
        self.service = service
        self.validate = validate
        self.trace = trace
        self.anonymous = anonymous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info: RequestInfo = scope["labkit.request"]
        token = _header(scope, b"x-auth-token")
        if token:
            try:
                info.token = self.validate(token)  # type: ignore[assignment]
                outcome = "valid"
            except TokenNotFound as exc:
                outcome = f"refused: {exc.reason}"
            self._record(info, outcome)
        path = scope["path"][len(scope.get("root_path", "")):] or "/"
        if info.token is None and not self.anonymous(scope["method"], path):
            # keystonemiddleware's own 401, in keystone's error format, whatever the service
            await error_response(Unauthorized())(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _record(self, info: RequestInfo, outcome: str) -> None:
        token = info.token
        detail = {"outcome": outcome}
        if token is not None:
            detail.update(user=token.user["name"], user_id=token.user_id,
                          project=token.project["name"] if token.project else None,
                          project_id=token.project_id, roles=token.role_names,
                          expires_at=token.expires_at)
        self.trace.record(TraceEvent(
            kind="auth",
            source=self.service,
            target="keystone",
            summary=f"validate X-Auth-Token: {outcome}",
            request_id=info.request_id,
            detail=detail,
        ))
