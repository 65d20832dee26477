"""Nova under pressure: concurrent boots, failed builds, deletes mid-build, restarts.

Concurrent boots go over real HTTP to a fresh cloud. Reschedules need a hypervisor
that fails on purpose (the model driver's `fail_next_spawns`), which lives inside
the cloud's process, so those tests build a `Cloud` in this process and drive
nova's own ServersAPI, then wait for the message bus to go quiet.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conftest import (
    LAB_PASSWORDS,
    auth_header,
    demo_context,
    in_cloud,
    password_auth,
    start_cloud,
    stop_cloud,
    wait_for,
)
from labkit.cloud.app import Cloud
from labkit.cloud.compute.instances import InstanceAction, InstanceActionEvent
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.process import CloudInfo

IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny
SERVERS = "/compute/v2.1/servers"
BUILD_TIMEOUT = 60  # a guard against a hung build, never a claim about speed
FLAVORS = {"m1.large": "4", "m1.small": "2"}


def compute(token: str) -> dict[str, str]:
    return {**auth_header(token), "OpenStack-API-Version": "compute 2.79"}


def issue(http: httpx.Client, user: str, project: str) -> str:
    r = http.post("/identity/v3/auth/tokens",
                  json=password_auth(user, LAB_PASSWORDS[user], project))
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def providers(http: httpx.Client, admin: str) -> dict[str, dict[str, Any]]:
    """Each resource provider by name: its inventories and its usages right now."""
    headers = auth_header(admin)
    listed = http.get("/placement/resource_providers", headers=headers)
    assert listed.status_code == 200, listed.text
    found = {}
    for p in listed.json()["resource_providers"]:
        base = f"/placement/resource_providers/{p['uuid']}"
        inventories = http.get(f"{base}/inventories", headers=headers).json()["inventories"]
        usages = http.get(f"{base}/usages", headers=headers).json()["usages"]
        found[p["name"]] = {"uuid": p["uuid"], "inventories": inventories, "usages": usages}
    return found


def capacity(inventory: dict[str, Any]) -> int:
    """What placement lets consumers use of one resource class."""
    return math.floor((inventory["total"] - inventory["reserved"])
                      * inventory["allocation_ratio"])


def fits(inventories: dict[str, dict[str, Any]], resources: dict[str, int]) -> int:
    """How many of `resources` one provider can hold."""
    return min(0 if amount > inventories[rc]["max_unit"] else
               capacity(inventories[rc]) // amount for rc, amount in resources.items())


def over_capacity(found: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{name}: {rc} {used} > {capacity(p['inventories'][rc])}"
            for name, p in found.items() for rc, used in p["usages"].items()
            if used > capacity(p["inventories"][rc])]


# -- concurrent boots over HTTP ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tokens(http: httpx.Client) -> dict[str, str]:
    return {"demo": issue(http, "demo", "demo"), "admin": issue(http, "admin", "admin")}


@pytest.fixture(scope="module")
def unlimited(http: httpx.Client, tokens: dict[str, str], demo_conn: Any) -> Iterator[None]:
    """No quota on demo's instances, cores and RAM: only the hosts' capacity limits boots."""
    url = f"/compute/v2.1/os-quota-sets/{demo_conn.current_project_id}"
    r = http.put(url, json={"quota_set": {"instances": -1, "cores": -1, "ram": -1}},
                 headers=compute(tokens["admin"]))
    assert r.status_code == 200, r.text
    yield
    assert http.delete(url, headers=compute(tokens["admin"])).status_code == 202


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
def test_concurrent_boots_never_oversubscribe_a_host(
        cloud: CloudInfo, http: httpx.Client, tokens: dict[str, str], unlimited: None,
        flavor: str) -> None:
    demo, admin = tokens["demo"], tokens["admin"]
    details = http.get(f"/compute/v2.1/flavors/{FLAVORS[flavor]}",
                       headers=compute(demo)).json()["flavor"]
    resources = {"VCPU": details["vcpus"], "MEMORY_MB": details["ram"],
                 "DISK_GB": details["disk"]}
    before = providers(http, admin)
    assert all(not any(p["usages"].values()) for p in before.values()), before
    room = sum(fits(p["inventories"], resources) for p in before.values())
    wanted = 20
    assert room < wanted, "the lab's hosts should not hold 20 of these"

    def post(n: int) -> httpx.Response:
        with httpx.Client(base_url=cloud.url, timeout=60) as client:
            return client.post(SERVERS, headers=compute(demo), json={"server": {
                "name": f"rush-{flavor}-{n}", "flavorRef": FLAVORS[flavor],
                "imageRef": IMAGE, "networks": "none"}})

    with ThreadPoolExecutor(max_workers=wanted) as pool:
        answers = list(pool.map(post, range(wanted)))
    assert [r.status_code for r in answers] == [202] * wanted, [r.text for r in answers]
    ids = [r.json()["server"]["id"] for r in answers]

    samples: list[list[str]] = []

    def statuses() -> dict[str, str]:
        samples.append(over_capacity(providers(http, admin)))
        listed = http.get(f"{SERVERS}/detail", params={"name": f"^rush-{flavor}-"},
                          headers=compute(demo)).json()["servers"]
        return {s["id"]: s for s in listed}

    try:
        found = wait_for(statuses, lambda f: len(f) == wanted and all(
            s["status"] != "BUILD" for s in f.values()), BUILD_TIMEOUT)
        assert [s for s in samples if s] == [], "placement went over capacity"
        active = [s for s in found.values() if s["status"] == "ACTIVE"]
        failed = [s for s in found.values() if s["status"] == "ERROR"]
        assert len(active) == room, (len(active), room)
        assert len(failed) == wanted - room
        assert all(s["fault"]["message"].startswith("No valid host was found.")
                   for s in failed)
        after = providers(http, admin)
        assert over_capacity(after) == []
        for rc, amount in resources.items():
            assert sum(p["usages"].get(rc, 0) for p in after.values()) == amount * room
        for s in failed:
            r = http.get(f"/placement/allocations/{s['id']}", headers=auth_header(admin))
            assert r.json()["allocations"] == {}
    finally:
        for server_id in ids:
            http.delete(f"{SERVERS}/{server_id}", headers=compute(demo))
        gone = wait_for(lambda: http.get(f"{SERVERS}/detail",
                                         params={"name": f"^rush-{flavor}-"},
                                         headers=compute(demo)).json()["servers"],
                        lambda listed: listed == [], BUILD_TIMEOUT)
        assert gone == []
    usages = {name: p["usages"] for name, p in providers(http, admin).items()}
    assert all(not any(u.values()) for u in usages.values()), usages


# -- failed builds, in this process ------------------------------------------------------------



async def boot_in(cloud: Cloud, name: str, request_id: str) -> str:
    ctx = demo_context(cloud, request_id)
    _, (uuid,) = ServersAPI(cloud.compute).create(ctx, CreateRequest(
        name=name, flavor_ref="42", image_ref=IMAGE, networks="none"))
    await cloud.bus.drain()
    return uuid


def events_of(cloud: Cloud, uuid: str, action: str) -> tuple[InstanceAction, list[Any]]:
    with cloud.compute.database.session() as s:
        row = s.scalar(select(InstanceAction).where(InstanceAction.instance_uuid == uuid,
                                                    InstanceAction.action == action))
        assert row is not None
        events = s.scalars(select(InstanceActionEvent)
                           .where(InstanceActionEvent.action_id == row.id)
                           .order_by(InstanceActionEvent.id)).all()
        return row, [(e.event, e.result, e.host, e.details) for e in events]


def instance_of(cloud: Cloud, uuid: str) -> Any:
    with cloud.compute.database.session() as s:
        return cloud.compute.instances.get(s, uuid, include_deleted=True)


def guests(cloud: Cloud, uuid: str) -> list[str]:
    return [host for host, manager in cloud.compute.computes.items()
            if uuid in getattr(manager.driver, "guests", {})]


def test_failed_spawn_is_rescheduled_to_the_alternate(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        cloud.compute.computes["compute-2"].driver.fail_next_spawns = 1
        uuid = await boot_in(cloud, "retry", "req-retry")
        instance = instance_of(cloud, uuid)
        assert (instance.vm_state, instance.task_state, instance.host) == (
            "active", None, "compute-1")
        action, events = events_of(cloud, uuid, "create")
        # as in nova: a build that reschedules ends normally, so both events say Success
        # and nothing records a conductor event; the failure is in the trace
        assert [(e, r, h) for e, r, h, _ in events] == [
            ("compute__do_build_and_run_instance", "Success", "compute-2"),
            ("compute__do_build_and_run_instance", "Success", "compute-1")]
        assert action.message is None
        resent = [e for e in cloud.trace.query(request_id="req-retry")
                  if e.kind == "rpc" and e.detail.get("method") == "build_instances"]
        assert resent and resent[0].source == "nova-compute@compute-2"
        assert "told to fail" in resent[0].detail["args"]["reason"]
        assert guests(cloud, uuid) == ["compute-1"]
        held = cloud.compute.placement.allocations_for(uuid)
        node = cloud.compute.hosts.node_for("compute-1")
        assert list(held) == [node.uuid]
        other = cloud.compute.hosts.node_for("compute-2")
        assert not any(cloud.compute.placement.usages(other.uuid).values())
        assert cloud.compute.computes["compute-2"].driver.fail_next_spawns == 0
    in_cloud(tmp_path, scenario)


def test_failing_everywhere_ends_in_error_with_max_retries(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        for manager in cloud.compute.computes.values():
            manager.driver.fail_next_spawns = 1
        uuid = await boot_in(cloud, "doomed", "req-doomed")
        instance = instance_of(cloud, uuid)
        assert (instance.vm_state, instance.task_state, instance.host) == ("error", None, None)
        with cloud.compute.database.session() as s:
            fault = cloud.compute.instances.latest_fault(s, uuid)
            assert fault is not None
            assert fault.message.startswith("Exceeded maximum number of retries.")
        assert fault.message == ("Exceeded maximum number of retries. Exhausted all hosts "
                                 f"available for retrying build failures for instance {uuid}.")
        _, events = events_of(cloud, uuid, "create")
        assert sorted(h for e, r, h, _ in events
                      if e == "compute__do_build_and_run_instance") == ["compute-1",
                                                                         "compute-2"]
        assert guests(cloud, uuid) == []
        assert cloud.compute.placement.allocations_for(uuid) == {}
        for node in cloud.compute.hosts.nodes():
            assert not any(cloud.compute.placement.usages(node.uuid).values())
    in_cloud(tmp_path, scenario)


@pytest.mark.parametrize("when", [
    "scheduling", "networking", "spawning"])
def test_delete_during_a_build_leaves_nothing_behind(tmp_path: Path, when: str) -> None:
    async def scenario(cloud: Cloud) -> None:
        # slow the build down so the delete lands in the middle of it
        cloud.compute.step_seconds = 0.05
        for manager in cloud.compute.computes.values():
            manager.driver.step_seconds = 0.05
        ctx = demo_context(cloud, "req-build")
        servers = ServersAPI(cloud.compute)
        _, (uuid,) = servers.create(ctx, CreateRequest(
            name="short-lived", flavor_ref="42", image_ref=IMAGE, networks="none"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while instance_of(cloud, uuid).task_state != when and loop.time() < deadline:
            await asyncio.sleep(0.001)
        assert instance_of(cloud, uuid).task_state == when
        servers.delete(demo_context(cloud, "req-delete"), uuid)
        await cloud.bus.drain()
        instance = instance_of(cloud, uuid)
        leftovers = {"row": (instance.deleted, instance.vm_state, instance.task_state),
                     "guests": guests(cloud, uuid),
                     "allocation": cloud.compute.placement.allocations_for(uuid)}
        assert leftovers == {"row": (True, "deleted", None), "guests": [], "allocation": {}}
        for node in cloud.compute.hosts.nodes():
            assert not any(cloud.compute.placement.usages(node.uuid).values())
    in_cloud(tmp_path, scenario)


def test_a_delete_during_a_stop_is_not_undone(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        uuid = await boot_in(cloud, "stop-then-delete", "req-boot")
        cloud.compute.step_seconds = 0.05  # the stop takes a moment; the delete lands in it
        servers = ServersAPI(cloud.compute)
        servers.stop(demo_context(cloud, "req-stop"), uuid)
        await asyncio.sleep(0.01)
        servers.delete(demo_context(cloud, "req-delete"), uuid)
        await cloud.bus.drain()
        instance = instance_of(cloud, uuid)
        assert (instance.deleted, instance.vm_state, instance.task_state) == (
            True, "deleted", None)
        assert guests(cloud, uuid) == []
        assert cloud.compute.placement.allocations_for(uuid) == {}
    in_cloud(tmp_path, scenario)


def test_a_server_deleted_before_no_valid_host_stays_deleted(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        servers = ServersAPI(cloud.compute)
        _, (uuid,) = servers.create(demo_context(cloud, "req-big"), CreateRequest(
            name="too-big", flavor_ref="5", image_ref=IMAGE, networks="none"))
        # deleted before the conductor even asks the scheduler (which will find no host)
        servers.delete(demo_context(cloud, "req-gone"), uuid)
        await cloud.bus.drain()
        instance = instance_of(cloud, uuid)
        assert (instance.deleted, instance.vm_state, instance.task_state) == (
            True, "deleted", None)
        assert cloud.compute.placement.allocations_for(uuid) == {}
    in_cloud(tmp_path, scenario)


# -- a restart -----------------------------------------------------------------------------------

def test_a_server_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    info = start_cloud(home)
    try:
        with httpx.Client(base_url=info.url, timeout=30) as http:
            demo, admin = issue(http, "demo", "demo"), issue(http, "admin", "admin")
            r = http.post(SERVERS, headers=compute(demo), json={"server": {
                "name": "survivor", "flavorRef": "42", "imageRef": IMAGE,
                "networks": "none"}})
            assert r.status_code == 202, r.text
            server_id = r.json()["server"]["id"]
            shown = wait_for(lambda: http.get(f"{SERVERS}/{server_id}",
                                              headers=compute(admin)).json()["server"],
                             lambda s: s["status"] == "ACTIVE", BUILD_TIMEOUT)
            assert shown["status"] == "ACTIVE"
            usage = {n: p["usages"] for n, p in providers(http, admin).items()}
        stop_cloud(home)
        info = start_cloud(home)
        with httpx.Client(base_url=info.url, timeout=30) as http:
            demo, admin = issue(http, "demo", "demo"), issue(http, "admin", "admin")
            again = http.get(f"{SERVERS}/{server_id}", headers=compute(admin)).json()["server"]
            assert again["status"] == "ACTIVE"
            assert again["OS-EXT-STS:power_state"] == 1
            assert again["OS-EXT-SRV-ATTR:host"] == shown["OS-EXT-SRV-ATTR:host"]
            assert {n: p["usages"] for n, p in providers(http, admin).items()} == usage
            r = http.post(f"{SERVERS}/{server_id}/action", json={"os-stop": None},
                          headers=compute(demo))
            assert r.status_code == 202, r.text
            stopped = wait_for(lambda: http.get(f"{SERVERS}/{server_id}",
                                                headers=compute(demo)).json()["server"],
                               lambda s: s["status"] == "SHUTOFF", BUILD_TIMEOUT)
            assert stopped["status"] == "SHUTOFF"
            assert http.delete(f"{SERVERS}/{server_id}", headers=compute(demo)).status_code \
                == 204
            gone = wait_for(lambda: http.get(f"{SERVERS}/{server_id}", headers=compute(demo)),
                            lambda r: r.status_code == 404, BUILD_TIMEOUT)
            assert gone.status_code == 404
            usages = {n: p["usages"] for n, p in providers(http, admin).items()}
            assert all(not any(u.values()) for u in usages.values()), usages
    finally:
        stop_cloud(home)


def test_a_stopped_server_stays_stopped_across_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    info = start_cloud(home)
    try:
        with httpx.Client(base_url=info.url, timeout=30) as http:
            demo = issue(http, "demo", "demo")
            r = http.post(SERVERS, headers=compute(demo), json={"server": {
                "name": "sleeper", "flavorRef": "42", "imageRef": IMAGE,
                "networks": "none"}})
            server_id = r.json()["server"]["id"]
            url = f"{SERVERS}/{server_id}"
            wait_for(lambda: http.get(url, headers=compute(demo)).json()["server"],
                     lambda s: s["status"] == "ACTIVE", BUILD_TIMEOUT)
            http.post(f"{url}/action", json={"os-stop": None}, headers=compute(demo))
            stopped = wait_for(lambda: http.get(url, headers=compute(demo)).json()["server"],
                               lambda s: s["status"] == "SHUTOFF", BUILD_TIMEOUT)
            assert stopped["status"] == "SHUTOFF"
        stop_cloud(home)
        info = start_cloud(home)
        with httpx.Client(base_url=info.url, timeout=30) as http:
            demo = issue(http, "demo", "demo")
            again = http.get(url, headers=compute(demo)).json()["server"]
            assert (again["status"], again["OS-EXT-STS:power_state"]) == ("SHUTOFF", 4)
            r = http.post(f"{url}/action", json={"os-start": None}, headers=compute(demo))
            assert r.status_code == 202, r.text
            started = wait_for(lambda: http.get(url, headers=compute(demo)).json()["server"],
                               lambda s: s["status"] == "ACTIVE", BUILD_TIMEOUT)
            assert started["OS-EXT-STS:power_state"] == 1
    finally:
        stop_cloud(home)


def test_the_capacity_helpers_follow_placements_rule() -> None:
    memory = {"total": 8192, "reserved": 512, "allocation_ratio": 1.0, "max_unit": 8192}
    cpu = {"total": 4, "reserved": 0, "allocation_ratio": 4.0, "max_unit": 4}
    assert capacity(memory) == 7680
    assert fits({"MEMORY_MB": memory, "VCPU": cpu}, {"MEMORY_MB": 2048, "VCPU": 1}) == 3
    assert fits({"MEMORY_MB": memory, "VCPU": cpu}, {"MEMORY_MB": 128, "VCPU": 8}) == 0
