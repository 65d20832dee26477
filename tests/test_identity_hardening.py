"""Regression tests for the cloud's hardening: the trace across restarts, a careful `down`,
one server per state folder, disabled domains, odd input, long passwords, grants, filters,
anonymous password changes, region references, the body size limit and the trace's window.

Every refusal is checked to be keystone's `{"error": {"code", "title", "message"}}`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import (
    LAB_PASSWORDS,
    SUBPROCESS_TIMEOUT,
    auth_header,
    clean_env,
    console_script,
    password_auth,
    pid_alive,
    start_cloud,
    stop_cloud,
    wait_for,
)
from labkit.cloud import process
from labkit.cloud.process import CloudInfo
from labkit.cloud.settings import CloudSettings

TOKENS = "/identity/v3/auth/tokens"
UNAUTHORIZED = {"error": {"code": 401, "title": "Unauthorized",
                          "message": "The request you have made requires authentication."}}
LAB_USERS = {"admin", "demo", "alt_demo", "nova", "neutron", "glance", "cinder", "placement"}
# keystone's [oslo_middleware] max_request_body_size
MAX_BODY = 114688
# Python's and keystone's names for 413 changed over time (RFC 9110 says "Content Too Large").
TITLES = {413: {"Request Entity Too Large", "Payload Too Large", "Content Too Large"}}

Labkit = Callable[..., subprocess.CompletedProcess[str]]


# -- helpers --------------------------------------------------------------------------------

def keystone_error(response: httpx.Response, *codes: int) -> str:
    """Check keystone's error body, with one of `codes`; return the message."""
    assert response.status_code in codes, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "title", "message"}, error
    assert error["code"] == response.status_code
    titles = TITLES.get(response.status_code,
                        {httpx.codes.get_reason_phrase(response.status_code)})
    assert error["title"] in titles, error
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]



def id_auth(user_id: str, password: str, project_id: str | None = None) -> dict[str, Any]:
    """A POST /v3/auth/tokens body naming the user, and the project, by id."""
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {
        "user": {"id": user_id, "password": password}}}}
    if project_id is not None:
        auth["scope"] = {"project": {"id": project_id}}
    return {"auth": auth}


def server_pids(home: Path) -> list[int]:
    """Live `labkit.cloud.server` processes started for this state folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"labkit.cloud.server" in a for a in args) \
                and any(str(home).encode() in a for a in args) and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def suffix() -> str:
    return uuid.uuid4().hex[:8]


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admin(http: httpx.Client, admin_token: str) -> Callable[..., httpx.Response]:
    """An HTTP request made with the admin's token."""
    def request(method: str, path: str, **kwargs: Any) -> httpx.Response:
        return http.request(method, "/identity/v3" + path, headers=auth_header(admin_token),
                            **kwargs)
    return request


@pytest.fixture(scope="module")
def ids(admin: Callable[..., httpx.Response]) -> dict[str, str]:
    """Ids of the lab's users and roles by name ("user:demo", "role:member")."""
    out = {}
    for kind in ("users", "roles"):
        r = admin("GET", f"/{kind}")
        assert r.status_code == 200, r.text
        out.update({f"{kind[:-1]}:{e['name']}": e["id"] for e in r.json()[kind]})
    return out


def created(response: httpx.Response, kind: str) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()[kind]


@pytest.fixture
def new_user(admin: Callable[..., httpx.Response]) -> Iterator[Callable[..., dict[str, Any]]]:
    """Create users in Default for one test; deleted afterwards."""
    made: list[str] = []

    def make(password: str = "OLD_PASS", **extra: Any) -> dict[str, Any]:
        user = created(admin("POST", "/users", json={"user": {
            "name": f"user-{suffix()}", "domain_id": "default", "password": password,
            **extra}}), "user")
        made.append(user["id"])
        return user
    yield make
    for user_id in made:
        admin("DELETE", f"/users/{user_id}")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh state folder; whatever cloud a test starts in it is stopped afterwards."""
    path = tmp_path / "labkit-home"
    yield path
    stop_cloud(path)
    for pid in server_pids(path):  # a second server a racy `up` started: ours to end
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def labkit_cli(home: Path) -> Labkit:
    """Run the `labkit` console script with LABKIT_HOME set to this test's state folder."""
    exe = console_script("labkit")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(exe), *args], env=clean_env(LABKIT_HOME=str(home)),
                                capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                                check=False)
        assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\n" \
                                       f"stderr: {result.stderr}"
        return result
    return run


# -- 1. the trace survives a stop -------------------------------------------------------------

def _admin_token(client: httpx.Client) -> str:
    r = client.post(TOKENS, json=password_auth("admin", "ADMIN_PASS", "admin"))
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def test_trace_of_requests_made_just_before_down_survives_a_restart(
        labkit_cli: Labkit, home: Path) -> None:
    labkit_cli("cloud", "up")
    info = process.running(home)
    assert info is not None
    with httpx.Client(base_url=info.url, timeout=30) as client:
        token = _admin_token(client)
        responses = [
            client.get("/identity/v3"),
            client.post(TOKENS, json=password_auth("demo", "DEMO_PASS", "demo")),
            client.get("/identity/v3/users", headers=auth_header(token)),
            client.get("/identity/v3/users"),
            client.get("/identity/v3/projects", headers=auth_header(token)),
        ]
    made = {r.headers["x-openstack-request-id"]: r.status_code for r in responses}
    labkit_cli("cloud", "down")
    assert not (home / "cloud.json").exists()
    labkit_cli("cloud", "up")
    info = process.running(home)
    assert info is not None
    with httpx.Client(base_url=info.url, timeout=30) as client:
        token = _admin_token(client)
        for request_id, status in made.items():
            r = client.get("/labkit/v1/trace", params={"request_id": request_id},
                           headers=auth_header(token))
            assert r.status_code == 200, r.text
            api = [e for e in r.json()["events"] if e["kind"] == "api"]
            assert len(api) == 1, (request_id, r.json())
            assert api[0]["detail"]["status"] == status


def test_cloud_json_is_gone_after_down(labkit_cli: Labkit, home: Path) -> None:
    labkit_cli("cloud", "up")
    assert (home / "cloud.json").exists()
    labkit_cli("cloud", "down")
    assert not (home / "cloud.json").exists()


# -- 2. down never signals a stranger ---------------------------------------------------------

@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A `sleep 60` in a process group of its own (so a killpg would reach it)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_down_does_not_signal_a_process_named_by_a_stale_cloud_json(
        tmp_path: Path, stranger: subprocess.Popen[bytes]) -> None:
    home = tmp_path / "stale-home"
    home.mkdir()
    (home / "cloud.json").write_text(json.dumps({
        "pid": stranger.pid, "port": 9, "url": "http://127.0.0.1:9",
        "started_at": time.time() - 3600}))
    assert process.down(home) is False
    assert stranger.poll() is None, f"down signalled the stranger ({stranger.returncode})"
    assert pid_alive(stranger.pid)


# -- 3. two ups at once ------------------------------------------------------------------------

def _up_twice_at_once(home: Path) -> tuple[list[CloudInfo], set[int]]:
    """Two threads call `up` on one state folder at the same moment.

    Returns what each got, and every server pid seen for that folder meanwhile.
    """
    barrier = threading.Barrier(2)
    results: list[CloudInfo] = []
    errors: list[BaseException] = []
    seen: set[int] = set()
    racing = threading.Event()

    def start() -> None:
        barrier.wait()
        try:
            results.append(process.up(CloudSettings(home=home, deterministic=True,
                                                            virt="model")))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def watch() -> None:
        while racing.is_set():
            seen.update(server_pids(home))

    racing.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SUBPROCESS_TIMEOUT)
    racing.clear()
    watcher.join()
    assert not errors, errors
    assert len(results) == 2
    return results, seen


def test_two_ups_at_once_return_the_same_cloud(home: Path) -> None:
    (first, second), _ = _up_twice_at_once(home)
    assert (first.pid, first.url) == (second.pid, second.url)


def test_two_ups_at_once_run_one_server(home: Path) -> None:
    (first, _), seen = _up_twice_at_once(home)
    assert seen <= {first.pid}, f"servers {sorted(seen)} ran for one state folder"
    assert server_pids(home) == [first.pid]


def test_two_ups_at_once_keep_the_served_port_in_settings(home: Path) -> None:
    (first, _), _ = _up_twice_at_once(home)
    settings = json.loads((home / "settings.json").read_text())
    assert settings["port"] == urlsplit(first.url).port == first.port


# -- 4. a disabled domain ----------------------------------------------------------------------

@pytest.fixture
def domain_world(admin: Callable[..., httpx.Response], http: httpx.Client,
                 ids: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A domain with a project and a member user in it, and that user's project token."""
    domain = created(admin("POST", "/domains", json={"domain": {"name": f"d2-{suffix()}"}}),
                     "domain")
    project = created(admin("POST", "/projects", json={"project": {
        "name": f"p-{suffix()}", "domain_id": domain["id"]}}), "project")
    user = created(admin("POST", "/users", json={"user": {
        "name": f"u-{suffix()}", "domain_id": domain["id"], "password": "S3CRET"}}), "user")
    r = admin("PUT", f"/projects/{project['id']}/users/{user['id']}/roles/{ids['role:member']}")
    assert r.status_code == 204, r.text
    r = http.post(TOKENS, json=id_auth(user["id"], "S3CRET", project["id"]))
    assert r.status_code == 201, r.text
    world = {"domain": domain, "project": project, "user": user,
             "token": r.headers["X-Subject-Token"]}
    yield world
    admin("DELETE", f"/users/{user['id']}")
    admin("DELETE", f"/projects/{project['id']}")
    admin("PATCH", f"/domains/{domain['id']}", json={"domain": {"enabled": False}})
    admin("DELETE", f"/domains/{domain['id']}")


def _disable(admin: Callable[..., httpx.Response], domain_id: str) -> None:
    r = admin("PATCH", f"/domains/{domain_id}", json={"domain": {"enabled": False}})
    assert r.status_code == 200, r.text
    assert r.json()["domain"]["enabled"] is False


def test_token_of_a_user_in_a_disabled_domain_is_refused(
        http: httpx.Client, admin: Callable[..., httpx.Response], admin_token: str,
        domain_world: dict[str, Any]) -> None:
    token = domain_world["token"]
    assert http.get("/identity/v3/auth/projects", headers=auth_header(token)).status_code == 200
    r = http.get(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": token})
    assert r.status_code == 200, r.text
    _disable(admin, domain_world["domain"]["id"])
    r = http.get("/identity/v3/auth/projects", headers=auth_header(token))
    assert r.status_code == 401, r.text
    assert r.json() == UNAUTHORIZED
    r = http.get(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": token})
    keystone_error(r, 404)


def test_sign_in_by_ids_to_a_disabled_domain_is_401(
        http: httpx.Client, admin: Callable[..., httpx.Response],
        domain_world: dict[str, Any]) -> None:
    _disable(admin, domain_world["domain"]["id"])
    r = http.post(TOKENS, json=id_auth(domain_world["user"]["id"], "S3CRET",
                                       domain_world["project"]["id"]))
    keystone_error(r, 401)
    assert "X-Subject-Token" not in r.headers


def test_unscoped_sign_in_by_user_id_to_a_disabled_domain_is_401(
        http: httpx.Client, admin: Callable[..., httpx.Response],
        domain_world: dict[str, Any]) -> None:
    _disable(admin, domain_world["domain"]["id"])
    r = http.post(TOKENS, json=id_auth(domain_world["user"]["id"], "S3CRET"))
    keystone_error(r, 401)


# -- 5. odd input is a 400 in keystone's format, never a 500 ---------------------------------

def _user_auth(user: dict[str, Any], scope: dict[str, Any] | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["password"],
                                         "password": {"user": user}}}
    if scope is not None:
        auth["scope"] = scope
    return {"auth": auth}


@pytest.mark.parametrize("body", [
    _user_auth({"name": ["demo"], "domain": {"name": "Default"}, "password": "DEMO_PASS"}),
    _user_auth({"id": {"id": "x"}, "password": "DEMO_PASS"}),
    _user_auth({"name": "demo", "domain": {"id": ["default"]}, "password": "DEMO_PASS"}),
    _user_auth({"name": "demo", "domain": {"name": "Default"}, "password": "DEMO_PASS"},
               {"project": {"id": ["x"]}}),
], ids=["user-name-list", "user-id-object", "domain-id-list", "project-scope-id-list"])
def test_wrongly_typed_auth_field_is_400(http: httpx.Client, body: dict[str, Any]) -> None:
    keystone_error(http.post(TOKENS, json=body), 400)


@pytest.mark.parametrize("kind, body", [
    ("users", {"user": {"name": ["odd"], "password": "x"}}),
    ("users", {"user": {"name": "odd", "domain_id": ["default"]}}),
    ("projects", {"project": {"name": "odd", "domain_id": {"id": "default"}}}),
    ("domains", {"domain": {"name": {"odd": 1}}}),
], ids=["user-name-list", "user-domain-id-list", "project-domain-id-object",
        "domain-name-object"])
def test_wrongly_typed_create_field_is_400(admin: Callable[..., httpx.Response], kind: str,
                                           body: dict[str, Any]) -> None:
    keystone_error(admin("POST", f"/{kind}", json=body), 400)
    r = admin("GET", f"/{kind}", params={"name": "odd"})
    assert r.status_code == 200 and r.json()[kind] == []


@pytest.mark.parametrize("content", [
    b"[" * 100_000,
    b"[" * 50_000 + b"]" * 50_000,
    b'{"auth": ' + b'{"a": ' * 15_000 + b"1" + b"}" * 15_001,
], ids=["100000-open-arrays", "50000-nested-arrays", "15000-nested-objects"])
def test_deeply_nested_json_is_400(http: httpx.Client, content: bytes) -> None:
    assert len(content) <= MAX_BODY
    r = http.post(TOKENS, content=content, headers={"Content-Type": "application/json"})
    keystone_error(r, 400)


def test_deeply_nested_json_to_an_admin_api_is_400(http: httpx.Client,
                                                   admin_token: str) -> None:
    r = http.post("/identity/v3/users", content=b"[" * 100_000,
                  headers={**auth_header(admin_token), "Content-Type": "application/json"})
    keystone_error(r, 400)


def test_password_with_a_lone_surrogate_is_401_or_400(http: httpx.Client) -> None:
    text = ('{"auth": {"identity": {"methods": ["password"], "password": {"user": '
            '{"name": "demo", "domain": {"name": "Default"}, "password": "\\ud800"}}}}}')
    r = http.post(TOKENS, content=text.encode(), headers={"Content-Type": "application/json"})
    keystone_error(r, 401, 400)


def test_patch_user_password_null_is_400_or_clears_the_password(
        http: httpx.Client, admin: Callable[..., httpx.Response],
        new_user: Callable[..., dict[str, Any]]) -> None:
    # keystone's schema allows null (the user is left without a password); the lab may refuse
    user = new_user("OLD_PASS")
    r = admin("PATCH", f"/users/{user['id']}", json={"user": {"password": None}})
    if r.status_code == 200:
        expected = 401
    else:
        keystone_error(r, 400)
        expected = 201
    r = http.post(TOKENS, json=password_auth(user["name"], "OLD_PASS"))
    assert r.status_code == expected, r.text


def test_post_region_with_a_null_id_is_400_or_gets_an_id(
        admin: Callable[..., httpx.Response]) -> None:
    # keystone's POST /v3/regions treats a null id as no id and generates one
    r = admin("POST", "/regions", json={"region": {"id": None, "description": "null id"}})
    if r.status_code == 201:
        region_id = r.json()["region"]["id"]
        assert isinstance(region_id, str) and region_id
        assert admin("GET", f"/regions/{region_id}").status_code == 200
        admin("DELETE", f"/regions/{region_id}")
    else:
        keystone_error(r, 400)


@pytest.fixture
def service(admin: Callable[..., httpx.Response]) -> Iterator[dict[str, Any]]:
    svc = created(admin("POST", "/services", json={"service": {
        "type": f"t-{suffix()}", "name": f"s-{suffix()}"}}), "service")
    yield svc
    for ep in admin("GET", "/endpoints", params={"service_id": svc["id"]}).json()["endpoints"]:
        admin("DELETE", f"/endpoints/{ep['id']}")
    admin("DELETE", f"/services/{svc['id']}")


def test_endpoint_with_an_empty_region_id_is_refused(
        admin: Callable[..., httpx.Response], service: dict[str, Any]) -> None:
    r = admin("POST", "/endpoints", json={"endpoint": {
        "service_id": service["id"], "interface": "public", "url": "http://example.test",
        "region_id": ""}})
    keystone_error(r, 400, 404)
    r = admin("GET", "/endpoints", params={"service_id": service["id"]})
    assert r.json()["endpoints"] == []


def test_deleting_a_region_used_by_endpoints_is_refused(
        admin: Callable[..., httpx.Response], service: dict[str, Any]) -> None:
    region = created(admin("POST", "/regions", json={"region": {"id": f"r-{suffix()}"}}),
                     "region")
    created(admin("POST", "/endpoints", json={"endpoint": {
        "service_id": service["id"], "interface": "public", "url": "http://example.test",
        "region_id": region["id"]}}), "endpoint")
    r = admin("DELETE", f"/regions/{region['id']}")
    # keystone answers 403 (RegionDeletionError); 409 and 400 say the same
    keystone_error(r, 409, 400, 403)
    assert admin("GET", f"/regions/{region['id']}").status_code == 200
    (ep,) = admin("GET", "/endpoints", params={"service_id": service["id"]}).json()["endpoints"]
    assert ep["region_id"] == region["id"]
    admin("DELETE", f"/endpoints/{ep['id']}")
    assert admin("DELETE", f"/regions/{region['id']}").status_code == 204


def test_deleting_a_disabled_domain_that_owns_users_is_refused_or_takes_them(
        admin: Callable[..., httpx.Response]) -> None:
    domain = created(admin("POST", "/domains", json={"domain": {"name": f"d-{suffix()}"}}),
                     "domain")
    user = created(admin("POST", "/users", json={"user": {
        "name": f"u-{suffix()}", "domain_id": domain["id"], "password": "S3CRET"}}), "user")
    _disable(admin, domain["id"])
    r = admin("DELETE", f"/domains/{domain['id']}")
    if r.status_code == 204:
        # keystone deletes a domain's users along with it
        keystone_error(admin("GET", f"/users/{user['id']}"), 404)
    else:
        keystone_error(r, 409, 403)
        assert admin("GET", f"/users/{user['id']}").status_code == 200
        assert admin("GET", f"/domains/{domain['id']}").status_code == 200
    r = admin("GET", "/users")
    assert r.status_code == 200, r.text
    assert {u["name"] for u in r.json()["users"]} >= LAB_USERS


# -- 6. passwords longer than bcrypt's 72 bytes --------------------------------------------------

@pytest.mark.parametrize("password", ["x" * 80, "pässwörd" * 10],
                         ids=["80-ascii", "80-chars-96-bytes"])
def test_user_with_a_password_over_72_bytes_signs_in(
        http: httpx.Client, new_user: Callable[..., dict[str, Any]], password: str) -> None:
    user = new_user(password)
    r = http.post(TOKENS, json=password_auth(user["name"], password))
    assert r.status_code == 201, r.text


def test_wrong_100_character_password_is_401(
        http: httpx.Client, new_user: Callable[..., dict[str, Any]]) -> None:
    user = new_user("x" * 80)
    r = http.post(TOKENS, json=password_auth(user["name"], "y" * 100))
    assert r.status_code == 401, r.text
    assert r.json() == UNAUTHORIZED
    r = http.post(TOKENS, json=password_auth("demo", "y" * 100, "demo"))
    assert r.json() == UNAUTHORIZED


def test_patching_a_password_over_72_bytes_works(
        http: httpx.Client, admin: Callable[..., httpx.Response],
        new_user: Callable[..., dict[str, Any]]) -> None:
    user = new_user("OLD_PASS")
    r = admin("PATCH", f"/users/{user['id']}", json={"user": {"password": "z" * 90}})
    assert r.status_code == 200, r.text
    assert http.post(TOKENS, json=password_auth(user["name"], "z" * 90)).status_code == 201


# -- 7. a domain grant's removal leaves project tokens alone -----------------------------------

def test_revoking_a_domain_role_keeps_the_users_project_token(
        http: httpx.Client, admin: Callable[..., httpx.Response], admin_token: str,
        ids: dict[str, str], issue_token: Callable[..., str]) -> None:
    grant = f"/domains/default/users/{ids['user:demo']}/roles/{ids['role:reader']}"
    assert admin("PUT", grant).status_code == 204
    token = issue_token("demo", "demo")
    assert admin("HEAD", grant).status_code == 204
    assert admin("DELETE", grant).status_code == 204
    keystone_error(admin("GET", grant), 404)
    r = http.get(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": token})
    assert r.status_code == 200, r.text
    assert r.json()["token"]["project"]["name"] == "demo"
    assert http.get("/identity/v3/auth/projects", headers=auth_header(token)).status_code == 200


# -- 8. the enabled filter reads booleans as keystone does -------------------------------------

@pytest.fixture
def disabled_user(new_user: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    user = new_user("S3CRET", enabled=False)
    assert user["enabled"] is False
    return user


def _user_names(admin: Callable[..., httpx.Response], enabled: str) -> set[str]:
    r = admin("GET", "/users", params={"enabled": enabled})
    assert r.status_code == 200, r.text
    return {u["name"] for u in r.json()["users"]}


@pytest.mark.parametrize("value", ["garbage", "on", "true", "1", "yes"])
def test_enabled_filter_other_than_a_false_word_lists_enabled_users(
        admin: Callable[..., httpx.Response], disabled_user: dict[str, Any],
        value: str) -> None:
    names = _user_names(admin, value)
    assert names >= LAB_USERS
    assert disabled_user["name"] not in names


@pytest.mark.parametrize("value", ["false", "0", "no", "off"])
def test_enabled_false_lists_no_lab_user(admin: Callable[..., httpx.Response],
                                         disabled_user: dict[str, Any], value: str) -> None:
    names = _user_names(admin, value)
    assert not names & LAB_USERS
    assert disabled_user["name"] in names


# -- 9. regions for members, and a password change without a token -----------------------------

def test_member_lists_regions(http: httpx.Client, issue_token: Callable[..., str]) -> None:
    r = http.get("/identity/v3/regions", headers=auth_header(issue_token("demo", "demo")))
    assert r.status_code == 200, r.text
    assert "RegionOne" in {region["id"] for region in r.json()["regions"]}


def test_member_gets_region_one(http: httpx.Client, issue_token: Callable[..., str]) -> None:
    r = http.get("/identity/v3/regions/RegionOne",
                 headers=auth_header(issue_token("demo", "demo")))
    assert r.status_code == 200, r.text
    assert r.json()["region"]["id"] == "RegionOne"


def test_password_change_without_a_token_works_with_the_original_password(
        http: httpx.Client, new_user: Callable[..., dict[str, Any]]) -> None:
    user = new_user("OLD_PASS")
    r = http.post(f"/identity/v3/users/{user['id']}/password",
                  json={"user": {"original_password": "OLD_PASS", "password": "NEW_PASS"}})
    assert r.status_code == 204, r.text
    assert http.post(TOKENS, json=password_auth(user["name"], "NEW_PASS")).status_code == 201
    assert http.post(TOKENS, json=password_auth(user["name"], "OLD_PASS")).status_code == 401


def test_password_change_without_a_token_and_a_wrong_original_is_401(
        http: httpx.Client, new_user: Callable[..., dict[str, Any]]) -> None:
    user = new_user("OLD_PASS")
    r = http.post(f"/identity/v3/users/{user['id']}/password",
                  json={"user": {"original_password": "WRONG", "password": "NEW_PASS"}})
    keystone_error(r, 401)
    assert http.post(TOKENS, json=password_auth(user["name"], "OLD_PASS")).status_code == 201
    assert http.post(TOKENS, json=password_auth(user["name"], "NEW_PASS")).status_code == 401


# -- 10. a region's parent must exist ------------------------------------------------------------

def test_region_with_an_unknown_parent_is_404(admin: Callable[..., httpx.Response]) -> None:
    region_id = f"r-{suffix()}"
    r = admin("POST", "/regions", json={"region": {"id": region_id,
                                                   "parent_region_id": "no-such-region"}})
    keystone_error(r, 404)
    keystone_error(admin("GET", f"/regions/{region_id}"), 404)


# -- 11. the body size limit -------------------------------------------------------------------

def _auth_of_size(size: int) -> bytes:
    """A well-formed sign-in body (a wrong password for demo) of exactly `size` bytes."""
    empty = json.dumps(password_auth("demo", "", "demo")).encode()
    body = json.dumps(password_auth("demo", "x" * (size - len(empty)), "demo")).encode()
    assert len(body) == size
    return body


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    r = http.post(TOKENS, content=_auth_of_size(MAX_BODY + 1),
                  headers={"Content-Type": "application/json"})
    keystone_error(r, 413)
    assert "X-Subject-Token" not in r.headers


def test_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    body = _auth_of_size(MAX_BODY + 4096)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]
    r = http.post(TOKENS, content=chunks(), headers={"Content-Type": "application/json"})
    keystone_error(r, 413)


def test_body_over_the_limit_to_an_admin_api_is_413(http: httpx.Client, admin_token: str,
                                                    admin: Callable[..., httpx.Response]) -> None:
    name = f"big-{suffix()}"
    body = json.dumps({"project": {"name": name, "description": "d" * (MAX_BODY + 1)}})
    r = http.post("/identity/v3/projects", content=body.encode(),
                  headers={**auth_header(admin_token), "Content-Type": "application/json"})
    keystone_error(r, 413)
    assert admin("GET", "/projects", params={"name": name}).json()["projects"] == []


def test_body_at_the_limit_is_read(http: httpx.Client) -> None:
    r = http.post(TOKENS, content=_auth_of_size(MAX_BODY),
                  headers={"Content-Type": "application/json"})
    assert r.json() == UNAUTHORIZED


# -- 12. the trace's default window holds the newest events -------------------------------------

def test_default_trace_includes_the_newest_request_after_1000_events(
        http: httpx.Client, admin_token: str) -> None:
    for _ in range(1100):
        assert http.get("/identity/v3").status_code == 200
    marker = http.get("/identity/v3/auth/projects",
                      headers=auth_header(admin_token), params={"marker": suffix()})
    request_id = marker.headers["x-openstack-request-id"]

    def fetch() -> list[dict[str, Any]]:
        r = http.get("/labkit/v1/trace", headers=auth_header(admin_token))
        assert r.status_code == 200, r.text
        return r.json()["events"]
    events = wait_for(fetch, lambda evs: request_id in {e["request_id"] for e in evs})
    assert request_id in {e["request_id"] for e in events}


def test_lab_passwords_still_sign_in_after_the_hardening(http: httpx.Client) -> None:
    for user, password in LAB_PASSWORDS.items():
        r = http.post(TOKENS, json=password_auth(user, password))
        assert r.status_code == 201, (user, r.text)


def test_cloud_fixture_runs_one_server(cloud: CloudInfo) -> None:
    assert server_pids(cloud.home) == [cloud.pid]


def test_start_cloud_reuses_the_running_one(cloud: CloudInfo) -> None:
    assert start_cloud(cloud.home).pid == cloud.pid
