"""Nova and neutron together: a server's ports, addresses, floating IPs and the events between.

Through the real `openstack` CLI and openstacksdk against one fresh cloud: a server
booted on demo-net gets a port from demo-subnet, ACTIVE and bound to its host, its
address and MAC in `addresses`; a floating IP shows in `openstack server list`; a
delete removes the port nova made and only unbinds one the user brought. Nova's
refusals and os-server-external-events over raw HTTP. What needs a hand inside the
cloud (an OVS agent that dies, one that hangs) runs on a cloud built in this process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openstack.connection import Connection
from sqlalchemy import update

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
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.network.common import NetContext
from labkit.cloud.network.tables import AgentRow

Run = Callable[..., subprocess.CompletedProcess[str]]
IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny
NANO, XLARGE = "42", "5"
SERVERS = "/compute/v2.1/servers"
EVENTS = "/compute/v2.1/os-server-external-events"
NEUTRON = "/networking/v2.0"
BUILD_TIMEOUT = 60  # a guard against a hung build, never a claim about speed
ADMIN_NET = NetContext(project_id=None, is_admin=True)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def compute(token: str, version: str = "2.79") -> dict[str, str]:
    return {**auth_header(token), "OpenStack-API-Version": f"compute {version}"}


def boot(http: httpx.Client, token: str, name: str, networks: Any,
         flavor: str = NANO) -> httpx.Response:
    return http.post(SERVERS, headers=compute(token), json={"server": {
        "name": name, "flavorRef": flavor, "imageRef": IMAGE, "networks": networks}})


def server(http: httpx.Client, token: str, server_id: str) -> dict[str, Any]:
    r = http.get(f"{SERVERS}/{server_id}", headers=compute(token))
    assert r.status_code == 200, r.text
    return r.json()["server"]


def wait_active(http: httpx.Client, token: str, server_id: str) -> dict[str, Any]:
    shown = wait_for(lambda: server(http, token, server_id),
                     lambda s: s["status"] != "BUILD", BUILD_TIMEOUT)
    assert shown["status"] == "ACTIVE", shown.get("fault")
    return shown


def delete_and_wait(http: httpx.Client, token: str, server_id: str) -> None:
    http.delete(f"{SERVERS}/{server_id}", headers=compute(token))
    gone = wait_for(lambda: http.get(f"{SERVERS}/{server_id}", headers=compute(token)),
                    lambda r: r.status_code == 404, BUILD_TIMEOUT)
    assert gone.status_code == 404


def ports_of(http: httpx.Client, token: str, server_id: str) -> list[dict[str, Any]]:
    r = http.get(f"{NEUTRON}/ports", params={"device_id": server_id}, headers=auth_header(token))
    assert r.status_code == 200, r.text
    return r.json()["ports"]


def nova_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    (body,) = r.json().values()
    assert body["code"] == status
    return body["message"]


@pytest.fixture(scope="module")
def demo_net(admin_conn: Connection) -> dict[str, Any]:
    net = admin_conn.network.find_network("demo-net")
    subnet = admin_conn.network.find_subnet("demo-subnet")
    assert net is not None and subnet is not None
    return {"id": net.id, "subnet_id": subnet.id, "cidr": subnet.cidr,
            "pools": subnet.allocation_pools}


@pytest.fixture(scope="module")
def booted(openstack_cli: Run, http: httpx.Client, demo_token: str) -> Iterator[dict[str, Any]]:
    """One server booted with `--network demo-net --wait` through the CLI."""
    created = as_json(openstack_cli("server", "create", "--flavor", "m1.nano", "--image",
                                    "labkit-tiny", "--network", "demo-net", "--wait",
                                    "net-vm", "-f", "json"))
    yield created
    delete_and_wait(http, demo_token, created["id"])


def in_pool(address: str, pools: list[dict[str, str]]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ipaddress.ip_address(p["start"]) <= ip <= ipaddress.ip_address(p["end"])
               for p in pools)


# -- a server on demo-net ----------------------------------------------------------------------

def test_server_on_a_network_is_active_with_an_address_and_its_mac(
        booted: dict[str, Any], http: httpx.Client, demo_token: str,
        demo_net: dict[str, Any]) -> None:
    assert booted["status"] == "ACTIVE"
    shown = server(http, demo_token, booted["id"])
    (address,) = shown["addresses"]["demo-net"]
    assert address["version"] == 4 and address["OS-EXT-IPS:type"] == "fixed"
    assert ipaddress.ip_address(address["addr"]) in ipaddress.ip_network(demo_net["cidr"])
    assert in_pool(address["addr"], demo_net["pools"])
    (port,) = ports_of(http, demo_token, booted["id"])
    assert address["OS-EXT-IPS-MAC:mac_addr"] == port["mac_address"]
    assert port["mac_address"].startswith("fa:16:3e:")
    assert [ip["ip_address"] for ip in port["fixed_ips"]] == [address["addr"]]


def test_port_list_server_shows_its_port_active_and_bound_to_its_host(
        booted: dict[str, Any], openstack_cli: Run, http: httpx.Client, admin_token: str) -> None:
    (row,) = as_json(openstack_cli("port", "list", "--server", "net-vm", "-f", "json"))
    assert row["Status"] == "ACTIVE"
    port = as_json(openstack_cli("port", "show", row["ID"], "-f", "json",
                                 cloud_name="labkit-admin"))
    host = server(http, admin_token, booted["id"])["OS-EXT-SRV-ATTR:host"]
    assert (port["binding_host_id"], port["binding_vif_type"]) == (host, "ovs")
    assert port["device_owner"] == "compute:nova"
    assert port["device_id"] == booted["id"]


def test_a_floating_ip_shows_in_server_list(booted: dict[str, Any], openstack_cli: Run,
                                            http: httpx.Client, demo_token: str) -> None:
    fip = as_json(openstack_cli("floating", "ip", "create", "public", "-f", "json"))
    try:
        ok(openstack_cli("server", "add", "floating", "ip", "net-vm",
                         fip["floating_ip_address"]))

        def listed() -> str:
            rows = as_json(openstack_cli("server", "list", "--name", "^net-vm$", "-f", "json"))
            return str(rows[0]["Networks"])
        networks = wait_for(listed, lambda n: fip["floating_ip_address"] in n, BUILD_TIMEOUT)
        fixed = server(http, demo_token, booted["id"])["addresses"]["demo-net"][0]["addr"]
        assert fip["floating_ip_address"] in networks and fixed in networks
        shown = server(http, demo_token, booted["id"])["addresses"]["demo-net"]
        assert [(a["addr"], a["OS-EXT-IPS:type"]) for a in shown] == [
            (fixed, "fixed"), (fip["floating_ip_address"], "floating")]
        assert shown[0]["OS-EXT-IPS-MAC:mac_addr"] == shown[1]["OS-EXT-IPS-MAC:mac_addr"]
        # released: nova hears network-changed again and the address leaves `addresses`
        ok(openstack_cli("server", "remove", "floating", "ip", "net-vm",
                         fip["floating_ip_address"]))
        left = wait_for(lambda: server(http, demo_token, booted["id"])["addresses"],
                        lambda a: len(a["demo-net"]) == 1, BUILD_TIMEOUT)
        assert [a["OS-EXT-IPS:type"] for a in left["demo-net"]] == ["fixed"]
    finally:
        ok(openstack_cli("floating", "ip", "delete", fip["id"]))


def test_the_ip_filter_finds_a_server_by_its_fixed_address(
        booted: dict[str, Any], http: httpx.Client, demo_token: str) -> None:
    fixed = server(http, demo_token, booted["id"])["addresses"]["demo-net"][0]["addr"]
    found = http.get(SERVERS, params={"ip": fixed.rsplit(".", 1)[0] + "."},
                     headers=compute(demo_token)).json()["servers"]
    assert booted["id"] in [s["id"] for s in found]
    none = http.get(SERVERS, params={"ip": "^10\\.99\\."},
                    headers=compute(demo_token)).json()["servers"]
    assert booted["id"] not in [s["id"] for s in none]


def test_the_trace_of_a_build_shows_port_plug_up_and_event_in_order(
        booted: dict[str, Any], http: httpx.Client, admin_token: str) -> None:
    r = http.get(f"/labkit/v1/servers/{booted['id']}/trace", headers=auth_header(admin_token))
    assert r.status_code == 200, r.text
    events = r.json()["events"]

    def first(match: Callable[[dict[str, Any]], bool], what: str) -> int:
        found = [i for i, e in enumerate(events) if match(e)]
        assert found, f"no {what} in the trace: {[e['summary'] for e in events]}"
        return found[0]

    create = first(lambda e: e["kind"] == "api" and e["summary"].startswith(
        "POST /networking/v2.0/ports ->") and e["source"].startswith("nova-compute@"),
        "port create by nova-compute")
    bind = first(lambda e: e["kind"] == "api" and e["summary"].startswith(
        "PUT /networking/v2.0/ports/"), "port binding")
    plug = first(lambda e: e["target"].startswith("os-vif@")
                 and e["summary"].startswith("plug vif"), "vif plug")
    up = first(lambda e: e["kind"] == "rpc" and e["detail"].get("method") == "update_device_up"
               and e["detail"].get("type") == "call", "update_device_up")
    event = first(lambda e: e["kind"] == "api" and e["summary"].startswith(
        f"POST {EVENTS} -> 200") and e["source"] == "neutron-server", "external event")
    spawn = first(lambda e: e["summary"].startswith("spawn "), "spawn")
    assert create < bind < plug < up < event < spawn


def test_delete_removes_the_port_nova_made(openstack_cli: Run, http: httpx.Client,
                                           demo_token: str, admin_token: str) -> None:
    created = as_json(openstack_cli("server", "create", "--flavor", "m1.nano", "--image",
                                    "labkit-tiny", "--network", "demo-net", "--wait",
                                    "net-gone", "-f", "json"))
    (port,) = ports_of(http, demo_token, created["id"])
    ok(openstack_cli("server", "delete", "--wait", created["id"]))
    r = http.get(f"{NEUTRON}/ports/{port['id']}", headers=auth_header(admin_token))
    assert r.status_code == 404, r.text
    assert r.json()["NeutronError"]["type"] == "PortNotFound"


def test_a_port_the_user_made_survives_the_delete_unbound(
        openstack_cli: Run, http: httpx.Client, demo_token: str, admin_token: str) -> None:
    port = as_json(openstack_cli("port", "create", "--network", "demo-net", "own-port",
                                 "-f", "json"))
    try:
        created = as_json(openstack_cli("server", "create", "--flavor", "m1.nano", "--image",
                                        "labkit-tiny", "--port", port["id"], "--wait",
                                        "own-port-vm", "-f", "json"))
        assert created["status"] == "ACTIVE"
        shown = server(http, demo_token, created["id"])
        assert [a["OS-EXT-IPS-MAC:mac_addr"] for a in shown["addresses"]["demo-net"]] == [
            port["mac_address"]]
        bound = http.get(f"{NEUTRON}/ports/{port['id']}", headers=auth_header(admin_token))
        assert bound.json()["port"]["device_id"] == created["id"]
        assert bound.json()["port"]["status"] == "ACTIVE"
        ok(openstack_cli("server", "delete", "--wait", created["id"]))
        after = http.get(f"{NEUTRON}/ports/{port['id']}", headers=auth_header(admin_token))
        assert after.status_code == 200, after.text
        kept = after.json()["port"]
        assert (kept["device_id"], kept["device_owner"], kept["binding:host_id"]) == ("", "", "")
        assert kept["fixed_ips"] == port["fixed_ips"]
    finally:
        ok(openstack_cli("port", "delete", port["id"]))


def test_auto_picks_the_projects_only_network(demo_conn: Connection, http: httpx.Client,
                                              demo_token: str) -> None:
    r = boot(http, demo_token, "auto-vm", "auto")
    assert r.status_code == 202, r.text
    server_id = r.json()["server"]["id"]
    try:
        shown = wait_active(http, demo_token, server_id)
        assert list(shown["addresses"]) == ["demo-net"]
    finally:
        delete_and_wait(http, demo_token, server_id)


def test_none_boots_without_ports(http: httpx.Client, demo_token: str) -> None:
    r = boot(http, demo_token, "no-net-vm", "none")
    assert r.status_code == 202, r.text
    server_id = r.json()["server"]["id"]
    try:
        assert wait_active(http, demo_token, server_id)["addresses"] == {}
        assert ports_of(http, demo_token, server_id) == []
    finally:
        delete_and_wait(http, demo_token, server_id)


# -- nova's refusals ------------------------------------------------------------------------

def test_an_unknown_network_is_a_400(http: httpx.Client, demo_token: str) -> None:
    missing = "3f1b9a8e-0000-4000-8000-00000000beef"
    r = boot(http, demo_token, "lost", [{"uuid": missing}])
    assert nova_error(r, 400) == f"Network {missing} could not be found."
    r = boot(http, demo_token, "lost", [{"uuid": "not-a-uuid"}])
    assert nova_error(r, 400) == ("Bad networks format: network uuid is not in proper "
                                  "format (not-a-uuid)")
    r = boot(http, demo_token, "lost", [{"port": missing}])
    assert nova_error(r, 400) == f"Port id {missing} could not be found."
    assert http.get(SERVERS, params={"name": "^lost$"},
                    headers=compute(demo_token)).json()["servers"] == []


def test_another_projects_network_is_not_found(http: httpx.Client, alt_token: str,
                                               demo_net: dict[str, Any]) -> None:
    r = boot(http, alt_token, "peeker", [{"uuid": demo_net["id"]}])
    assert nova_error(r, 400) == f"Network {demo_net['id']} could not be found."


def test_auto_with_no_network_for_the_project_is_a_400(http: httpx.Client, alt_token: str,
                                                       issue_token: Callable[..., str]) -> None:
    r = boot(http, alt_token, "nowhere", "auto")
    project = http.get("/identity/v3/auth/tokens", headers={
        **auth_header(alt_token), "X-Subject-Token": alt_token}).json()["token"]["project"]["id"]
    assert nova_error(r, 400) == f"Unable to automatically allocate a network for project " \
                                 f"{project}"


def test_auto_with_two_networks_is_ambiguous(demo_conn: Connection, http: httpx.Client,
                                            demo_token: str) -> None:
    net = demo_conn.network.create_network(name="second-net")
    try:
        demo_conn.network.create_subnet(network_id=net.id, cidr="172.16.9.0/24", ip_version=4,
                                        name="second-subnet")
        r = boot(http, demo_token, "which-one", "auto")
        assert nova_error(r, 409) == ("Multiple possible networks found, use a Network ID to "
                                      "be more specific.")
    finally:
        demo_conn.network.delete_network(net)


def test_a_port_in_use_is_a_409(booted: dict[str, Any], http: httpx.Client,
                                demo_token: str) -> None:
    (port,) = ports_of(http, demo_token, booted["id"])
    r = boot(http, demo_token, "thief", [{"port": port["id"]}])
    assert nova_error(r, 409) == f"Port {port['id']} is still in use."


def test_a_fixed_ip_in_use_is_a_400(booted: dict[str, Any], http: httpx.Client,
                                    demo_token: str, demo_net: dict[str, Any]) -> None:
    fixed = server(http, demo_token, booted["id"])["addresses"]["demo-net"][0]["addr"]
    r = boot(http, demo_token, "twin", [{"uuid": demo_net["id"], "fixed_ip": fixed}])
    assert nova_error(r, 400) == (f"Fixed IP address {fixed} is already in use on instance "
                                  f"{booted['id']}.")


def test_an_unknown_security_group_is_a_400(http: httpx.Client, demo_token: str,
                                            demo_net: dict[str, Any]) -> None:
    r = http.post(SERVERS, headers=compute(demo_token), json={"server": {
        "name": "guarded", "flavorRef": NANO, "imageRef": IMAGE,
        "networks": [{"uuid": demo_net["id"]}], "security_groups": [{"name": "no-such"}]}})
    assert nova_error(r, 400) == "Unable to find security_group with name or id 'no-such'"


# -- os-server-external-events ----------------------------------------------------------------

def test_external_events_are_for_admins(http: httpx.Client, demo_token: str,
                                        booted: dict[str, Any]) -> None:
    r = http.post(EVENTS, headers=compute(demo_token), json={"events": [
        {"name": "network-changed", "server_uuid": booted["id"]}]})
    assert nova_error(r, 403) == ("Policy doesn't allow os_compute_api:os-server-external-"
                                  "events:create to be performed.")


def test_external_events_answer_per_event(http: httpx.Client, admin_token: str,
                                          demo_token: str, booted: dict[str, Any]) -> None:
    missing = "3f1b9a8e-0000-4000-8000-0000000000aa"
    r = http.post(EVENTS, headers=compute(admin_token), json={"events": [
        {"name": "network-changed", "server_uuid": booted["id"], "tag": "x"},
        {"name": "network-vif-plugged", "server_uuid": missing, "status": "completed"}]})
    assert r.status_code == 207, r.text
    assert r.json()["events"] == [
        {"name": "network-changed", "server_uuid": booted["id"], "tag": "x",
         "status": "completed", "code": 200},
        {"name": "network-vif-plugged", "server_uuid": missing, "status": "failed",
         "code": 404}]
    r = http.post(EVENTS, headers=compute(admin_token), json={"events": [
        {"name": "network-changed", "server_uuid": booted["id"]}]})
    assert r.status_code == 200, r.text
    assert r.json()["events"][0]["code"] == 200
    r = http.post(EVENTS, headers=compute(admin_token), json={"events": [
        {"name": "network-vif-plugged", "server_uuid": missing}]})
    assert nova_error(r, 404) == "No instances found for any event"
    extended = {"events": [{"name": "volume-extended", "server_uuid": booted["id"]}]}
    r = http.post(EVENTS, headers=compute(admin_token, "2.50"), json=extended)
    assert r.status_code == 400, r.text  # no such event before 2.51
    r = http.post(EVENTS, headers=compute(admin_token, "2.51"), json={"events": [
        *extended["events"], {"name": "network-changed", "server_uuid": booted["id"]}]})
    assert r.status_code == 207, r.text  # volume-extended needs its tag (the volume)
    assert [e["code"] for e in r.json()["events"]] == [400, 200]
    # a server that never got a host: 422 for its event
    lost = boot(http, demo_token, "too-big", "none", flavor=XLARGE)
    assert lost.status_code == 202, lost.text
    lost_id = lost.json()["server"]["id"]
    try:
        wait_for(lambda: server(http, demo_token, lost_id), lambda s: s["status"] == "ERROR",
                 BUILD_TIMEOUT)
        r = http.post(EVENTS, headers=compute(admin_token), json={"events": [
            {"name": "network-changed", "server_uuid": lost_id},
            {"name": "network-changed", "server_uuid": booted["id"]}]})
        assert r.status_code == 207, r.text
        assert [e["code"] for e in r.json()["events"]] == [422, 200]
    finally:
        delete_and_wait(http, demo_token, lost_id)


def test_unknown_event_names_are_refused(http: httpx.Client, admin_token: str,
                                         booted: dict[str, Any]) -> None:
    r = http.post(EVENTS, headers=compute(admin_token), json={"events": [
        {"name": "network-exploded", "server_uuid": booted["id"]}]})
    assert r.status_code == 400, r.text
    r = http.post(EVENTS, headers=compute(admin_token), json={"events": []})
    assert r.status_code == 400, r.text


def test_a_server_keeps_its_port_across_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    info = start_cloud(home)
    try:
        with httpx.Client(base_url=info.url, timeout=30) as client:
            demo = issue(client, "demo")
            r = boot(client, demo, "survivor", "auto")
            assert r.status_code == 202, r.text
            server_id = r.json()["server"]["id"]
            before = wait_active(client, demo, server_id)["addresses"]
        stop_cloud(home)
        info = start_cloud(home)
        with httpx.Client(base_url=info.url, timeout=30) as client:
            demo = issue(client, "demo")
            assert server(client, demo, server_id)["addresses"] == before
            (port,) = ports_of(client, demo, server_id)
            assert port["status"] == "ACTIVE"
            delete_and_wait(client, demo, server_id)
            r = client.get(f"{NEUTRON}/ports/{port['id']}", headers=auth_header(demo))
            assert r.status_code == 404, r.text
    finally:
        stop_cloud(home)


def issue(client: httpx.Client, user: str) -> str:
    r = client.post("/identity/v3/auth/tokens",
                    json=password_auth(user, LAB_PASSWORDS[user], user))
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


# -- inside the cloud: agents that die or hang -------------------------------------------------



async def boot_on_demo_net(cloud: Cloud, name: str, request_id: str) -> str:
    net = next(n for n in cloud.network.neutron.list(ADMIN_NET, "network")
               if n["name"] == "demo-net")
    _, (uuid,) = ServersAPI(cloud.compute).create(demo_context(cloud, request_id),
                                                  CreateRequest(name=name, flavor_ref=NANO,
                                                                image_ref=IMAGE,
                                                                networks=[{"uuid": net["id"]}]))
    await drain(cloud)
    return uuid


async def drain(cloud: Cloud) -> None:
    """Until the bus and the agents' notifications have nothing left in flight: a build
    waits for an event that a notification carries, so both are drained in turn."""
    for _ in range(10):
        await cloud.bus.drain()
        await cloud.network.agents.drain()
    await cloud.bus.drain()


def instance_of(cloud: Cloud, uuid: str) -> Any:
    with cloud.compute.database.session() as s:
        return cloud.compute.instances.get(s, uuid, include_deleted=True)


def kill_ovs_agent(cloud: Cloud, host: str) -> Awaitable[None]:
    """The agent's process dies: it stops reporting, and its last report is old by now."""
    async def kill() -> None:
        await cloud.network.agents.stop_agent(host, "neutron-openvswitch-agent")
        with cloud.network.database.session() as s:
            s.execute(update(AgentRow).where(AgentRow.host == host,
                                             AgentRow.binary == "neutron-openvswitch-agent")
                      .values(heartbeat_timestamp=time.time() - 3600))
    return kill()



def test_a_port_that_cannot_bind_reschedules_the_build(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        await kill_ovs_agent(cloud, "compute-2")
        uuid = await boot_on_demo_net(cloud, "rebound", "req-rebound")
        instance = instance_of(cloud, uuid)
        assert (instance.vm_state, instance.host) == ("active", "compute-1")
        # compute-2 was tried first: the binding failed there and the build went back
        resent = [e for e in cloud.trace.query(request_id="req-rebound")
                  if e.kind == "rpc" and e.detail.get("method") == "build_instances"]
        assert resent and resent[0].source == "nova-compute@compute-2"
        assert "Binding failed for port" in resent[0].detail["args"]["reason"]
        ports = [p for p in cloud.network.neutron.list(ADMIN_NET, "port")
                 if p["device_id"] == uuid]
        assert [(p["binding:host_id"], p["binding:vif_type"], p["status"])
                for p in ports] == [("compute-1", "ovs", "ACTIVE")]
    in_cloud(tmp_path, scenario)


def test_no_vif_plugged_event_in_time_fails_the_build(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        cloud.compute.vif_plugging_timeout = 0.5
        for host in ("compute-1", "compute-2"):
            # alive (its heartbeat goes on) but it wires nothing
            cloud.network.agents.agent(host, "neutron-openvswitch-agent").running = False
        uuid = await boot_on_demo_net(cloud, "unplugged", "req-unplugged")
        instance = instance_of(cloud, uuid)
        assert (instance.vm_state, instance.task_state) == ("error", None)
        with cloud.compute.database.session() as s:
            fault = cloud.compute.instances.latest_fault(s, uuid)
        assert fault is not None
        assert fault.message == (f"Build of instance {uuid} aborted: Failed to allocate the "
                                 f"network(s), not rescheduling.")
        summaries = [e.summary for e in cloud.trace.query(request_id="req-unplugged")]
        assert any(s.startswith("timeout waiting for network-vif-plugged") for s in summaries)
        # nothing left behind: the port nova made is gone
        assert [p for p in cloud.network.neutron.list(ADMIN_NET, "port")
                if p["device_id"] == uuid] == []
    in_cloud(tmp_path, scenario)


def test_a_stopped_agent_goes_dead_and_comes_back_when_started(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        runtime, neutron = cloud.network.agents, cloud.network.neutron

        def alive() -> dict[str, bool]:
            return {a["host"]: a["alive"] for a in neutron.list(ADMIN_NET, "agent")
                    if a["binary"] == "neutron-openvswitch-agent"}
        assert alive() == {"network": True, "compute-1": True, "compute-2": True}
        await kill_ovs_agent(cloud, "compute-1")
        assert alive()["compute-1"] is False
        runtime.report_interval = 0.01
        runtime.start_agent("compute-1", "neutron-openvswitch-agent")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not alive()["compute-1"] and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert alive() == {"network": True, "compute-1": True, "compute-2": True}
    in_cloud(tmp_path, scenario)


def test_a_delete_ends_a_build_waiting_for_its_port(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        cloud.compute.vif_plugging_timeout = 600  # longer than this test may take
        for host in ("compute-1", "compute-2"):
            cloud.network.agents.agent(host, "neutron-openvswitch-agent").running = False
        net = next(n for n in cloud.network.neutron.list(ADMIN_NET, "network")
                   if n["name"] == "demo-net")
        servers = ServersAPI(cloud.compute)
        _, (uuid,) = servers.create(demo_context(cloud, "req-waiting"), CreateRequest(
            name="waiting", flavor_ref=NANO, image_ref=IMAGE, networks=[{"uuid": net["id"]}]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        manager = None
        while manager is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
            manager = next((m for m in cloud.compute.computes.values()
                            if m.events.waited_for(uuid)), None)
        assert manager is not None, "the build never waited for network-vif-plugged"
        servers.delete(demo_context(cloud, "req-stop-waiting"), uuid)
        await asyncio.wait_for(drain(cloud), timeout=30)
        instance = instance_of(cloud, uuid)
        assert (instance.deleted, instance.vm_state) == (True, "deleted")
        assert [p for p in cloud.network.neutron.list(ADMIN_NET, "port")
                if p["device_id"] == uuid] == []
    in_cloud(tmp_path, scenario)
