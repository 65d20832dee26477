"""The troubleshooting lab's faults: each one makes the cloud fail as a real one does.

Each test injects a fault, boots a server (or makes a volume) and checks what a user
sees (status, fault message, instance action events, an agent's alive flag, a 403),
then clears the fault and checks that the same request works again. Most go over HTTP
(openstacksdk, the inspection API, the `labkit` CLI) to a cloud on the model driver;
those that need a hand on the clock or on nova's timeouts build the cloud in process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openstack.connection import Connection
from sqlalchemy import update

from conftest import (
    SUBPROCESS_TIMEOUT,
    auth_header,
    clean_env,
    connection,
    console_script,
    demo_context,
    in_cloud,
    running_cloud,
    stop_cloud,
    wait_for,
)
from labkit.cloud import process
from labkit.cloud.app import Cloud
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.network.common import NetContext
from labkit.cloud.network.tables import AgentRow
from labkit.cloud.process import CloudInfo
from labkit.cloud.settings import CloudSettings
from labkit.inspect import Hidden, inspector

IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny
NANO = "42"  # the flavor that fits the tiny guest
FAULTS = "/labkit/v1/faults"
BUILD_TIMEOUT = 60  # a guard against a hung build, never a claim about speed
ADMIN_NET = NetContext(project_id=None, is_admin=True)
OVS = "neutron-openvswitch-agent"
KINDS = ["compute-down", "agent-down", "port-binding", "image-download",
         "volume-backend-full", "slow-step", "quota-exhausted", "service-password",
         "instances-disk-full"]


# -- a cloud over HTTP, with heartbeats fast enough to see a compute go down -----------------

@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudInfo]:
    with running_cloud(tmp_path_factory.mktemp("labkit-home"), service_down_time=1.0,
                       report_interval=0.2) as info:
        yield info


@pytest.fixture(scope="module")
def admin_http(cloud: CloudInfo, admin_conn: Connection) -> Iterator[httpx.Client]:
    token = admin_conn.session.get_token()
    with httpx.Client(base_url=cloud.url, timeout=30,
                      headers={**auth_header(token),
                               "OpenStack-API-Version": "compute 2.79"}) as client:
        yield client


@pytest.fixture(autouse=True)
def no_fault_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every HTTP test leaves the cloud mended, whatever it asserted."""
    yield
    if "admin_http" in request.fixturenames:
        request.getfixturevalue("admin_http").delete(FAULTS)


def inject(http: httpx.Client, kind: str, **params: Any) -> dict[str, Any]:
    r = http.post(FAULTS, json={"kind": kind, **params})
    assert r.status_code == 201, r.text
    return r.json()["fault"]


def clear(http: httpx.Client, fault: dict[str, Any]) -> None:
    r = http.delete(f"{FAULTS}/{fault['id']}")
    assert r.status_code == 204, r.text


def boot(conn: Connection, name: str, networks: Any = "none") -> Any:
    """A server as `openstack server create` makes it; waits until it is no longer BUILD."""
    server = conn.compute.create_server(name=name, image_id=IMAGE, flavor_id=NANO,
                                        networks=networks)
    return wait_for(lambda: conn.compute.get_server(server.id),
                    lambda s: s.status != "BUILD", BUILD_TIMEOUT)


def demo_net(conn: Connection) -> list[dict[str, str]]:
    return [{"uuid": conn.network.find_network("demo-net").id}]


def build_events(admin: Connection, server_id: str) -> list[tuple[str, str, str]]:
    """The create action's events: (event, result, host), in order."""
    actions = list(admin.compute.server_actions(server_id))
    create = next(a for a in actions if a.action == "create")
    found = admin.compute.get_server_action(create.request_id, server_id)
    return [(e["event"], e["result"], e["host"]) for e in found.events]


def server_trace(http: httpx.Client, server_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/labkit/v1/servers/{server_id}/trace")
    assert r.status_code == 200, r.text
    return r.json()["events"]


def reschedule_reasons(http: httpx.Client, server_id: str) -> list[tuple[str, str]]:
    """Each build a compute host sent back to the conductor: (host, reason)."""
    return [(e["source"], e["detail"]["args"]["reason"]) for e in server_trace(http, server_id)
            if e["kind"] == "rpc" and e["detail"].get("method") == "build_instances"
            and e["detail"].get("args", {}).get("failed_host")]


def rescheduled_to_compute_1(http: httpx.Client, demo: Connection, admin: Connection,
                             name: str, networks: Any = "none") -> tuple[Any, str]:
    """Boot with a fault on compute-2: the build there fails and goes back to the
    conductor, which reschedules it to compute-1. (the ACTIVE server, compute-2's reason)"""
    server = boot(demo, name, networks)
    assert server.status == "ACTIVE"
    assert admin.compute.get_server(server.id).compute_host == "compute-1"
    ((host, reason),) = reschedule_reasons(http, server.id)
    assert host == "nova-compute@compute-2"
    return server, reason


def mended(http: httpx.Client, demo: Connection, faults: list[dict[str, Any]], name: str,
           networks: Any = "none") -> Any:
    """Clear the faults: the same boot is ACTIVE again (the server)."""
    for fault in faults:
        clear(http, fault)
    server = boot(demo, name, networks)
    assert server.status == "ACTIVE"
    return server


def delete_all(conn: Connection) -> None:
    for server in list(conn.compute.servers()):
        conn.compute.delete_server(server.id)
    wait_for(lambda: list(conn.compute.servers()), lambda s: s == [], BUILD_TIMEOUT)


# -- the API ------------------------------------------------------------------------------------

def test_every_kind_is_listed_with_its_parameters_and_symptom(admin_http: httpx.Client) -> None:
    r = admin_http.get(FAULTS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faults"] == []
    assert [k["kind"] for k in body["kinds"]] == KINDS
    for kind in body["kinds"]:
        assert kind["description"] and kind["symptom"]
        assert all(set(p) == {"name", "required", "help"} for p in kind["params"])
    by_kind = {k["kind"]: k for k in body["kinds"]}
    assert [(p["name"], p["required"]) for p in by_kind["slow-step"]["params"]] == [
        ("step", True), ("seconds", True), ("host", False)]


@pytest.mark.parametrize(("body", "message"), [
    ({"kind": "meteor-strike"}, "Unknown fault kind 'meteor-strike'"),
    ({"kind": "compute-down"}, "Fault compute-down needs 'host'."),
    ({"kind": "compute-down", "host": "compute-9"}, "host must be a compute host"),
    ({"kind": "compute-down", "host": "compute-1", "colour": "red"},
     "Fault compute-down takes no parameter 'colour'"),
    ({"kind": "slow-step", "step": "spawning", "seconds": "soon"},
     "seconds must be a number of seconds."),
    ({"kind": "quota-exhausted", "project": "nobody"}, "No project with id or name 'nobody'."),
    ({"kind": "service-password", "service": "swift"}, "service must be one of"),
    ({"kind": "image-download", "image": "windows-xp"}, "No image with id or name"),
    ({"kind": "agent-down", "host": "compute-1", "binary": "neutron-l3-agent"},
     "No agent neutron-l3-agent on host 'compute-1'"),
    ({"host": "compute-1"}, "Expecting a JSON object with the fault's kind"),
])
def test_bad_input_is_a_400_in_the_inspection_apis_format(
        admin_http: httpx.Client, body: dict[str, Any], message: str) -> None:
    r = admin_http.post(FAULTS, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["title"]) == (400, "Bad Request")
    assert message in error["message"]
    assert admin_http.get(FAULTS).json()["faults"] == []


def test_clearing_an_unknown_fault_is_a_404_and_members_may_not_inject(
        admin_http: httpx.Client, demo_conn: Connection, cloud: CloudInfo) -> None:
    r = admin_http.delete(f"{FAULTS}/fault-999")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "No active fault 'fault-999'."
    member = demo_conn.session.get_token()
    r = httpx.post(f"{cloud.url}{FAULTS}", json={"kind": "volume-backend-full"},
                   headers=auth_header(member))
    assert r.status_code == 403
    assert admin_http.get(FAULTS).json()["faults"] == []


def test_the_same_fault_twice_is_a_409(admin_http: httpx.Client) -> None:
    fault = inject(admin_http, "instances-disk-full", host="compute-1")
    r = admin_http.post(FAULTS, json={"kind": "instances-disk-full", "host": "compute-1"})
    assert r.status_code == 409
    assert r.json()["error"]["message"] == (f"Fault {fault['id']} (instances-disk-full) is "
                                            "already injected with these parameters.")
    other = inject(admin_http, "instances-disk-full", host="compute-2")
    assert [f["id"] for f in admin_http.get(FAULTS).json()["faults"]] == [fault["id"],
                                                                          other["id"]]


def test_inject_and_clear_are_in_the_trace(admin_http: httpx.Client) -> None:
    since = time.time()
    fault = inject(admin_http, "port-binding", host="compute-1")
    assert fault["id"].startswith("fault-")
    assert fault["params"] == {"host": "compute-1"}
    assert admin_http.get(FAULTS).json()["faults"] == [fault]
    clear(admin_http, fault)
    assert admin_http.get(FAULTS).json()["faults"] == []
    events = [e for e in admin_http.get("/labkit/v1/trace", params={
        "kind": "event", "since": since}).json()["events"] if e["source"] == "labkit"]
    assert [(e["target"], e["summary"]) for e in events] == [
        ("neutron-server", "fault injected: port-binding host=compute-1"),
        ("neutron-server", "fault cleared: port-binding host=compute-1")]


def test_the_inspector_injects_and_clears_and_hides_faults_elsewhere(
        cloud: CloudInfo, demo_conn: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE", "LABKIT_FOREIGN", "LABKIT_PORT",
                 "LABKIT_DETERMINISTIC", "LABKIT_LAB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LABKIT_HOME", str(cloud.home))
    insp = inspector(demo_conn)
    assert [k["kind"] for k in insp.fault_kinds()] == KINDS
    fault = insp.inject_fault("slow-step", step="networking", seconds=0.5, host="compute-1")
    assert fault["params"] == {"step": "networking", "seconds": 0.5, "host": "compute-1"}
    assert insp.faults() == [fault]
    with pytest.raises(ValueError, match="Unknown fault kind 'flood'"):
        insp.inject_fault("flood")
    insp.clear_fault(fault["id"])
    with pytest.raises(ValueError, match="No active fault"):
        insp.clear_fault(fault["id"])
    insp.inject_fault("volume-backend-full")
    insp.clear_faults()
    assert insp.faults() == []
    monkeypatch.setenv("LABKIT_FOREIGN", "1")
    foreign = inspector(demo_conn)
    hidden = [foreign.fault_kinds(), foreign.faults(), foreign.inject_fault("compute-down"),
              foreign.clear_fault("fault-1"), foreign.clear_faults()]
    assert all(isinstance(h, Hidden) for h in hidden)
    assert "systemctl stop nova-compute" in (hidden[0].operator or "")


def test_slow_step_applies_to_its_task_state_and_host_only(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        await cloud.faults.inject("slow-step", {"step": "resize_migrating", "seconds": "2",
                                                "host": "compute-1"})
        await cloud.faults.inject("slow-step", {"step": "spawning", "seconds": 0.5})
        assert cloud.faults.slow_step("resize_migrating", "compute-1") == 2.0
        assert cloud.faults.slow_step("resize_migrating", "compute-2") == 0.0
        assert cloud.faults.slow_step("spawning", "compute-2") == 0.5
        assert cloud.faults.slow_step(None, "compute-1") == 0.0
    in_cloud(tmp_path, scenario)


# -- each kind: the symptom, then mended --------------------------------------------------------
# image-download comes first: once a host has cached the image, it needs glance no more
# (as on a real compute host), so the fault would not show there.

def test_image_download_failing_everywhere_ends_in_max_retries(
        admin_http: httpx.Client, demo_conn: Connection, admin_conn: Connection) -> None:
    fault = inject(admin_http, "image-download", image="labkit-tiny")
    assert fault["params"] == {"image": IMAGE}
    r = admin_http.get(f"/image/v2/images/{IMAGE}/file")
    assert r.status_code == 503
    assert "Remote server where the image is present is unavailable." in r.text
    server = boot(demo_conn, "no-image")
    assert server.status == "ERROR"
    shown = admin_conn.compute.get_server(server.id)
    assert shown.fault["message"] == (
        "Exceeded maximum number of retries. Exhausted all hosts available for retrying "
        f"build failures for instance {server.id}.")
    assert sorted(h for e, _, h in build_events(admin_conn, server.id)
                  if e == "compute__do_build_and_run_instance") == ["compute-1", "compute-2"]
    assert [h for h, _ in reschedule_reasons(admin_http, server.id)] == [
        "nova-compute@compute-2", "nova-compute@compute-1"]
    # each host asked glance for the image's data, and glance could not read it
    downloads = [e["source"] for e in server_trace(admin_http, server.id)
                 if e["summary"] == f"GET /image/v2/images/{IMAGE}/file -> 503"]
    assert sorted(downloads) == ["nova-compute@compute-1", "nova-compute@compute-2"]
    mended(admin_http, demo_conn, [fault], "image-back")
    delete_all(demo_conn)


def test_a_full_instances_disk_reschedules_then_fails_everywhere(
        admin_http: httpx.Client, demo_conn: Connection, admin_conn: Connection) -> None:
    full = inject(admin_http, "instances-disk-full", host="compute-2")
    server, reason = rescheduled_to_compute_1(admin_http, demo_conn, admin_conn, "disk-full")
    # nova's reschedule: the build on compute-2 ends normally and goes back to the conductor
    assert build_events(admin_conn, server.id) == [
        ("compute__do_build_and_run_instance", "Success", "compute-2"),
        ("compute__do_build_and_run_instance", "Success", "compute-1")]
    assert reason.startswith("Unexpected error while running command.")
    assert [(e["source"], e["summary"]) for e in server_trace(admin_http, server.id)
            if e["summary"].startswith("qemu-img")] == [
        ("nova-compute@compute-2", "qemu-img create: No space left on device")]
    also = inject(admin_http, "instances-disk-full", host="compute-1")
    doomed = boot(demo_conn, "disk-full-everywhere")
    assert doomed.status == "ERROR"
    assert admin_conn.compute.get_server(doomed.id).fault["message"].startswith(
        "Exceeded maximum number of retries.")
    mended(admin_http, demo_conn, [full, also], "disk-freed")
    delete_all(demo_conn)


def test_a_port_that_cannot_bind_on_a_host_reschedules(
        admin_http: httpx.Client, demo_conn: Connection, admin_conn: Connection) -> None:
    fault = inject(admin_http, "port-binding", host="compute-2")
    server, reason = rescheduled_to_compute_1(admin_http, demo_conn, admin_conn, "unbindable",
                                              demo_net(demo_conn))
    assert reason.startswith("Binding failed for port")
    binds = [e["summary"] for e in server_trace(admin_http, server.id)
             if e["summary"].startswith("bind port")]
    assert [s.rsplit(": ", 1)[1] for s in binds] == ["binding_failed", "ovs"]
    # the agent is alive all along: it is the binding that fails
    agents = [a for a in admin_conn.network.agents(host="compute-2", binary=OVS)]
    assert [a.is_alive for a in agents] == [True]
    fine = mended(admin_http, demo_conn, [fault], "bindable", demo_net(demo_conn))
    assert admin_conn.compute.get_server(fine.id).compute_host == "compute-2"
    delete_all(demo_conn)


def test_exhausted_quota_refuses_a_boot_and_clear_restores_the_limit(
        admin_http: httpx.Client, demo_conn: Connection, admin_conn: Connection) -> None:
    project = demo_conn.current_project_id
    quota = f"/compute/v2.1/os-quota-sets/{project}"
    before = admin_http.get(quota).json()["quota_set"]["instances"]
    running = boot(demo_conn, "already-here")
    assert running.status == "ACTIVE"
    fault = inject(admin_http, "quota-exhausted", project="demo")
    assert fault["params"]["project"] == project
    assert admin_http.get(quota).json()["quota_set"]["instances"] == 1
    r = httpx.post(f"{admin_http.base_url}/compute/v2.1/servers", json={"server": {
        "name": "one-too-many", "imageRef": IMAGE, "flavorRef": NANO, "networks": "none"}},
        headers={**auth_header(demo_conn.session.get_token()),
                 "OpenStack-API-Version": "compute 2.79"})
    assert r.status_code == 403, r.text
    assert r.json() == {"forbidden": {"code": 403, "message": (
        "Quota exceeded for instances: Requested 1, but already used 1 of 1 instances")}}
    clear(admin_http, fault)
    assert admin_http.get(quota).json()["quota_set"]["instances"] == before
    assert boot(demo_conn, "fits-again").status == "ACTIVE"
    delete_all(demo_conn)


def test_a_full_volume_backend_leaves_new_volumes_in_error(
        admin_http: httpx.Client, demo_conn: Connection) -> None:
    fault = inject(admin_http, "volume-backend-full")
    volume = demo_conn.block_storage.create_volume(size=1, name="no-room")
    volume = wait_for(lambda: demo_conn.block_storage.get_volume(volume.id),
                      lambda v: v.status not in ("creating",), BUILD_TIMEOUT)
    assert volume.status == "error"
    clear(admin_http, fault)
    fine = demo_conn.block_storage.create_volume(size=1, name="room-again")
    fine = wait_for(lambda: demo_conn.block_storage.get_volume(fine.id),
                    lambda v: v.status not in ("creating",), BUILD_TIMEOUT)
    assert fine.status == "available"
    for v in (volume, fine):
        demo_conn.block_storage.delete_volume(v.id)


def test_a_slow_step_holds_the_server_in_that_task_state(
        admin_http: httpx.Client, demo_conn: Connection, admin_conn: Connection) -> None:
    fault = inject(admin_http, "slow-step", step="spawning", seconds="1.5")
    assert fault["params"]["seconds"] == 1.5
    server = demo_conn.compute.create_server(name="slow", image_id=IMAGE, flavor_id=NANO,
                                             networks="none")
    seen = wait_for(lambda: admin_conn.compute.get_server(server.id),
                    lambda s: s.task_state == "spawning", BUILD_TIMEOUT)
    assert (seen.status, seen.task_state) == ("BUILD", "spawning")
    started = time.monotonic()
    done = wait_for(lambda: admin_conn.compute.get_server(server.id),
                    lambda s: s.status != "BUILD", BUILD_TIMEOUT)
    assert done.status == "ACTIVE"
    assert time.monotonic() - started > 1.0
    clear(admin_http, fault)
    delete_all(demo_conn)


def test_a_wrong_nova_password_aborts_the_build_without_reschedule(
        admin_http: httpx.Client, demo_conn: Connection, admin_conn: Connection) -> None:
    fault = inject(admin_http, "service-password", service="nova")
    server = boot(demo_conn, "no-network", demo_net(demo_conn))
    assert server.status == "ERROR"
    message = admin_conn.compute.get_server(server.id).fault["message"]
    assert message == (f"Build of instance {server.id} aborted: Failed to allocate the "
                       "network(s), not rescheduling.")
    events = build_events(admin_conn, server.id)
    assert [(e, r) for e, r, _ in events] == [("compute__do_build_and_run_instance", "Error")]
    refused = [e for e in server_trace(admin_http, server.id)
               if e["kind"] == "api" and e["summary"] == "POST /identity/v3/auth/tokens -> 401"]
    assert refused and refused[0]["source"].startswith("nova-compute@")
    mended(admin_http, demo_conn, [fault], "network-again", demo_net(demo_conn))
    delete_all(demo_conn)


def test_a_wrong_glance_password_refuses_every_image_request(
        admin_http: httpx.Client, demo_conn: Connection) -> None:
    token = demo_conn.session.get_token()
    fault = inject(admin_http, "service-password", service="glance")
    r = httpx.get(f"{admin_http.base_url}/image/v2/images", headers=auth_header(token))
    assert r.status_code == 401
    assert r.json()["error"]["message"] == ("The request you have made requires "
                                            "authentication.")
    clear(admin_http, fault)
    r = httpx.get(f"{admin_http.base_url}/image/v2/images", headers=auth_header(token))
    assert r.status_code == 200


def test_a_stopped_compute_goes_down_and_the_scheduler_skips_it(
        admin_http: httpx.Client, demo_conn: Connection, admin_conn: Connection) -> None:
    def state() -> str:
        (service,) = admin_conn.compute.services(host="compute-2", binary="nova-compute")
        return str(service.state)

    fault = inject(admin_http, "compute-down", host="compute-2")
    assert wait_for(state, lambda s: s == "down", 10) == "down"
    server = boot(demo_conn, "elsewhere")
    assert server.status == "ACTIVE"
    assert admin_conn.compute.get_server(server.id).compute_host == "compute-1"
    clear(admin_http, fault)
    assert wait_for(state, lambda s: s == "up", 10) == "up"
    back = boot(demo_conn, "there-again")
    assert admin_conn.compute.get_server(back.id).compute_host == "compute-2"
    delete_all(demo_conn)


# -- in this process: nova's timeouts and the agents' clock --------------------------------------

async def boot_in(cloud: Cloud, name: str, request_id: str, network: bool) -> str:
    networks: Any = "none"
    if network:
        net = next(n for n in cloud.network.neutron.list(ADMIN_NET, "network")
                   if n["name"] == "demo-net")
        networks = [{"uuid": net["id"]}]
    _, (uuid,) = ServersAPI(cloud.compute).create(demo_context(cloud, request_id), CreateRequest(
        name=name, flavor_ref=NANO, image_ref=IMAGE, networks=networks))
    for _ in range(10):
        await cloud.bus.drain()
        await cloud.network.agents.drain()
    return uuid


def instance_of(cloud: Cloud, uuid: str) -> Any:
    with cloud.compute.database.session() as s:
        return cloud.compute.instances.get(s, uuid, include_deleted=True)


def fault_message(cloud: Cloud, uuid: str) -> str | None:
    with cloud.compute.database.session() as s:
        fault = cloud.compute.instances.latest_fault(s, uuid)
        return fault.message if fault else None


def age_heartbeat(cloud: Cloud, host: str, binary: str = OVS) -> None:
    """Time passes for a stopped agent: its last heartbeat is older than agent_down_time."""
    with cloud.network.database.session() as s:
        s.execute(update(AgentRow).where(AgentRow.host == host, AgentRow.binary == binary)
                  .values(heartbeat_timestamp=time.time() - 3600))


def alive(cloud: Cloud, host: str) -> bool:
    (agent,) = [a for a in cloud.network.neutron.list(ADMIN_NET, "agent")
                if a["host"] == host and a["binary"] == OVS]
    return bool(agent["alive"])


def test_a_dead_agent_shows_dead_and_its_host_cannot_bind(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        fault = await cloud.faults.inject("agent-down", {"host": "compute-2"})
        assert fault.params == {"binary": OVS, "host": "compute-2"}
        assert not cloud.network.agents.agent("compute-2", OVS).running
        age_heartbeat(cloud, "compute-2")
        assert (alive(cloud, "compute-1"), alive(cloud, "compute-2")) == (True, False)
        uuid = await boot_in(cloud, "dead-agent", "req-dead-agent", network=True)
        assert (instance_of(cloud, uuid).vm_state, instance_of(cloud, uuid).host) == (
            "active", "compute-1")
        resent = [e for e in cloud.trace.query(request_id="req-dead-agent")
                  if e.kind == "rpc" and e.detail.get("method") == "build_instances"]
        assert resent[0].source == "nova-compute@compute-2"
        assert "Binding failed for port" in resent[0].detail["args"]["reason"]
        await cloud.faults.clear(fault.id)
        await asyncio.sleep(0.05)  # its heartbeat task runs: it reports again at once
        assert alive(cloud, "compute-2")
    in_cloud(tmp_path, scenario)


def test_a_wrong_neutron_password_starves_the_build_of_vif_plugged(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        cloud.compute.vif_plugging_timeout = 0.5
        fault = await cloud.faults.inject("service-password", {"service": "neutron"})
        uuid = await boot_in(cloud, "unplugged", "req-unplugged", network=True)
        assert (instance_of(cloud, uuid).vm_state, instance_of(cloud, uuid).task_state) == (
            "error", None)
        assert fault_message(cloud, uuid) == (f"Build of instance {uuid} aborted: Failed to "
                                              "allocate the network(s), not rescheduling.")
        refused = [e for e in cloud.trace.query(kind="api")
                   if e.summary == "POST /identity/v3/auth/tokens -> 401"]
        assert refused and refused[-1].source == "neutron-server"
        await cloud.faults.clear(fault.id)
        again = await boot_in(cloud, "plugged", "req-plugged", network=True)
        assert instance_of(cloud, again).vm_state == "active"
    in_cloud(tmp_path, scenario)


def test_faults_are_reapplied_after_a_restart(tmp_path: Path) -> None:
    async def first(cloud: Cloud) -> None:
        await cloud.faults.inject("compute-down", {"host": "compute-2"})
        await cloud.faults.inject("agent-down", {"host": "compute-1"})
        await cloud.faults.inject("instances-disk-full", {"host": "compute-1"})
        await cloud.faults.inject("quota-exhausted", {"project": "demo", "resource": "cores"})

    async def second(cloud: Cloud) -> list[str]:
        assert [f["kind"] for f in cloud.faults.listing()] == [
            "compute-down", "agent-down", "instances-disk-full", "quota-exhausted"]
        assert not cloud.compute.compute_running("compute-2")
        assert not cloud.network.agents.agent("compute-1", OVS).running
        project = cloud.identity.list("project", {"name": "demo"})[0].id
        assert cloud.compute.quotas.limits(project)["cores"] == 0
        summaries = [e.summary for e in cloud.trace.query(kind="event")
                     if e.source == "labkit" and "re-applied" in e.summary]
        assert len(summaries) == 4
        await cloud.faults.clear_all()
        assert cloud.compute.compute_running("compute-2")
        assert cloud.network.agents.agent("compute-1", OVS).running
        assert cloud.compute.quotas.limits(project)["cores"] == 20  # nova's default again
        return summaries

    in_cloud(tmp_path, first)
    saved = json.loads((tmp_path / "faults.json").read_text())
    assert [f["kind"] for f in saved["faults"]] == [
        "compute-down", "agent-down", "instances-disk-full", "quota-exhausted"]
    in_cloud(tmp_path, second)
    assert json.loads((tmp_path / "faults.json").read_text())["faults"] == []


# -- the CLI, a restart of the process, and `labkit cloud reset` ----------------------------------

def labkit(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(console_script("labkit")), *args],
                          env=clean_env(LABKIT_HOME=str(home)), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


def test_the_cli_injects_lists_and_clears_and_reset_wipes_faults(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    process.up(CloudSettings(home=home, deterministic=True, virt="model"))
    try:
        kinds = labkit(home, "fault", "kinds")
        assert kinds.returncode == 0, kinds.stderr
        assert "slow-step step= seconds= [host=]" in kinds.stdout
        assert "symptom:" in kinds.stdout
        assert labkit(home, "fault", "list").stdout.strip() == "no faults injected"
        done = labkit(home, "fault", "inject", "port-binding", "host=compute-1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "injected fault-1  port-binding  host=compute-1"
        done = labkit(home, "fault", "inject", "slow-step", "step=spawning", "seconds=2")
        assert done.stdout.strip() == ("injected fault-2  slow-step  step=spawning "
                                       "seconds=2.0")
        bad = labkit(home, "fault", "inject", "compute-down", "host=nowhere")
        assert bad.returncode == 1
        assert bad.stderr.startswith("labkit fault: host must be a compute host")
        listed = labkit(home, "fault", "list")
        assert listed.stdout.splitlines() == ["fault-1  port-binding  host=compute-1",
                                              "fault-2  slow-step  step=spawning seconds=2.0"]
        assert labkit(home, "fault", "clear", "fault-1").stdout.strip() == "cleared fault-1"
        assert labkit(home, "fault", "clear", "fault-1").returncode == 1
        # across a restart of the cloud's process
        stop_cloud(home)
        info = process.up(CloudSettings(home=home, deterministic=True, virt="model"))
        conn = connection(info, "labkit-admin")
        r = conn.session.get(f"{info.url}{FAULTS}").json()
        conn.close()
        assert [(f["id"], f["kind"]) for f in r["faults"]] == [("fault-2", "slow-step")]
        reset = labkit(home, "cloud", "reset")
        assert reset.returncode == 0, reset.stderr
        assert labkit(home, "fault", "list").stdout.strip() == "no faults injected"
        assert labkit(home, "fault", "clear").stdout.strip() == "cleared every fault"
    finally:
        stop_cloud(home)
