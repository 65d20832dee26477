"""Resize end to end on the model driver: API → conductor → scheduler → both compute hosts
→ placement → the migration record, then confirm, revert, the auto-confirm and failures.

The contract tests drive a cloud process through openstacksdk, raw HTTP and the real
`openstack` CLI; what needs other settings (a resize to the same host, the auto-confirm
window) or a cut-off resize runs on a cloud built in the test's own process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openstack.connection import Connection
from sqlalchemy import select

from conftest import auth_header, demo_context, in_cloud, start_cloud, stop_cloud, wait_for
from labkit.cloud.app import Cloud
from labkit.cloud.compute.instances import InstanceAction, InstanceActionEvent
from labkit.cloud.compute.migrations import move_allocation
from labkit.cloud.compute.resize import confirm_unconfirmed
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.compute.states import set_state
from labkit.cloud.errors import BadRequest
from labkit.cloud.process import CloudInfo

IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny
NANO, TINY, SMALL = "42", "1", "2"
SERVERS = "/compute/v2.1/servers"
WAIT = 30  # a guard against a hung step, never a claim about speed
RESIZE_TIMELINE = ["resize_prep", "resize_migrating", "resize_migrated", "resize_finish"]
Run = Callable[..., subprocess.CompletedProcess[str]]


def compute(token: str, version: str = "2.79") -> dict[str, str]:
    return {**auth_header(token), "OpenStack-API-Version": f"compute {version}"}


def show(http: httpx.Client, token: str, server_id: str) -> dict[str, Any]:
    r = http.get(f"{SERVERS}/{server_id}", headers=compute(token))
    assert r.status_code == 200, r.text
    return r.json()["server"]


def wait_settled(http: httpx.Client, token: str, server_id: str,
                 statuses: set[str]) -> dict[str, Any]:
    """The server once its status is one of `statuses` and no task is under way."""
    def settled(server: dict[str, Any]) -> bool:
        return server["status"] in statuses and server["OS-EXT-STS:task_state"] is None
    server = wait_for(lambda: show(http, token, server_id), settled, WAIT)
    assert server["status"] in statuses and server["OS-EXT-STS:task_state"] is None, server
    return server


def action(http: httpx.Client, token: str, server_id: str, body: dict[str, Any]
           ) -> httpx.Response:
    return http.post(f"{SERVERS}/{server_id}/action", json=body, headers=compute(token))


def resize(http: httpx.Client, token: str, server_id: str, flavor: str) -> None:
    r = action(http, token, server_id, {"resize": {"flavorRef": flavor}})
    assert r.status_code == 202, r.text


def boot(http: httpx.Client, token: str, name: str, flavor: str = NANO,
         networks: Any = "none") -> dict[str, Any]:
    r = http.post(SERVERS, json={"server": {"name": name, "flavorRef": flavor,
                                            "imageRef": IMAGE, "networks": networks}},
                  headers=compute(token))
    assert r.status_code == 202, r.text
    return wait_settled(http, token, r.json()["server"]["id"], {"ACTIVE"})


def delete(http: httpx.Client, token: str, server_id: str) -> None:
    http.delete(f"{SERVERS}/{server_id}", headers=compute(token))
    r = wait_for(lambda: http.get(f"{SERVERS}/{server_id}", headers=compute(token)),
                 lambda r: r.status_code == 404, WAIT)
    assert r.status_code == 404, r.text


def providers(http: httpx.Client, admin_token: str) -> dict[str, str]:
    """Resource provider uuid → name (the compute hosts' nodes)."""
    r = http.get("/placement/resource_providers", headers=auth_header(admin_token))
    assert r.status_code == 200, r.text
    return {p["uuid"]: p["name"] for p in r.json()["resource_providers"]}


def allocations(http: httpx.Client, admin_token: str, consumer: str) -> dict[str, dict]:
    """{provider name: resources} the consumer holds."""
    r = http.get(f"/placement/allocations/{consumer}", headers=auth_header(admin_token))
    assert r.status_code == 200, r.text
    names = providers(http, admin_token)
    return {names[uuid]: a["resources"] for uuid, a in r.json()["allocations"].items()}


def migrations(http: httpx.Client, admin_token: str, server_id: str) -> list[dict[str, Any]]:
    """The server's rows of nova's migrations table (the inspection API), oldest first."""
    r = http.get("/labkit/v1/db/compute/migrations", params={"instance_uuid": server_id},
                 headers=auth_header(admin_token))
    assert r.status_code == 200, r.text
    return sorted(r.json()["rows"], key=lambda m: m["id"])


def task_timeline(http: httpx.Client, admin_token: str, server_id: str) -> list[Any]:
    """(status, task_state) as the trace's state events have them, repeats left out."""
    r = http.get(f"/labkit/v1/servers/{server_id}/trace", headers=auth_header(admin_token))
    assert r.status_code == 200, r.text
    walked: list[Any] = []
    for e in r.json()["events"]:
        if e["kind"] == "state":
            state = (e["detail"]["status"], e["detail"]["task_state"])
            if not walked or walked[-1] != state:
                walked.append(state)
    return walked


def action_events(http: httpx.Client, token: str, server_id: str,
                  name: str) -> list[dict[str, Any]]:
    """The events of the server's newest action called `name` (as the token sees them)."""
    r = http.get(f"{SERVERS}/{server_id}/os-instance-actions", headers=compute(token))
    assert r.status_code == 200, r.text
    found = next(a for a in r.json()["instanceActions"] if a["action"] == name)
    r = http.get(f"{SERVERS}/{server_id}/os-instance-actions/{found['request_id']}",
                 headers=compute(token))
    assert r.status_code == 200, r.text
    return list(r.json()["instanceAction"]["events"])


RESIZES = {"compute_prep_resize", "compute_resize_instance", "compute_finish_resize"}


# -- through the API, on a cloud process -------------------------------------------------


@pytest.fixture(scope="module")
def resized(http: httpx.Client, demo_token: str, admin_token: str
            ) -> Iterator[dict[str, Any]]:
    """A server resized from m1.nano to m1.tiny, left in VERIFY_RESIZE."""
    server = boot(http, demo_token, "rs-verify")
    source = show(http, admin_token, server["id"])["OS-EXT-SRV-ATTR:host"]
    resize(http, demo_token, server["id"], TINY)
    after = wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
    yield {"id": server["id"], "source": source, "verify": after}
    delete(http, demo_token, server["id"])


def test_resize_goes_to_the_other_host_through_novas_states(
        http: httpx.Client, admin_token: str, resized: dict[str, Any]) -> None:
    shown = show(http, admin_token, resized["id"])
    dest = shown["OS-EXT-SRV-ATTR:host"]
    assert dest != resized["source"]  # allow_resize_to_same_host is False by default
    assert shown["OS-EXT-STS:vm_state"] == "resized" and shown["OS-EXT-STS:power_state"] == 1
    # 2.47: the embedded flavor is the new one from finish_resize on
    assert shown["flavor"]["original_name"] == "m1.tiny" and shown["flavor"]["ram"] == 512
    walked = [task for _, task in task_timeline(http, admin_token, resized["id"])]
    at = walked.index("resize_prep")
    assert walked[at:at + 5] == [*RESIZE_TIMELINE, None]
    assert task_timeline(http, admin_token, resized["id"])[-1] == ("VERIFY_RESIZE", None)
    (migration,) = migrations(http, admin_token, resized["id"])
    assert (migration["status"], migration["migration_type"]) == ("finished", "resize")
    assert (migration["source_compute"], migration["dest_compute"]) == (
        resized["source"], dest)
    assert migration["dest_host"] == {"compute-1": "10.0.0.31",
                                      "compute-2": "10.0.0.32"}[dest]
    old, new = migration["old_flavor"], migration["new_flavor"]
    old, new = (json.loads(f) if isinstance(f, str) else f for f in (old, new))
    assert (old["name"], new["name"]) == ("m1.nano", "m1.tiny")


def test_placement_during_verify_resize_holds_both_flavors(
        http: httpx.Client, admin_token: str, resized: dict[str, Any]) -> None:
    dest = show(http, admin_token, resized["id"])["OS-EXT-SRV-ATTR:host"]
    (migration,) = migrations(http, admin_token, resized["id"])
    # the instance holds the new flavor on the destination; the migration the old one
    # on the source
    assert allocations(http, admin_token, resized["id"]) == {
        dest: {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}}
    assert allocations(http, admin_token, migration["uuid"]) == {
        resized["source"]: {"VCPU": 1, "MEMORY_MB": 128, "DISK_GB": 1}}


def test_the_resize_action_has_novas_events(http: httpx.Client, demo_token: str,
                                            resized: dict[str, Any]) -> None:
    events = action_events(http, demo_token, resized["id"], "resize")
    assert {e["event"] for e in events} == RESIZES
    assert all(e["result"] == "Success" for e in events)


def test_confirm_keeps_only_the_new_flavor(http: httpx.Client, demo_token: str,
                                           admin_token: str) -> None:
    server = boot(http, demo_token, "rs-confirm")
    try:
        resize(http, demo_token, server["id"], TINY)
        wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
        dest = show(http, admin_token, server["id"])["OS-EXT-SRV-ATTR:host"]
        (migration,) = migrations(http, admin_token, server["id"])
        r = action(http, demo_token, server["id"], {"confirmResize": None})
        assert r.status_code == 204, r.text
        active = wait_settled(http, demo_token, server["id"], {"ACTIVE"})
        assert active["flavor"]["original_name"] == "m1.tiny"
        assert show(http, admin_token, server["id"])["OS-EXT-SRV-ATTR:host"] == dest
        assert allocations(http, admin_token, server["id"]) == {
            dest: {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}}
        assert allocations(http, admin_token, migration["uuid"]) == {}
        assert migrations(http, admin_token, server["id"])[0]["status"] == "confirmed"
        (event,) = action_events(http, demo_token, server["id"], "confirmResize")
        assert (event["event"], event["result"]) == ("compute_confirm_resize", "Success")
        # a second confirm: the server is no longer in VERIFY_RESIZE
        again = action(http, demo_token, server["id"], {"confirmResize": None})
        assert again.status_code == 409, again.text
        assert again.json()["conflictingRequest"]["message"] == (
            f"Cannot 'confirmResize' instance {server['id']} while it is in vm_state active")
    finally:
        delete(http, demo_token, server["id"])


def test_revert_goes_back_to_the_source_with_the_old_flavor(
        http: httpx.Client, demo_token: str, admin_token: str) -> None:
    server = boot(http, demo_token, "rs-revert")
    try:
        source = show(http, admin_token, server["id"])["OS-EXT-SRV-ATTR:host"]
        resize(http, demo_token, server["id"], TINY)
        wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
        (migration,) = migrations(http, admin_token, server["id"])
        r = action(http, demo_token, server["id"], {"revertResize": None})
        assert r.status_code == 202, r.text
        active = wait_settled(http, demo_token, server["id"], {"ACTIVE"})
        assert active["flavor"]["original_name"] == "m1.nano"
        shown = show(http, admin_token, server["id"])
        assert (shown["OS-EXT-SRV-ATTR:host"], shown["OS-EXT-STS:power_state"]) == (source, 1)
        assert allocations(http, admin_token, server["id"]) == {
            source: {"VCPU": 1, "MEMORY_MB": 128, "DISK_GB": 1}}
        assert allocations(http, admin_token, migration["uuid"]) == {}
        assert migrations(http, admin_token, server["id"])[0]["status"] == "reverted"
        events = action_events(http, demo_token, server["id"], "revertResize")
        assert {(e["event"], e["result"]) for e in events} == {
            ("compute_revert_resize", "Success"), ("compute_finish_revert_resize", "Success")}
        walked = [t for _, t in task_timeline(http, admin_token, server["id"])]
        assert "resize_reverting" in walked
        # resized again after the revert: the source may be left again
        resize(http, demo_token, server["id"], TINY)
        wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
    finally:
        delete(http, demo_token, server["id"])


def test_a_flavor_that_fits_nowhere_leaves_the_server_as_it_was(
        http: httpx.Client, demo_token: str, admin_token: str,
        admin_conn: Connection) -> None:
    huge = admin_conn.compute.create_flavor(name="rs.huge", ram=9000, vcpus=1, disk=1)
    server = boot(http, demo_token, "rs-novalid")
    try:
        source = show(http, admin_token, server["id"])["OS-EXT-SRV-ATTR:host"]
        resize(http, demo_token, server["id"], huge.id)
        (migration,) = wait_for(lambda: migrations(http, admin_token, server["id"]),
                                lambda ms: ms and ms[0]["status"] == "error", WAIT)
        assert migration["status"] == "error"
        active = wait_settled(http, demo_token, server["id"], {"ACTIVE"})
        assert active["flavor"]["original_name"] == "m1.nano"
        (event,) = action_events(http, admin_token, server["id"], "resize")
        assert (event["event"], event["result"]) == ("conductor_migrate_server", "Error")
        assert "No valid host was found" in event["traceback"]
        # the allocation went back to the instance, on the source
        assert allocations(http, admin_token, server["id"]) == {
            source: {"VCPU": 1, "MEMORY_MB": 128, "DISK_GB": 1}}
        assert allocations(http, admin_token, migration["uuid"]) == {}
    finally:
        delete(http, demo_token, server["id"])
        admin_conn.compute.delete_flavor(huge)


def test_refusals_answer_novas_errors(http: httpx.Client, demo_token: str,
                                      resized: dict[str, Any]) -> None:
    server = boot(http, demo_token, "rs-refused")
    try:
        cases = [
            ({"resize": {"flavorRef": NANO}}, 400, "When resizing, instances must change "
             "flavor!"),
            ({"resize": {"flavorRef": "nope"}}, 400, "Flavor nope could not be found."),
            ({"resize": {}}, 400, None),
            ({"confirmResize": None}, 409, f"Cannot 'confirmResize' instance {server['id']} "
             "while it is in vm_state active"),
            ({"revertResize": None}, 409, f"Cannot 'revertResize' instance {server['id']} "
             "while it is in vm_state active"),
        ]
        for body, status, message in cases:
            r = action(http, demo_token, server["id"], body)
            assert r.status_code == status, (body, r.text)
            error = next(iter(r.json().values()))
            assert error["code"] == status
            if message:
                assert error["message"] == message, body
        # in VERIFY_RESIZE, a new resize is refused
        r = action(http, demo_token, resized["id"], {"resize": {"flavorRef": SMALL}})
        assert r.status_code == 409, r.text
        assert r.json()["conflictingRequest"]["message"] == (
            f"Cannot 'resize' instance {resized['id']} while it is in vm_state resized")
        assert show(http, demo_token, server["id"])["status"] == "ACTIVE"
    finally:
        delete(http, demo_token, server["id"])


def test_a_smaller_disk_is_refused(http: httpx.Client, demo_token: str) -> None:
    server = boot(http, demo_token, "rs-small-disk", flavor=SMALL)
    try:
        r = action(http, demo_token, server["id"], {"resize": {"flavorRef": TINY}})
        assert r.status_code == 400, r.text
        assert r.json()["badRequest"]["message"] == "Resize error: Unable to resize disk down."
    finally:
        delete(http, demo_token, server["id"])


def test_a_stopped_server_stays_stopped(http: httpx.Client, demo_token: str,
                                        admin_token: str) -> None:
    server = boot(http, demo_token, "rs-stopped")
    try:
        assert action(http, demo_token, server["id"], {"os-stop": None}).status_code == 202
        wait_settled(http, demo_token, server["id"], {"SHUTOFF"})
        resize(http, demo_token, server["id"], TINY)
        verify = wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
        assert verify["OS-EXT-STS:power_state"] == 4  # not started on the destination
        assert action(http, demo_token, server["id"],
                      {"confirmResize": None}).status_code == 204
        stopped = wait_settled(http, demo_token, server["id"], {"SHUTOFF"})
        assert stopped["flavor"]["original_name"] == "m1.tiny"
        # and a revert brings it back stopped
        resize(http, demo_token, server["id"], SMALL)
        wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
        assert action(http, demo_token, server["id"],
                      {"revertResize": None}).status_code == 202
        back = wait_settled(http, demo_token, server["id"], {"SHUTOFF"})
        assert back["flavor"]["original_name"] == "m1.tiny"
    finally:
        delete(http, demo_token, server["id"])


def test_volumes_and_ports_follow_the_server(http: httpx.Client, demo_token: str,
                                             admin_token: str, demo_conn: Connection,
                                             admin_conn: Connection) -> None:
    net = demo_conn.network.find_network("demo-net")
    assert net is not None
    server = boot(http, demo_token, "rs-wired", networks=[{"uuid": net.id}])
    volume = demo_conn.block_storage.create_volume(size=1, name="rs-data")
    try:
        demo_conn.block_storage.wait_for_status(volume, "available", wait=WAIT)
        demo_conn.compute.create_volume_attachment(server["id"], volume=volume)
        demo_conn.block_storage.wait_for_status(volume, "in-use", wait=WAIT)
        source = show(http, admin_token, server["id"])["OS-EXT-SRV-ATTR:host"]

        def connected_host() -> str | None:
            """The host cinder exports the volume to (its attachment's host, for admins)."""
            (attachment,) = admin_conn.block_storage.get_volume(volume).attachments
            assert attachment["server_id"] == server["id"]
            return attachment["host_name"]

        before = connected_host()
        resize(http, demo_token, server["id"], TINY)
        wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
        dest = show(http, admin_token, server["id"])["OS-EXT-SRV-ATTR:host"]
        assert dest != source
        # binding:host_id is for admins' eyes
        ports = list(admin_conn.network.ports(device_id=server["id"]))
        assert ports and all(p.binding_host_id == dest for p in ports)
        assert demo_conn.block_storage.get_volume(volume).status == "in-use"
        after = connected_host()
        assert (before, after) == (source, dest)
        guest = http.get(f"/labkit/v1/guests/{server['id']}",
                         headers=auth_header(admin_token)).json()
        assert guest["host"] == dest
        (plugged,) = guest["volumes"]
        assert plugged["volume_id"] == volume.id and f"/hosts/{dest}/" in plugged["path"]
        # revert: the volume and the ports come back to the source
        assert action(http, demo_token, server["id"],
                      {"revertResize": None}).status_code == 202
        wait_settled(http, demo_token, server["id"], {"ACTIVE"})
        assert all(p.binding_host_id == source
                   for p in admin_conn.network.ports(device_id=server["id"]))
        assert connected_host() == source
        assert demo_conn.block_storage.get_volume(volume).status == "in-use"
    finally:
        delete(http, demo_token, server["id"])
        demo_conn.block_storage.wait_for_status(volume, "available", wait=WAIT)
        demo_conn.block_storage.delete_volume(volume)


# -- the real openstack CLI ----------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_cli_resizes_confirms_and_reverts(openstack_cli: Run) -> None:
    ok(openstack_cli("server", "create", "--flavor", "m1.nano", "--image", "labkit-tiny",
                     "--nic", "none", "--wait", "rs-cli", "-f", "json"))
    try:
        ok(openstack_cli("server", "resize", "--flavor", "m1.tiny", "--wait", "rs-cli"))
        shown = json.loads(ok(openstack_cli("server", "show", "rs-cli", "-f", "json")))
        assert (shown["status"], shown["flavor"].split(" ")[0] if isinstance(
            shown["flavor"], str) else shown["flavor"]["name"]) == ("VERIFY_RESIZE", "m1.tiny")
        ok(openstack_cli("server", "resize", "confirm", "rs-cli"))
        shown = wait_for(lambda: json.loads(ok(openstack_cli("server", "show", "rs-cli",
                                                             "-f", "json"))),
                         lambda s: s["status"] == "ACTIVE", WAIT)
        assert shown["status"] == "ACTIVE"
        ok(openstack_cli("server", "resize", "--flavor", "m1.small", "--wait", "rs-cli"))
        ok(openstack_cli("server", "resize", "revert", "rs-cli"))
        shown = wait_for(lambda: json.loads(ok(openstack_cli("server", "show", "rs-cli",
                                                             "-f", "json"))),
                         lambda s: s["status"] == "ACTIVE", WAIT)
        flavor = shown["flavor"]
        assert (flavor if isinstance(flavor, str) else flavor["name"]).startswith("m1.tiny")
        refused = openstack_cli("server", "resize", "confirm", "rs-cli")
        assert refused.returncode != 0
        assert "while it is in vm_state active" in refused.stderr
    finally:
        ok(openstack_cli("server", "delete", "--wait", "rs-cli"))


# -- a restart in VERIFY_RESIZE (last: it restarts the module's cloud) --------------------


def test_verify_resize_survives_a_restart(cloud: CloudInfo, http: httpx.Client,
                                          demo_token: str, admin_token: str) -> None:
    first = boot(http, demo_token, "rs-restart-1")
    second = boot(http, demo_token, "rs-restart-2")
    for server in (first, second):
        resize(http, demo_token, server["id"], TINY)
        wait_settled(http, demo_token, server["id"], {"VERIFY_RESIZE"})
    stop_cloud(cloud.home)
    start_cloud(cloud.home)
    assert show(http, demo_token, first["id"])["status"] == "VERIFY_RESIZE"
    assert action(http, demo_token, first["id"], {"confirmResize": None}).status_code == 204
    assert action(http, demo_token, second["id"], {"revertResize": None}).status_code == 202
    confirmed = wait_settled(http, demo_token, first["id"], {"ACTIVE"})
    reverted = wait_settled(http, demo_token, second["id"], {"ACTIVE"})
    assert confirmed["flavor"]["original_name"] == "m1.tiny"
    assert reverted["flavor"]["original_name"] == "m1.nano"
    for server in (first, second):
        delete(http, demo_token, server["id"])


# -- in the test's own process: other settings, a cut-off resize ---------------------------


async def boot_in(cloud: Cloud, name: str, flavor: str = NANO) -> str:
    ctx = demo_context(cloud, f"req-boot-{name}")
    _, (uuid,) = ServersAPI(cloud.compute).create(
        ctx, CreateRequest(name=name, flavor_ref=flavor, image_ref=IMAGE, networks="none"))
    await settle(cloud)
    return uuid


async def settle(cloud: Cloud) -> None:
    await cloud.bus.drain(timeout=WAIT)


def row(cloud: Cloud, uuid: str) -> Any:
    with cloud.compute.database.session() as s:
        return cloud.compute.instances.get(s, uuid)


def failed_migration(cloud: Cloud, uuid: str) -> tuple[Any, str]:
    """A resize that failed: its one migration is in error and the instance has a fault.
    (the migration, the fault's message)"""
    nova = cloud.compute
    (migration,) = nova.migrations.for_instance(uuid)
    assert migration.status == "error"
    with nova.database.session() as s:
        fault = nova.instances.latest_fault(s, uuid)
    assert fault is not None
    return migration, fault.message


async def boot_on_a_lone_host(cloud: Cloud, name: str) -> tuple[str, str]:
    """A server booted, then every other compute host disabled: (its uuid, its host)."""
    uuid = await boot_in(cloud, name)
    host = row(cloud, uuid).host
    for other in cloud.compute.computes:
        if other != host:
            service = cloud.compute.hosts.compute_service(other)
            assert service is not None
            cloud.compute.hosts.set_service(service.uuid, disabled=True,
                                            disabled_reason="test")
    return uuid, host


def test_resize_to_the_same_host_when_allowed(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid, host = await boot_on_a_lone_host(cloud, "same-host")
        api, ctx = ServersAPI(nova), demo_context(cloud, "req-same-host")
        api.resize(ctx, uuid, TINY)
        await settle(cloud)
        instance = row(cloud, uuid)
        assert (instance.status, instance.host, instance.flavor["name"]) == (
            "VERIFY_RESIZE", host, "m1.tiny")
        (migration,) = nova.migrations.for_instance(uuid)
        assert (migration.source_compute, migration.dest_compute) == (host, host)
        node = nova.hosts.node_for(host).uuid
        # both on one provider: the old flavor for the migration, the new for the server
        assert nova.placement.allocations_for(migration.uuid) == {
            node: {"DISK_GB": 1, "MEMORY_MB": 128, "VCPU": 1}}
        assert nova.placement.allocations_for(uuid) == {
            node: {"DISK_GB": 1, "MEMORY_MB": 512, "VCPU": 1}}
        assert f"{uuid}_resize" in nova.computes[host].driver.guests  # type: ignore[attr-defined]
        api.confirm_resize(demo_context(cloud, "req-same-confirm"), uuid)
        await settle(cloud)
        assert row(cloud, uuid).status == "ACTIVE"
        assert nova.placement.allocations_for(migration.uuid) == {}
        assert f"{uuid}_resize" not in nova.computes[host].driver.guests  # type: ignore
        # and a revert on the same host brings the old guest back, alone
        api.resize(demo_context(cloud, "req-same-2"), uuid, SMALL)
        await settle(cloud)
        assert row(cloud, uuid).status == "VERIFY_RESIZE"
        api.revert_resize(demo_context(cloud, "req-same-revert"), uuid)
        await settle(cloud)
        instance = row(cloud, uuid)
        assert (instance.status, instance.host, instance.flavor["name"]) == (
            "ACTIVE", host, "m1.tiny")
        assert nova.placement.allocations_for(uuid) == {
            node: {"DISK_GB": 1, "MEMORY_MB": 512, "VCPU": 1}}
        guests = nova.computes[host].driver.guests  # type: ignore[attr-defined]
        assert uuid in guests and f"{uuid}_resize" not in guests
    in_cloud(tmp_path, scenario, allow_resize_to_same_host=True)


def test_without_same_host_a_lone_host_is_no_valid_host(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid, host = await boot_on_a_lone_host(cloud, "lone")
        ServersAPI(nova).resize(demo_context(cloud, "req-lone"), uuid, TINY)
        await settle(cloud)
        instance = row(cloud, uuid)
        assert (instance.status, instance.host, instance.flavor["name"]) == (
            "ACTIVE", host, "m1.nano")
        message = failed_migration(cloud, uuid)[1]
        assert message.startswith("No valid host was found.")
    in_cloud(tmp_path, scenario)


def test_auto_confirm_after_the_window(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid = await boot_in(cloud, "auto")
        ServersAPI(nova).resize(demo_context(cloud, "req-auto"), uuid, TINY)
        await settle(cloud)
        assert row(cloud, uuid).status == "VERIFY_RESIZE"
        for _ in range(100):  # the periodic task confirms it within window + interval
            await asyncio.sleep(0.1)
            if row(cloud, uuid).status == "ACTIVE":
                break
        await settle(cloud)
        assert row(cloud, uuid).status == "ACTIVE"
        (migration,) = nova.migrations.for_instance(uuid)
        assert migration.status == "confirmed"
        with nova.database.session() as s:
            actions = s.scalars(select(InstanceAction).where(
                InstanceAction.instance_uuid == uuid)).all()
            nova_user = cloud.identity.list("user", {"name": "nova"})[0].id
            assert [(a.action, a.user_id == nova_user) for a in actions][-1] == (
                "confirmResize", True)
    in_cloud(tmp_path, scenario, resize_confirm_window=1, report_interval=0.2)


def test_without_a_window_nothing_is_confirmed(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        uuid = await boot_in(cloud, "manual")
        ServersAPI(cloud.compute).resize(demo_context(cloud, "req-manual"), uuid, TINY)
        await settle(cloud)
        await asyncio.sleep(0.5)
        assert row(cloud, uuid).status == "VERIFY_RESIZE"
        # only a finished resize older than the cut-off is confirmed
        assert await confirm_unconfirmed(cloud.compute, 0.0) == []
    in_cloud(tmp_path, scenario, report_interval=0.1)


def test_quota_refuses_a_resize_that_grows_too_much(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid = await boot_in(cloud, "quota")
        ctx = demo_context(cloud, "req-quota")
        nova.quotas.set_limits(ctx.project_id or "", {"ram": 256})
        with pytest.raises(Exception) as refused:
            ServersAPI(nova).resize(ctx, uuid, TINY)
        assert getattr(refused.value, "status", None) == 403
        assert str(refused.value) == (
            "Quota exceeded for ram: Requested 384, but already used 128 of 256 ram")
        assert row(cloud, uuid).task_state is None
        with pytest.raises(BadRequest):
            ServersAPI(nova).resize(ctx, uuid, "no-such-flavor")
    in_cloud(tmp_path, scenario)


def test_a_resize_cut_off_by_a_restart_ends_in_error(tmp_path: Path) -> None:
    holder: dict[str, str] = {}

    async def cut_off(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid = await boot_in(cloud, "cut")
        instance = row(cloud, uuid)
        # the state a resize is in when the cloud stops at resize_migrating: the
        # migration holds the source's allocation, its messages are lost
        migration = nova.migrations.create(
            uuid, source_compute=instance.host, source_node=instance.node,
            dest_compute=next(h for h in nova.computes if h != instance.host),
            status="migrating", old_flavor=instance.flavor, new_flavor=instance.flavor,
            old_vm_state="active")
        ctx = demo_context(cloud, "req-cut")
        move_allocation(nova, ctx, "test", uuid, migration.uuid)
        set_state(nova.trace, nova.instances, ctx, uuid, task_state="resize_migrating")
        holder.update(uuid=uuid, host=instance.host or "")

    async def after(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid = holder["uuid"]
        instance = row(cloud, uuid)
        assert (instance.status, instance.task_state) == ("ERROR", None)
        migration, message = failed_migration(cloud, uuid)
        assert "restarted during the resize" in message
        # the source's allocation is the instance's again
        node = nova.hosts.node_for(holder["host"]).uuid
        assert nova.placement.allocations_for(migration.uuid) == {}
        assert nova.placement.allocations_for(uuid) == {
            node: {"DISK_GB": 1, "MEMORY_MB": 128, "VCPU": 1}}

    in_cloud(tmp_path, cut_off)
    in_cloud(tmp_path, after)


def test_deleting_a_resized_server_confirms_first(tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid = await boot_in(cloud, "doomed")
        source = row(cloud, uuid).host or ""
        api = ServersAPI(nova)
        api.resize(demo_context(cloud, "req-doomed"), uuid, TINY)
        await settle(cloud)
        (migration,) = nova.migrations.for_instance(uuid)
        assert nova.placement.allocations_for(migration.uuid)
        api.delete(demo_context(cloud, "req-doomed-delete"), uuid)
        await settle(cloud)
        assert nova.is_deleted(uuid)
        assert nova.migrations.get(migration.id).status == "confirmed"
        assert nova.placement.allocations_for(migration.uuid) == {}
        assert nova.placement.allocations_for(uuid) == {}
        guests = nova.computes[source].driver.guests  # type: ignore[attr-defined]
        assert f"{uuid}_resize" not in guests
    in_cloud(tmp_path, scenario)


def test_a_failing_hypervisor_leaves_error_and_the_migration_in_error(
        tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        uuid = await boot_in(cloud, "broken")
        dest = next(h for h in nova.computes if h != row(cloud, uuid).host)

        async def refuse(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("the hypervisor refused to define the guest")
        nova.computes[dest].driver.finish_migration = refuse  # type: ignore[method-assign]
        ServersAPI(nova).resize(demo_context(cloud, "req-broken"), uuid, TINY)
        await settle(cloud)
        instance = row(cloud, uuid)
        assert (instance.status, instance.task_state) == ("ERROR", None)
        assert failed_migration(cloud, uuid)[1] == "the hypervisor refused to define the guest"
        with nova.database.session() as s:
            events = s.scalars(select(InstanceActionEvent).join(
                InstanceAction, InstanceAction.id == InstanceActionEvent.action_id).where(
                InstanceAction.instance_uuid == uuid, InstanceAction.action == "resize")).all()
        assert [(e.event, e.result) for e in events] == [
            ("compute_prep_resize", "Success"), ("compute_resize_instance", "Success"),
            ("compute_finish_resize", "Error")]
    in_cloud(tmp_path, scenario)
