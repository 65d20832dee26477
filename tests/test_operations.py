"""Operations: services and their heartbeats, a stopped compute host, usage, hypervisors,
quotas and network agents.

Through the real `openstack` CLI and openstacksdk against one fresh cloud whose
heartbeats are short (report_interval 0.2 s, service_down_time 3 s), so a service
goes down in seconds, not minutes. What needs a hand inside the cloud (stopping
nova-compute on a host, placement allocations of a resize) runs on a cloud built in
this process with service_down_time 1 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openstack.connection import Connection

from conftest import (
    clean_env,
    console_script,
    demo_context,
    in_cloud,
    running_cloud,
    wait_for,
)
from labkit.cloud.app import Cloud
from labkit.cloud.bus import MessageBus, MessageContext, MessagingTimeout
from labkit.cloud.compute.api.hosts import _hypervisor
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.compute.servicegroup import is_up
from labkit.cloud.network.common import NetContext
from labkit.cloud.process import CloudInfo
from labkit.cloud.settings import CloudSettings
from labkit.cloud.trace import Trace

Run = Callable[..., subprocess.CompletedProcess[str]]
IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny
NANO = "42"
ADMIN = "labkit-admin"
REPORT_INTERVAL = 0.2
SERVICE_DOWN_TIME = 3.0  # over HTTP: long enough that a busy machine never misses it
BUILD_TIMEOUT = 60  # a guard against a hung build, never a claim about speed


# -- the cloud over HTTP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudInfo]:
    """conftest's cloud with short heartbeats (its demo_conn and admin_conn follow it)."""
    with running_cloud(tmp_path_factory.mktemp("labkit-ops"), report_interval=REPORT_INTERVAL,
                       service_down_time=SERVICE_DOWN_TIME) as info:
        yield info


@pytest.fixture(scope="module")
def cli(cloud: CloudInfo) -> Run:
    exe = console_script("openstack")

    def run(*args: str, cloud_name: str = ADMIN) -> subprocess.CompletedProcess[str]:
        env = clean_env(OS_CLIENT_CONFIG_FILE=str(cloud.clouds_yaml), OS_CLOUD=cloud_name)
        return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                              timeout=180, check=False)
    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def services(cli: Run) -> dict[tuple[str, str], dict[str, Any]]:
    rows = as_json(cli("compute", "service", "list", "-f", "json"))
    return {(r["Host"], r["Binary"]): r for r in rows}


def boot(conn: Connection, name: str) -> Any:
    server = conn.compute.create_server(name=name, flavor_id=NANO, image_id=IMAGE,
                                        networks="none")
    return conn.compute.wait_for_server(server, wait=BUILD_TIMEOUT, interval=0.2)


# -- services ----------------------------------------------------------------------------------


def test_service_list_shows_every_service_up_with_its_heartbeat_moving(cli: Run) -> None:
    first = services(cli)
    assert set(first) == {("controller", "nova-conductor"), ("controller", "nova-scheduler"),
                          ("compute-1", "nova-compute"), ("compute-2", "nova-compute")}
    assert {r["State"] for r in first.values()} == {"up"}
    assert {r["Status"] for r in first.values()} == {"enabled"}
    later = wait_for(lambda: services(cli), lambda now: all(
        now[k]["Updated At"] != first[k]["Updated At"] for k in first), timeout=30)
    assert all(later[k]["Updated At"] != first[k]["Updated At"] for k in first)


def test_a_member_may_not_list_services(cli: Run) -> None:
    refused = cli("compute", "service", "list", cloud_name="labkit")
    assert refused.returncode != 0
    assert "os_compute_api:os-services:list" in refused.stderr


def test_a_disabled_host_receives_no_new_servers(cli: Run, demo_conn: Connection,
                                                 admin_conn: Connection) -> None:
    ok(cli("compute", "service", "set", "--disable", "--disable-reason", "maintenance",
           "compute-1", "nova-compute"))
    try:
        row = services(cli)[("compute-1", "nova-compute")]
        assert (row["Status"], row["State"]) == ("disabled", "up")
        shown = [s for s in admin_conn.compute.services()
                 if s.host == "compute-1" and s.binary == "nova-compute"]
        assert shown[0].disabled_reason == "maintenance"
        hosts = []
        for n in range(3):
            server = boot(demo_conn, f"ops-disabled-{n}")
            hosts.append(admin_conn.compute.get_server(server.id).compute_host)
        assert hosts == ["compute-2"] * 3
    finally:
        ok(cli("compute", "service", "set", "--enable", "compute-1", "nova-compute"))
        for server in list(demo_conn.compute.servers(name="ops-disabled-")):
            demo_conn.compute.delete_server(server)
    row = services(cli)[("compute-1", "nova-compute")]
    assert (row["Status"], row["State"]) == ("enabled", "up")


def test_a_service_forced_down_is_down_until_forced_up(cli: Run) -> None:
    ok(cli("compute", "service", "set", "--down", "compute-2", "nova-compute"))
    try:
        row = services(cli)[("compute-2", "nova-compute")]
        assert (row["State"], row["Status"]) == ("down", "enabled")
        raw = as_json(cli("--os-compute-api-version", "2.11", "compute", "service", "list",
                          "--long", "-f", "json"))
        forced = next(r for r in raw if r["Host"] == "compute-2")
        assert forced["Forced Down"] is True
        hypervisors = {h["Hypervisor Hostname"]: h for h in as_json(
            cli("hypervisor", "list", "--long", "-f", "json"))}
        assert hypervisors["compute-2"]["State"] == "down"
    finally:
        ok(cli("compute", "service", "set", "--up", "compute-2", "nova-compute"))
    assert services(cli)[("compute-2", "nova-compute")]["State"] == "up"


# -- usage -------------------------------------------------------------------------------------


def today() -> tuple[datetime, datetime]:
    """A period around now, as naive UTC times (nova reads them so)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now - timedelta(days=1), now + timedelta(days=1)


def test_usage_list_and_show_count_the_servers_hours(cli: Run, demo_conn: Connection,
                                                     admin_conn: Connection) -> None:
    server = boot(demo_conn, "ops-usage")
    demo = demo_conn.current_project_id
    try:
        time.sleep(0.5)  # some time on the meter
        # nova details the servers only for detailed=1 (the SDK's True is sent as "True")
        usages = {u.project_id: u for u in admin_conn.compute.usages(*today(), detailed=1)}
        mine = usages[demo]
        ours = [s for s in mine.server_usages if s["instance_id"] == server.id]
        assert len(ours) == 1
        entry = ours[0]
        assert (entry["name"], entry["flavor"], entry["state"]) == ("ops-usage", "m1.nano",
                                                                    "active")
        assert entry["hours"] > 0 and entry["vcpus"] == 1 and entry["tenant_id"] == demo
        assert mine.total_hours >= entry["hours"]
        assert mine.total_vcpus_usage >= entry["hours"] * entry["vcpus"]
        listed = ok(cli("usage", "list"))
        assert "Usage from" in listed and "demo" in listed
        assert "RAM MB-Hours" in listed and "CPU Hours" in listed
        # (json shows the project's id; nova lists no servers for the CLI's detailed=True)
        rows = {r["Project"]: r for r in as_json(cli("usage", "list", "-f", "json"))}
        assert float(rows[demo]["CPU Hours"]) > 0
        shown = as_json(cli("usage", "show", "--project", "demo", "-f", "json"))
        assert len(shown["Servers"]) >= 1 and float(shown["CPU Hours"]) > 0
        assert "Servers" in ok(cli("usage", "show", "--project", "demo"))
        # a member reads its own project's usage, not another's, and lists none
        own = as_json(cli("usage", "show", "-f", "json", cloud_name="labkit"))
        assert len(own["Servers"]) >= 1
        admins = cli("usage", "show", "--project", admin_conn.current_project_id,
                     cloud_name="labkit")
        assert admins.returncode != 0
        assert "os_compute_api:os-simple-tenant-usage:show" in admins.stderr
        refused = cli("usage", "list", cloud_name="labkit")
        assert refused.returncode != 0
        assert "os_compute_api:os-simple-tenant-usage:list" in refused.stderr
    finally:
        demo_conn.compute.delete_server(server)
    gone = wait_for(lambda: [s for s in admin_conn.compute.usages(*today(), detailed=1)
                             for s in (s.server_usages or []) if s["instance_id"] == server.id],
                    lambda found: found and found[0]["state"] == "terminated", timeout=30)
    assert gone[0]["state"] == "terminated" and gone[0]["ended_at"]


def test_usage_refuses_a_period_that_ends_before_it_starts(cloud: CloudInfo,
                                                           admin_conn: Connection) -> None:
    r = admin_conn.compute.get("/os-simple-tenant-usage?start=2030-01-02T00:00:00"
                               "&end=2030-01-01T00:00:00")
    assert r.status_code == 400
    assert "The start time cannot occur after the end time" in r.json()["badRequest"][
        "message"]
    r = admin_conn.compute.get("/os-simple-tenant-usage?start=yesterday")
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == ("Invalid datetime string: Datetime is in "
                                                 "invalid format")


def test_usage_pages_with_limit_and_marker(admin_conn: Connection,
                                           demo_conn: Connection) -> None:
    servers = [boot(demo_conn, f"ops-page-{n}") for n in range(2)]
    try:
        headers = {"OpenStack-API-Version": "compute 2.40"}
        first = admin_conn.compute.get("/os-simple-tenant-usage?detailed=1&limit=1",
                                       headers=headers).json()
        assert sum(len(u["server_usages"]) for u in first["tenant_usages"]) == 1
        link = first["tenant_usages_links"][0]
        assert link["rel"] == "next" and "marker=" in link["href"]
        marker = first["tenant_usages"][0]["server_usages"][0]["instance_id"]
        second = admin_conn.compute.get(
            f"/os-simple-tenant-usage?detailed=1&limit=1&marker={marker}",
            headers=headers).json()
        assert second["tenant_usages"][0]["server_usages"][0]["instance_id"] != marker
    finally:
        for server in servers:
            demo_conn.compute.delete_server(server)


# -- hypervisors -------------------------------------------------------------------------------


def test_hypervisor_stats_sum_what_placement_holds(cli: Run, admin_conn: Connection,
                                                   demo_conn: Connection) -> None:
    server = boot(demo_conn, "ops-stats")
    try:
        used = {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
        for provider in admin_conn.placement.resource_providers():
            found = admin_conn.placement.get(
                f"/resource_providers/{provider.id}/usages").json()["usages"]
            for rc in used:
                used[rc] += found.get(rc, 0)
        stats = as_json(cli("hypervisor", "stats", "show", "-f", "json"))
        assert int(stats["count"]) == 2
        assert int(stats["vcpus_used"]) == used["VCPU"] >= 1
        assert int(stats["local_gb_used"]) == used["DISK_GB"]
        assert int(stats["running_vms"]) >= 1
        listed = as_json(cli("hypervisor", "list", "--long", "-f", "json"))
        assert {h["State"] for h in listed} == {"up"}
        assert sum(h["vCPUs Used"] for h in listed) == used["VCPU"]
    finally:
        demo_conn.compute.delete_server(server)


# -- quotas ------------------------------------------------------------------------------------


def test_quotas_are_shown_and_set_by_admins_only(cli: Run, demo_conn: Connection) -> None:
    shown = {r["Resource"]: r["Limit"] for r in as_json(
        cli("quota", "show", "demo", "-f", "json"))}
    assert shown["instances"] == 10 and shown["cores"] == 20
    ok(cli("quota", "set", "--instances", "3", "demo"))
    try:
        shown = {r["Resource"]: r["Limit"] for r in as_json(
            cli("quota", "show", "demo", "-f", "json"))}
        assert shown["instances"] == 3
        # by id: a member may not look projects up by name in keystone
        refused = cli("quota", "set", "--instances", "30", demo_conn.current_project_id,
                      cloud_name="labkit")
        assert refused.returncode != 0
        assert "os_compute_api:os-quota-sets:update" in refused.stderr
    finally:
        ok(cli("quota", "set", "--instances", "10", "demo"))


# -- network agents ----------------------------------------------------------------------------


def test_network_agents_are_alive_while_they_report(cli: Run) -> None:
    agents = as_json(cli("network", "agent", "list", "-f", "json"))
    assert {a["Alive"] for a in agents} == {True}
    assert {a["Binary"] for a in agents} >= {"neutron-openvswitch-agent",
                                             "neutron-dhcp-agent", "neutron-l3-agent"}


# -- inside the cloud: a stopped nova-compute ---------------------------------------------------


def in_quick_cloud(home: Path, scenario: Callable[[Cloud], Any]) -> Any:
    """A deterministic cloud in this process whose services go down after 1 s."""
    return in_cloud(home, scenario, report_interval=REPORT_INTERVAL, service_down_time=1.0)


def compute_up(cloud: Cloud, host: str) -> bool:
    service = cloud.compute.hosts.compute_service(host)
    assert service is not None
    return cloud.compute.service_is_up(service)


async def until(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return check()


def instance_of(cloud: Cloud, uuid: str) -> Any:
    with cloud.compute.database.session() as s:
        return cloud.compute.instances.get(s, uuid, include_deleted=True)


def boot_in(cloud: Cloud, name: str, request_id: str) -> str:
    _, (uuid,) = ServersAPI(cloud.compute).create(
        demo_context(cloud, request_id),
        CreateRequest(name=name, flavor_ref=NANO, image_ref=IMAGE, networks="none"))
    return uuid


def test_a_stopped_compute_goes_down_after_service_down_time_and_is_skipped(
        tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        assert nova.compute_running("compute-1")
        nova.stop_compute("compute-1")
        assert not nova.compute_running("compute-1")
        stopped_at = time.monotonic()
        # nobody notices at once: it is still up until its last heartbeat is old
        assert compute_up(cloud, "compute-1")
        assert await until(lambda: not compute_up(cloud, "compute-1"))
        assert time.monotonic() - stopped_at >= 0.8
        assert compute_up(cloud, "compute-2")
        uuids = [boot_in(cloud, f"skip-{n}", f"req-skip-{n}") for n in range(3)]
        await cloud.bus.drain()
        assert {instance_of(cloud, u).host for u in uuids} == {"compute-2"}
        decision = nova.instances.decisions(uuids[0])[0]["decision"]
        compute_filter = next(f for f in decision["filters"] if f["name"] == "ComputeFilter")
        refused = next(v for v in compute_filter["verdicts"] if v["host"] == "compute-1")
        assert not refused["passed"]
        assert "has not been heard from in a while" in refused["reason"]
        # it comes back: it reports at once and is up again
        nova.start_compute("compute-1")
        assert nova.compute_running("compute-1") and compute_up(cloud, "compute-1")
    in_quick_cloud(tmp_path, scenario)


def test_a_build_sent_before_the_host_was_seen_down_waits_in_its_queue(
        tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        service = nova.hosts.compute_service("compute-2")
        assert service is not None
        # only compute-1 can take it; it stops, but still looks up to the scheduler
        nova.hosts.set_service(service.uuid, disabled=True, disabled_reason="test")
        nova.stop_compute("compute-1")
        uuid = boot_in(cloud, "queued", "req-queued")
        await cloud.bus.drain()
        assert cloud.bus.queued("compute.compute-1") == 1
        row = instance_of(cloud, uuid)
        assert (row.vm_state, row.task_state, row.host) == ("building", "scheduling", None)
        events = cloud.trace.query(request_id="req-queued")
        assert any(e.source == "rabbitmq" and "waits in queue compute.compute-1" in e.summary
                   for e in events)
        # it stays in BUILD while the host is away, down or not
        await asyncio.sleep(1.2)
        assert not compute_up(cloud, "compute-1")
        assert instance_of(cloud, uuid).vm_state == "building"
        nova.start_compute("compute-1")
        await cloud.bus.drain()
        row = instance_of(cloud, uuid)
        assert (row.vm_state, row.host) == ("active", "compute-1")
        assert cloud.bus.queued("compute.compute-1") == 0
    in_quick_cloud(tmp_path, scenario)


def test_a_call_to_a_stopped_compute_times_out(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        uuid = boot_in(cloud, "console", "req-console")
        await cloud.bus.drain()
        host = instance_of(cloud, uuid).host
        cloud.compute.stop_compute(host)
        cloud.bus.call_timeout = 0.3
        ctx = demo_context(cloud, "req-console-2")
        with pytest.raises(MessagingTimeout, match="Timed out waiting for a reply"):
            await ServersAPI(cloud.compute).console_output(ctx, uuid, None)
        cloud.compute.start_compute(host)
        assert isinstance(await ServersAPI(cloud.compute).console_output(ctx, uuid, None),
                          str)
    in_quick_cloud(tmp_path, scenario)


def test_hypervisors_show_both_allocations_of_a_resize(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> tuple[dict[str, dict[str, Any]], Any]:
        nova = cloud.compute
        uuid = boot_in(cloud, "moving", "req-moving")
        await cloud.bus.drain()
        row = instance_of(cloud, uuid)
        other = "compute-2" if row.host == "compute-1" else "compute-1"
        # during VERIFY_RESIZE the migration holds the old flavor on the source
        source = nova.hosts.node_for(other)
        cloud.placement.backend.claim("0f0f0f0f-0000-4000-8000-000000000001",
                                      {source.uuid: {"VCPU": 2, "MEMORY_MB": 128,
                                                     "DISK_GB": 1}},
                                      row.project_id, row.user_id)
        return {n.host: _hypervisor(nova, n, detail=True) for n in nova.hosts.nodes()}, row
    shown, row = in_quick_cloud(tmp_path, scenario)
    here = shown[row.host]
    other = next(h for name, h in shown.items() if name != row.host)
    assert (here["vcpus_used"], here["running_vms"]) == (1, 1)
    assert (other["vcpus_used"], other["local_gb_used"], other["running_vms"]) == (2, 1, 0)


def test_a_stopped_network_agent_is_dead_after_the_down_time(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        neutron = cloud.network.neutron
        assert neutron.env.agent_down_time == 1.0

        def alive() -> bool:
            agents = neutron.list(NetContext(project_id=None, is_admin=True), "agent")
            return next(a["alive"] for a in agents if a["host"] == "compute-1"
                        and a["binary"] == "neutron-openvswitch-agent")
        assert alive()
        await cloud.network.agents.stop_agent("compute-1", "neutron-openvswitch-agent")
        assert await until(lambda: not alive())
        cloud.network.agents.start_agent("compute-1", "neutron-openvswitch-agent")
        assert await until(alive)
    in_quick_cloud(tmp_path, scenario)


# -- the pieces --------------------------------------------------------------------------------


class Row:
    def __init__(self, updated_at: float | None, forced_down: bool = False) -> None:
        self.updated_at, self.forced_down, self.created_at = updated_at, forced_down, 100.0


def test_is_up_follows_the_last_heartbeat_and_forced_down() -> None:
    assert is_up(Row(100.0), now=119.0, service_down_time=20)
    assert not is_up(Row(100.0), now=121.0, service_down_time=20)
    assert not is_up(Row(100.0, forced_down=True), now=100.0, service_down_time=20)
    assert is_up(Row(None), now=110.0, service_down_time=20)  # never reported: created_at


def test_a_paused_topic_keeps_casts_in_order_until_it_resumes(tmp_path: Path) -> None:
    class Endpoint:
        def __init__(self) -> None:
            self.seen: list[int] = []

        async def note(self, ctx: MessageContext, n: int) -> None:
            self.seen.append(n)

    async def scenario() -> list[int]:
        trace = Trace(tmp_path / "trace.sqlite")
        bus = MessageBus(trace)
        endpoint = Endpoint()
        bus.register("t", "thing", endpoint)
        ctx = MessageContext(request_id="req-1", source="test")
        bus.pause("t")
        for n in range(5):
            bus.cast(ctx, "t", "note", n=n)
        await bus.drain()
        assert endpoint.seen == [] and bus.queued("t") == 5
        bus.resume("t")
        await bus.drain()
        return endpoint.seen
    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_settings_read_the_heartbeat_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_SERVICE_DOWN_TIME", "7.5")
    monkeypatch.setenv("LABKIT_REPORT_INTERVAL", "0.5")
    monkeypatch.setenv("LABKIT_RESIZE_CONFIRM_WINDOW", "30")
    monkeypatch.setenv("LABKIT_ALLOW_RESIZE_TO_SAME_HOST", "true")
    settings = CloudSettings.from_env()
    assert (settings.service_down_time, settings.report_interval,
            settings.resize_confirm_window, settings.allow_resize_to_same_host) == (
        7.5, 0.5, 30.0, True)
    again = CloudSettings.from_json(settings.to_json())
    assert again == settings
    old = json.loads(settings.to_json())
    for key in ("service_down_time", "report_interval", "resize_confirm_window",
                "allow_resize_to_same_host"):
        del old[key]
    assert CloudSettings.from_json(json.dumps(old)).service_down_time == 20.0
    for bad in ({"report_interval": 0}, {"service_down_time": -1},
                {"resize_confirm_window": -5}):
        with pytest.raises(ValueError):
            CloudSettings(**bad)  # type: ignore[arg-type]
