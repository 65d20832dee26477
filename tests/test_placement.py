"""Placement: the model (fit, claims, concurrency, persistence) and its HTTP contract."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openstack.connection import Connection

from conftest import auth_header
from labkit.cloud.db import Database
from labkit.cloud.errors import Conflict
from labkit.cloud.ids import IdSource
from labkit.cloud.placement.capacity import Inventory
from labkit.cloud.placement.models import Placement, PlacementBase
from labkit.cloud.process import CloudInfo

HOST = "11111111-1111-4111-8111-111111111111"
SMALL = {"VCPU": Inventory(total=4), "MEMORY_MB": Inventory(total=2048, reserved=512),
         "DISK_GB": Inventory(total=20)}


def open_model(home: Path) -> Placement:
    return Placement(Database(home / "placement.sqlite", PlacementBase),
                     IdSource(deterministic=True, seed=7))


@pytest.fixture
def model(tmp_path: Path) -> Placement:
    placement = open_model(tmp_path)
    placement.ensure_provider(HOST, "compute-1", SMALL)
    return placement


def consumer(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


# -- the model -----------------------------------------------------------------------------

def test_ensure_provider_is_idempotent_and_moves_generation_only_on_change(
        model: Placement) -> None:
    generation, inventories = model.inventories(HOST)
    model.ensure_provider(HOST, "compute-1", SMALL)
    assert model.inventories(HOST) == (generation, inventories)
    assert inventories == SMALL
    model.ensure_provider(HOST, "compute-1", {**SMALL, "VCPU": Inventory(total=8)})
    new_generation, inventories = model.inventories(HOST)
    assert new_generation == generation + 1
    assert inventories["VCPU"].total == 8
    assert [p["name"] for p in model.providers()] == ["compute-1"]


def test_verdicts_list_every_provider_with_reasons_for_a_request_too_big(
        model: Placement) -> None:
    model.ensure_provider(consumer(99), "compute-0", {"VCPU": Inventory(total=64)})
    verdicts = model.verdicts({"VCPU": 16, "MEMORY_MB": 512})
    assert [v.name for v in verdicts] == ["compute-0", "compute-1"]
    big, small = verdicts
    assert not big.fits and big.reasons == ["no MEMORY_MB inventory"]
    assert not small.fits
    assert len(small.reasons) == 1 and small.reasons[0].startswith("VCPU 16 is above max_unit")
    assert small.inventories == SMALL and small.usages == {"DISK_GB": 0, "MEMORY_MB": 0,
                                                           "VCPU": 0}
    assert model.allocation_candidates({"VCPU": 16, "MEMORY_MB": 512}) == []
    fitting = model.allocation_candidates({"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 1})
    assert [v.uuid for v in fitting] == [HOST] and fitting[0].reasons == []


def test_claim_then_release(model: Placement) -> None:
    generation = model.inventories(HOST)[0]
    model.claim(consumer(1), {HOST: {"VCPU": 2, "MEMORY_MB": 512}}, "p", "u")
    assert model.allocations_for(consumer(1)) == {HOST: {"MEMORY_MB": 512, "VCPU": 2}}
    assert model.usages(HOST) == {"DISK_GB": 0, "MEMORY_MB": 512, "VCPU": 2}
    assert model.project_usages("p") == {"MEMORY_MB": 512, "VCPU": 2}
    assert model.inventories(HOST)[0] == generation + 1
    model.release(consumer(1))
    assert model.allocations_for(consumer(1)) == {}
    assert model.usages(HOST) == {"DISK_GB": 0, "MEMORY_MB": 0, "VCPU": 0}


def test_a_claim_replaces_the_consumers_own_allocations(model: Placement) -> None:
    model.claim(consumer(1), {HOST: {"VCPU": 3}}, "p", "u")
    # 3 more would not fit beside the first 3, but they replace them
    model.claim(consumer(1), {HOST: {"VCPU": 4}}, "p", "u")
    assert model.usages(HOST)["VCPU"] == 4


def test_a_claim_that_no_longer_fits_raises_conflict_and_writes_nothing(
        model: Placement) -> None:
    model.claim(consumer(1), {HOST: {"VCPU": 3}}, "p", "u")
    before = model.inventories(HOST)[0]
    with pytest.raises(Conflict) as caught:
        model.claim(consumer(2), {HOST: {"VCPU": 2, "DISK_GB": 1}}, "p", "u")
    assert "Unable to allocate inventory" in caught.value.message
    assert "exceed the capacity" in caught.value.message
    assert model.allocations_for(consumer(2)) == {}
    assert model.usages(HOST) == {"DISK_GB": 0, "MEMORY_MB": 0, "VCPU": 3}
    assert model.inventories(HOST)[0] == before


def test_reserved_and_allocation_ratio_are_honoured(tmp_path: Path) -> None:
    model = open_model(tmp_path)
    model.ensure_provider(HOST, "compute-1", {
        "VCPU": Inventory(total=4, reserved=1, allocation_ratio=4.0, max_unit=4),
        "MEMORY_MB": Inventory(total=1024, reserved=512)})
    for n in range(3):  # (4 - 1) * 4 = 12 VCPUs, 4 at a time
        model.claim(consumer(n), {HOST: {"VCPU": 4}}, "p", "u")
    with pytest.raises(Conflict):
        model.claim(consumer(9), {HOST: {"VCPU": 1}}, "p", "u")
    model.claim(consumer(10), {HOST: {"MEMORY_MB": 512}}, "p", "u")
    with pytest.raises(Conflict):
        model.claim(consumer(11), {HOST: {"MEMORY_MB": 1}}, "p", "u")


def test_twenty_concurrent_claims_from_threads_never_exceed_capacity(
        model: Placement) -> None:
    won, lost = [], []

    def claim(n: int) -> None:
        try:
            model.claim(consumer(n), {HOST: {"VCPU": 1}}, "p", "u")
            won.append(n)
        except Conflict:
            lost.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 4 and len(lost) == 16
    assert model.usages(HOST)["VCPU"] == 4


def test_twenty_concurrent_claims_from_asyncio_tasks_never_exceed_capacity(
        model: Placement) -> None:
    async def claim(n: int) -> bool:
        try:
            await asyncio.to_thread(model.claim, consumer(n), {HOST: {"DISK_GB": 3}}, "p", "u")
            return True
        except Conflict:
            return False

    async def race() -> list[bool]:
        return await asyncio.gather(*(claim(n) for n in range(20)))

    results = asyncio.run(race())
    assert results.count(True) == 6  # 20 GB, 3 at a time
    assert model.usages(HOST)["DISK_GB"] == 18


def test_state_survives_reopening_the_database(tmp_path: Path) -> None:
    first = open_model(tmp_path)
    first.ensure_provider(HOST, "compute-1", SMALL)
    first.claim(consumer(1), {HOST: {"VCPU": 2}}, "p", "u")
    first.db.close()
    second = open_model(tmp_path)
    assert second.inventories(HOST)[1] == SMALL
    assert second.allocations_for(consumer(1)) == {HOST: {"VCPU": 2}}
    assert second.verdicts({"VCPU": 3})[0].reasons  # 2 of 4 used: 3 more does not fit


# -- HTTP ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admin(issue_token: Callable[..., str]) -> dict[str, str]:
    return auth_header(issue_token("admin", "admin"))


def v(version: str, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "OpenStack-API-Version": f"placement {version}"}


def placement_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    (error,) = response.json()["errors"]
    assert error["status"] == status
    assert error["title"] == httpx.codes.get_reason_phrase(status)
    assert error["request_id"] == response.headers["x-openstack-request-id"]
    if code is not None:
        assert error["code"] == code
    return error["detail"]


def new_provider(http: httpx.Client, admin: dict[str, str], name: str,
                 inventories: dict[str, Any] | None = None) -> str:
    r = http.post("/placement/resource_providers", json={"name": name},
                  headers=v("1.20", admin))
    assert r.status_code == 200, r.text
    uuid_ = r.json()["uuid"]
    if inventories:
        r = http.put(f"/placement/resource_providers/{uuid_}/inventories",
                     json={"resource_provider_generation": 0, "inventories": inventories},
                     headers=admin)
        assert r.status_code == 200, r.text
    return uuid_


def test_version_document_needs_no_token(http: httpx.Client) -> None:
    for path in ("/placement", "/placement/"):
        r = http.get(path)
        assert r.status_code == 200, r.text
        (version,) = r.json()["versions"]
        assert version["id"] == "v1.0" and version["min_version"] == "1.0"
        assert version["status"] == "CURRENT"
        assert tuple(map(int, version["max_version"].split("."))) >= (1, 28)
        assert r.headers["openstack-api-version"] == "placement 1.0"


def test_microversions_are_echoed_and_out_of_range_is_406(
        http: httpx.Client, admin: dict[str, str]) -> None:
    r = http.get("/placement/resource_providers", headers=v("1.14", admin))
    assert r.headers["openstack-api-version"] == "placement 1.14"
    assert "openstack-api-version" in r.headers["vary"].lower()
    latest = http.get("/placement/", headers=v("latest", {})).json()["versions"][0]
    r = http.get("/placement/resource_providers", headers=v("latest", admin))
    assert r.headers["openstack-api-version"] == f"placement {latest['max_version']}"
    detail = placement_error(http.get("/placement/resource_providers",
                                      headers=v("1.999", admin)), 406)
    assert "1.999" in detail


def test_a_non_admin_token_gets_403_in_placements_format(
        http: httpx.Client, issue_token: Callable[..., str]) -> None:
    r = http.get("/placement/resource_providers",
                 headers=v("1.23", auth_header(issue_token("demo", "demo"))))
    detail = placement_error(r, 403, "placement.undefined_code")
    assert "placement:resource_providers:list" in detail


def test_no_token_gets_401(http: httpx.Client) -> None:
    assert http.get("/placement/resource_providers").status_code == 401


def test_resource_provider_lifecycle(http: httpx.Client, admin: dict[str, str]) -> None:
    r = http.post("/placement/resource_providers", json={"name": "rp-life"}, headers=admin)
    assert r.status_code == 201 and r.content == b""  # before 1.20: no body
    location = r.headers["location"]
    rp = location.rsplit("/", 1)[1]
    r = http.get(f"/placement/resource_providers/{rp}", headers=v("1.14", admin))
    body = r.json()
    assert body["name"] == "rp-life" and body["generation"] == 0
    assert body["root_provider_uuid"] == rp and body["parent_provider_uuid"] is None
    assert {link["rel"] for link in body["links"]} == {
        "self", "inventories", "usages", "aggregates", "traits", "allocations"}
    r = http.put(f"/placement/resource_providers/{rp}", json={"name": "rp-renamed"},
                 headers=admin)
    assert r.status_code == 200 and r.json()["name"] == "rp-renamed"
    names = [p["name"] for p in http.get("/placement/resource_providers",
                                         params={"name": "rp-renamed"},
                                         headers=admin).json()["resource_providers"]]
    assert names == ["rp-renamed"]
    r = http.post("/placement/resource_providers", json={"name": "rp-renamed"},
                  headers=v("1.23", admin))
    placement_error(r, 409, "placement.duplicate_name")
    assert http.delete(f"/placement/resource_providers/{rp}", headers=admin).status_code == 204
    r = http.get(f"/placement/resource_providers/{rp}", headers=v("1.23", admin))
    placement_error(r, 404, "placement.undefined_code")


def test_inventories_check_the_generation(http: httpx.Client, admin: dict[str, str]) -> None:
    rp = new_provider(http, admin, "rp-inventory", {"VCPU": {"total": 8}})
    r = http.get(f"/placement/resource_providers/{rp}/inventories", headers=admin)
    body = r.json()
    assert body["resource_provider_generation"] == 1
    assert body["inventories"]["VCPU"] == {"total": 8, "reserved": 0, "min_unit": 1,
                                           "max_unit": 2147483647, "step_size": 1,
                                           "allocation_ratio": 1.0}
    stale = http.put(f"/placement/resource_providers/{rp}/inventories",
                     json={"resource_provider_generation": 0,
                           "inventories": {"VCPU": {"total": 16}}},
                     headers=v("1.23", admin))
    placement_error(stale, 409, "placement.concurrent_update")
    r = http.put(f"/placement/resource_providers/{rp}/inventories/MEMORY_MB",
                 json={"resource_provider_generation": 1, "total": 4096, "reserved": 512},
                 headers=admin)
    assert r.status_code == 400  # PUT of one class only updates an existing one
    r = http.post(f"/placement/resource_providers/{rp}/inventories",
                  json={"resource_class": "MEMORY_MB", "total": 4096, "reserved": 512},
                  headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["resource_provider_generation"] == 2
    r = http.put(f"/placement/resource_providers/{rp}/inventories/VCPU",
                 json={"resource_provider_generation": 2, "total": 4,
                       "allocation_ratio": 16.0}, headers=admin)
    assert r.status_code == 200 and r.json()["allocation_ratio"] == 16.0
    r = http.get(f"/placement/resource_providers/{rp}/inventories/VCPU", headers=admin)
    assert r.json()["total"] == 4 and r.json()["resource_provider_generation"] == 3
    bad = http.put(f"/placement/resource_providers/{rp}/inventories",
                   json={"resource_provider_generation": 3,
                         "inventories": {"VCPU": {"total": 4, "reserved": 4}}}, headers=admin)
    assert "reserved value is greater than or equal to total" in placement_error(bad, 400)
    same = http.put(f"/placement/resource_providers/{rp}/inventories",
                    json={"resource_provider_generation": 3,
                          "inventories": {"VCPU": {"total": 4, "reserved": 4}}},
                    headers=v("1.26", admin))
    assert same.status_code == 200, same.text
    assert http.delete(f"/placement/resource_providers/{rp}/inventories",
                       headers=v("1.4", admin)).status_code == 405
    assert http.delete(f"/placement/resource_providers/{rp}/inventories",
                       headers=v("1.5", admin)).status_code == 204
    r = http.get(f"/placement/resource_providers/{rp}/inventories", headers=admin)
    assert r.json()["inventories"] == {}


def put_allocation(http: httpx.Client, admin: dict[str, str], consumer_id: str,
                   rp: str, resources: dict[str, int], version: str = "1.28",
                   generation: int | None = None) -> httpx.Response:
    body: dict[str, Any] = {"allocations": {rp: {"resources": resources}},
                            "project_id": "p1", "user_id": "u1"}
    if version >= "1.28":
        body["consumer_generation"] = generation
    return http.put(f"/placement/allocations/{consumer_id}", json=body,
                    headers=v(version, admin))


def test_allocations_with_consumer_generations(http: httpx.Client,
                                               admin: dict[str, str]) -> None:
    rp = new_provider(http, admin, "rp-alloc", {"VCPU": {"total": 2},
                                                "MEMORY_MB": {"total": 1024}})
    first = consumer(1001)
    assert put_allocation(http, admin, first, rp, {"VCPU": 1, "MEMORY_MB": 256}
                          ).status_code == 204
    r = http.get(f"/placement/allocations/{first}", headers=v("1.28", admin))
    body = r.json()
    assert body == {"allocations": {rp: {"generation": 2, "resources": {
        "VCPU": 1, "MEMORY_MB": 256}}}, "project_id": "p1", "user_id": "u1",
        "consumer_generation": 1}
    stale = put_allocation(http, admin, first, rp, {"VCPU": 2}, generation=None)
    assert "consumer generation conflict" in placement_error(stale, 409,
                                                            "placement.concurrent_update")
    assert put_allocation(http, admin, first, rp, {"VCPU": 2}, generation=1).status_code == 204
    full = put_allocation(http, admin, consumer(1002), rp, {"VCPU": 1})
    assert "exceed the capacity" in placement_error(full, 409)
    r = http.get(f"/placement/resource_providers/{rp}/usages", headers=admin)
    assert r.json()["usages"] == {"MEMORY_MB": 0, "VCPU": 2}
    r = http.get(f"/placement/resource_providers/{rp}/allocations", headers=v("1.28", admin))
    assert r.json()["allocations"] == {first: {"resources": {"VCPU": 2},
                                               "consumer_generation": 2}}
    r = http.get("/placement/usages", params={"project_id": "p1"}, headers=v("1.9", admin))
    assert r.json()["usages"]["VCPU"] >= 2
    in_use = http.delete(f"/placement/resource_providers/{rp}", headers=v("1.23", admin))
    placement_error(in_use, 409, "placement.resource_provider.inuse")
    assert http.delete(f"/placement/allocations/{first}", headers=admin).status_code == 204
    assert http.get(f"/placement/allocations/{first}", headers=admin).json() == {
        "allocations": {}}
    placement_error(http.delete(f"/placement/allocations/{first}", headers=admin), 404)


def test_allocations_in_the_list_format_before_1_12(http: httpx.Client,
                                                    admin: dict[str, str]) -> None:
    rp = new_provider(http, admin, "rp-old-format", {"DISK_GB": {"total": 10}})
    c = consumer(1101)
    r = http.put(f"/placement/allocations/{c}", headers=v("1.8", admin), json={
        "allocations": [{"resource_provider": {"uuid": rp}, "resources": {"DISK_GB": 4}}],
        "project_id": "p2", "user_id": "u2"})
    assert r.status_code == 204, r.text
    old = http.get(f"/placement/allocations/{c}", headers=v("1.11", admin)).json()
    assert old == {"allocations": {rp: {"generation": 2, "resources": {"DISK_GB": 4}}}}
    dict_format = put_allocation(http, admin, c, rp, {"DISK_GB": 5}, version="1.12")
    assert dict_format.status_code == 204, dict_format.text
    missing_user = http.put(f"/placement/allocations/{c}", headers=v("1.8", admin), json={
        "allocations": [{"resource_provider": {"uuid": rp}, "resources": {"DISK_GB": 4}}]})
    assert missing_user.status_code == 400


def test_allocation_candidates(http: httpx.Client, admin: dict[str, str]) -> None:
    big = new_provider(http, admin, "cand-big", {
        "VCPU": {"total": 16}, "MEMORY_MB": {"total": 32768}, "DISK_GB": {"total": 100}})
    small = new_provider(http, admin, "cand-small", {
        "VCPU": {"total": 1}, "MEMORY_MB": {"total": 512}, "DISK_GB": {"total": 1}})
    query = {"resources": "VCPU:2,MEMORY_MB:1024,DISK_GB:1"}
    r = http.get("/placement/allocation_candidates", params=query, headers=v("1.12", admin))
    body = r.json()
    assert {"allocations": {big: {"resources": {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 1}}}
            } in body["allocation_requests"]
    assert small not in body["provider_summaries"]
    assert body["provider_summaries"][big]["resources"]["VCPU"] == {"capacity": 16, "used": 0}
    old = http.get("/placement/allocation_candidates", params=query,
                   headers=v("1.10", admin)).json()
    assert {"allocations": [{"resource_provider": {"uuid": big}, "resources": {
        "VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 1}}]} in old["allocation_requests"]
    tiny = http.get("/placement/allocation_candidates",
                    params={"resources": "VCPU:1", "limit": "1"},
                    headers=v("1.17", admin)).json()
    assert len(tiny["allocation_requests"]) == 1
    assert all("traits" in s for s in tiny["provider_summaries"].values())
    assert http.get("/placement/allocation_candidates", params=query,
                    headers=v("1.9", admin)).status_code == 404
    bad = http.get("/placement/allocation_candidates", params={"resources": "VCPU:0"},
                   headers=v("1.10", admin))
    assert "positive integer" in placement_error(bad, 400)


def test_traits_narrow_candidates(http: httpx.Client, admin: dict[str, str]) -> None:
    rp = new_provider(http, admin, "rp-traits", {"VCPU": {"total": 64}})
    assert http.put("/placement/traits/CUSTOM_FAST", headers=v("1.6", admin)).status_code == 201
    assert http.put("/placement/traits/CUSTOM_FAST", headers=v("1.6", admin)).status_code == 204
    r = http.put(f"/placement/resource_providers/{rp}/traits", headers=v("1.6", admin),
                 json={"traits": ["CUSTOM_FAST"], "resource_provider_generation": 1})
    assert r.status_code == 200 and r.json()["resource_provider_generation"] == 2
    r = http.get("/placement/allocation_candidates", headers=v("1.17", admin),
                 params={"resources": "VCPU:32", "required": "CUSTOM_FAST"})
    assert list(r.json()["provider_summaries"]) == [rp]
    r = http.get("/placement/allocation_candidates", headers=v("1.22", admin),
                 params={"resources": "VCPU:32", "required": "!CUSTOM_FAST"})
    assert rp not in r.json()["provider_summaries"]
    listed = http.get("/placement/traits", params={"associated": "true"},
                      headers=v("1.6", admin)).json()["traits"]
    assert listed == ["CUSTOM_FAST"]
    in_use = http.delete("/placement/traits/CUSTOM_FAST", headers=v("1.6", admin))
    assert in_use.status_code == 409


def test_resource_classes(http: httpx.Client, admin: dict[str, str]) -> None:
    names = [c["name"] for c in http.get("/placement/resource_classes",
                                         headers=v("1.2", admin)).json()["resource_classes"]]
    assert {"VCPU", "MEMORY_MB", "DISK_GB"} <= set(names)
    assert http.put("/placement/resource_classes/CUSTOM_GPU",
                    headers=v("1.7", admin)).status_code == 201
    assert http.get("/placement/resource_classes/CUSTOM_GPU",
                    headers=v("1.2", admin)).json()["name"] == "CUSTOM_GPU"
    assert http.delete("/placement/resource_classes/VCPU",
                       headers=v("1.2", admin)).status_code == 400
    assert http.get("/placement/resource_classes", headers=admin).status_code == 404


def test_sdk_resource_providers_and_inventories(admin_conn: Connection) -> None:
    placement = admin_conn.placement
    rp = placement.create_resource_provider(name="sdk-host")
    assert rp.id and rp.generation == 0
    inventory = placement.create_resource_provider_inventory(
        rp, resource_class="VCPU", total=8, allocation_ratio=2.0)
    assert inventory.total == 8
    listed = list(placement.resource_provider_inventories(rp))
    assert [(i.resource_class, i.total, i.allocation_ratio) for i in listed] == [
        ("VCPU", 8, 2.0)]
    assert "sdk-host" in [p.name for p in placement.resource_providers()]
    renamed = placement.update_resource_provider(rp, name="sdk-host-2")
    assert renamed.name == "sdk-host-2"
    placement.delete_resource_provider_inventory(inventory, resource_provider=rp)
    assert list(placement.resource_provider_inventories(rp)) == []
    placement.delete_resource_provider(rp)
    assert "sdk-host-2" not in [p.name for p in placement.resource_providers()]


def test_cloud_info_is_a_placement_catalog_entry(cloud: CloudInfo, http: httpx.Client,
                                                 admin_conn: Connection) -> None:
    endpoint = admin_conn.session.get_endpoint(service_type="placement", interface="public")
    assert endpoint.rstrip("/") == f"{cloud.url.rstrip('/')}/placement"
