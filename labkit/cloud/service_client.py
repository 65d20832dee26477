"""A service's own HTTP client inside the embedded cloud (keystoneauth's role for nova, neutron).

nova-compute talks to neutron, and neutron to nova, over the same HTTP API every client
uses: the service gets a token for its service user (data/identity.yaml: nova/NOVA_PASS
in project service) with POST /identity/v3/auth/tokens, then sends its requests through
httpx's ASGI transport straight into the cloud's own app, with no socket in between.

Each request says who sends it (a User-Agent the trace turns into the caller's name,
"nova-compute@compute-1") and which piece of work it belongs to (X-OpenStack-Request-ID,
the request id of the server build it is part of), so the trace shows it inside that work.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from labkit.cloud.faults import faults_of
from labkit.cloud.middleware import INTERNAL_AGENT

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud

# keystoneauth re-authenticates when a token has less than this left
EXPIRY_MARGIN = 120.0


class ServiceClientError(Exception):
    """The service could not authenticate (its user or password is wrong)."""


def service_password(lab: Path, user: str) -> str:
    """The service user's password, as the lab's identity.yaml sets it (nova: NOVA_PASS)."""
    users = yaml.safe_load((lab / "identity.yaml").read_text()).get("users", [])
    for entry in users:
        if entry.get("name") == user:
            return str(entry["password"])
    raise ServiceClientError(f"the lab has no service user {user!r} (data/identity.yaml)")


def user_agent(component: str) -> str:
    """The User-Agent that makes the trace name the caller `component`."""
    return f"{INTERNAL_AGENT}{component}"


class ServiceClient:
    """HTTP to the cloud's own app as one service user, with a cached token.

    `component` names the caller in the trace; `send(...)` may name another component
    of the same service (each compute host sends as its own nova-compute).
    """

    def __init__(self, cloud: Cloud, user: str, password: str, component: str,
                 project: str = "service", domain: str = "Default") -> None:
        self.cloud = cloud
        self.user = user
        self.password = password
        self.component = component
        self.project = project
        self.domain = domain
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._auth_lock: asyncio.Lock | None = None
        self._password_used = password

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            app = getattr(self.cloud, "app", None)
            if app is None:
                # a Cloud built in-process (tests, notebooks) has no app until asked for
                from labkit.cloud.app import build_app
                app = build_app(self.cloud)
            self._client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=self.cloud.base_url,
                timeout=60.0, trust_env=False)
        return self._client

    async def token(self, request_id: str | None = None, component: str | None = None) -> str:
        """A valid token for the service user, issued again when it nears its expiry."""
        # the password the configuration holds now (the service-password fault changes it):
        # a token got with another password is dropped, as a restarted service has none
        password = faults_of(self.cloud).password_for(self.user, self.password,
                                                      component or self.component)
        if password != self._password_used:
            self._token, self._password_used = None, password
        if self._token and time.time() < self._expires_at - EXPIRY_MARGIN:
            return self._token
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        async with self._auth_lock:
            if (self._token and self._password_used == password
                    and time.time() < self._expires_at - EXPIRY_MARGIN):
                return self._token
            body = {"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": self.user, "domain": {"name": self.domain},
                    "password": password}}},
                "scope": {"project": {"name": self.project,
                                      "domain": {"name": self.domain}}}}}
            r = await self._http().post("/identity/v3/auth/tokens", json=body,
                                        headers=self._headers(component or self.component,
                                                              request_id))
            if r.status_code != 201:
                raise ServiceClientError(f"{self.user} could not authenticate: "
                                         f"{r.status_code} {r.text}")
            self._token, self._password_used = r.headers["X-Subject-Token"], password
            expires = r.json()["token"]["expires_at"]
            self._expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
            return self._token

    @staticmethod
    def _headers(component: str, request_id: str | None) -> dict[str, str]:
        headers = {"User-Agent": user_agent(component), "Accept": "application/json"}
        if request_id:
            headers["X-OpenStack-Request-ID"] = request_id
        return headers

    async def send(self, method: str, path: str, *, request_id: str | None = None,
                   json: Any = None, params: Any = None, component: str | None = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        """One request to `path` (e.g. "/networking/v2.0/ports"); a 401 (a token revoked
        or expired under us) is retried once with a new token."""
        sender = component or self.component
        for attempt in (1, 2):
            sent = {**self._headers(sender, request_id), **(headers or {}),
                    "X-Auth-Token": await self.token(request_id, sender)}
            r = await self._http().request(method, path, json=json, params=params,
                                           headers=sent)
            if r.status_code != 401 or attempt == 2:
                return r
            self._token = None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
