"""Fixtures shared by labkit's tests: a fresh embedded cloud, SDK connections, the real CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from openstack.config import OpenStackConfig
from openstack.connection import Connection

from labkit.cloud import process
from labkit.cloud.app import Cloud
from labkit.cloud.bus import MessageContext
from labkit.cloud.process import CloudInfo
from labkit.cloud.settings import CloudSettings

BIN = Path(sys.executable).parent
LAB_PASSWORDS = {"admin": "ADMIN_PASS", "demo": "DEMO_PASS", "alt_demo": "ALT_DEMO_PASS"}
# A guard against a hung child, never an assertion about speed.
SUBPROCESS_TIMEOUT = 180


def console_script(name: str) -> Path:
    """A console script installed next to this interpreter; fails (never skips) if missing."""
    path = BIN / name
    assert path.exists(), f"{name!r} is not installed next to {sys.executable}"
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any OS_* or LABKIT_* setting of the caller's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "LABKIT_"))}
    env.update(extra)
    return env


def pid_alive(pid: int) -> bool:
    """Is there a live (non-zombie) process with this pid?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def auth_header(token: str) -> dict[str, str]:
    return {"X-Auth-Token": token}


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10) -> Any:
    """Poll `fetch` until `done` says yes or the deadline passes; return the last value."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = fetch()
    return value


def start_cloud(home: Path, deterministic: bool = True, virt: str = "model",
                **settings: Any) -> CloudInfo:
    """Start a cloud on this state folder (or reuse the one running there). The API tests
    run on the model driver; tests of real guests ask for `virt="qemu"`. Other settings
    (`service_down_time=1.0`, ...) are passed on to CloudSettings."""
    return process.up(CloudSettings(home=home, deterministic=deterministic, virt=virt,
                                    **settings))


def stop_cloud(home: Path) -> None:
    """Stop the cloud of this state folder and check that its process is gone."""
    info = process.running(home)
    process.down(home)
    if info is not None:
        assert not pid_alive(info.pid), f"the cloud (pid {info.pid}) outlived `down`"


@contextmanager
def running_cloud(home: Path, **settings: Any) -> Iterator[CloudInfo]:
    """A cloud started on this state folder (see start_cloud) for the `with` block, then
    stopped and checked gone: what a module's `cloud` fixture yields."""
    info = start_cloud(home, **settings)
    try:
        yield info
    finally:
        stop_cloud(home)


def connection(info: CloudInfo, cloud: str) -> Connection:
    """An openstacksdk Connection built from the cloud's own clouds.yaml, ignoring OS_* vars."""
    config = OpenStackConfig(config_files=[str(info.clouds_yaml)], vendor_files=[],
                             load_envvars=False)
    return Connection(config=config.get_one(cloud=cloud))


def password_auth(user: str, password: str, project: str | None = None) -> dict:
    """A POST /v3/auth/tokens body: password by user name in Default, optionally project scope."""
    auth: dict = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return {"auth": auth}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudInfo]:
    """A fresh deterministic embedded cloud in a state folder of its own, one per module.
    A module that needs other settings overrides it with `running_cloud(home, ...)`; the
    connections below then follow that module's cloud."""
    with running_cloud(tmp_path_factory.mktemp("labkit-home")) as info:
        yield info


@pytest.fixture(scope="module")
def demo_conn(cloud: CloudInfo) -> Iterator[Connection]:
    conn = connection(cloud, "labkit")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def admin_conn(cloud: CloudInfo) -> Iterator[Connection]:
    conn = connection(cloud, "labkit-admin")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def http(cloud: CloudInfo) -> Iterator[httpx.Client]:
    """Raw HTTP to the cloud, for what the SDK hides. Redirects are not followed."""
    with httpx.Client(base_url=cloud.url, timeout=30, follow_redirects=False) as client:
        yield client


@pytest.fixture(scope="module")
def issue_token(http: httpx.Client) -> Callable[..., str]:
    """Issue a token over HTTP for a lab user (project-scoped when a project is named)."""
    def issue(user: str = "demo", project: str | None = "demo",
              password: str | None = None) -> str:
        r = http.post("/identity/v3/auth/tokens",
                      json=password_auth(user, password or LAB_PASSWORDS[user], project))
        assert r.status_code == 201, r.text
        return r.headers["X-Subject-Token"]
    return issue


@pytest.fixture(scope="module")
def demo_token(issue_token: Callable[..., str]) -> str:
    return issue_token("demo", "demo")


@pytest.fixture(scope="module")
def alt_token(issue_token: Callable[..., str]) -> str:
    return issue_token("alt_demo", "alt_demo")


@pytest.fixture(scope="module")
def admin_token(issue_token: Callable[..., str]) -> str:
    return issue_token("admin", "admin")


@pytest.fixture(scope="module")
def openstack_cli(cloud: CloudInfo) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `openstack` CLI against the cloud; OS_CLOUD=labkit unless told otherwise.

    With cloud=None neither OS_CLOUD nor OS_CLIENT_CONFIG_FILE is set, for token auth
    given entirely on the command line.
    """
    exe = console_script("openstack")

    def run(*args: str, cloud_name: str | None = "labkit") -> subprocess.CompletedProcess[str]:
        env = clean_env()
        if cloud_name is not None:
            env.update(OS_CLIENT_CONFIG_FILE=str(cloud.clouds_yaml), OS_CLOUD=cloud_name)
        return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT, check=False)
    return run


# -- a cloud inside the test's own process ------------------------------------------------------

T = TypeVar("T")


def in_cloud(home: Path, scenario: Callable[[Cloud], Awaitable[T]], **settings: Any) -> T:
    """Run `scenario` against a deterministic model cloud built in this process (no socket),
    with these settings besides (`allow_resize_to_same_host=True`, ...)."""
    async def main() -> T:
        cloud = Cloud(CloudSettings(home=home, deterministic=True, virt="model", **settings),
                      "http://127.0.0.1:1")
        try:
            await cloud.start()
            return await scenario(cloud)
        finally:
            await cloud.stop()
            cloud.close()
    return asyncio.run(main())


def demo_context(cloud: Cloud, request_id: str) -> MessageContext:
    """What nova-api passes on for a request from the demo user."""
    user = cloud.identity.list("user", {"name": "demo"})[0]
    project = cloud.identity.list("project", {"name": "demo"})[0]
    return MessageContext(request_id=request_id, source="nova-api", user_id=user.id,
                          project_id=project.id)
