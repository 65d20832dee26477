"""Nova's side of volumes: os-volume_attachments, the attach and detach flow, os-brick.

The unit tests check the pieces (device names, the connector, the iSCSI login as
os-brick makes it, cinder's answers as nova reads them, the attachment's view per
microversion); the contract tests drive a cloud on the model driver through
openstacksdk and the openstack CLI, as a reader would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openstack
import pytest
from openstack.connection import Connection
from sqlalchemy import select

from conftest import (
    LAB_PASSWORDS,
    auth_header,
    connection,
    demo_context,
    in_cloud,
    start_cloud,
    stop_cloud,
    wait_for,
)
from labkit.cloud.app import Cloud
from labkit.cloud.bus import MessageContext
from labkit.cloud.compute import brick
from labkit.cloud.compute.api.errors import error_body
from labkit.cloud.compute.api.microversion import APIVersion
from labkit.cloud.compute.api.volume_attachments import attachment_view
from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.compute.block_devices import (
    BlockDeviceMapping,
    BlockDevices,
    device_letter,
    next_device_name,
)
from labkit.cloud.compute.cinder import (
    CinderConnectionFailed,
    CinderVolumeAPI,
    InvalidInput,
    NoVolumeAPI,
    VolumeAttachmentNotFound,
    VolumeNotFound,
    connection_info_of,
)
from labkit.cloud.compute.instances import InstanceAction, InstanceActionEvent
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.db import Database
from labkit.cloud.errors import Conflict, ServiceError
from labkit.cloud.ids import IdSource
from labkit.cloud.process import CloudInfo
from labkit.cloud.virt.driver import VolumeAttachFailed
from labkit.cloud.volume import TargetLoginFailed

# -- the pieces ---------------------------------------------------------------------------


def test_device_names_follow_the_root_disk_and_skip_the_used_ones() -> None:
    assert next_device_name([]) == "/dev/vdb"
    assert next_device_name(["/dev/vdb"]) == "/dev/vdc"
    assert next_device_name(["/dev/vdc"]) == "/dev/vdb"  # a freed name is used again
    assert [device_letter(i) for i in (0, 25, 26, 27, 701, 702)] == [
        "a", "z", "aa", "ab", "zz", "aaa"]
    taken = [f"/dev/vd{device_letter(i)}" for i in range(1, 26)]
    assert next_device_name(taken) == "/dev/vdaa"


def test_a_mapping_reserves_one_device_per_volume(tmp_path: Path) -> None:
    db = Database(tmp_path / "nova.sqlite", ComputeBase)
    blocks = BlockDevices(db, IdSource(deterministic=True))
    first = blocks.reserve("inst-1", "vol-1", tag="data")
    second = blocks.reserve("inst-1", "vol-2", delete_on_termination=True)
    assert first is not None and second is not None
    assert (first.device_name, second.device_name) == ("/dev/vdb", "/dev/vdc")
    assert blocks.reserve("inst-1", "vol-1") is None  # already has a mapping here
    assert blocks.reserve("inst-2", "vol-3").device_name == "/dev/vdb"  # type: ignore[union-attr]
    blocks.destroy(first.uuid)
    assert [b.volume_id for b in blocks.for_instance("inst-1")] == ["vol-2"]
    assert blocks.for_volume("vol-1") == []
    with db.session() as s:  # soft-deleted, as nova leaves its rows
        assert s.get(BlockDeviceMapping, first.id).deleted  # type: ignore[union-attr]
    db.close()


def test_the_connector_names_the_host_and_a_stable_initiator() -> None:
    record = {"name": "compute-1", "management_ip": "10.0.0.31", "cpu_arch": "x86_64"}
    connector = brick.connector_properties(record)
    assert connector == {
        "platform": "x86_64", "os_type": "linux", "ip": "10.0.0.31", "host": "compute-1",
        "initiator": brick.initiator_name("compute-1"), "multipath": False,
        "enforce_multipath": False, "do_local_attach": False}
    assert connector["initiator"].startswith("iqn.2004-10.com.ubuntu:01:")
    assert brick.initiator_name("compute-1") == brick.initiator_name("compute-1")
    assert brick.initiator_name("compute-1") != brick.initiator_name("compute-2")


ISCSI_INFO = {"driver_volume_type": "iscsi", "data": {
    "target_portal": "10.0.0.11:3260", "target_iqn": "iqn.2010-10.org.openstack:volume-v1",
    "target_lun": 1, "auth_method": "CHAP", "auth_username": "u", "auth_password": "p"}}


def _fake_cloud(home: Path, login: Callable[[dict[str, Any], str], Path]) -> Any:
    return SimpleNamespace(settings=SimpleNamespace(home=home),
                           volume=SimpleNamespace(targets=SimpleNamespace(login=login)))


def test_brick_logs_in_and_makes_the_hosts_by_path_device(tmp_path: Path) -> None:
    backing = tmp_path / "volume-v1"
    backing.write_bytes(b"\0" * 512)
    seen: list[tuple[dict[str, Any], str]] = []

    def login(data: dict[str, Any], initiator: str) -> Path:
        seen.append((data, initiator))
        return backing

    cloud = _fake_cloud(tmp_path, login)
    device = brick.connect_volume(cloud, "compute-1", ISCSI_INFO)
    path = Path(device["path"])
    assert device["type"] == "block"
    assert path == (tmp_path / "hosts/compute-1/dev/disk/by-path" /
                    "ip-10.0.0.11:3260-iscsi-iqn.2010-10.org.openstack:volume-v1-lun-1")
    assert path.is_symlink() and path.resolve() == backing.resolve()
    assert seen == [(ISCSI_INFO["data"], brick.initiator_name("compute-1"))]
    # a second login (a restart) finds the device there and makes it again
    assert brick.connect_volume(cloud, "compute-1", ISCSI_INFO) == device
    brick.disconnect_volume(cloud, "compute-1", ISCSI_INFO)
    assert not path.is_symlink()
    brick.disconnect_volume(cloud, "compute-1", ISCSI_INFO)  # already gone: no error
    assert backing.exists()


def test_brick_refuses_what_it_cannot_log_in_to(tmp_path: Path) -> None:
    def refuse(data: dict[str, Any], initiator: str) -> Path:
        raise TargetLoginFailed("authorization failure")

    with pytest.raises(brick.BrickError, match="Could not login to any iSCSI portal: "
                                               "authorization failure"):
        brick.connect_volume(_fake_cloud(tmp_path, refuse), "compute-1", ISCSI_INFO)
    with pytest.raises(brick.BrickError, match="Invalid InitiatorConnector protocol "
                                               "specified rbd"):
        brick.connect_volume(_fake_cloud(tmp_path, refuse), "compute-1",
                             {"driver_volume_type": "rbd", "data": {}})
    assert not (tmp_path / "hosts").exists()


def test_cinders_flat_connection_info_gets_its_data_back() -> None:
    attachment = {"id": "a1", "status": "attaching", "instance": "i1", "volume_id": "v1",
                  "attached_at": None, "detached_at": None, "attach_mode": "rw",
                  "connection_info": {"driver_volume_type": "iscsi", "attachment_id": "a1",
                                      **ISCSI_INFO["data"]}}
    info = connection_info_of(attachment, "v1")
    assert info["driver_volume_type"] == "iscsi"
    assert info["data"] == ISCSI_INFO["data"]
    assert (info["serial"], info["status"], info["instance"]) == ("v1", "attaching", "i1")
    assert "attach_mode" not in info and "id" not in info
    nested = connection_info_of({"connection_info": ISCSI_INFO}, "v1")
    assert nested == {**ISCSI_INFO, "serial": "v1"}


class _Answers:
    """A ServiceClient that answers each request from a list, and keeps what was sent."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str, Any, dict[str, str]]] = []

    async def send(self, method: str, path: str, *, request_id: str | None = None,
                   json: Any = None, params: Any = None, component: str | None = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        self.sent.append((method, path, json, headers or {}))
        status, body = self.answers.pop(0)
        return httpx.Response(status, json=body,
                              headers={"x-openstack-request-id": "req-cinder"})


CTX = MessageContext(request_id="req-1", source="nova-api", project_id="p1")


def test_cinders_refusals_become_novas_errors_with_cinders_words() -> None:
    async def scenario() -> None:
        client = _Answers(
            (404, {"itemNotFound": {"code": 404, "message": "Volume v9 could not be found."}}),
            (400, {"badRequest": {"code": 400, "message": "Invalid volume: Volume v1 status "
                                  "must be available or downloading to reserve, but the "
                                  "current status is in-use."}}),
            (404, {"itemNotFound": {"code": 404, "message": "gone"}}),
            (404, {"itemNotFound": {"code": 404, "message": "gone"}}))
        api = CinderVolumeAPI(client)  # type: ignore[arg-type]
        with pytest.raises(VolumeNotFound, match="^Volume v9 could not be found.$"):
            await api.get(CTX, "v9")
        with pytest.raises(InvalidInput) as refused:
            await api.attachment_create(CTX, "v1", "i1")
        assert refused.value.message == (
            "Invalid input received: Invalid volume: Volume v1 status must be available or "
            "downloading to reserve, but the current status is in-use. (HTTP 400) "
            "(Request-ID: req-cinder)")
        with pytest.raises(VolumeAttachmentNotFound):
            await api.attachment_complete(CTX, "a9")
        await api.attachment_delete(CTX, "a9")  # already gone: nova goes on
        assert [(m, p) for m, p, _, _ in client.sent] == [
            ("GET", "/volume/v3/p1/volumes/v9"), ("POST", "/volume/v3/p1/attachments"),
            ("POST", "/volume/v3/p1/attachments/a9/action"),
            ("DELETE", "/volume/v3/p1/attachments/a9")]
        assert client.sent[1][2] == {"attachment": {"volume_uuid": "v1",
                                                    "instance_uuid": "i1", "connector": None}}
        assert client.sent[2][2] == {"os-complete": None}
        assert all(h["OpenStack-API-Version"] == "volume 3.44" for *_, h in client.sent)
    asyncio.run(scenario())


def test_without_cinder_every_call_says_cinder_cannot_be_reached() -> None:
    with pytest.raises(Exception, match="^Connection to cinder host failed: ") as failed:
        asyncio.run(NoVolumeAPI().get(CTX, "v1"))
    assert getattr(failed.value, "status", None) == 500


def test_an_attachment_shows_what_each_microversion_adds() -> None:
    bdm = BlockDeviceMapping(uuid="b1", instance_uuid="i1", volume_id="v1",
                             attachment_id="a1", device_name="/dev/vdb", tag="data",
                             delete_on_termination=True)
    assert attachment_view(bdm, APIVersion(2, 1)) == {
        "id": "v1", "volumeId": "v1", "serverId": "i1", "device": "/dev/vdb"}
    assert attachment_view(bdm, APIVersion(2, 70))["tag"] == "data"
    assert "delete_on_termination" not in attachment_view(bdm, APIVersion(2, 78))
    assert attachment_view(bdm, APIVersion(2, 79))["delete_on_termination"] is True
    newest = attachment_view(bdm, APIVersion(2, 89))
    assert "id" not in newest
    assert (newest["attachment_id"], newest["bdm_uuid"]) == ("a1", "b1")


# -- the contract, on a cloud with the model driver ---------------------------------------
IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny, fixed in data/images.yaml
NANO, XLARGE = "42", "5"
WAIT = 30  # a guard against a hung attach, never a claim about speed
SERVERS = "/compute/v2.1/servers"


def compute(token: str, version: str = "2.79") -> dict[str, str]:
    return {**auth_header(token), "OpenStack-API-Version": f"compute {version}"}


def boot(conn: Connection, name: str, flavor: str = NANO) -> Any:
    server = conn.compute.create_server(name=name, flavor_id=flavor, image_id=IMAGE,
                                        networks="none")
    return conn.compute.wait_for_server(server, interval=0.1, wait=WAIT)


def make_volume(conn: Connection, name: str, size: int = 1) -> Any:
    volume = conn.block_storage.create_volume(size=size, name=name)
    return conn.block_storage.wait_for_status(volume, "available", failures=["error"],
                                              interval=0.1, wait=WAIT)


def wait_volume(conn: Connection, volume_id: str, status: str) -> Any:
    volume = conn.block_storage.get_volume(volume_id)
    return conn.block_storage.wait_for_status(volume, status, failures=["error"],
                                              interval=0.1, wait=WAIT)


def attachments_of(http: httpx.Client, token: str, server_id: str) -> list[dict[str, Any]]:
    r = http.get(f"{SERVERS}/{server_id}/os-volume_attachments", headers=compute(token))
    assert r.status_code == 200, r.text
    return r.json()["volumeAttachments"]


def actions_of(http: httpx.Client, token: str, server_id: str) -> list[dict[str, Any]]:
    r = http.get(f"{SERVERS}/{server_id}/os-instance-actions", headers=compute(token))
    assert r.status_code == 200, r.text
    return r.json()["instanceActions"]


def action_events(http: httpx.Client, token: str, server_id: str,
                  request_id: str) -> list[dict[str, Any]]:
    r = http.get(f"{SERVERS}/{server_id}/os-instance-actions/{request_id}",
                 headers=compute(token))
    assert r.status_code == 200, r.text
    return r.json()["instanceAction"]["events"]


@pytest.fixture(scope="module")
def server(demo_conn: Connection) -> Iterator[Any]:
    """One ACTIVE server the attach tests share (each leaves it with no volume)."""
    server = boot(demo_conn, "vol-vm")
    yield server
    demo_conn.compute.delete_server(server, ignore_missing=True)


def test_sdk_attach_lists_shows_and_detaches_a_volume(
        demo_conn: Connection, server: Any, http: httpx.Client, demo_token: str) -> None:
    volume = make_volume(demo_conn, "sdk-data")
    attachment = demo_conn.compute.create_volume_attachment(server, volume=volume)
    try:
        attached_and_shown(demo_conn, server, volume, attachment)
    finally:
        demo_conn.compute.delete_volume_attachment(server, volume.id, ignore_missing=False)
    available = wait_volume(demo_conn, volume.id, "available")
    assert available.attachments == []
    assert list(demo_conn.compute.volume_attachments(server)) == []
    assert demo_conn.compute.get_server(server.id).attached_volumes == []
    events = {a["action"]: action_events(http, demo_token, server.id, a["request_id"])
              for a in actions_of(http, demo_token, server.id)}
    assert [(e["event"], e["result"]) for e in events["attach_volume"]] == [
        ("compute_attach_volume", "Success")]
    assert [(e["event"], e["result"]) for e in events["detach_volume"]] == [
        ("compute_detach_volume", "Success")]
    demo_conn.block_storage.delete_volume(volume, force=False)
    demo_conn.block_storage.wait_for_delete(volume, interval=0.1, wait=WAIT)


def attached_and_shown(demo_conn: Connection, server: Any, volume: Any,
                       attachment: Any) -> None:
    assert (attachment.volume_id, attachment.device) == (volume.id, "/dev/vdb")
    in_use = wait_volume(demo_conn, volume.id, "in-use")
    [seen] = in_use.attachments
    assert (seen["server_id"], seen["device"], seen["volume_id"]) == (
        server.id, "/dev/vdb", volume.id)
    assert seen["host_name"] is None  # cinder shows the host to admins only
    assert seen["attachment_id"] and seen["attached_at"]

    [listed] = list(demo_conn.compute.volume_attachments(server))
    assert (listed.volume_id, listed.device, listed.delete_on_termination, listed.tag) == (
        volume.id, "/dev/vdb", False, None)
    shown = demo_conn.compute.get_volume_attachment(server, volume.id)
    assert shown.device == "/dev/vdb"
    attached = demo_conn.compute.get_server(server.id).attached_volumes
    assert [(a.id, a.delete_on_termination) for a in attached] == [(volume.id, False)]


def test_the_admin_sees_the_attachment_with_host_and_time(
        demo_conn: Connection, admin_conn: Connection, server: Any) -> None:
    volume = make_volume(demo_conn, "host-data")
    demo_conn.compute.create_volume_attachment(server, volume=volume)
    wait_volume(demo_conn, volume.id, "in-use")
    try:
        host = admin_conn.compute.get_server(server.id).compute_host
        [seen] = admin_conn.block_storage.get_volume(volume.id).attachments
        assert (seen["server_id"], seen["host_name"], seen["device"]) == (
            server.id, host, "/dev/vdb")
    finally:
        demo_conn.compute.delete_volume_attachment(server, volume.id)
        wait_volume(demo_conn, volume.id, "available")
        demo_conn.block_storage.delete_volume(volume)


def test_device_names_go_vdb_then_vdc_and_a_freed_one_comes_back(
        demo_conn: Connection, server: Any) -> None:
    volumes = [make_volume(demo_conn, f"dev-{i}") for i in range(3)]
    first, second, third = volumes
    try:
        devices = []
        for volume in (first, second):
            devices.append(demo_conn.compute.create_volume_attachment(
                server, volume=volume).device)
            wait_volume(demo_conn, volume.id, "in-use")
        assert devices == ["/dev/vdb", "/dev/vdc"]
        demo_conn.compute.delete_volume_attachment(server, first.id)
        wait_volume(demo_conn, first.id, "available")
        again = demo_conn.compute.create_volume_attachment(server, volume=third)
        assert again.device == "/dev/vdb"
        wait_volume(demo_conn, third.id, "in-use")
    finally:
        for volume in volumes:
            demo_conn.compute.delete_volume_attachment(server, volume.id)
        for volume in volumes:
            wait_volume(demo_conn, volume.id, "available")
            demo_conn.block_storage.delete_volume(volume)


def test_the_trace_of_an_attach_has_novas_steps_in_order(
        demo_conn: Connection, server: Any, http: httpx.Client, demo_token: str,
        admin_token: str) -> None:
    volume = make_volume(demo_conn, "traced")
    demo_conn.compute.create_volume_attachment(server, volume=volume)
    wait_volume(demo_conn, volume.id, "in-use")
    try:
        # the newest attach (actions are listed newest first)
        action = next(a for a in actions_of(http, demo_token, server.id)
                      if a["action"] == "attach_volume")
        r = http.get("/labkit/v1/trace", params={"request_id": action["request_id"]},
                     headers=auth_header(admin_token))
        assert r.status_code == 200, r.text
        events = sorted(r.json()["events"], key=lambda e: (e["time"], e["seq"]))

        def first(match: Callable[[dict[str, Any]], bool], what: str) -> int:
            found = [i for i, e in enumerate(events) if match(e)]
            assert found, f"no {what} in the trace: {[e['summary'] for e in events]}"
            return found[0]

        def rpc(method: str, kind: str) -> Callable[[dict[str, Any]], bool]:
            return lambda e: (e["kind"] == "rpc" and e["detail"].get("method") == method
                              and e["detail"].get("type") == kind)

        def api(method: str, path_part: str, source: str) -> Callable[[dict[str, Any]], bool]:
            return lambda e: (e["kind"] == "api" and e["detail"].get("method") == method
                              and path_part in e["detail"].get("path", "")
                              and e["source"].startswith(source))

        steps = [
            first(rpc("reserve_block_device_name", "call"), "the reserve call"),
            first(api("POST", "/attachments", "nova-api"), "the attachment create"),
            first(rpc("attach_volume", "cast"), "the attach cast"),
            first(api("PUT", "/attachments/", "nova-compute@"), "the attachment update"),
            first(lambda e: e["target"].startswith("os-brick@")
                  and e["summary"].startswith("connect_volume iscsi"), "os-brick's login"),
            first(lambda e: e["target"].startswith("model driver@")
                  and e["summary"].startswith("attach_volume"), "the driver's attach"),
            first(lambda e: api("POST", "/action", "nova-compute@")(e)
                  and "/attachments/" in e["detail"]["path"], "os-complete"),
        ]
        assert steps == sorted(steps), [events[i]["summary"] for i in steps]
        brick_step = events[steps[4]]["detail"]
        assert brick_step["target_iqn"] == f"iqn.2010-10.org.openstack:volume-{volume.id}"
        assert brick_step["path"].endswith(
            f"-iscsi-iqn.2010-10.org.openstack:volume-{volume.id}-lun-1")
    finally:
        demo_conn.compute.delete_volume_attachment(server, volume.id)
        wait_volume(demo_conn, volume.id, "available")
        demo_conn.block_storage.delete_volume(volume)


def test_the_guest_gets_the_hosts_iscsi_device_with_the_volume_as_serial(
        demo_conn: Connection, server: Any, http: httpx.Client, admin_token: str,
        cloud: CloudInfo) -> None:
    volume = make_volume(demo_conn, "plugged")
    demo_conn.compute.create_volume_attachment(server, volume=volume)
    wait_volume(demo_conn, volume.id, "in-use")
    try:
        r = http.get(f"/labkit/v1/guests/{server.id}", headers=auth_header(admin_token))
        assert r.status_code == 200, r.text
        guest = r.json()
        [plugged] = guest["volumes"]
        assert (plugged["volume_id"], plugged["device"], plugged["serial"]) == (
            volume.id, "/dev/vdb", volume.id)
        path = Path(plugged["path"])
        assert path.parent == cloud.home / "hosts" / guest["host"] / "dev/disk/by-path"
        assert path.is_symlink()
        assert path.resolve().name == f"volume-{volume.id}"
    finally:
        demo_conn.compute.delete_volume_attachment(server, volume.id)
        wait_volume(demo_conn, volume.id, "available")
        demo_conn.block_storage.delete_volume(volume)
    assert not path.is_symlink()  # os-brick logged out at the detach


def _unchanged(demo_conn: Connection, http: httpx.Client, token: str, server_id: str,
               volume_id: str, actions_before: int) -> None:
    volume = demo_conn.block_storage.get_volume(volume_id)
    assert (volume.status, volume.attachments) == ("available", [])
    assert attachments_of(http, token, server_id) == []
    assert len(actions_of(http, token, server_id)) == actions_before


def test_refusals_answer_novas_errors_and_change_nothing(
        demo_conn: Connection, server: Any, http: httpx.Client, demo_token: str) -> None:
    url = f"{SERVERS}/{server.id}/os-volume_attachments"
    volume = make_volume(demo_conn, "refused")
    before = len(actions_of(http, demo_token, server.id))
    try:
        missing = "00000000-0000-4000-8000-000000000000"
        r = http.post(url, json={"volumeAttachment": {"volumeId": missing}},
                      headers=compute(demo_token))
        assert (r.status_code, r.json()) == (404, {"itemNotFound": {
            "code": 404, "message": f"Volume {missing} could not be found."}})
        r = http.post(url, json={"volumeAttachment": {"volumeId": "not-a-uuid"}},
                      headers=compute(demo_token))
        assert r.status_code == 400 and "is not a 'uuid'" in r.json()["badRequest"]["message"]
        r = http.post(url, json={"volumeAttachment": {"volumeId": volume.id,
                                                      "device": "vdb"}},
                      headers=compute(demo_token))
        assert r.status_code == 400, r.text
        r = http.post(url, json={"volumeAttachment": {"volumeId": volume.id, "tag": "t"}},
                      headers=compute(demo_token, "2.48"))
        assert r.status_code == 400 and "'tag' was unexpected" in r.text
        r = http.delete(f"{url}/{volume.id}", headers=compute(demo_token))
        assert (r.status_code, r.json()["itemNotFound"]["message"]) == (
            404, f"Instance {server.id} is not attached to volume {volume.id}")
        _unchanged(demo_conn, http, demo_token, server.id, volume.id, before)
    finally:
        demo_conn.block_storage.delete_volume(volume)


def test_a_server_in_error_cannot_attach(demo_conn: Connection, http: httpx.Client,
                                         demo_token: str) -> None:
    broken = demo_conn.compute.create_server(name="vol-broken", flavor_id=XLARGE,
                                             image_id=IMAGE, networks="none")
    broken = demo_conn.compute.wait_for_server(broken, status="ERROR", interval=0.1,
                                               wait=WAIT)
    volume = make_volume(demo_conn, "for-broken")
    before = len(actions_of(http, demo_token, broken.id))
    try:
        r = http.post(f"{SERVERS}/{broken.id}/os-volume_attachments",
                      json={"volumeAttachment": {"volumeId": volume.id}},
                      headers=compute(demo_token))
        assert (r.status_code, r.json()) == (409, {"conflictingRequest": {
            "code": 409, "message": f"Cannot 'attach_volume' instance {broken.id} while it "
                                    f"is in vm_state error"}})
        _unchanged(demo_conn, http, demo_token, broken.id, volume.id, before)
    finally:
        demo_conn.block_storage.delete_volume(volume)
        demo_conn.compute.delete_server(broken)


def test_a_volume_attached_here_or_elsewhere_is_refused(
        demo_conn: Connection, server: Any, http: httpx.Client, demo_token: str) -> None:
    other = boot(demo_conn, "vol-other")
    volume = make_volume(demo_conn, "taken")
    demo_conn.compute.create_volume_attachment(server, volume=volume)
    wait_volume(demo_conn, volume.id, "in-use")
    try:
        for target in (server, other):
            before = len(actions_of(http, demo_token, target.id))
            r = http.post(f"{SERVERS}/{target.id}/os-volume_attachments",
                          json={"volumeAttachment": {"volumeId": volume.id}},
                          headers=compute(demo_token))
            assert (r.status_code, r.json()) == (400, {"badRequest": {
                "code": 400, "message": f"Invalid volume: volume {volume.id} is already "
                                        f"attached to instances: {server.id}"}})
            assert len(actions_of(http, demo_token, target.id)) == before
        assert attachments_of(http, demo_token, other.id) == []
        assert [a["device"] for a in attachments_of(http, demo_token, server.id)] == [
            "/dev/vdb"]
        still = demo_conn.block_storage.get_volume(volume.id)
        assert still.status == "in-use" and len(still.attachments) == 1
    finally:
        demo_conn.compute.delete_volume_attachment(server, volume.id)
        wait_volume(demo_conn, volume.id, "available")
        demo_conn.block_storage.delete_volume(volume)
        demo_conn.compute.delete_server(other)


def test_a_volume_cinder_will_not_reserve_is_refused_with_cinders_words(
        demo_conn: Connection, admin_conn: Connection, server: Any, http: httpx.Client,
        demo_token: str) -> None:
    volume = make_volume(demo_conn, "stuck")
    admin_conn.block_storage.reset_volume_status(volume, status="error",
                                                 attach_status=None, migration_status=None)
    try:
        r = http.post(f"{SERVERS}/{server.id}/os-volume_attachments",
                      json={"volumeAttachment": {"volumeId": volume.id}},
                      headers=compute(demo_token))
        assert r.status_code == 400, r.text
        message = r.json()["badRequest"]["message"]
        assert message.startswith("Invalid input received: Invalid volume: "), message
        assert "(HTTP 400) (Request-ID: req-" in message
        assert attachments_of(http, demo_token, server.id) == []
        assert demo_conn.block_storage.get_volume(volume.id).attachments == []
    finally:
        admin_conn.block_storage.reset_volume_status(volume, status="available",
                                                     attach_status=None,
                                                     migration_status=None)
        demo_conn.block_storage.delete_volume(volume)


def test_another_projects_volume_is_not_found(
        demo_conn: Connection, server: Any, http: httpx.Client, demo_token: str,
        cloud: CloudInfo) -> None:
    alt = openstack.connect(auth_url=f"{cloud.url}/identity/v3", username="alt_demo",
                            password=LAB_PASSWORDS["alt_demo"], project_name="alt_demo",
                            user_domain_name="Default", project_domain_name="Default",
                            load_yaml_config=False, load_envvars=False)
    try:
        theirs = make_volume(alt, "theirs")
        r = http.post(f"{SERVERS}/{server.id}/os-volume_attachments",
                      json={"volumeAttachment": {"volumeId": theirs.id}},
                      headers=compute(demo_token))
        assert (r.status_code, r.json()["itemNotFound"]["message"]) == (
            404, f"Volume {theirs.id} could not be found.")
        assert alt.block_storage.get_volume(theirs.id).status == "available"
        alt.block_storage.delete_volume(theirs)
    finally:
        alt.close()


def test_tag_and_delete_on_termination_follow_the_microversion(
        demo_conn: Connection, server: Any, http: httpx.Client, demo_token: str) -> None:
    volume = make_volume(demo_conn, "tagged")
    url = f"{SERVERS}/{server.id}/os-volume_attachments"
    r = http.post(url, json={"volumeAttachment": {
        "volumeId": volume.id, "device": "/dev/sdz", "tag": "data",
        "delete_on_termination": True}}, headers=compute(demo_token, "2.79"))
    assert r.status_code == 200, r.text
    # the device asked for is ignored, as nova's libvirt driver ignores it
    assert r.json() == {"volumeAttachment": {
        "id": volume.id, "serverId": server.id, "volumeId": volume.id,
        "device": "/dev/vdb", "tag": "data", "delete_on_termination": True}}
    wait_volume(demo_conn, volume.id, "in-use")
    try:
        for version, extra in (("2.1", {}), ("2.70", {"tag": "data"}),
                               ("2.79", {"tag": "data", "delete_on_termination": True})):
            r = http.get(f"{url}/{volume.id}", headers=compute(demo_token, version))
            assert r.json()["volumeAttachment"] == {
                "id": volume.id, "serverId": server.id, "volumeId": volume.id,
                "device": "/dev/vdb", **extra}, version
        r = http.get(f"{SERVERS}/{server.id}", headers=compute(demo_token, "2.1"))
        assert r.json()["server"]["os-extended-volumes:volumes_attached"] == [
            {"id": volume.id}]
        r = http.get(f"{url}?offset=1", headers=compute(demo_token))
        assert r.json()["volumeAttachments"] == []
        r = http.get(f"{url}?bogus=1", headers=compute(demo_token))
        assert r.status_code == 400
    finally:
        demo_conn.compute.delete_volume_attachment(server, volume.id)
        wait_volume(demo_conn, volume.id, "available")
        demo_conn.block_storage.delete_volume(volume)


def test_deleting_a_server_detaches_its_volumes(
        demo_conn: Connection, http: httpx.Client, demo_token: str) -> None:
    doomed = boot(demo_conn, "vol-doomed")
    kept, dropped = make_volume(demo_conn, "kept"), make_volume(demo_conn, "dropped")
    demo_conn.compute.create_volume_attachment(doomed, volume=kept)
    r = http.post(f"{SERVERS}/{doomed.id}/os-volume_attachments",
                  json={"volumeAttachment": {"volumeId": dropped.id,
                                             "delete_on_termination": True}},
                  headers=compute(demo_token))
    assert r.status_code == 200, r.text
    for volume in (kept, dropped):
        wait_volume(demo_conn, volume.id, "in-use")
    demo_conn.compute.delete_server(doomed)
    demo_conn.compute.wait_for_delete(doomed, interval=0.1, wait=WAIT)
    back = wait_volume(demo_conn, kept.id, "available")
    assert back.attachments == []
    demo_conn.block_storage.wait_for_delete(dropped, interval=0.1, wait=WAIT)
    demo_conn.block_storage.delete_volume(kept)


def test_the_cloud_layer_attaches_and_detaches_with_wait(
        demo_conn: Connection, server: Any) -> None:
    volume = make_volume(demo_conn, "cloud-layer")
    attachment = demo_conn.attach_volume(server, volume, wait=True, timeout=WAIT)
    assert attachment.device == "/dev/vdb"
    assert demo_conn.get_volume_attach_device(demo_conn.get_volume(volume.id),
                                              server.id) == "/dev/vdb"
    demo_conn.detach_volume(server, volume, wait=True, timeout=WAIT)
    assert demo_conn.get_volume(volume.id).status == "available"
    demo_conn.block_storage.delete_volume(volume)


# -- the CLI ------------------------------------------------------------------------------

Run = Callable[..., Any]


def ok(result: Any) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def test_the_cli_adds_lists_and_removes_a_volume(openstack_cli: Run, server: Any,
                                                 demo_conn: Connection) -> None:
    volume = json.loads(ok(openstack_cli("volume", "create", "--size", "1", "cli-data",
                                         "-f", "json")))
    wait_volume(demo_conn, volume["id"], "available")
    ok(openstack_cli("server", "add", "volume", server.id, "cli-data"))
    wait_volume(demo_conn, volume["id"], "in-use")
    listed = json.loads(ok(openstack_cli("volume", "list", "-f", "json")))
    row = next(r for r in listed if r["ID"] == volume["id"])
    assert row["Status"] == "in-use"
    assert [(a["server_id"], a["device"]) for a in row["Attached to"]] == [
        (server.id, "/dev/vdb")]
    table = ok(openstack_cli("volume", "list"))
    assert "Attached to vol-vm on /dev/vdb" in table
    attached = json.loads(ok(openstack_cli("server", "volume", "list", server.id,
                                           "-f", "json")))
    assert [(a["Volume ID"], a["Device"], a["Server ID"]) for a in attached] == [
        (volume["id"], "/dev/vdb", server.id)]
    ok(openstack_cli("server", "remove", "volume", server.id, "cli-data"))
    wait_volume(demo_conn, volume["id"], "available")
    assert json.loads(ok(openstack_cli("server", "volume", "list", server.id,
                                       "-f", "json"))) == []
    ok(openstack_cli("volume", "delete", "cli-data"))
    gone = wait_for(lambda: demo_conn.block_storage.find_volume(volume["id"]),
                    lambda found: found is None, timeout=WAIT)
    assert gone is None


# -- restart and no cinder ----------------------------------------------------------------


def test_attachments_survive_a_restart_of_the_cloud(tmp_path: Path) -> None:
    home = tmp_path / "home"
    info = start_cloud(home)
    try:
        conn = connection(info, "labkit")
        booted = boot(conn, "restarted")
        volume = make_volume(conn, "kept-across")
        conn.compute.create_volume_attachment(booted, volume=volume)
        wait_volume(conn, volume.id, "in-use")
        conn.close()
        stop_cloud(home)
        info = start_cloud(home)
        conn = connection(info, "labkit")
        admin = connection(info, "labkit-admin")
        [kept] = list(conn.compute.volume_attachments(booted))
        assert (kept.volume_id, kept.device) == (volume.id, "/dev/vdb")
        assert conn.block_storage.get_volume(volume.id).status == "in-use"
        with httpx.Client(base_url=info.url, timeout=30) as http:
            token = admin.session.get_token()
            guest = http.get(f"/labkit/v1/guests/{booted.id}",
                             headers=auth_header(token)).json()
        # the model driver forgot its guest's volumes: the compute host plugged it again
        assert [(v["volume_id"], v["device"]) for v in guest["volumes"]] == [
            (volume.id, "/dev/vdb")]
        assert os.path.islink(guest["volumes"][0]["path"])
        second = make_volume(conn, "after-restart")
        assert conn.compute.create_volume_attachment(booted, volume=second).device == \
            "/dev/vdc"
        wait_volume(conn, second.id, "in-use")
        for v in (volume, second):
            conn.compute.delete_volume_attachment(booted, v.id)
            wait_volume(conn, v.id, "available")
        conn.close()
        admin.close()
    finally:
        stop_cloud(home)


def test_without_a_volume_service_attach_says_cinder_cannot_be_reached(
        tmp_path: Path) -> None:
    async def scenario(cloud: Cloud) -> dict[str, Any]:
        nova = cloud.compute
        nova.volume = NoVolumeAPI()  # what nova has when the cloud mounts no cinder
        ctx = demo_context(cloud, "req-novol")
        servers = ServersAPI(nova)
        _, [uuid] = servers.create(ctx, CreateRequest(name="lonely", flavor_ref=NANO,
                                                      image_ref=IMAGE, networks="none"))
        # still building: nova refuses before it asks cinder anything
        with pytest.raises(Conflict) as building:
            await servers.attach_volume(ctx, uuid, "00000000-0000-4000-8000-000000000001")
        assert building.value.message == (f"Cannot 'attach_volume' instance {uuid} while "
                                          f"it is in vm_state building")
        await cloud.bus.drain()
        deadline = time.monotonic() + WAIT
        while servers.instance(ctx, uuid).vm_state != "active":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        with pytest.raises(CinderConnectionFailed) as failed:
            await servers.attach_volume(ctx, uuid, "00000000-0000-4000-8000-000000000001")
        assert nova.block_devices.for_instance(uuid) == []
        error: ServiceError = failed.value
        return error_body(error)

    assert in_cloud(tmp_path, scenario) == {"computeFault": {
        "code": 500, "message": "Connection to cinder host failed: this cloud runs no "
                                "block storage service (cinder)"}}


def test_a_failed_plug_rolls_the_attach_back_and_a_refused_unplug_the_detach(
        tmp_path: Path) -> None:
    """The hypervisor refusing: the attach is undone (the volume available, no mapping,
    no device on the host, the event in Error with a fault); a detach the guest refuses
    leaves the volume in-use and attached."""
    async def scenario(cloud: Cloud) -> None:
        nova = cloud.compute
        # an admin acting in the demo project: the volume below is made by nova's own user
        ctx = dataclasses.replace(demo_context(cloud, "req-fail"), is_admin=True)
        servers = ServersAPI(nova)
        _, [uuid] = servers.create(ctx, CreateRequest(name="fragile", flavor_ref=NANO,
                                                      image_ref=IMAGE, networks="none"))
        client = nova.service_client()
        made = await client.send("POST", f"/volume/v3/{ctx.project_id}/volumes",
                                 json={"volume": {"size": 1, "name": "victim"}})
        assert made.status_code == 202, made.text
        volume_id = made.json()["volume"]["id"]

        async def status() -> tuple[str, list[Any]]:
            got = (await client.send("GET", f"/volume/v3/{ctx.project_id}/volumes/"
                                     f"{volume_id}")).json()["volume"]
            return got["status"], got["attachments"]

        deadline = time.monotonic() + WAIT
        while (servers.instance(ctx, uuid).vm_state != "active"
               or (await status())[0] != "available"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        driver = nova.computes[servers.instance(ctx, uuid).host].driver

        async def refuse_plug(uuid: str, volume: Any) -> None:
            raise VolumeAttachFailed("the model hypervisor was told to refuse the disk")

        plug = driver.attach_volume
        driver.attach_volume = refuse_plug  # type: ignore[method-assign]
        bdm = await servers.attach_volume(ctx, uuid, volume_id)
        await cloud.bus.drain()
        assert await status() == ("available", [])
        assert nova.block_devices.for_instance(uuid) == []
        by_path = cloud.settings.home / "hosts"
        assert not [p for p in by_path.rglob("ip-*") if p.is_symlink()]
        with nova.database.session() as s:
            event = s.scalar(select(InstanceActionEvent).join(
                InstanceAction, InstanceAction.id == InstanceActionEvent.action_id).where(
                InstanceAction.request_id == "req-fail",
                InstanceActionEvent.event == "compute_attach_volume"))
            assert event is not None and event.result == "Error"
            assert "refuse the disk" in (event.traceback or "")
            fault = nova.instances.latest_fault(s, uuid)
            assert fault is not None and "refuse the disk" in fault.message

        driver.attach_volume = plug  # type: ignore[method-assign]
        again = await servers.attach_volume(ctx, uuid, volume_id)
        assert again.device_name == bdm.device_name == "/dev/vdb"
        await cloud.bus.drain()
        assert (await status())[0] == "in-use"

        async def refuse_unplug(uuid: str, volume_id: str,
                                request_id: str | None = None) -> None:
            raise VolumeAttachFailed("the guest did not let the disk go")

        driver.detach_volume = refuse_unplug  # type: ignore[method-assign]
        await servers.detach_volume(ctx, uuid, volume_id)
        await cloud.bus.drain()
        state, attachments = await status()
        assert (state, len(attachments)) == ("in-use", 1)
        assert [b.volume_id for b in nova.block_devices.for_instance(uuid)] == [volume_id]

    in_cloud(tmp_path, scenario)
