"""Nova's flavors, key pairs and server groups, and the v2.1 API's microversions and errors.

Unit tests of the models first (no HTTP), then the real API through raw HTTP,
openstacksdk and the `openstack` CLI against a fresh embedded cloud.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openstack.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from openstack.connection import Connection
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import auth_header
from labkit.cloud.compute.api.errors import exception_handlers
from labkit.cloud.compute.api.microversion import (
    MAX,
    MIN,
    APIVersion,
    VersionHeaderMiddleware,
    parse_requested,
)
from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.compute.flavors import Flavors
from labkit.cloud.compute.keypairs import Keypairs
from labkit.cloud.compute.server_groups import ServerGroups
from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound
from labkit.cloud.ids import IdSource
from labkit.paths import lab_dir

Run = Callable[..., subprocess.CompletedProcess[str]]
LAB_FLAVORS = {"m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge", "m1.nano"}


def ed25519_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


def md5_fingerprint(public_key: str) -> str:
    digest = hashlib.md5(base64.b64decode(public_key.split()[1])).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


# -- the models, without HTTP ---------------------------------------------------------

@pytest.fixture
def nova_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(tmp_path / "nova.sqlite", ComputeBase)
    yield db
    db.close()


@pytest.fixture
def flavors(nova_db: Database) -> Flavors:
    model = Flavors(nova_db, IdSource(deterministic=True, seed=1))
    model.bootstrap(lab_dir())
    return model


def test_bootstrap_seeds_the_lab_flavors_with_their_ids_once(flavors: Flavors) -> None:
    flavors.bootstrap(lab_dir())
    listed = flavors.list(project_id="p", is_admin=True, is_public=None)
    assert {f["name"] for f in listed} == LAB_FLAVORS
    assert flavors.get("42")["name"] == "m1.nano"
    assert flavors.get("1") | {} == flavors.get("1")  # stable dict
    assert len(listed) == len(LAB_FLAVORS)


def test_bootstrapped_flavors_survive_a_new_model_on_the_same_file(
        flavors: Flavors, nova_db: Database) -> None:
    again = Flavors(nova_db, IdSource())
    again.bootstrap(lab_dir())
    assert again.get("42")["memory_mb"] == 128


def test_unknown_flavor_is_not_found_in_novas_words(flavors: Flavors) -> None:
    with pytest.raises(NotFound, match="^Flavor nope could not be found.$"):
        flavors.get("nope")


def test_private_flavor_is_seen_only_by_projects_given_access(flavors: Flavors) -> None:
    secret = flavors.create("secret", 64, 1, 1, is_public=False)
    with pytest.raises(NotFound):
        flavors.find_for_project(secret["flavorid"], "p1", is_admin=False)
    assert "secret" not in {f["name"] for f in flavors.list(project_id="p1", is_admin=False)}
    flavors.add_access(secret["flavorid"], "p1")
    assert flavors.find_for_project(secret["flavorid"], "p1", is_admin=False)["name"] == "secret"
    assert "secret" in {f["name"] for f in flavors.list(project_id="p1", is_admin=False)}
    assert flavors.find_for_project(secret["flavorid"], "p2", is_admin=True)["name"] == "secret"


def test_flavor_name_and_id_are_unique(flavors: Flavors) -> None:
    with pytest.raises(Conflict, match="Flavor with name m1.nano already exists."):
        flavors.create("m1.nano", 64, 1, 1)
    with pytest.raises(Conflict, match="Flavor with ID 42 already exists."):
        flavors.create("other", 64, 1, 1, flavorid="42")


def test_flavor_without_an_id_gets_a_uuid(flavors: Flavors) -> None:
    created = flavors.create("auto", 64, 1, 1)
    assert len(created["flavorid"]) == 36 and created["flavorid"].count("-") == 4


def test_flavor_list_sorts_filters_and_pages(flavors: Flavors) -> None:
    by_ram = flavors.list(project_id="p", is_admin=False, sort_key="memory_mb", sort_dir="desc")
    assert [f["memory_mb"] for f in by_ram] == sorted((f["memory_mb"] for f in by_ram),
                                                      reverse=True)
    big = flavors.list(project_id="p", is_admin=False, min_ram=4096, min_disk=50)
    assert {f["name"] for f in big} == {"m1.large", "m1.xlarge"}
    first = flavors.list(project_id="p", is_admin=False, limit=2)
    rest = flavors.list(project_id="p", is_admin=False, marker=first[-1]["flavorid"])
    assert [f["flavorid"] for f in first + rest] == [
        f["flavorid"] for f in flavors.list(project_id="p", is_admin=False)]
    with pytest.raises(BadRequest, match=r"marker \[gone\] not found"):
        flavors.list(project_id="p", is_admin=False, marker="gone")


def test_extra_specs_are_merged_read_and_deleted(flavors: Flavors) -> None:
    flavors.update_extra_specs("1", {"hw:cpu_policy": "shared", "a": "1"})
    flavors.update_extra_specs("1", {"a": "2"})
    assert flavors.extra_specs("1") == {"hw:cpu_policy": "shared", "a": "2"}
    flavors.delete_extra_spec("1", "a")
    with pytest.raises(NotFound, match="Flavor 1 has no extra specs with key a."):
        flavors.extra_spec("1", "a")


def test_embedded_flavor_has_the_247_fields(flavors: Flavors) -> None:
    flavors.update_extra_specs("42", {"hw:mem_page_size": "small"})
    shown = Flavors.embedded(flavors.get("42"))
    assert shown == {"vcpus": 1, "ram": 128, "disk": 1, "ephemeral": 0, "swap": 0,
                     "original_name": "m1.nano",
                     "extra_specs": {"hw:mem_page_size": "small"}}


def test_deleted_flavor_is_gone(flavors: Flavors) -> None:
    flavors.delete("5")
    with pytest.raises(NotFound):
        flavors.get("5")


@pytest.fixture
def keypairs(nova_db: Database) -> Keypairs:
    return Keypairs(nova_db, IdSource(deterministic=True, seed=1))


def test_imported_key_has_novas_md5_fingerprint(keypairs: Keypairs) -> None:
    public = ed25519_public_key()
    created = keypairs.create("u1", "k1", public_key=public)
    assert created["fingerprint"] == md5_fingerprint(public)
    assert keypairs.get("u1", "k1")["public_key"] == public


def test_generated_key_returns_a_private_key_matching_its_public_key(
        keypairs: Keypairs) -> None:
    created = keypairs.create("u1", "gen")
    private = serialization.load_pem_private_key(created["private_key"].encode(), None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    assert created["public_key"] == f"{public} Generated-by-Nova"
    assert created["fingerprint"] == md5_fingerprint(public)
    assert "private_key" not in keypairs.get("u1", "gen")


def test_generated_keys_are_seeded_in_deterministic_mode(tmp_path: Path) -> None:
    made = []
    for n in range(2):
        db = Database(tmp_path / f"{n}.sqlite", ComputeBase)
        made.append(Keypairs(db, IdSource(deterministic=True, seed=7)).create("u", "k"))
        db.close()
    assert made[0]["public_key"] == made[1]["public_key"]


def test_key_pairs_belong_to_their_user(keypairs: Keypairs) -> None:
    keypairs.create("u1", "k1", public_key=ed25519_public_key())
    keypairs.create("u2", "k1", public_key=ed25519_public_key())
    with pytest.raises(Conflict, match="^Key pair 'k1' already exists.$"):
        keypairs.create("u1", "k1", public_key=ed25519_public_key())
    with pytest.raises(NotFound, match="Keypair k1 not found for user u3"):
        keypairs.get("u3", "k1")
    assert [k["name"] for k in keypairs.list("u2")] == ["k1"]


def test_bad_public_key_is_refused_in_novas_words(keypairs: Keypairs) -> None:
    with pytest.raises(BadRequest, match="^Keypair data is invalid: "):
        keypairs.create("u1", "bad", public_key="ssh-rsa not-a-key")


def test_keypair_quota_refuses_one_too_many(keypairs: Keypairs) -> None:
    keypairs.create("u1", "a", public_key=ed25519_public_key(), quota=1)
    with pytest.raises(Forbidden, match="Quota exceeded, too many key pairs."):
        keypairs.create("u1", "b", public_key=ed25519_public_key(), quota=1)


@pytest.fixture
def groups(nova_db: Database) -> ServerGroups:
    return ServerGroups(nova_db, IdSource(deterministic=True, seed=1))


def test_server_group_members_join_and_leave(groups: ServerGroups) -> None:
    group = groups.create("g", "anti-affinity", "p1", "u1", rules={"max_server_per_host": 2})
    groups.add_member(group["id"], "vm-1")
    groups.add_member(group["id"], "vm-1")
    groups.add_member(group["id"], "vm-2")
    assert groups.get(group["id"], "p1", False)["members"] == ["vm-1", "vm-2"]
    groups.remove_member("vm-1")
    found = groups.get(group["id"], "p1", False)
    assert found["members"] == ["vm-2"]
    assert found["rules"] == {"max_server_per_host": 2}
    assert groups.group_of("vm-2")["id"] == group["id"]
    assert groups.group_of("vm-1") is None


def test_server_group_rules_only_for_anti_affinity(groups: ServerGroups) -> None:
    with pytest.raises(BadRequest, match="Only anti-affinity policy supports rules."):
        groups.create("g", "affinity", "p1", "u1", rules={"max_server_per_host": 2})


def test_server_group_of_another_project_is_refused(groups: ServerGroups) -> None:
    group = groups.create("g", "affinity", "p1", "u1")
    with pytest.raises(Forbidden, match="os-server-groups:show"):
        groups.get(group["id"], "p2", False)
    assert groups.get(group["id"], "p2", True)["name"] == "g"
    assert groups.list("p2") == []
    assert [g["name"] for g in groups.list("p2", all_projects=True)] == ["g"]


def test_microversion_parsing_bounds_and_order() -> None:
    assert parse_requested(None) == MIN
    assert parse_requested("latest") == MAX
    assert APIVersion.parse("2.10") > APIVersion.parse("2.9")
    assert str(parse_requested("2.47")) == "2.47"
    assert parse_requested("2.61").at_least("2.55")
    assert not parse_requested("2.54").at_least("2.55")
    with pytest.raises(BadRequest):
        parse_requested("2.x")


def test_unexpected_error_is_a_500_compute_fault_with_the_version() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")
    app = Starlette(routes=[Route("/v2.1/broken", broken)],
                    exception_handlers=exception_handlers(),  # type: ignore[arg-type]
                    middleware=[Middleware(VersionHeaderMiddleware)])
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v2.1/broken", headers={"OpenStack-API-Version": "compute 2.20"})
    assert r.status_code == 500
    assert r.json()["computeFault"]["message"].startswith("Unexpected API Error.")
    assert r.headers["OpenStack-API-Version"] == "compute 2.20"


# -- the HTTP API ---------------------------------------------------------------------

def compute(token: str, version: str | None = None) -> dict[str, str]:
    headers = auth_header(token)
    if version:
        headers["OpenStack-API-Version"] = f"compute {version}"
    return headers


def test_compute_root_lists_versions_without_a_token(http: httpx.Client) -> None:
    for path in ("/compute", "/compute/"):
        r = http.get(path)
        assert r.status_code == 200, r.text
        current = {v["id"]: v for v in r.json()["versions"]}["v2.1"]
        assert current["status"] == "CURRENT"
        assert (current["min_version"], current["version"]) == ("2.1", "2.79")
        assert current["links"][0]["href"] == str(http.base_url).rstrip("/") + "/compute/v2.1/"


def test_v21_document_self_link_matches_the_catalog(http: httpx.Client) -> None:
    for path in ("/compute/v2.1", "/compute/v2.1/"):
        r = http.get(path)
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        assert version["id"] == "v2.1" and version["version"] == "2.79"
        self_link = [link["href"] for link in version["links"] if link["rel"] == "self"]
        assert self_link == [str(http.base_url).rstrip("/") + "/compute/v2.1/"]


def test_flavors_need_a_token(http: httpx.Client) -> None:
    assert http.get("/compute/v2.1/flavors").status_code == 401


def test_response_echoes_the_microversion(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors", headers=compute(demo_token, "2.55"))
    assert r.status_code == 200
    assert r.headers["OpenStack-API-Version"] == "compute 2.55"
    assert r.headers["X-OpenStack-Nova-API-Version"] == "2.55"
    assert "OpenStack-API-Version" in r.headers["Vary"]
    assert "X-OpenStack-Nova-API-Version" in r.headers["Vary"]


def test_no_version_header_means_21(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors", headers=auth_header(demo_token))
    assert r.headers["OpenStack-API-Version"] == "compute 2.1"


def test_legacy_version_header_is_honoured(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors",
                 headers={**auth_header(demo_token), "X-OpenStack-Nova-API-Version": "2.61"})
    assert r.headers["X-OpenStack-Nova-API-Version"] == "2.61"


def test_latest_means_the_maximum(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors/42", headers=compute(demo_token, "latest"))
    assert r.headers["OpenStack-API-Version"] == "compute 2.79"
    assert r.json()["flavor"]["swap"] == 0


def test_version_out_of_range_is_406_in_novas_words(http: httpx.Client,
                                                    demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors", headers=compute(demo_token, "2.200"))
    assert r.status_code == 406
    assert r.json() == {"notAcceptable": {
        "code": 406, "message": "Version 2.200 is not supported by the API. "
                                "Minimum is 2.1 and maximum is 2.79."}}


def test_malformed_version_is_400(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors", headers=compute(demo_token, "two"))
    assert r.status_code == 400
    assert "badRequest" in r.json()


def test_errors_echo_the_version_too(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors/nope", headers=compute(demo_token, "2.47"))
    assert r.status_code == 404
    assert r.json() == {"itemNotFound": {"code": 404,
                                         "message": "Flavor nope could not be found."}}
    assert r.headers["OpenStack-API-Version"] == "compute 2.47"


def test_unknown_path_and_method_in_novas_body(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/no-such-thing", headers=auth_header(demo_token))
    assert r.status_code == 404 and r.json()["itemNotFound"]["code"] == 404
    r = http.patch("/compute/v2.1/flavors/42", headers=auth_header(demo_token))
    assert r.status_code == 405 and r.json()["badMethod"]["code"] == 405


def test_flavor_fields_by_microversion(http: httpx.Client, demo_token: str) -> None:
    def flavor(version: str) -> dict[str, Any]:
        r = http.get("/compute/v2.1/flavors/42", headers=compute(demo_token, version))
        assert r.status_code == 200, r.text
        return r.json()["flavor"]
    old = flavor("2.1")
    assert old["swap"] == "" and "description" not in old and "extra_specs" not in old
    assert old["OS-FLV-EXT-DATA:ephemeral"] == 0 and old["OS-FLV-DISABLED:disabled"] is False
    assert old["os-flavor-access:is_public"] is True and old["rxtx_factor"] == 1.0
    assert {link["rel"] for link in old["links"]} == {"self", "bookmark"}
    assert "description" in flavor("2.55") and "extra_specs" not in flavor("2.55")
    assert flavor("2.61")["extra_specs"] == {}
    assert flavor("2.75")["swap"] == 0


def test_flavor_list_pages_with_a_next_link(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors?limit=2", headers=auth_header(demo_token))
    body = r.json()
    assert len(body["flavors"]) == 2
    next_href = body["flavors_links"][0]["href"]
    assert f"marker={body['flavors'][-1]['id']}" in next_href
    assert "/compute/v2.1/flavors?" in next_href
    page2 = http.get(next_href, headers=auth_header(demo_token)).json()["flavors"]
    assert page2 and not {f["id"] for f in page2} & {f["id"] for f in body["flavors"]}


def test_flavor_list_filters_by_name_as_a_regex(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors?name=^m1\\.(tiny|nano)$", headers=auth_header(demo_token))
    assert {f["name"] for f in r.json()["flavors"]} == {"m1.tiny", "m1.nano"}


def test_flavor_list_filters_by_min_ram(http: httpx.Client, demo_token: str) -> None:
    r = http.get("/compute/v2.1/flavors/detail?minRam=8192", headers=auth_header(demo_token))
    assert {f["name"] for f in r.json()["flavors"]} == {"m1.large", "m1.xlarge"}
    bad = http.get("/compute/v2.1/flavors?minRam=lots", headers=auth_header(demo_token))
    assert bad.status_code == 400
    assert bad.json()["badRequest"]["message"] == "Invalid minRam filter [lots]"


def test_private_flavor_access_through_the_api(http: httpx.Client, admin_token: str,
                                              demo_token: str, alt_token: str) -> None:
    r = http.post("/compute/v2.1/flavors", headers=auth_header(admin_token), json={
        "flavor": {"name": "private-1", "ram": 64, "vcpus": 1, "disk": 1,
                   "os-flavor-access:is_public": False}})
    assert r.status_code == 200, r.text
    flavor_id = r.json()["flavor"]["id"]
    url = f"/compute/v2.1/flavors/{flavor_id}"
    assert http.get(url, headers=auth_header(demo_token)).status_code == 404
    everything = http.get("/compute/v2.1/flavors/detail?is_public=None",
                          headers=auth_header(admin_token)).json()["flavors"]
    assert "private-1" in {f["name"] for f in everything}
    demo_project = http.get("/identity/v3/auth/tokens", headers={
        **auth_header(demo_token), "X-Subject-Token": demo_token}).json()["token"]["project"]["id"]
    r = http.post(url + "/action", headers=auth_header(admin_token),
                  json={"addTenantAccess": {"tenant": demo_project}})
    assert r.status_code == 200, r.text
    assert r.json()["flavor_access"] == [{"flavor_id": flavor_id, "tenant_id": demo_project}]
    assert http.get(url, headers=auth_header(demo_token)).status_code == 200
    assert http.get(url, headers=auth_header(alt_token)).status_code == 404
    listed = http.get(url + "/os-flavor-access", headers=auth_header(admin_token))
    assert listed.json()["flavor_access"][0]["tenant_id"] == demo_project


def test_public_flavor_refuses_tenant_access(http: httpx.Client, admin_token: str) -> None:
    r = http.post("/compute/v2.1/flavors/42/action",
                  headers=compute(admin_token, "2.7"),
                  json={"addTenantAccess": {"tenant": "someproject"}})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == "Can not add access to a public flavor."
    r = http.get("/compute/v2.1/flavors/42/os-flavor-access", headers=auth_header(admin_token))
    assert r.status_code == 404


def test_flavor_validation_errors_are_400(http: httpx.Client, admin_token: str) -> None:
    r = http.post("/compute/v2.1/flavors", headers=auth_header(admin_token),
                  json={"flavor": {"name": "zero", "ram": 0, "vcpus": 1, "disk": 1}})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"].startswith(
        "Invalid input for field/attribute ram.")
    r = http.post("/compute/v2.1/flavors", headers=auth_header(admin_token),
                  json={"flavor": {"name": "novcpus", "ram": 64, "disk": 1}})
    assert "'vcpus' is a required property" in r.json()["badRequest"]["message"]


def test_flavor_description_update_needs_255(http: httpx.Client, admin_token: str) -> None:
    body = {"flavor": {"description": "fits the tiny guest"}}
    r = http.put("/compute/v2.1/flavors/42", headers=compute(admin_token, "2.54"), json=body)
    assert r.status_code == 404
    r = http.put("/compute/v2.1/flavors/42", headers=compute(admin_token, "2.55"), json=body)
    assert r.status_code == 200, r.text
    assert r.json()["flavor"]["description"] == "fits the tiny guest"


def test_extra_spec_writes_are_admin_only(http: httpx.Client, demo_token: str,
                                         admin_token: str) -> None:
    url = "/compute/v2.1/flavors/3/os-extra_specs"
    body = {"extra_specs": {"hw:cpu_policy": "shared"}}
    r = http.post(url, headers=auth_header(demo_token), json=body)
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == (
        "Policy doesn't allow os_compute_api:os-flavor-extra-specs:create to be performed.")
    assert http.post(url, headers=auth_header(admin_token), json=body).json() == body
    one = http.get(url + "/hw:cpu_policy", headers=auth_header(demo_token))
    assert one.json() == {"hw:cpu_policy": "shared"}
    r = http.put(url + "/hw:cpu_policy", headers=auth_header(admin_token),
                 json={"other": "x"})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "Request body and URI mismatch"
    assert http.delete(url + "/hw:cpu_policy", headers=auth_header(admin_token)).status_code == 200
    assert http.get(url + "/hw:cpu_policy", headers=auth_header(demo_token)).status_code == 404


def test_keypair_versions_change_status_and_fields(http: httpx.Client, demo_token: str) -> None:
    public = ed25519_public_key()
    body = {"keypair": {"name": "v21key", "public_key": public}}
    r = http.post("/compute/v2.1/os-keypairs", headers=auth_header(demo_token), json=body)
    assert r.status_code == 200 and "type" not in r.json()["keypair"]
    body = {"keypair": {"name": "v22key", "public_key": public, "type": "ssh"}}
    r = http.post("/compute/v2.1/os-keypairs", headers=compute(demo_token, "2.2"), json=body)
    assert r.status_code == 201 and r.json()["keypair"]["type"] == "ssh"
    shown = http.get("/compute/v2.1/os-keypairs/v22key",
                     headers=compute(demo_token, "2.2")).json()["keypair"]
    assert shown["fingerprint"] == md5_fingerprint(public)
    assert shown["deleted"] is False and shown["created_at"]
    gone = http.delete("/compute/v2.1/os-keypairs/v22key", headers=compute(demo_token, "2.2"))
    assert gone.status_code == 204
    gone = http.delete("/compute/v2.1/os-keypairs/v21key", headers=auth_header(demo_token))
    assert gone.status_code == 202


def test_keypair_errors_in_novas_words(http: httpx.Client, demo_token: str) -> None:
    url = "/compute/v2.1/os-keypairs"
    body = {"keypair": {"name": "dup", "public_key": ed25519_public_key()}}
    assert http.post(url, headers=auth_header(demo_token), json=body).status_code == 200
    r = http.post(url, headers=auth_header(demo_token), json=body)
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == "Key pair 'dup' already exists."
    r = http.post(url, headers=auth_header(demo_token),
                  json={"keypair": {"name": "bad", "public_key": "ssh-rsa AAAA"}})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"].startswith("Keypair data is invalid")


def test_keypairs_are_per_user(http: httpx.Client, demo_token: str, alt_token: str,
                               admin_token: str) -> None:
    url = "/compute/v2.1/os-keypairs"
    http.post(url, headers=auth_header(demo_token),
              json={"keypair": {"name": "mine", "public_key": ed25519_public_key()}})
    assert http.get(url + "/mine", headers=auth_header(alt_token)).status_code == 404
    demo_user = http.get("/identity/v3/auth/tokens", headers={
        **auth_header(demo_token), "X-Subject-Token": demo_token}).json()["token"]["user"]["id"]
    as_admin = http.get(f"{url}/mine?user_id={demo_user}", headers=compute(admin_token, "2.10"))
    assert as_admin.status_code == 200 and as_admin.json()["keypair"]["user_id"] == demo_user
    r = http.get(f"{url}?user_id={demo_user}", headers=compute(alt_token, "2.10"))
    assert r.status_code == 403


def test_keypair_list_pages_from_235(http: httpx.Client, alt_token: str) -> None:
    url = "/compute/v2.1/os-keypairs"
    for name in ("page-a", "page-b", "page-c"):
        http.post(url, headers=auth_header(alt_token),
                  json={"keypair": {"name": name, "public_key": ed25519_public_key()}})
    every = [k["keypair"]["name"] for k in http.get(
        url, headers=compute(alt_token, "2.35")).json()["keypairs"]]
    assert every == sorted(every) and len(every) >= 3
    page = http.get(url + "?limit=2", headers=compute(alt_token, "2.35")).json()
    assert [k["keypair"]["name"] for k in page["keypairs"]] == every[:2]
    assert f"marker={every[1]}" in page["keypairs_links"][0]["href"]
    rest = http.get(f"{url}?marker={every[1]}", headers=compute(alt_token, "2.35")).json()
    assert [k["keypair"]["name"] for k in rest["keypairs"]] == every[2:]
    old = http.get(url + "?limit=2", headers=compute(alt_token, "2.34")).json()
    assert len(old["keypairs"]) == len(every) and "keypairs_links" not in old


def test_server_group_shapes_by_microversion(http: httpx.Client, demo_token: str) -> None:
    url = "/compute/v2.1/os-server-groups"
    old = http.post(url, headers=auth_header(demo_token),
                    json={"server_group": {"name": "old", "policies": ["affinity"]}})
    assert old.status_code == 200, old.text
    assert old.json()["server_group"]["policies"] == ["affinity"]
    assert old.json()["server_group"]["metadata"] == {}
    soft = http.post(url, headers=auth_header(demo_token),
                     json={"server_group": {"name": "soft", "policies": ["soft-affinity"]}})
    assert soft.status_code == 400  # the soft policies came with 2.15
    new = http.post(url, headers=compute(demo_token, "2.64"), json={"server_group": {
        "name": "new", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}}})
    assert new.status_code == 200, new.text
    group = new.json()["server_group"]
    assert (group["policy"], group["rules"], group["members"]) == (
        "anti-affinity", {"max_server_per_host": 2}, [])
    assert "project_id" in group and "policies" not in group
    shown = http.get(f"{url}/{group['id']}", headers=compute(demo_token, "2.1"))
    assert shown.json()["server_group"]["policies"] == ["anti-affinity"]


def test_server_groups_are_per_project(http: httpx.Client, demo_token: str, alt_token: str,
                                       admin_token: str) -> None:
    url = "/compute/v2.1/os-server-groups"
    made = http.post(url, headers=compute(demo_token, "2.64"),
                     json={"server_group": {"name": "demo-only", "policy": "affinity"}})
    group_id = made.json()["server_group"]["id"]
    assert group_id not in {g["id"] for g in http.get(
        url, headers=auth_header(alt_token)).json()["server_groups"]}
    r = http.get(f"{url}/{group_id}", headers=auth_header(alt_token))
    assert r.status_code == 403 and "forbidden" in r.json()
    everyone = http.get(url + "?all_projects=True", headers=auth_header(admin_token)).json()
    assert group_id in {g["id"] for g in everyone["server_groups"]}
    assert http.delete(f"{url}/{group_id}", headers=auth_header(demo_token)).status_code == 204
    r = http.get(f"{url}/{group_id}", headers=auth_header(demo_token))
    assert r.json()["itemNotFound"]["message"] == f"Instance group {group_id} could not be found."


# -- openstacksdk -----------------------------------------------------------------------

def test_sdk_lists_and_finds_the_lab_flavors(demo_conn: Connection) -> None:
    assert {f.name for f in demo_conn.compute.flavors()} >= LAB_FLAVORS
    nano = demo_conn.compute.find_flavor("m1.nano", ignore_missing=False)
    assert (nano.id, nano.ram, nano.vcpus, nano.disk) == ("42", 128, 1, 1)


def test_sdk_admin_creates_a_flavor_with_extra_specs(admin_conn: Connection) -> None:
    flavor = admin_conn.compute.create_flavor(name="sdk-flavor", ram=96, vcpus=1, disk=1,
                                              description="made by the SDK")
    admin_conn.compute.create_flavor_extra_specs(flavor, {"hw:watchdog_action": "reset"})
    fetched = admin_conn.compute.fetch_flavor_extra_specs(flavor)
    assert fetched.extra_specs == {"hw:watchdog_action": "reset"}
    assert admin_conn.compute.get_flavor(flavor.id).description == "made by the SDK"
    admin_conn.compute.delete_flavor(flavor)
    assert admin_conn.compute.find_flavor("sdk-flavor") is None


def test_sdk_demo_may_not_create_a_flavor(demo_conn: Connection) -> None:
    with pytest.raises(openstack.exceptions.ForbiddenException,
                       match="os-flavor-manage:create"):
        demo_conn.compute.create_flavor(name="nope", ram=64, vcpus=1, disk=1)


def test_sdk_keypairs_generate_import_list_delete(demo_conn: Connection) -> None:
    generated = demo_conn.compute.create_keypair(name="sdk-gen")
    assert generated.private_key.startswith("-----BEGIN")
    public = ed25519_public_key()
    imported = demo_conn.compute.create_keypair(name="sdk-imp", public_key=public)
    assert imported.fingerprint == md5_fingerprint(public)
    names = {k.name for k in demo_conn.compute.keypairs()}
    assert {"sdk-gen", "sdk-imp"} <= names
    assert demo_conn.compute.get_keypair("sdk-imp").public_key == public
    demo_conn.compute.delete_keypair("sdk-gen")
    demo_conn.compute.delete_keypair("sdk-imp")
    assert not {"sdk-gen", "sdk-imp"} & {k.name for k in demo_conn.compute.keypairs()}


def test_sdk_server_groups(demo_conn: Connection) -> None:
    group = demo_conn.compute.create_server_group(name="sdk-group", policy="soft-anti-affinity")
    assert group.policy == "soft-anti-affinity"
    assert demo_conn.compute.find_server_group("sdk-group").id == group.id
    assert group.id in {g.id for g in demo_conn.compute.server_groups()}
    demo_conn.compute.delete_server_group(group)
    assert demo_conn.compute.find_server_group("sdk-group") is None


# -- the openstack CLI ------------------------------------------------------------------

def cli_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"{result.args}\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.mark.cli
def test_cli_flavor_list_and_show(openstack_cli: Run) -> None:
    listed = cli_json(openstack_cli("flavor", "list", "-f", "json"))
    assert {f["Name"] for f in listed} >= LAB_FLAVORS
    shown = cli_json(openstack_cli("flavor", "show", "m1.nano", "-f", "json"))
    assert (shown["id"], shown["ram"], shown["disk"]) == ("42", 128, 1)


@pytest.mark.cli
def test_cli_flavor_create_as_admin_and_refused_as_demo(openstack_cli: Run) -> None:
    args = ("flavor", "create", "--ram", "64", "--disk", "1", "--vcpus", "1", "tiny2")
    refused = openstack_cli(*args)
    assert refused.returncode != 0
    assert "Policy doesn't allow os_compute_api:os-flavor-manage:create to be performed." \
        in refused.stderr
    assert "403" in refused.stderr
    created = cli_json(openstack_cli(*args, "-f", "json", cloud_name="labkit-admin"))
    assert created["name"] == "tiny2" and created["ram"] == 64


@pytest.mark.cli
def test_cli_keypair_create_from_a_file_and_list(openstack_cli: Run, tmp_path: Path) -> None:
    public = ed25519_public_key()
    key_file = tmp_path / "id_ed25519.pub"
    key_file.write_text(public + "\n")
    created = cli_json(openstack_cli("keypair", "create", "--public-key", str(key_file),
                                     "k1", "-f", "json"))
    assert created["fingerprint"] == md5_fingerprint(public)
    listed = cli_json(openstack_cli("keypair", "list", "-f", "json"))
    assert "k1" in {k["Name"] for k in listed}


@pytest.mark.cli
def test_cli_server_group_create(openstack_cli: Run) -> None:
    created = cli_json(openstack_cli("server", "group", "create", "--policy", "anti-affinity",
                                     "g1", "-f", "json"))
    assert created["name"] == "g1"
    assert "anti-affinity" in str(created.get("policy", created.get("policies")))
    listed = cli_json(openstack_cli("server", "group", "list", "-f", "json"))
    assert "g1" in {g["Name"] for g in listed}


# -- the tutorial's flavor section, as written for today's CLI ----------------------------

TUTORIAL_FLAVOR = ("flavor", "create", "--ram", "256", "--disk", "1", "--vcpus", "1",
                   "--ephemeral", "1", "--swap", "128", "--rxtx-factor", "2.0", "--private")


@pytest.mark.cli
def test_cli_tutorial_flavor_id_taken_is_409(openstack_cli: Run) -> None:
    # the lab's m1.nano has id 42, as DevStack's does: nova refuses a second one
    taken = openstack_cli(*TUTORIAL_FLAVOR, "--id", "42", "m1.taken", cloud_name="labkit-admin")
    assert taken.returncode != 0
    assert "409" in taken.stderr and "Flavor with ID 42 already exists." in taken.stderr


@pytest.mark.cli
def test_cli_tutorial_private_flavor_life(openstack_cli: Run) -> None:
    admin = "labkit-admin"
    created = cli_json(openstack_cli(*TUTORIAL_FLAVOR, "--id", "100", "m1.tutorial",
                                     "-f", "json", cloud_name=admin))
    assert (created["id"], created["ram"], created["disk"], created["vcpus"]) == (
        "100", 256, 1, 1)
    assert (created["OS-FLV-EXT-DATA:ephemeral"], created["swap"]) == (1, 128)
    assert created["rxtx_factor"] == 2.0 and created["os-flavor-access:is_public"] is False
    shown = cli_json(openstack_cli("flavor", "show", "m1.tutorial", "-f", "json",
                                   cloud_name=admin))
    assert shown["id"] == "100" and shown["access_project_ids"] == []
    # private: only --all lists it, even to the admin
    assert "m1.tutorial" not in {f["Name"] for f in cli_json(
        openstack_cli("flavor", "list", "-f", "json", cloud_name=admin))}
    everything = cli_json(openstack_cli("flavor", "list", "--all", "--long", "-f", "json",
                                        cloud_name=admin))
    row = next(f for f in everything if f["Name"] == "m1.tutorial")
    assert (row["Is Public"], row["Ephemeral"], row["Swap"], row["RXTX Factor"]) == (
        False, 1, 128, 2.0)

    # the member sees it only once its project has access
    hidden = openstack_cli("flavor", "show", "m1.tutorial")
    assert hidden.returncode != 0 and "No Flavor found for m1.tutorial" in hidden.stderr
    assert "m1.tutorial" not in {f["Name"] for f in cli_json(
        openstack_cli("flavor", "list", "--all", "-f", "json"))}
    set_access = openstack_cli("flavor", "set", "--project", "demo", "m1.tutorial",
                               cloud_name=admin)
    assert set_access.returncode == 0, set_access.stderr
    demo_id = cli_json(openstack_cli("project", "show", "demo", "-f", "json",
                                     cloud_name=admin))["id"]
    seen = openstack_cli("flavor", "show", "m1.tutorial", "-f", "json")
    # nova of the 2.79 era lets a member read the access list (no warning from the CLI)
    assert seen.returncode == 0 and "Failed" not in seen.stderr, seen.stderr
    assert cli_json(seen)["access_project_ids"] == [demo_id]
    assert "m1.tutorial" in {f["Name"] for f in cli_json(
        openstack_cli("flavor", "list", "-f", "json"))}

    # managing flavors stays the admin's
    refused = openstack_cli("flavor", "create", "--ram", "64", "--disk", "1", "--vcpus", "1",
                            "m1.mine")
    assert refused.returncode != 0 and "403" in refused.stderr
    assert ("Policy doesn't allow os_compute_api:os-flavor-manage:create to be performed."
            in refused.stderr)
    not_deleted = openstack_cli("flavor", "delete", "m1.tutorial")
    assert not_deleted.returncode != 0
    assert "os_compute_api:os-flavor-manage:delete" in not_deleted.stderr
    removed = openstack_cli("flavor", "delete", "m1.tutorial", cloud_name=admin)
    assert removed.returncode == 0, removed.stderr
    gone = openstack_cli("flavor", "show", "m1.tutorial", cloud_name=admin)
    assert gone.returncode != 0 and "No Flavor found for m1.tutorial" in gone.stderr
