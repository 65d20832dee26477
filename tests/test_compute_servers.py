"""Nova's servers API: the contract through openstacksdk, and its refusals over raw HTTP.

Every test runs against one fresh embedded cloud (the `cloud` fixture) on the model
driver at the fast pace, so a build finishes within moments; tests poll
GET /servers/{id} with a short interval and a deadline rather than sleeping.
The error tests also check that a refused request leaves nothing behind: the same
servers, the same quota usage, no allocation in placement.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openstack
import openstack.exceptions
import pytest
from openstack.connection import Connection

from conftest import LAB_PASSWORDS, auth_header, wait_for
from labkit.cloud.compute.api.microversion import MAX
from labkit.cloud.process import CloudInfo

IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny, fixed in data/images.yaml
TINY, NANO, XLARGE = "1", "42", "5"
BUILD_TIMEOUT = 20  # a guard against a hung build, never a claim about speed
SERVERS = "/compute/v2.1/servers"


def compute(token: str, version: str | None = "2.79") -> dict[str, str]:
    headers = auth_header(token)
    if version:
        headers["OpenStack-API-Version"] = f"compute {version}"
    return headers


def boot_body(name: str, flavor: str = NANO, image: str = IMAGE, **extra: Any) -> dict:
    return {"server": {"name": name, "flavorRef": flavor, "imageRef": image,
                       "networks": "none", **extra}}


@pytest.fixture(scope="module")
def alt_conn(cloud: CloudInfo) -> Iterator[Connection]:
    """openstacksdk as alt_demo, a member of another project."""
    conn = openstack.connect(auth_url=f"{cloud.url}/identity/v3", username="alt_demo",
                             password=LAB_PASSWORDS["alt_demo"], project_name="alt_demo",
                             user_domain_name="Default", project_domain_name="Default",
                             load_yaml_config=False, load_envvars=False)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def demo_project(demo_conn: Connection) -> str:
    return demo_conn.current_project_id


def get_server(http: httpx.Client, token: str, server_id: str) -> httpx.Response:
    return http.get(f"{SERVERS}/{server_id}", headers=compute(token))


def wait_status(http: httpx.Client, token: str, server_id: str, statuses: set[str],
                timeout: float = BUILD_TIMEOUT) -> dict[str, Any]:
    """Poll the server until its status is one of `statuses` and no task is under way."""
    def settled(r: httpx.Response) -> bool:
        if r.status_code != 200:
            return False
        server = r.json()["server"]
        return server["status"] in statuses and server["OS-EXT-STS:task_state"] is None
    r = wait_for(lambda: get_server(http, token, server_id), settled, timeout)
    assert r.status_code == 200, r.text
    server = r.json()["server"]
    assert server["status"] in statuses, server
    return server


def wait_gone(http: httpx.Client, token: str, server_id: str) -> None:
    r = wait_for(lambda: get_server(http, token, server_id),
                 lambda r: r.status_code == 404, BUILD_TIMEOUT)
    assert r.status_code == 404, r.text


def boot(http: httpx.Client, token: str, name: str, **extra: Any) -> str:
    r = http.post(SERVERS, json=boot_body(name, **extra), headers=compute(token))
    assert r.status_code == 202, r.text
    return r.json()["server"]["id"]


def delete(http: httpx.Client, token: str, server_id: str) -> None:
    r = http.delete(f"{SERVERS}/{server_id}", headers=compute(token))
    assert r.status_code in (204, 404), r.text
    wait_gone(http, token, server_id)


def allocations(http: httpx.Client, admin_token: str, consumer: str) -> dict[str, Any]:
    r = http.get(f"/placement/allocations/{consumer}", headers=auth_header(admin_token))
    assert r.status_code == 200, r.text
    return r.json()["allocations"]


def placement_usages(http: httpx.Client, admin_token: str) -> dict[str, dict[str, int]]:
    """Each resource provider's usages, by provider name."""
    headers = auth_header(admin_token)
    r = http.get("/placement/resource_providers", headers=headers)
    assert r.status_code == 200, r.text
    found = {}
    for provider in r.json()["resource_providers"]:
        u = http.get(f"/placement/resource_providers/{provider['uuid']}/usages",
                     headers=headers)
        assert u.status_code == 200, u.text
        found[provider["name"]] = u.json()["usages"]
    return found


def snapshot(http: httpx.Client, token: str, admin_token: str) -> dict[str, Any]:
    """What a refused request must not change: the caller's servers, its usage, placement."""
    servers = http.get(f"{SERVERS}/detail", headers=compute(token))
    assert servers.status_code == 200, servers.text
    limits = http.get("/compute/v2.1/limits", headers=compute(token))
    assert limits.status_code == 200, limits.text
    absolute = limits.json()["limits"]["absolute"]
    return {"servers": sorted(s["id"] for s in servers.json()["servers"]),
            "usage": {k: v for k, v in absolute.items() if k.startswith("total")},
            "placement": placement_usages(http, admin_token)}


def fault(r: httpx.Response, kind: str, code: int) -> str:
    """The message of nova's error body, after checking its shape."""
    assert r.status_code == code, r.text
    body = r.json()
    assert list(body) == [kind], body
    assert body[kind]["code"] == code
    return body[kind]["message"]


# -- the contract through openstacksdk -----------------------------------------------------

@pytest.fixture(scope="module")
def sdk_server(demo_conn: Connection, http: httpx.Client, demo_token: str) -> Iterator[Any]:
    """One server booted through the SDK, shared by the read-only contract tests."""
    server = demo_conn.compute.create_server(name="sdk-vm", flavor_id=TINY, image_id=IMAGE,
                                             networks="none")
    server = demo_conn.compute.wait_for_server(server, interval=0.1, wait=BUILD_TIMEOUT)
    yield server
    demo_conn.compute.delete_server(server, ignore_missing=True)
    wait_gone(http, demo_token, server.id)


def test_sdk_server_boots_to_active_with_no_task_and_running(
        demo_conn: Connection, sdk_server: Any) -> None:
    server = demo_conn.compute.get_server(sdk_server.id)
    assert server.status == "ACTIVE"
    assert server.vm_state == "active"
    assert server.task_state is None
    assert server.power_state == 1
    assert server.launched_at
    assert server.flavor["original_name"] == "m1.tiny"
    assert server.image["id"] == IMAGE


def test_admin_sees_the_host_a_member_does_not(demo_conn: Connection, admin_conn: Connection,
                                               sdk_server: Any) -> None:
    assert demo_conn.compute.get_server(sdk_server.id).compute_host is None
    host = admin_conn.compute.get_server(sdk_server.id).compute_host
    assert host in {"compute-1", "compute-2"}


def test_sdk_lists_servers_brief_and_detailed(demo_conn: Connection, sdk_server: Any) -> None:
    brief = {s.id: s for s in demo_conn.compute.servers(details=False)}
    assert sdk_server.id in brief
    assert brief[sdk_server.id].name == "sdk-vm"
    detailed = {s.id: s for s in demo_conn.compute.servers(details=True)}
    assert detailed[sdk_server.id].status == "ACTIVE"


@pytest.mark.parametrize(("query", "listed"), [
    ({"name": "^sdk-v"}, True), ({"name": "vm$"}, True), ({"name": "^nope"}, False),
    ({"status": "ACTIVE"}, True), ({"status": "SHUTOFF"}, False),
    ({"flavor": TINY}, True), ({"flavor": NANO}, False),
    ({"image": IMAGE}, True), ({"image": "00000000-0000-4000-8000-000000000000"}, False),
    ({"ip": "10.0.0."}, False),  # no ports yet, so no address to match
])
def test_sdk_list_filters(demo_conn: Connection, sdk_server: Any, query: dict[str, str],
                          listed: bool) -> None:
    for details in (False, True):
        ids = [s.id for s in demo_conn.compute.servers(details=details, **query)]
        assert (sdk_server.id in ids) is listed, (query, details, ids)


def test_sdk_finds_a_server_by_name_and_by_id(demo_conn: Connection, sdk_server: Any) -> None:
    assert demo_conn.compute.find_server("sdk-vm").id == sdk_server.id
    assert demo_conn.compute.find_server(sdk_server.id).name == "sdk-vm"
    assert demo_conn.compute.find_server("no-such-server") is None


def test_sdk_updates_name_and_description(demo_conn: Connection, http: httpx.Client,
                                          demo_token: str) -> None:
    server = demo_conn.compute.create_server(name="before", flavor_id=NANO, image_id=IMAGE,
                                             networks="none")
    try:
        wait_status(http, demo_token, server.id, {"ACTIVE"})
        demo_conn.compute.update_server(server, name="after", description="renamed")
        shown = demo_conn.compute.get_server(server.id)
        assert (shown.name, shown.description) == ("after", "renamed")
        assert demo_conn.compute.find_server("after").id == server.id
        assert demo_conn.compute.find_server("before") is None
    finally:
        delete(http, demo_token, server.id)


def test_sdk_stop_and_start(demo_conn: Connection, http: httpx.Client, demo_token: str) -> None:
    server = demo_conn.compute.create_server(name="power", flavor_id=NANO, image_id=IMAGE,
                                             networks="none")
    try:
        wait_status(http, demo_token, server.id, {"ACTIVE"})
        demo_conn.compute.stop_server(server)
        stopped = wait_status(http, demo_token, server.id, {"SHUTOFF"})
        assert (stopped["OS-EXT-STS:vm_state"], stopped["OS-EXT-STS:power_state"]) == (
            "stopped", 4)
        demo_conn.compute.start_server(server)
        started = wait_status(http, demo_token, server.id, {"ACTIVE"})
        assert started["OS-EXT-STS:power_state"] == 1
        actions = [a.action for a in demo_conn.compute.server_actions(server)]
        assert actions == ["start", "stop", "create"]
    finally:
        delete(http, demo_token, server.id)


@pytest.mark.parametrize("kind", ["SOFT", "HARD"])
def test_sdk_reboot_returns_to_active(demo_conn: Connection, http: httpx.Client,
                                      demo_token: str, kind: str) -> None:
    server = demo_conn.compute.create_server(name=f"reboot-{kind}", flavor_id=NANO,
                                             image_id=IMAGE, networks="none")
    try:
        wait_status(http, demo_token, server.id, {"ACTIVE"})
        demo_conn.compute.reboot_server(server, kind)
        rebooted = wait_status(http, demo_token, server.id, {"ACTIVE"})
        assert rebooted["OS-EXT-STS:power_state"] == 1
        action = next(a for a in demo_conn.compute.server_actions(server)
                      if a.action == "reboot")
        events = demo_conn.compute.get_server_action(action.request_id, server).events
        assert [(e.event, e.result) for e in events] == [("compute_reboot_instance",
                                                          "Success")]
    finally:
        delete(http, demo_token, server.id)


def test_sdk_delete_and_wait_for_delete_frees_placement(
        demo_conn: Connection, http: httpx.Client, demo_token: str, admin_token: str) -> None:
    server = demo_conn.compute.create_server(name="doomed", flavor_id=NANO, image_id=IMAGE,
                                             networks="none")
    wait_status(http, demo_token, server.id, {"ACTIVE"})
    held = allocations(http, admin_token, server.id)
    assert [a["resources"] for a in held.values()] == [
        {"VCPU": 1, "MEMORY_MB": 128, "DISK_GB": 1}]
    demo_conn.compute.delete_server(server)
    demo_conn.compute.wait_for_delete(server, interval=0.1, wait=BUILD_TIMEOUT)
    with pytest.raises(openstack.exceptions.NotFoundException):
        demo_conn.compute.get_server(server.id)
    assert allocations(http, admin_token, server.id) == {}
    # its history outlives it, as nova keeps it
    assert [a.action for a in demo_conn.compute.server_actions(server.id)] == [
        "delete", "create"]


def test_sdk_create_action_records_the_build_event(
        demo_conn: Connection, admin_conn: Connection, sdk_server: Any) -> None:
    actions = list(demo_conn.compute.server_actions(sdk_server))
    assert [a.action for a in actions] == ["create"]
    create = demo_conn.compute.get_server_action(actions[0].request_id, sdk_server)
    assert create.request_id.startswith("req-")
    assert [(e.event, e.result) for e in create.events] == [
        ("compute__do_build_and_run_instance", "Success")]
    assert all(e.start_time and e.finish_time for e in create.events)
    # the build's host is for admins; members see its hashed hostId
    host = admin_conn.compute.get_server(sdk_server.id).compute_host
    seen = admin_conn.compute.get_server_action(actions[0].request_id, sdk_server.id)
    assert seen.events[0].host == host
    assert create.events[0].host is None
    assert create.events[0].host_id == demo_conn.compute.get_server(sdk_server.id).host_id


def test_sdk_lists_the_lab_flavors(demo_conn: Connection) -> None:
    names = {f.name for f in demo_conn.compute.flavors()}
    assert {"m1.tiny", "m1.nano", "m1.large", "m1.xlarge"} <= names


def test_server_boots_with_a_key_pair(demo_conn: Connection, http: httpx.Client,
                                      demo_token: str) -> None:
    key = demo_conn.compute.create_keypair(name="boot-key")
    try:
        server = demo_conn.compute.create_server(name="keyed", flavor_id=NANO,
                                                 image_id=IMAGE, networks="none",
                                                 key_name="boot-key")
        wait_status(http, demo_token, server.id, {"ACTIVE"})
        assert demo_conn.compute.get_server(server.id).key_name == "boot-key"
        ids = [s.id for s in demo_conn.compute.servers(key_name="boot-key")]
        assert ids == [server.id]
        delete(http, demo_token, server.id)
    finally:
        demo_conn.compute.delete_keypair(key)


def test_unknown_key_name_is_refused(http: httpx.Client, demo_token: str) -> None:
    r = http.post(SERVERS, json=boot_body("nokey", key_name="no-such-key"),
                  headers=compute(demo_token))
    assert fault(r, "badRequest", 400) == "Invalid key_name provided."


@pytest.mark.parametrize(("policy", "same_host"), [("anti-affinity", False),
                                                   ("affinity", True)])
def test_server_group_policy_places_members(demo_conn: Connection, admin_conn: Connection,
                                            http: httpx.Client, demo_token: str,
                                            policy: str, same_host: bool) -> None:
    group = demo_conn.compute.create_server_group(name=f"g-{policy}", policy=policy)
    ids = []
    try:
        for n in range(2):
            server = demo_conn.compute.create_server(
                name=f"{policy}-{n}", flavor_id=NANO, image_id=IMAGE, networks="none",
                scheduler_hints={"group": group.id})
            ids.append(server.id)
            wait_status(http, demo_token, server.id, {"ACTIVE"})
        hosts = [admin_conn.compute.get_server(i).compute_host for i in ids]
        assert all(hosts), hosts
        assert (hosts[0] == hosts[1]) is same_host, hosts
        assert sorted(demo_conn.compute.get_server_group(group.id).member_ids) == sorted(ids)
        shown = http.get(f"{SERVERS}/{ids[0]}", headers=compute(demo_token)).json()
        assert shown["server"]["server_groups"] == [group.id]
    finally:
        for i in ids:
            delete(http, demo_token, i)
        demo_conn.compute.delete_server_group(group)


def test_sdk_lists_the_availability_zone(demo_conn: Connection) -> None:
    zones = list(demo_conn.compute.availability_zones())
    assert [(z.name, z.state) for z in zones] == [("nova", {"available": True})]


def test_limits_count_a_new_server(demo_conn: Connection, http: httpx.Client,
                                   demo_token: str) -> None:
    before = demo_conn.compute.get_limits().absolute
    server = demo_conn.compute.create_server(name="counted", flavor_id=TINY, image_id=IMAGE,
                                             networks="none")
    try:
        after = demo_conn.compute.get_limits().absolute
        assert after.instances_used == before.instances_used + 1
        assert after.total_cores_used == before.total_cores_used + 1
        assert after.total_ram_used == before.total_ram_used + 512
        assert after.instances == 10
    finally:
        wait_status(http, demo_token, server.id, {"ACTIVE"})
        delete(http, demo_token, server.id)
    assert demo_conn.compute.get_limits().absolute.instances_used == before.instances_used


# -- the view by microversion ----------------------------------------------------------------

def test_create_answers_202_with_location_and_admin_pass(http: httpx.Client,
                                                         demo_token: str) -> None:
    r = http.post(SERVERS, json=boot_body("fresh"), headers=compute(demo_token))
    assert r.status_code == 202, r.text
    server = r.json()["server"]
    try:
        assert r.headers["Location"].endswith(f"/compute/v2.1/servers/{server['id']}")
        assert server["adminPass"]
        assert server["OS-DCF:diskConfig"] == "MANUAL"
        assert server["security_groups"] == [{"name": "default"}]
        assert r.headers["OpenStack-API-Version"] == "compute 2.79"
    finally:
        wait_status(http, demo_token, server["id"], {"ACTIVE"})
        delete(http, demo_token, server["id"])


def test_new_server_walks_novas_build_states(http: httpx.Client, demo_token: str,
                                              admin_token: str) -> None:
    # the states a build passes through, read from the server's trace (inspection API)
    server_id = boot(http, demo_token, "first-state")
    try:
        wait_status(http, demo_token, server_id, {"ACTIVE"})
        r = http.get(f"/labkit/v1/servers/{server_id}/trace", headers=auth_header(admin_token))
        assert r.status_code == 200, r.text
        states = [e["detail"] for e in r.json()["events"] if e["kind"] == "state"]
        assert (states[0]["status"], states[0]["task_state"], states[0]["power_state"]) == (
            "BUILD", "scheduling", 0)
        walked = [s["task_state"] for s in states]
        assert walked.index("networking") < walked.index("block_device_mapping") < \
            walked.index("spawning")
        assert (states[-1]["status"], states[-1]["power_state"]) == ("ACTIVE", 1)
    finally:
        delete(http, demo_token, server_id)


def test_rename_keeps_the_hostname_and_progress_is_novas(
        http: httpx.Client, demo_token: str, admin_token: str) -> None:
    server_id = boot(http, demo_token, "Host_Name")
    try:
        active = wait_status(http, demo_token, server_id, {"ACTIVE"})
        assert active["progress"] == 0  # nova shows the stored progress, 0 after a boot
        r = http.put(f"{SERVERS}/{server_id}", json={"server": {"name": "renamed"}},
                     headers=compute(demo_token))
        assert r.status_code == 200, r.text
        assert r.json()["server"]["name"] == "renamed"
        shown = get_server(http, admin_token, server_id).json()["server"]
        assert shown["OS-EXT-SRV-ATTR:hostname"] == "host-name"
    finally:
        delete(http, demo_token, server_id)


def test_server_fields_follow_the_microversion(http: httpx.Client, demo_token: str,
                                               sdk_server: Any) -> None:
    old = http.get(f"{SERVERS}/{sdk_server.id}", headers=compute(demo_token, None))
    assert old.headers["OpenStack-API-Version"] == "compute 2.1"
    shown = old.json()["server"]
    assert shown["flavor"]["id"] == TINY and "original_name" not in shown["flavor"]
    assert not {"locked", "description", "tags", "server_groups"} & set(shown)
    new = get_server(http, demo_token, sdk_server.id).json()["server"]
    assert new["flavor"]["original_name"] == "m1.tiny" and "id" not in new["flavor"]
    assert new["locked"] is False and new["locked_reason"] is None
    assert new["tags"] == [] and new["server_groups"] == []
    assert "OS-EXT-SRV-ATTR:host" not in new and "host_status" not in new


# -- refusals, and nothing left behind -------------------------------------------------------

@pytest.fixture
def unchanged(http: httpx.Client, demo_token: str, admin_token: str) -> Iterator[None]:
    """The test's refused requests must leave demo's servers, usage and placement alone."""
    before = snapshot(http, demo_token, admin_token)
    yield
    assert snapshot(http, demo_token, admin_token) == before


def test_unknown_flavor_is_a_400(http: httpx.Client, demo_token: str, unchanged: None) -> None:
    r = http.post(SERVERS, json=boot_body("x", flavor="no-such-flavor"),
                  headers=compute(demo_token))
    assert fault(r, "badRequest", 400) == "Invalid flavorRef provided."


def test_unknown_image_is_a_400(http: httpx.Client, demo_token: str, unchanged: None) -> None:
    r = http.post(SERVERS, json=boot_body("x", image="00000000-0000-4000-8000-000000000000"),
                  headers=compute(demo_token))
    assert fault(r, "badRequest", 400) == "Can not find requested image"


def test_another_projects_server_is_not_found(http: httpx.Client, demo_token: str,
                                              alt_token: str, sdk_server: Any,
                                              unchanged: None) -> None:
    url = f"{SERVERS}/{sdk_server.id}"
    expected = f"Instance {sdk_server.id} could not be found."
    headers = compute(alt_token)
    assert fault(http.get(url, headers=headers), "itemNotFound", 404) == expected
    assert fault(http.put(url, json={"server": {"name": "stolen"}}, headers=headers),
                 "itemNotFound", 404) == expected
    assert fault(http.post(f"{url}/action", json={"os-stop": None}, headers=headers),
                 "itemNotFound", 404) == expected
    assert fault(http.get(f"{url}/os-instance-actions", headers=headers),
                 "itemNotFound", 404) == expected
    assert fault(http.delete(url, headers=headers), "itemNotFound", 404) == expected
    listed = http.get(f"{SERVERS}/detail", headers=headers).json()["servers"]
    assert sdk_server.id not in [s["id"] for s in listed]
    # and the owner still sees it, untouched
    assert get_server(http, demo_token, sdk_server.id).json()["server"]["name"] == "sdk-vm"


def test_another_projects_server_is_invisible_to_its_sdk(alt_conn: Connection,
                                                         sdk_server: Any) -> None:
    with pytest.raises(openstack.exceptions.NotFoundException):
        alt_conn.compute.get_server(sdk_server.id)
    assert alt_conn.compute.find_server("sdk-vm") is None
    assert sdk_server.id not in [s.id for s in alt_conn.compute.servers()]
    with pytest.raises(openstack.exceptions.NotFoundException):
        alt_conn.compute.stop_server(sdk_server.id)


def test_unknown_server_is_not_found(http: httpx.Client, demo_token: str) -> None:
    missing = "00000000-0000-4000-8000-000000000001"
    r = get_server(http, demo_token, missing)
    assert fault(r, "itemNotFound", 404) == f"Instance {missing} could not be found."
    r = http.delete(f"{SERVERS}/{missing}", headers=compute(demo_token))
    assert fault(r, "itemNotFound", 404) == f"Instance {missing} could not be found."


def test_quota_exceeded_is_a_403_and_creates_nothing(
        http: httpx.Client, demo_token: str, admin_token: str, demo_project: str,
        sdk_server: Any) -> None:
    quota_url = f"/compute/v2.1/os-quota-sets/{demo_project}"
    used = http.get("/compute/v2.1/limits", headers=compute(demo_token)).json()[
        "limits"]["absolute"]["totalInstancesUsed"]
    assert used >= 1
    r = http.put(quota_url, json={"quota_set": {"instances": used}},
                 headers=compute(admin_token))
    assert r.status_code == 200, r.text
    assert r.json()["quota_set"]["instances"] == used
    try:
        before = snapshot(http, demo_token, admin_token)
        r = http.post(SERVERS, json=boot_body("over"), headers=compute(demo_token))
        assert fault(r, "forbidden", 403) == (
            f"Quota exceeded for instances: Requested 1, but already used {used} of {used} "
            "instances")
        # two at once are refused with the whole request counted
        r = http.post(SERVERS, json=boot_body("over", min_count=2),
                      headers=compute(demo_token))
        assert "Requested 2" in fault(r, "forbidden", 403)
        assert snapshot(http, demo_token, admin_token) == before
    finally:
        r = http.delete(quota_url, headers=compute(admin_token))
        assert r.status_code == 202, r.text
    shown = http.get(quota_url, headers=compute(demo_token)).json()["quota_set"]
    assert shown["instances"] == 10


def test_quota_below_usage_needs_force(http: httpx.Client, demo_token: str,
                                      admin_token: str, demo_project: str,
                                      sdk_server: Any) -> None:
    quota_url = f"/compute/v2.1/os-quota-sets/{demo_project}"
    used = http.get("/compute/v2.1/limits", headers=compute(demo_token)).json()[
        "limits"]["absolute"]["totalInstancesUsed"]
    try:
        r = http.put(quota_url, json={"quota_set": {"instances": used - 1}},
                     headers=compute(admin_token))
        assert fault(r, "badRequest", 400) == (
            f"Quota limit {used - 1} for instances must be greater than or equal to already "
            f"used and reserved {used}.")
        assert http.get(quota_url, headers=compute(admin_token)).json()[
            "quota_set"]["instances"] == 10
        # numbers as strings are fine, as nova's schema allows; force skips the check
        r = http.put(quota_url, json={"quota_set": {"instances": str(used - 1),
                                                    "force": True}},
                     headers=compute(admin_token))
        assert r.status_code == 200, r.text
        assert r.json()["quota_set"]["instances"] == used - 1
    finally:
        assert http.delete(quota_url, headers=compute(admin_token)).status_code == 202


@pytest.mark.parametrize("body", [{"quota_set": [1]}, {"quota_set": {"instances": "many"}},
                                  {"quota_set": {"instances": -2}}, {"quota_set": {"x": 1}},
                                  {"quota_set": {"floating_ips": 1}}, {"instances": 1}, [1]])
def test_bad_quota_update_is_a_400(http: httpx.Client, admin_token: str, demo_project: str,
                                   body: Any) -> None:
    quota_url = f"/compute/v2.1/os-quota-sets/{demo_project}"
    before = http.get(quota_url, headers=compute(admin_token)).json()
    r = http.put(quota_url, json=body, headers=compute(admin_token))
    assert fault(r, "badRequest", 400)
    assert http.get(quota_url, headers=compute(admin_token)).json() == before


def test_member_cannot_change_quotas(http: httpx.Client, demo_token: str,
                                     demo_project: str) -> None:
    r = http.put(f"/compute/v2.1/os-quota-sets/{demo_project}",
                 json={"quota_set": {"instances": 100}}, headers=compute(demo_token))
    assert fault(r, "forbidden", 403) == (
        "Policy doesn't allow os_compute_api:os-quota-sets:update to be performed.")


def test_quota_detail_counts_what_is_in_use(http: httpx.Client, demo_token: str,
                                            demo_project: str, sdk_server: Any) -> None:
    r = http.get(f"/compute/v2.1/os-quota-sets/{demo_project}/detail",
                 headers=compute(demo_token))
    assert r.status_code == 200, r.text
    detail = r.json()["quota_set"]
    limits = http.get("/compute/v2.1/limits", headers=compute(demo_token)).json()[
        "limits"]["absolute"]
    assert detail["instances"] == {"limit": 10, "in_use": limits["totalInstancesUsed"],
                                   "reserved": 0}
    assert detail["cores"]["in_use"] == limits["totalCoresUsed"]
    assert detail["ram"]["in_use"] == limits["totalRAMUsed"]


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"server"'])
def test_malformed_body_is_a_400(http: httpx.Client, demo_token: str, body: bytes,
                                 unchanged: None) -> None:
    headers = {**compute(demo_token), "Content-Type": "application/json"}
    r = http.post(SERVERS, content=body, headers=headers)
    assert fault(r, "badRequest", 400)


def test_missing_networks_is_a_400_from_237(http: httpx.Client, demo_token: str,
                                            unchanged: None) -> None:
    body = boot_body("nonet")
    del body["server"]["networks"]
    r = http.post(SERVERS, json=body, headers=compute(demo_token, "2.37"))
    assert "networks" in fault(r, "badRequest", 400)


def test_missing_flavor_and_bad_name_are_400s(http: httpx.Client, demo_token: str,
                                              unchanged: None) -> None:
    body = boot_body("noflavor")
    del body["server"]["flavorRef"]
    r = http.post(SERVERS, json=body, headers=compute(demo_token))
    assert "flavorRef" in fault(r, "badRequest", 400)
    for name in ("", " padded ", "x" * 256):
        r = http.post(SERVERS, json=boot_body(name), headers=compute(demo_token))
        assert fault(r, "badRequest", 400)
    r = http.post(SERVERS, json=boot_body("counts", min_count=3, max_count=2),
                  headers=compute(demo_token))
    assert fault(r, "badRequest", 400)


def test_flavor_too_big_for_every_host_goes_error_with_no_valid_host(
        http: httpx.Client, demo_token: str, admin_token: str) -> None:
    before = snapshot(http, demo_token, admin_token)
    server_id = boot(http, demo_token, "huge", flavor=XLARGE)
    server = wait_status(http, demo_token, server_id, {"ERROR"})
    assert server["OS-EXT-STS:vm_state"] == "error"
    assert server["fault"]["code"] == 500
    assert server["fault"]["message"].startswith("No valid host was found. ")
    assert "details" not in server["fault"]  # a 500 fault's details are for admins
    assert allocations(http, admin_token, server_id) == {}
    admin_view = get_server(http, admin_token, server_id).json()["server"]
    assert admin_view["OS-EXT-SRV-ATTR:host"] is None
    assert "NoValidHost" in admin_view["fault"]["details"]
    r = http.get(f"{SERVERS}/{server_id}/os-instance-actions", headers=compute(demo_token))
    create = r.json()["instanceActions"][0]
    assert (create["action"], create["message"]) == ("create", "Error")
    r = http.get(f"{SERVERS}/{server_id}/os-instance-actions/{create['request_id']}",
                 headers=compute(demo_token))
    # nova writes the conductor's event only when scheduling fails
    assert [(e["event"], e["result"]) for e in r.json()["instanceAction"]["events"]] == [
        ("conductor_schedule_and_build_instances", "Error")]
    delete(http, demo_token, server_id)
    assert snapshot(http, demo_token, admin_token) == before


def test_stopping_a_stopped_server_is_a_409(http: httpx.Client, demo_token: str) -> None:
    server_id = boot(http, demo_token, "stopped")
    try:
        wait_status(http, demo_token, server_id, {"ACTIVE"})
        url = f"{SERVERS}/{server_id}/action"
        r = http.post(url, json={"os-stop": None}, headers=compute(demo_token))
        assert r.status_code == 202, r.text
        wait_status(http, demo_token, server_id, {"SHUTOFF"})
        r = http.post(url, json={"os-stop": None}, headers=compute(demo_token))
        assert fault(r, "conflictingRequest", 409) == (
            f"Cannot 'stop' instance {server_id} while it is in vm_state stopped")
        r = http.post(url, json={"reboot": {"type": "SOFT"}}, headers=compute(demo_token))
        assert fault(r, "conflictingRequest", 409) == (
            f"Cannot 'reboot' instance {server_id} while it is in vm_state stopped")
        r = http.post(url, json={"os-start": None}, headers=compute(demo_token))
        assert r.status_code == 202, r.text
        wait_status(http, demo_token, server_id, {"ACTIVE"})
        r = http.post(url, json={"os-start": None}, headers=compute(demo_token))
        assert fault(r, "conflictingRequest", 409) == (
            f"Cannot 'start' instance {server_id} while it is in vm_state active")
    finally:
        delete(http, demo_token, server_id)


@pytest.mark.parametrize(("body", "message"), [
    ({"os-explode": None}, "There is no such action: os-explode"),
    ({"os-stop": None, "os-start": None}, "Malformed message body: too many body keys"),
    ({}, "Malformed message body: too many body keys"),
    ([{"os-stop": None}], "Malformed request body: expecting a JSON object."),
    ({"reboot": {"type": "SIDEWAYS"}}, "Invalid input for field/attribute type. Value: "
                                       "SIDEWAYS."),
    ({"reboot": {}}, "'type' is a required property"),
])
def test_bad_action_is_a_400(http: httpx.Client, demo_token: str, sdk_server: Any,
                             body: Any, message: str) -> None:
    r = http.post(f"{SERVERS}/{sdk_server.id}/action", json=body, headers=compute(demo_token))
    assert message in fault(r, "badRequest", 400)
    assert get_server(http, demo_token, sdk_server.id).json()["server"]["status"] == "ACTIVE"


def test_microversion_out_of_range_is_a_406(http: httpx.Client, demo_token: str,
                                            unchanged: None) -> None:
    past = f"{MAX.major}.{MAX.minor + 1}"
    for version in (past, "3.0", "2.0"):
        r = http.post(SERVERS, json=boot_body("future"), headers=compute(demo_token, version))
        assert f"Version {version} is not supported by the API" in fault(
            r, "notAcceptable", 406)
    r = http.get(SERVERS, headers=compute(demo_token, "2.x"))
    assert fault(r, "badRequest", 400)


def test_no_token_is_a_401(http: httpx.Client) -> None:
    r = http.get(SERVERS)
    assert r.status_code == 401


def test_deleting_twice_is_harmless_then_not_found(http: httpx.Client, demo_token: str,
                                                   admin_token: str) -> None:
    server_id = boot(http, demo_token, "twice")
    wait_status(http, demo_token, server_id, {"ACTIVE"})
    r = http.delete(f"{SERVERS}/{server_id}", headers=compute(demo_token))
    assert r.status_code == 204
    wait_gone(http, demo_token, server_id)
    r = http.delete(f"{SERVERS}/{server_id}", headers=compute(demo_token))
    assert fault(r, "itemNotFound", 404)
    assert allocations(http, admin_token, server_id) == {}


def test_list_pages_with_limit_and_marker(http: httpx.Client, demo_token: str) -> None:
    ids = [boot(http, demo_token, f"page-{n}") for n in range(3)]
    try:
        for i in ids:
            wait_status(http, demo_token, i, {"ACTIVE"})
        r = http.get(SERVERS, params={"name": "^page-", "limit": 2},
                     headers=compute(demo_token))
        first = r.json()
        assert len(first["servers"]) == 2
        assert "servers_links" in first
        marker = first["servers"][-1]["id"]
        r = http.get(SERVERS, params={"name": "^page-", "limit": 2, "marker": marker},
                     headers=compute(demo_token))
        rest = r.json()["servers"]
        assert sorted(s["id"] for s in first["servers"] + rest) == sorted(ids)
        r = http.get(SERVERS, params={"marker": "00000000-0000-4000-8000-000000000000"},
                     headers=compute(demo_token))
        assert fault(r, "badRequest", 400)
    finally:
        for i in ids:
            delete(http, demo_token, i)


def test_changes_since_lists_deleted_servers(http: httpx.Client, demo_token: str) -> None:
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    server_id = boot(http, demo_token, "since")
    wait_status(http, demo_token, server_id, {"ACTIVE"})
    delete(http, demo_token, server_id)
    r = http.get(f"{SERVERS}/detail", params={"changes-since": start},
                 headers=compute(demo_token))
    assert r.status_code == 200, r.text
    shown = {s["id"]: s["status"] for s in r.json()["servers"]}
    assert shown.get(server_id) == "DELETED"


# -- os-getConsoleOutput ----------------------------------------------------------------------

def test_console_output_answers_the_log_and_refuses_a_bad_length(
        demo_conn: Connection, http: httpx.Client, demo_token: str) -> None:
    server_id = boot(http, demo_token, "console-1", networks="none")
    try:
        wait_status(http, demo_token, server_id, {"ACTIVE"})
        whole = demo_conn.compute.get_server_console_output(server_id)["output"]
        assert "model driver" in whole and whole.endswith("\n")
        url = f"{SERVERS}/{server_id}/action"
        last = http.post(url, json={"os-getConsoleOutput": {"length": "1"}},
                         headers=compute(demo_token))
        assert last.status_code == 200 and last.json()["output"] == whole.splitlines()[-1] + "\n"
        every = http.post(url, json={"os-getConsoleOutput": {"length": -1}},
                          headers=compute(demo_token))
        assert every.json()["output"] == whole
        for bad in ({"length": "x"}, {"length": -2}, {"length": "-5"}, {"lines": 3}, None):
            r = http.post(url, json={"os-getConsoleOutput": bad}, headers=compute(demo_token))
            assert r.status_code == 400, (bad, r.text)
            assert "badRequest" in r.json()
    finally:
        delete(http, demo_token, server_id)
