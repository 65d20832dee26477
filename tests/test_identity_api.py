"""Keystone v3's contract, through openstacksdk and raw HTTP, against a running embedded cloud."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import openstack
import pytest
from openstack.connection import Connection
from openstack.exceptions import ForbiddenException, SDKException

from conftest import auth_header, password_auth, wait_for
from labkit.cloud.process import CloudInfo
from labkit.inspect import inspector

REQUEST_ID = re.compile(
    r"^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
UNAUTHORIZED = {"error": {"code": 401, "title": "Unauthorized",
                          "message": "The request you have made requires authentication."}}
# what the embedded cloud serves so far; data/catalog.yaml lists more, and the cloud
# leaves out of its catalog what nobody answers
CATALOG_TYPES = {"identity", "compute", "network", "image", "placement", "block-storage",
                 "volumev3"}
TOKENS = "/identity/v3/auth/tokens"


def keystone_error(response: httpx.Response, code: int) -> str:
    """Check keystone's error body {"error": {"code", "title", "message"}}; return the message."""
    assert response.status_code == code, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "title", "message"}
    assert error["code"] == code
    assert error["title"] == httpx.codes.get_reason_phrase(code)
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]



@pytest.fixture(scope="module")
def token_body(demo_conn: Connection) -> dict[str, Any]:
    access = demo_conn.session.auth.get_access(demo_conn.session)
    return access._data["token"]


def count_identity(conn: Connection) -> tuple[int, int]:
    return len(list(conn.identity.users())), len(list(conn.identity.projects()))


# -- authentication through the SDK --------------------------------------------------------

def test_sdk_authorize_returns_a_token(demo_conn: Connection) -> None:
    token = demo_conn.authorize()
    assert isinstance(token, str) and token.startswith("gAAAAA")


def test_sdk_access_names_the_demo_user_and_project(demo_conn: Connection) -> None:
    access = demo_conn.session.auth.get_access(demo_conn.session)
    assert access.username == "demo"
    assert access.project_name == "demo"
    assert access.user_domain_name == "Default"
    assert access.project_domain_id == "default"
    assert sorted(access.role_names) == ["member", "reader"]
    assert not access.will_expire_soon(stale_duration=600)


def test_token_body_has_keystones_fields(token_body: dict[str, Any]) -> None:
    assert {"expires_at", "issued_at", "methods", "user", "project", "roles", "catalog",
            "audit_ids", "is_domain"} <= set(token_body)


def test_token_body_times_are_iso_utc_and_an_hour_apart(token_body: dict[str, Any]) -> None:
    assert ISO_Z.match(token_body["issued_at"]), token_body["issued_at"]
    assert ISO_Z.match(token_body["expires_at"]), token_body["expires_at"]
    issued = datetime.fromisoformat(token_body["issued_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(token_body["expires_at"].replace("Z", "+00:00"))
    assert round((expires - issued).total_seconds()) == 3600


def test_token_body_user_project_and_roles(token_body: dict[str, Any]) -> None:
    assert token_body["methods"] == ["password"]
    user, project = token_body["user"], token_body["project"]
    assert user["name"] == "demo" and len(user["id"]) == 32
    assert user["domain"] == {"id": "default", "name": "Default"}
    assert project["name"] == "demo" and len(project["id"]) == 32
    assert project["domain"] == {"id": "default", "name": "Default"}
    assert sorted(r["name"] for r in token_body["roles"]) == ["member", "reader"]
    assert all(set(r) == {"id", "name"} for r in token_body["roles"])
    assert token_body["is_domain"] is False
    (audit_id,) = token_body["audit_ids"]
    assert len(audit_id) == 22


def test_token_body_catalog_has_every_service(token_body: dict[str, Any]) -> None:
    catalog = token_body["catalog"]
    assert {s["type"] for s in catalog} >= CATALOG_TYPES
    for service in catalog:
        assert {"id", "type", "name", "endpoints"} <= set(service)


def test_catalog_endpoints_are_public_internal_admin_in_region_one(
        token_body: dict[str, Any], cloud: CloudInfo) -> None:
    for service in token_body["catalog"]:
        endpoints = service["endpoints"]
        assert sorted(e["interface"] for e in endpoints) == ["admin", "internal", "public"]
        for e in endpoints:
            assert {"id", "interface", "region", "region_id", "url"} <= set(e)
            assert e["region"] == e["region_id"] == "RegionOne"
            assert e["url"].startswith(cloud.url + "/")


@pytest.fixture(scope="module")
def volume_endpoint(admin_conn: Connection, cloud: CloudInfo) -> Iterator[str]:
    """A block-storage entry with keystone's $(project_id)s template, as cinder's has."""
    service = admin_conn.identity.create_service(type="block-storage", name="cinder-test")
    url = f"{cloud.url}/volume/v3/$(project_id)s"
    for interface in ("public", "internal", "admin"):
        admin_conn.identity.create_endpoint(service_id=service.id, interface=interface,
                                            url=url, region_id="RegionOne")
    yield url
    admin_conn.identity.delete_service(service.id)


def test_catalog_substitutes_the_project_id(http: httpx.Client,
                                            volume_endpoint: str, cloud: CloudInfo) -> None:
    r = http.post(TOKENS, json=password_auth("demo", "DEMO_PASS", "demo"))
    body = r.json()["token"]
    project_id = body["project"]["id"]
    urls = {s["type"]: {e["url"] for e in s["endpoints"]} for s in body["catalog"]}
    assert urls["block-storage"] == {f"{cloud.url}/volume/v3/{project_id}"}
    assert urls["identity"] == {f"{cloud.url}/identity"}
    assert urls["compute"] == {f"{cloud.url}/compute/v2.1"}
    assert all("$(" not in url and "%(" not in url for u in urls.values() for url in u)


def test_sdk_finds_endpoints_in_the_catalog(demo_conn: Connection, cloud: CloudInfo) -> None:
    access = demo_conn.session.auth.get_access(demo_conn.session)
    url = access.service_catalog.url_for(service_type="compute", interface="internal",
                                         region_name="RegionOne")
    assert url == f"{cloud.url}/compute/v2.1"


def test_the_catalog_lists_only_what_the_cloud_serves(token_body: dict[str, Any]) -> None:
    # clients call every service the catalog names (`openstack quota show` does)
    assert {s["type"] for s in token_body["catalog"]} == CATALOG_TYPES


def test_auth_catalog_matches_the_token_catalog(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/identity/v3/auth/catalog", headers=auth_header(demo_token))
    assert r.status_code == 200
    types = {s["type"] for s in r.json()["catalog"]}
    assert types >= CATALOG_TYPES


def test_nocatalog_leaves_the_catalog_out(http: httpx.Client) -> None:
    r = http.post(TOKENS + "?nocatalog", json=password_auth("demo", "DEMO_PASS", "demo"))
    assert r.status_code == 201
    assert "catalog" not in r.json()["token"]


def test_unscoped_token_has_no_project_roles_or_catalog(http: httpx.Client) -> None:
    r = http.post(TOKENS, json=password_auth("demo", "DEMO_PASS"))
    assert r.status_code == 201
    token = r.json()["token"]
    assert "project" not in token and "roles" not in token and "catalog" not in token
    assert token["user"]["name"] == "demo"


def test_token_issue_answers_201_with_x_subject_token(http: httpx.Client) -> None:
    r = http.post(TOKENS, json=password_auth("demo", "DEMO_PASS", "demo"))
    assert r.status_code == 201
    assert r.headers["X-Subject-Token"].startswith("gAAAAA")
    assert "X-Subject-Token" not in r.json()["token"]


# -- version documents ----------------------------------------------------------------------

def _check_v3_version(version: dict[str, Any], cloud: CloudInfo) -> None:
    assert version["id"].startswith("v3.")
    assert version["status"] == "stable"
    self_links = [link["href"] for link in version["links"] if link["rel"] == "self"]
    assert self_links == [f"{cloud.url}/identity/v3/"]


def test_identity_root_without_slash_answers_300(http: httpx.Client) -> None:
    r = http.get("/identity")
    assert r.status_code == 300


def test_identity_root_answers_300_with_a_versions_list(http: httpx.Client,
                                                        cloud: CloudInfo) -> None:
    r = http.get("/identity", follow_redirects=True)
    assert r.status_code == 300
    (version,) = r.json()["versions"]["values"]
    _check_v3_version(version, cloud)


def test_identity_v3_answers_its_version_with_a_self_link(http: httpx.Client,
                                                          cloud: CloudInfo) -> None:
    for path in ("/identity/v3", "/identity/v3/"):
        r = http.get(path)
        assert r.status_code == 200, path
        _check_v3_version(r.json()["version"], cloud)
        media = r.json()["version"]["media-types"]
        assert {"base": "application/json",
                "type": "application/vnd.openstack.identity-v3+json"} in media


# -- admin ---------------------------------------------------------------------------------

def test_admin_lists_users(admin_conn: Connection) -> None:
    names = {u.name for u in admin_conn.identity.users()}
    assert {"admin", "demo", "alt_demo", "nova", "neutron", "glance", "cinder",
            "placement"} <= names


def test_admin_lists_projects(admin_conn: Connection) -> None:
    names = {p.name for p in admin_conn.identity.projects()}
    assert {"admin", "service", "demo", "alt_demo"} <= names


def test_admin_lists_roles(admin_conn: Connection) -> None:
    assert {"admin", "member", "reader"} <= {r.name for r in admin_conn.identity.roles()}


def test_admin_lists_domains(admin_conn: Connection) -> None:
    domains = {d.id: d.name for d in admin_conn.identity.domains()}
    assert domains["default"] == "Default"


def test_admin_lists_role_assignments(admin_conn: Connection) -> None:
    users = {u.id: u.name for u in admin_conn.identity.users()}
    projects = {p.id: p.name for p in admin_conn.identity.projects()}
    roles = {r.id: r.name for r in admin_conn.identity.roles()}
    seen = {(users[a.user["id"]], roles[a.role["id"]], projects[a.scope["project"]["id"]])
            for a in admin_conn.identity.role_assignments()}
    assert {("admin", "admin", "admin"), ("demo", "member", "demo"),
            ("alt_demo", "member", "alt_demo"), ("nova", "admin", "service")} <= seen


def test_role_assignments_filter_by_user(admin_conn: Connection) -> None:
    demo = admin_conn.identity.find_user("demo")
    rows = list(admin_conn.identity.role_assignments(user_id=demo.id))
    assert rows and all(a.user["id"] == demo.id for a in rows)


@pytest.fixture
def scratch(admin_conn: Connection) -> Iterator[dict[str, Any]]:
    """Names for a project and a user this test creates; both removed afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {"project": f"proj-{suffix}", "user": f"user-{suffix}"}
    yield names
    for user in admin_conn.identity.users(name=names["user"]):
        admin_conn.identity.delete_user(user)
    for project in admin_conn.identity.projects(name=names["project"]):
        admin_conn.identity.delete_project(project)


def test_admin_creates_and_deletes_a_project(admin_conn: Connection,
                                             scratch: dict[str, Any]) -> None:
    project = admin_conn.identity.create_project(name=scratch["project"], description="d")
    assert project.domain_id == "default" and project.is_enabled
    assert admin_conn.identity.get_project(project.id).name == scratch["project"]
    admin_conn.identity.delete_project(project)
    assert scratch["project"] not in {p.name for p in admin_conn.identity.projects()}


def test_admin_creates_and_deletes_a_user(admin_conn: Connection,
                                          scratch: dict[str, Any]) -> None:
    user = admin_conn.identity.create_user(name=scratch["user"], password="S3CRET",
                                           domain_id="default")
    assert user.name == scratch["user"] and user.domain_id == "default"
    assert admin_conn.identity.get_user(user.id).name == scratch["user"]
    admin_conn.identity.delete_user(user)
    assert scratch["user"] not in {u.name for u in admin_conn.identity.users()}


def _connect_as(cloud: CloudInfo, user: str, password: str, project: str) -> Connection:
    return openstack.connect(
        auth_url=cloud.url + "/identity", username=user, password=password,
        project_name=project, user_domain_name="Default", project_domain_name="Default",
        region_name="RegionOne", load_envvars=False, load_yaml_config=False)


def test_granted_role_lets_a_new_user_get_a_token_scoped_to_the_project(
        admin_conn: Connection, scratch: dict[str, Any], cloud: CloudInfo) -> None:
    project = admin_conn.identity.create_project(name=scratch["project"])
    user = admin_conn.identity.create_user(name=scratch["user"], password="S3CRET",
                                           domain_id="default")
    member = admin_conn.identity.find_role("member")
    admin_conn.identity.assign_project_role_to_user(project, user, member)
    assert admin_conn.identity.validate_user_has_project_role(project, user, member)
    conn = _connect_as(cloud, scratch["user"], "S3CRET", scratch["project"])
    try:
        conn.authorize()
        access = conn.session.auth.get_access(conn.session)
        assert access.project_id == project.id
        assert access.user_id == user.id
        assert sorted(access.role_names) == ["member", "reader"]
    finally:
        conn.close()


def test_new_user_without_a_role_cannot_scope_to_the_project(
        admin_conn: Connection, scratch: dict[str, Any], http: httpx.Client) -> None:
    admin_conn.identity.create_project(name=scratch["project"])
    admin_conn.identity.create_user(name=scratch["user"], password="S3CRET",
                                    domain_id="default")
    r = http.post(TOKENS, json=password_auth(scratch["user"], "S3CRET", scratch["project"]))
    keystone_error(r, 401)


def test_admin_unassigns_a_role_and_the_users_token_stops_working(
        admin_conn: Connection, scratch: dict[str, Any], http: httpx.Client) -> None:
    project = admin_conn.identity.create_project(name=scratch["project"])
    user = admin_conn.identity.create_user(name=scratch["user"], password="S3CRET",
                                           domain_id="default")
    member = admin_conn.identity.find_role("member")
    admin_conn.identity.assign_project_role_to_user(project, user, member)
    r = http.post(TOKENS, json=password_auth(scratch["user"], "S3CRET", scratch["project"]))
    token = r.headers["X-Subject-Token"]
    assert http.get("/identity/v3/auth/catalog", headers=auth_header(token)).status_code == 200
    admin_conn.identity.unassign_project_role_from_user(project, user, member)
    r = http.get("/identity/v3/auth/catalog", headers=auth_header(token))
    assert r.json() == UNAUTHORIZED


# -- a member is refused admin work ---------------------------------------------------------

def test_demo_listing_users_is_forbidden(demo_conn: Connection) -> None:
    with pytest.raises(ForbiddenException) as caught:
        list(demo_conn.identity.users())
    assert caught.value.status_code == 403
    assert caught.value.response.json()["error"]["code"] == 403


def test_forbidden_body_is_keystones(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/identity/v3/users", headers=auth_header(demo_token))
    message = keystone_error(r, 403)
    assert "not authorized" in message


def test_demo_creating_a_project_is_forbidden_and_changes_nothing(
        http: httpx.Client, demo_token: str, admin_conn: Connection) -> None:
    before = count_identity(admin_conn)
    r = http.post("/identity/v3/projects", headers=auth_header(demo_token),
                  json={"project": {"name": "sneaky"}})
    keystone_error(r, 403)
    assert count_identity(admin_conn) == before


def test_demo_creating_a_user_is_forbidden_and_changes_nothing(
        http: httpx.Client, demo_token: str, admin_conn: Connection) -> None:
    before = count_identity(admin_conn)
    r = http.post("/identity/v3/users", headers=auth_header(demo_token),
                  json={"user": {"name": "sneaky", "password": "x"}})
    keystone_error(r, 403)
    assert count_identity(admin_conn) == before


def test_demo_reads_its_own_project_but_not_another(
        http: httpx.Client, demo_token: str, admin_conn: Connection) -> None:
    own = admin_conn.identity.find_project("demo")
    other = admin_conn.identity.find_project("alt_demo")
    assert http.get(f"/identity/v3/projects/{own.id}",
                    headers=auth_header(demo_token)).status_code == 200
    keystone_error(http.get(f"/identity/v3/projects/{other.id}",
                            headers=auth_header(demo_token)), 403)


# -- refused requests change nothing ---------------------------------------------------------

@pytest.mark.parametrize("kind, body, code", [
    ("projects", {"project": {"name": "demo"}}, 409),
    ("users", {"user": {"name": "demo", "password": "x"}}, 409),
    ("projects", {"project": {"description": "no name"}}, 400),
    ("projects", {"project": {"name": "x", "enabled": "yes"}}, 400),
    ("projects", {"name": "not wrapped"}, 400),
    ("users", {"user": {"name": ""}}, 400),
])
def test_refused_create_changes_nothing(http: httpx.Client, admin_token: str,
                                        admin_conn: Connection, kind: str,
                                        body: dict[str, Any], code: int) -> None:
    before = count_identity(admin_conn)
    keystone_error(http.post(f"/identity/v3/{kind}", headers=auth_header(admin_token),
                             json=body), code)
    assert count_identity(admin_conn) == before


def test_create_without_a_token_is_refused_and_changes_nothing(
        http: httpx.Client, admin_conn: Connection) -> None:
    before = count_identity(admin_conn)
    r = http.post("/identity/v3/projects", json={"project": {"name": "anon"}})
    assert r.json() == UNAUTHORIZED
    assert count_identity(admin_conn) == before


def test_malformed_create_body_is_refused_and_changes_nothing(
        http: httpx.Client, admin_token: str, admin_conn: Connection) -> None:
    before = count_identity(admin_conn)
    r = http.post("/identity/v3/users", headers={**auth_header(admin_token),
                                                 "Content-Type": "application/json"},
                  content=b'{"user": {"name": "half"')
    keystone_error(r, 400)
    assert count_identity(admin_conn) == before


# -- wrong credentials ----------------------------------------------------------------------

def test_bad_password_is_401_with_keystones_body(http: httpx.Client) -> None:
    r = http.post(TOKENS, json=password_auth("demo", "WRONG", "demo"))
    assert r.status_code == 401
    assert r.json() == UNAUTHORIZED
    assert "X-Subject-Token" not in r.headers


def test_bad_credentials_do_not_say_which_part_was_wrong(http: httpx.Client,
                                                         admin_conn: Connection) -> None:
    alt = admin_conn.identity.find_user("alt_demo")
    bodies = [
        http.post(TOKENS, json=password_auth("demo", "WRONG", "demo")),
        http.post(TOKENS, json=password_auth("nobody-here", "DEMO_PASS", "demo")),
        http.post(TOKENS, json=password_auth("demo", "WRONG")),
        http.post(TOKENS, json={"auth": {"identity": {"methods": ["password"], "password": {
            "user": {"id": alt.id, "password": "DEMO_PASS"}}}}}),
    ]
    assert [r.status_code for r in bodies] == [401] * 4
    assert all(r.json() == UNAUTHORIZED for r in bodies)
    for r in bodies:
        assert "password" not in r.text.lower() and "user" not in r.text.lower()


def test_sdk_with_a_bad_password_fails_with_401(cloud: CloudInfo) -> None:
    conn = _connect_as(cloud, "demo", "WRONG", "demo")
    with pytest.raises(SDKException, match=r"HTTP 401"):
        conn.authorize()


# -- validating and revoking tokens ---------------------------------------------------------

def test_validate_a_token_with_x_subject_token(http: httpx.Client, admin_token: str,
                                               issue_token: Callable[..., str]) -> None:
    subject = issue_token("demo", "demo")
    r = http.get(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": subject})
    assert r.status_code == 200
    assert r.headers["X-Subject-Token"] == subject
    token = r.json()["token"]
    assert token["user"]["name"] == "demo" and token["project"]["name"] == "demo"
    assert "catalog" in token


def test_user_validates_its_own_token(http: httpx.Client,
                                      issue_token: Callable[..., str]) -> None:
    token = issue_token("demo", "demo")
    r = http.get(TOKENS, headers={**auth_header(token), "X-Subject-Token": token})
    assert r.status_code == 200


def test_head_checks_a_token(http: httpx.Client, admin_token: str,
                             issue_token: Callable[..., str]) -> None:
    subject = issue_token("demo", "demo")
    r = http.head(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": subject})
    assert r.status_code == 200
    assert r.content == b""


def test_member_cannot_validate_another_users_token(http: httpx.Client, demo_token: str,
                                                    admin_token: str) -> None:
    r = http.get(TOKENS, headers={**auth_header(demo_token), "X-Subject-Token": admin_token})
    keystone_error(r, 403)


def test_member_cannot_revoke_another_users_token(http: httpx.Client, admin_token: str,
                                                  issue_token: Callable[..., str]) -> None:
    victim = issue_token("alt_demo", "alt_demo")
    attacker = issue_token("demo", "demo")
    r = http.delete(TOKENS, headers={**auth_header(attacker), "X-Subject-Token": victim})
    keystone_error(r, 403)
    r = http.get(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": victim})
    assert r.status_code == 200


def test_validate_without_x_subject_token_is_404(http: httpx.Client, admin_token: str) -> None:
    keystone_error(http.get(TOKENS, headers=auth_header(admin_token)), 404)


def test_validate_a_garbage_subject_token_is_404(http: httpx.Client, admin_token: str) -> None:
    r = http.get(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": "gAAAAAbogus"})
    keystone_error(r, 404)


def test_revoke_then_the_revoked_token_is_refused(http: httpx.Client, admin_token: str,
                                                  issue_token: Callable[..., str]) -> None:
    token = issue_token("demo", "demo")
    assert http.get("/identity/v3/auth/projects",
                    headers=auth_header(token)).status_code == 200
    r = http.delete(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": token})
    assert r.status_code == 204 and r.content == b""
    for method, path in [("GET", "/identity/v3/auth/projects"),
                         ("GET", "/identity/v3/auth/catalog"),
                         ("GET", TOKENS),
                         ("GET", "/labkit/v1/trace")]:
        r = http.request(method, path, headers={**auth_header(token), "X-Subject-Token": token})
        assert r.status_code == 401, (method, path, r.text)
        assert r.json() == UNAUTHORIZED
        assert r.headers["WWW-Authenticate"].startswith("Keystone uri=")
    r = http.get(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": token})
    assert "revoked" in keystone_error(r, 404)
    r = http.head(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": token})
    assert r.status_code == 404


def test_user_revokes_its_own_token(http: httpx.Client,
                                    issue_token: Callable[..., str]) -> None:
    token = issue_token("demo", "demo")
    r = http.delete(TOKENS, headers={**auth_header(token), "X-Subject-Token": token})
    assert r.status_code == 204
    assert http.get("/identity/v3/auth/projects", headers=auth_header(token)).status_code == 401


def test_revoking_one_token_leaves_other_tokens_of_the_user_valid(
        http: httpx.Client, admin_token: str, issue_token: Callable[..., str]) -> None:
    revoked, kept = issue_token("demo", "demo"), issue_token("demo", "demo")
    http.delete(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": revoked})
    assert http.get("/identity/v3/auth/projects", headers=auth_header(kept)).status_code == 200


def test_rescoping_a_revoked_token_is_401(http: httpx.Client, admin_token: str,
                                          issue_token: Callable[..., str]) -> None:
    token = issue_token("demo", None)
    http.delete(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": token})
    r = http.post(TOKENS, json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": token}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}})
    assert r.status_code == 401
    assert r.json() == UNAUTHORIZED


def test_rescoping_an_unscoped_token_keeps_its_expiry(http: httpx.Client) -> None:
    r = http.post(TOKENS, json=password_auth("demo", "DEMO_PASS"))
    unscoped = r.json()["token"]
    r = http.post(TOKENS, json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": r.headers["X-Subject-Token"]}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}})
    assert r.status_code == 201
    scoped = r.json()["token"]
    assert scoped["expires_at"] == unscoped["expires_at"]
    assert scoped["audit_ids"][1] == unscoped["audit_ids"][0]
    assert scoped["project"]["name"] == "demo"


def test_new_password_gives_a_working_token_right_after_the_change(
        http: httpx.Client, admin_conn: Connection, scratch: dict[str, Any]) -> None:
    project = admin_conn.identity.create_project(name=scratch["project"])
    user = admin_conn.identity.create_user(name=scratch["user"], password="OLD_PASS",
                                           domain_id="default")
    admin_conn.identity.assign_project_role_to_user(project, user,
                                                    admin_conn.identity.find_role("member"))
    r = http.post(TOKENS, json=password_auth(scratch["user"], "OLD_PASS", scratch["project"]))
    old = r.headers["X-Subject-Token"]
    r = http.post(f"/identity/v3/users/{user.id}/password", headers=auth_header(old),
                  json={"user": {"original_password": "OLD_PASS", "password": "NEW_PASS"}})
    assert r.status_code == 204, r.text
    assert http.get("/identity/v3/auth/projects", headers=auth_header(old)).status_code == 401
    r = http.post(TOKENS, json=password_auth(scratch["user"], "NEW_PASS", scratch["project"]))
    assert r.status_code == 201, r.text
    new = r.headers["X-Subject-Token"]
    assert http.get("/identity/v3/auth/projects", headers=auth_header(new)).status_code == 200


# -- requests without a token, and malformed ones --------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/identity/v3/users"),
    ("GET", "/identity/v3/projects"),
    ("GET", "/identity/v3/auth/catalog"),
    ("GET", TOKENS),
    ("DELETE", TOKENS),
    ("GET", "/labkit/v1/trace"),
])
def test_no_token_on_a_protected_path_is_401_with_www_authenticate(
        http: httpx.Client, method: str, path: str) -> None:
    r = http.request(method, path)
    assert r.status_code == 401
    assert r.json() == UNAUTHORIZED
    assert r.headers["WWW-Authenticate"] == 'Keystone uri="/identity"'


def test_garbage_token_is_401(http: httpx.Client) -> None:
    r = http.get("/identity/v3/users", headers=auth_header("not-a-token"))
    assert r.status_code == 401
    assert r.json() == UNAUTHORIZED
    assert "WWW-Authenticate" in r.headers


@pytest.mark.parametrize("content, expected", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "expecting a JSON object"),
    (b'"auth"', "expecting a JSON object"),
    (b"", "empty"),
    (b"{}", "auth"),
    (b'{"auth": "password"}', "auth"),
    (b'{"auth": {}}', "identity"),
    (b'{"auth": {"identity": {}}}', "methods"),
    (b'{"auth": {"identity": {"methods": "password"}}}', "methods"),
    (b'{"auth": {"identity": {"methods": ["password"]}}}', "password"),
])
def test_malformed_auth_request_is_400_in_keystones_format(
        http: httpx.Client, content: bytes, expected: str) -> None:
    r = http.post(TOKENS, content=content, headers={"Content-Type": "application/json"})
    assert expected in keystone_error(r, 400)
    assert "X-Subject-Token" not in r.headers


def test_unknown_path_is_404_in_keystones_format(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/identity/v3/no-such-collection", headers=auth_header(demo_token))
    keystone_error(r, 404)


def test_unknown_entity_is_404_in_keystones_format(http: httpx.Client,
                                                   admin_token: str) -> None:
    r = http.get("/identity/v3/projects/" + "0" * 32, headers=auth_header(admin_token))
    assert "Could not find project" in keystone_error(r, 404)


def test_unknown_path_without_a_token_is_404(http: httpx.Client) -> None:
    keystone_error(http.get("/identity/v3/no-such-collection"), 404)


@pytest.mark.parametrize("method, path", [
    ("PUT", "/identity/v3/users"),
    ("DELETE", "/identity/v3/projects"),
    ("POST", "/identity/v3/auth/catalog"),
    ("PATCH", TOKENS),
])
def test_wrong_method_is_405_in_keystones_format(http: httpx.Client, admin_token: str,
                                                 method: str, path: str) -> None:
    r = http.request(method, path, headers=auth_header(admin_token))
    keystone_error(r, 405)


# -- request ids and the trace ----------------------------------------------------------------

def test_every_response_has_an_openstack_request_id(http: httpx.Client, demo_token: str,
                                                    admin_token: str) -> None:
    responses = [
        http.get("/identity/"),  # 300
        http.get("/identity/v3"),  # 200
        http.post(TOKENS, json=password_auth("demo", "DEMO_PASS", "demo")),  # 201
        http.delete(TOKENS, headers={**auth_header(demo_token),
                                     "X-Subject-Token": "gAAAAAbogus"}),  # 404
        http.post(TOKENS, content=b"{"),  # 400
        http.get("/identity/v3/users"),  # 401
        http.get("/identity/v3/users", headers=auth_header(demo_token)),  # 403
        http.put("/identity/v3/users", headers=auth_header(admin_token)),  # 405
        http.post("/identity/v3/projects", headers=auth_header(admin_token),
                  json={"project": {"name": "demo"}}),  # 409
        http.head(TOKENS, headers={**auth_header(admin_token), "X-Subject-Token": demo_token}),
        http.get("/identity"),  # 307
    ]
    assert {r.status_code for r in responses} >= {200, 201, 300, 400, 401, 403, 404, 405, 409}
    ids = [r.headers.get("x-openstack-request-id", "") for r in responses]
    assert all(REQUEST_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_sdk_exception_carries_the_request_id(demo_conn: Connection) -> None:
    with pytest.raises(ForbiddenException) as caught:
        list(demo_conn.identity.users())
    assert REQUEST_ID.match(caught.value.request_id)


def _trace(http: httpx.Client, admin_token: str, request_id: str,
           expect: set[str]) -> list[dict[str, Any]]:
    """The trace events of one request, polled until every expected kind is there."""
    def fetch() -> list[dict[str, Any]]:
        r = http.get("/labkit/v1/trace", params={"request_id": request_id},
                     headers=auth_header(admin_token))
        assert r.status_code == 200, r.text
        return r.json()["events"]
    return wait_for(fetch, lambda events: expect <= {e["kind"] for e in events})


def test_trace_returns_the_request_and_its_token_validation(
        http: httpx.Client, demo_token: str, admin_token: str,
        admin_conn: Connection) -> None:
    r = http.get("/identity/v3/auth/projects", headers=auth_header(demo_token))
    assert r.status_code == 200
    request_id = r.headers["x-openstack-request-id"]
    events = _trace(http, admin_token, request_id, {"api", "auth"})
    assert {e["request_id"] for e in events} == {request_id}
    (api,) = [e for e in events if e["kind"] == "api"]
    assert api["target"] == "keystone"
    assert api["detail"]["method"] == "GET"
    assert api["detail"]["path"] == "/identity/v3/auth/projects"
    assert api["detail"]["status"] == 200
    assert api["detail"]["user_name"] == "demo"
    assert api["detail"]["project_id"] == admin_conn.identity.find_project("demo").id
    (auth,) = [e for e in events if e["kind"] == "auth"]
    assert auth["source"] == "keystone" and auth["target"] == "keystone"
    assert auth["detail"]["outcome"] == "valid"
    assert auth["detail"]["user"] == "demo"
    assert sorted(auth["detail"]["roles"]) == ["member", "reader"]


def test_trace_records_a_refused_token(http: httpx.Client, admin_token: str) -> None:
    r = http.get("/identity/v3/users", headers=auth_header("gAAAAAbogus"))
    assert r.status_code == 401
    request_id = r.headers["x-openstack-request-id"]
    events = _trace(http, admin_token, request_id, {"api", "auth"})
    (api,) = [e for e in events if e["kind"] == "api"]
    assert api["detail"]["status"] == 401
    (auth,) = [e for e in events if e["kind"] == "auth"]
    assert auth["detail"]["outcome"].startswith("refused")


def test_trace_filters_by_kind(http: httpx.Client, admin_token: str, demo_token: str) -> None:
    http.get("/identity/v3/auth/projects", headers=auth_header(demo_token))
    r = http.get("/labkit/v1/trace", params={"kind": "auth", "limit": "50"},
                 headers=auth_header(admin_token))
    events = r.json()["events"]
    assert events and {e["kind"] for e in events} == {"auth"}


def test_inspector_reads_the_trace_of_an_sdk_request(
        demo_conn: Connection, cloud: CloudInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_HOME", str(cloud.home))
    monkeypatch.delenv("LABKIT_FOREIGN", raising=False)
    monkeypatch.delenv("OS_CLOUD", raising=False)
    with pytest.raises(ForbiddenException) as caught:
        list(demo_conn.identity.users())
    request_id = caught.value.request_id
    inspect = inspector(demo_conn)
    assert inspect.available
    events = wait_for(lambda: inspect.trace(request_id=request_id),
                      lambda evs: {"api", "auth"} <= {e["kind"] for e in evs})
    (api,) = [e for e in events if e["kind"] == "api"]
    assert api["source"] == "openstacksdk"
    assert api["detail"]["status"] == 403


def test_inspection_api_refuses_a_member_with_403(http: httpx.Client, demo_token: str) -> None:
    for path in ("/labkit/v1/", "/labkit/v1/trace", "/labkit/v1/db/identity/user"):
        message = keystone_error(http.get(path, headers=auth_header(demo_token)), 403)
        assert "admin" in message


def test_inspection_api_answers_an_admin(http: httpx.Client, admin_token: str) -> None:
    r = http.get("/labkit/v1/", headers=auth_header(admin_token))
    assert r.status_code == 200
    info = r.json()["labkit"]
    assert info["deterministic"] is True
    assert "user" in info["tables"]["identity"]


def test_inspection_db_rows_show_hashes_not_passwords(http: httpx.Client,
                                                      admin_token: str) -> None:
    r = http.get("/labkit/v1/db/identity/user", headers=auth_header(admin_token))
    assert r.status_code == 200
    rows = {row["name"]: row for row in r.json()["rows"]}
    assert rows["demo"]["password_hash"].startswith("$2b$")
    assert "DEMO_PASS" not in r.text
