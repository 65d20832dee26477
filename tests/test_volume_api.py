"""Cinder v3 in the embedded cloud: openstacksdk, raw HTTP, and the in-process iSCSI target.

One fresh deterministic cloud per module (model driver). Every refusal is checked for
cinder's fault body and message, and that nothing changed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openstack import exceptions as sdk_exceptions
from openstack.connection import Connection

from conftest import auth_header, in_cloud, wait_for
from labkit.cloud.app import Cloud
from labkit.cloud.process import CloudInfo
from labkit.cloud.service_client import ServiceClient
from labkit.cloud.volume import TargetLoginFailed

GIB = 1024 ** 3
MV = {"OpenStack-API-Version": "volume 3.71"}
SERVER = "5a0c1c1e-1111-4c4e-9b7c-3f1f6b0a2c11"
OTHER_SERVER = "5a0c1c1e-2222-4c4e-9b7c-3f1f6b0a2c11"
CONNECTOR = {"initiator": "iqn.2004-10.com.ubuntu:01:c0ffee", "ip": "10.0.0.31",
             "host": "compute-1", "platform": "x86_64", "os_type": "linux",
             "multipath": False, "mountpoint": "/dev/vdb"}


@pytest.fixture(scope="module")
def demo_h(issue_token: Callable[..., str]) -> dict[str, str]:
    return {**auth_header(issue_token("demo", "demo")), **MV}


@pytest.fixture(scope="module")
def admin_h(issue_token: Callable[..., str]) -> dict[str, str]:
    return {**auth_header(issue_token("admin", "admin")), **MV}


@pytest.fixture(scope="module")
def demo_project(demo_conn: Connection) -> str:
    return demo_conn.current_project_id


def vpath(project: str, rest: str) -> str:
    return f"/volume/v3/{project}/{rest}"


def fault(r: httpx.Response, status: int, kind: str) -> str:
    """The response is cinder's fault body of this kind; its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == [kind], body
    assert body[kind]["code"] == status
    return body[kind]["message"]


def new_volume(conn: Connection, **attrs: Any) -> Any:
    volume = conn.block_storage.create_volume(**{"size": 1, **attrs})
    return conn.block_storage.wait_for_status(volume, "available", failures=["error"],
                                              interval=0.1, wait=60)


def get(http: httpx.Client, headers: dict[str, str], project: str, volume_id: str) -> dict:
    r = http.get(vpath(project, f"volumes/{volume_id}"), headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["volume"]


def backing_file(cloud: CloudInfo, volume_id: str) -> Path:
    return cloud.home / "hosts" / "controller" / "cinder-volumes" / f"volume-{volume_id}"


# -- versions and microversions -------------------------------------------------------------

def test_version_documents_need_no_token(http: httpx.Client) -> None:
    r = http.get("/volume/")
    assert r.status_code == 300
    (v3,) = r.json()["versions"]
    assert (v3["id"], v3["status"], v3["min_version"], v3["version"]) == (
        "v3.0", "CURRENT", "3.0", "3.71")
    r = http.get("/volume/v3/")
    assert r.status_code == 200
    self_link = next(li["href"] for li in r.json()["versions"][0]["links"]
                     if li["rel"] == "self")
    assert self_link.endswith("/volume/v3/")


def test_microversion_is_echoed_and_bad_ones_refused(http: httpx.Client, demo_h: dict,
                                                     demo_project: str) -> None:
    r = http.get(vpath(demo_project, "volumes"), headers=demo_h)
    assert r.headers["OpenStack-API-Version"] == "volume 3.71"
    r = http.get(vpath(demo_project, "volumes"), headers={**demo_h, **{
        "OpenStack-API-Version": "volume 3.99"}})
    assert fault(r, 406, "computeFault") == ("Version 3.99 is not supported by the API. "
                                             "Minimum is 3.0 and maximum is 3.71.")
    r = http.get(vpath(demo_project, "volumes"), headers={**demo_h, **{
        "OpenStack-API-Version": "volume 3.x"}})
    assert fault(r, 400, "badRequest") == ("API Version String 3.x is of invalid format. "
                                           "Must be of format MajorNum.MinorNum.")
    without = {k: v for k, v in demo_h.items() if k != "OpenStack-API-Version"}
    r = http.get(vpath(demo_project, "volumes"), headers=without)
    assert r.headers["OpenStack-API-Version"] == "volume 3.0"


# -- volumes --------------------------------------------------------------------------------

def test_volume_life_with_the_sdk(demo_conn: Connection, cloud: CloudInfo) -> None:
    volume = demo_conn.block_storage.create_volume(size=1, name="life", description="d",
                                                   metadata={"course": "labkit"})
    assert volume.status == "creating"
    volume = demo_conn.block_storage.wait_for_status(volume, "available", interval=0.1,
                                                     wait=60)
    assert (volume.size, volume.volume_type, volume.is_bootable) == (1, "lvmdriver-1", False)
    path = backing_file(cloud, volume.id)
    assert path.stat().st_size == GIB
    assert path.stat().st_blocks == 0, "the volume's file is sparse"
    assert "life" in [v.name for v in demo_conn.block_storage.volumes()]

    demo_conn.block_storage.update_volume(volume, name="renamed")
    assert demo_conn.block_storage.get_volume(volume).name == "renamed"

    demo_conn.block_storage.extend_volume(volume, 2)
    volume = wait_for(lambda: demo_conn.block_storage.get_volume(volume.id),
                      lambda v: v.status == "available" and v.size == 2)
    assert volume.size == 2 and path.stat().st_size == 2 * GIB

    demo_conn.block_storage.delete_volume(volume)
    demo_conn.block_storage.wait_for_delete(volume, interval=0.1, wait=60)
    assert not path.exists()


def test_unknown_volume_is_cinders_404(http: httpx.Client, demo_h: dict,
                                       demo_project: str) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    r = http.get(vpath(demo_project, f"volumes/{missing}"), headers=demo_h)
    assert fault(r, 404, "itemNotFound") == f"Volume {missing} could not be found."


def test_bad_size_is_refused(http: httpx.Client, demo_h: dict, demo_project: str) -> None:
    r = http.post(vpath(demo_project, "volumes"), headers=demo_h,
                  json={"volume": {"size": 0, "name": "zero"}})
    assert fault(r, 400, "badRequest") == (
        "Invalid input received: Invalid volume size provided for create request: 0 (size "
        "argument must be an integer (or string representation of an integer) and greater "
        "than zero).")


def test_list_filters_and_pagination(demo_conn: Connection, http: httpx.Client,
                                     demo_h: dict, demo_project: str) -> None:
    made = [new_volume(demo_conn, name=f"page-{n}", metadata={"page": "yes"})
            for n in range(3)]
    try:
        r = http.get(vpath(demo_project, "volumes/detail"), headers=demo_h,
                     params={"metadata": "{'page': 'yes'}", "sort": "name:asc"})
        assert [v["name"] for v in r.json()["volumes"]] == ["page-0", "page-1", "page-2"]
        r = http.get(vpath(demo_project, "volumes"), headers=demo_h,
                     params={"name": "page-1"})
        assert [v["id"] for v in r.json()["volumes"]] == [made[1].id]
        first = http.get(vpath(demo_project, "volumes"), headers=demo_h, params={
            "metadata": "{'page': 'yes'}", "sort": "name:asc", "limit": 2}).json()
        assert [v["name"] for v in first["volumes"]] == ["page-0", "page-1"]
        assert first["volumes_links"][0]["rel"] == "next"
        rest = http.get(vpath(demo_project, "volumes"), headers=demo_h, params={
            "metadata": "{'page': 'yes'}", "sort": "name:asc", "limit": 2,
            "marker": first["volumes"][-1]["id"], "with_count": "true"}).json()
        assert [v["name"] for v in rest["volumes"]] == ["page-2"]
        assert rest["count"] == 3  # every match, whatever the page (as cinder counts)
    finally:
        for v in made:
            demo_conn.block_storage.delete_volume(v)


def test_admin_fields_hidden_from_members(demo_conn: Connection, http: httpx.Client,
                                          demo_h: dict, admin_h: dict,
                                          demo_project: str) -> None:
    volume = new_volume(demo_conn, name="fields")
    try:
        member = get(http, demo_h, demo_project, volume.id)
        assert "os-vol-host-attr:host" not in member
        assert "os-vol-mig-status-attr:migstat" not in member
        assert member["os-vol-tenant-attr:tenant_id"] == demo_project
        assert member["volume_type_id"] and member["consumes_quota"] is True
        admin = get(http, admin_h, demo_project, volume.id)
        assert admin["os-vol-host-attr:host"] == "controller@lvmdriver-1#lvmdriver-1"
        assert "os-vol-mig-status-attr:migstat" in admin
        # admins see every project's volumes with all_tenants, not without
        listed = http.get(vpath(demo_project, "volumes"), headers=admin_h).json()["volumes"]
        assert volume.id not in [v["id"] for v in listed]
        listed = http.get(vpath(demo_project, "volumes"), headers=admin_h,
                          params={"all_tenants": 1}).json()["volumes"]
        assert volume.id in [v["id"] for v in listed]
    finally:
        demo_conn.block_storage.delete_volume(volume)


def test_volume_from_an_image_holds_its_bytes(demo_conn: Connection, cloud: CloudInfo) -> None:
    image = demo_conn.image.find_image("labkit-tiny")
    volume = new_volume(demo_conn, name="from-image", image_id=image.id)
    try:
        assert volume.is_bootable is True
        assert volume.volume_image_metadata["image_id"] == image.id
        data = b"".join(demo_conn.image.download_image(image, stream=True).iter_content(65536))
        with backing_file(cloud, volume.id).open("rb") as f:
            assert f.read(len(data)) == data
    finally:
        demo_conn.block_storage.delete_volume(volume)


def test_quota_refuses_with_overlimit_and_nothing_changes(
        admin_conn: Connection, demo_conn: Connection, http: httpx.Client, demo_h: dict,
        demo_project: str) -> None:
    before = len(list(demo_conn.block_storage.volumes()))
    admin_conn.block_storage.update_quota_set(demo_project, gigabytes=5)
    try:
        r = http.post(vpath(demo_project, "volumes"), headers=demo_h,
                      json={"volume": {"size": 6, "name": "too-big"}})
        assert fault(r, 413, "overLimit").startswith(
            "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
            "gigabytes quota. Requested 6G, quota is 5G and ")
        assert r.json()["overLimit"]["retryAfter"] == "0"
        assert len(list(demo_conn.block_storage.volumes())) == before
        quota = admin_conn.block_storage.get_quota_set(demo_project, usage=True)
        assert quota.gigabytes == 5
        assert quota.usage["volumes"] == before
    finally:
        admin_conn.block_storage.update_quota_set(demo_project, gigabytes=1000)


# -- snapshots ------------------------------------------------------------------------------

def test_snapshots_and_the_delete_refusal(demo_conn: Connection, http: httpx.Client,
                                          demo_h: dict, demo_project: str,
                                          cloud: CloudInfo) -> None:
    volume = new_volume(demo_conn, name="snapped")
    with backing_file(cloud, volume.id).open("r+b") as f:
        f.write(b"before the snapshot")
    snap = demo_conn.block_storage.create_snapshot(volume_id=volume.id, name="snap-1")
    snap = demo_conn.block_storage.wait_for_status(snap, "available", interval=0.1, wait=60)
    assert "snap-1" in [s.name for s in demo_conn.block_storage.snapshots()]
    r = http.delete(vpath(demo_project, f"volumes/{volume.id}"), headers=demo_h)
    assert fault(r, 400, "badRequest") == (
        "Invalid volume: Volume status must be available or error or error_restoring or "
        "error_extending or error_managing and must not be migrating, attached, belong to a "
        "group, have snapshots, awaiting a transfer, or be disassociated from snapshots "
        "after volume transfer.")
    assert get(http, demo_h, demo_project, volume.id)["status"] == "available"

    clone = new_volume(demo_conn, name="from-snap", snapshot_id=snap.id)
    with backing_file(cloud, clone.id).open("rb") as f:
        assert f.read(19) == b"before the snapshot"
    demo_conn.block_storage.delete_volume(clone)
    demo_conn.block_storage.wait_for_delete(clone, interval=0.1, wait=60)
    demo_conn.block_storage.delete_snapshot(snap)
    demo_conn.block_storage.wait_for_delete(snap, interval=0.1, wait=60)
    demo_conn.block_storage.delete_volume(volume)


# -- attachments ----------------------------------------------------------------------------

def test_attachment_flow_and_refusals(admin_conn: Connection, demo_conn: Connection,
                                      http: httpx.Client, admin_h: dict, demo_h: dict,
                                      demo_project: str) -> None:
    volume = new_volume(demo_conn, name="attached")
    url = vpath(demo_project, "attachments")
    # nova's sequence, as its service user (an admin) with the user's project in the URL
    r = http.post(url, headers=admin_h, json={"attachment": {
        "volume_uuid": volume.id, "instance_uuid": SERVER}})
    assert r.status_code == 200, r.text
    attachment = r.json()["attachment"]
    assert attachment["status"] == "reserved"
    assert get(http, demo_h, demo_project, volume.id)["status"] == "reserved"

    r = http.post(url, headers=admin_h, json={"attachment": {
        "volume_uuid": volume.id, "instance_uuid": OTHER_SERVER}})
    assert fault(r, 400, "badRequest") == (
        f"Invalid volume: Volume {volume.id} status must be available or downloading to "
        "reserve, but the current status is reserved.")

    r = http.put(f"{url}/{attachment['id']}", headers=admin_h,
                 json={"attachment": {"connector": CONNECTOR}})
    assert r.status_code == 200, r.text
    info = r.json()["attachment"]["connection_info"]
    assert info["driver_volume_type"] == "iscsi"
    assert info["target_iqn"] == f"iqn.2010-10.org.openstack:volume-{volume.id}"
    assert (info["target_portal"], info["target_lun"]) == ("10.0.0.11:3260", 1)
    assert info["auth_method"] == "CHAP" and info["access_mode"] == "rw"
    assert get(http, demo_h, demo_project, volume.id)["status"] == "attaching"

    r = http.post(f"{url}/{attachment['id']}/action", headers=admin_h,
                  json={"os-complete": None})
    assert r.status_code == 204, r.text
    shown = get(http, admin_h, demo_project, volume.id)
    assert shown["status"] == "in-use"
    (att,) = shown["attachments"]
    assert (att["server_id"], att["device"], att["host_name"], att["attachment_id"]) == (
        SERVER, "/dev/vdb", "compute-1", attachment["id"])
    assert att["attached_at"]

    r = http.delete(vpath(demo_project, f"volumes/{volume.id}"), headers=demo_h)
    assert fault(r, 400, "badRequest").startswith("Invalid volume: Volume status must be")
    assert get(http, demo_h, demo_project, volume.id)["status"] == "in-use"
    r = http.delete(f"{url}/{attachment['id']}", headers=demo_h)
    assert fault(r, 409, "conflictingRequest") == (
        f"Detach volume from instance {SERVER} using the Compute API")

    for step, status in (("os-begin_detaching", "detaching"), ("os-roll_detaching", "in-use"),
                         ("os-begin_detaching", "detaching")):
        r = http.post(vpath(demo_project, f"volumes/{volume.id}/action"), headers=admin_h,
                      json={step: {}})
        assert r.status_code == 202, r.text
        assert get(http, demo_h, demo_project, volume.id)["status"] == status
    r = http.delete(f"{url}/{attachment['id']}", headers=admin_h)
    assert r.status_code == 200 and r.json() == {"attachments": []}
    shown = get(http, demo_h, demo_project, volume.id)
    assert (shown["status"], shown["attachments"]) == ("available", [])
    demo_conn.block_storage.delete_volume(volume)


def test_attachments_need_microversion_3_27(http: httpx.Client, demo_h: dict,
                                            demo_project: str) -> None:
    r = http.get(vpath(demo_project, "attachments"),
                 headers={**demo_h, "OpenStack-API-Version": "volume 3.26"})
    assert fault(r, 404, "itemNotFound") == "The resource could not be found."


def test_target_login_in_process(tmp_path: Path) -> None:
    """The compute host's side: log in to the export made at attachment update."""
    async def scenario(cloud: Cloud) -> None:
        client = ServiceClient(cloud, "demo", "DEMO_PASS", component="test", project="demo")
        project = cloud.identity.list("project", {"name": "demo"})[0].id
        try:
            base = f"/volume/v3/{project}"
            r = await client.send("POST", f"{base}/volumes", headers=MV,
                                  json={"volume": {"size": 1, "name": "login"}})
            volume_id = r.json()["volume"]["id"]
            for _ in range(100):
                r = await client.send("GET", f"{base}/volumes/{volume_id}", headers=MV)
                if r.json()["volume"]["status"] == "available":
                    break
                await asyncio.sleep(0.05)
            r = await client.send("POST", f"{base}/attachments", headers=MV, json={
                "attachment": {"volume_uuid": volume_id, "instance_uuid": SERVER,
                               "connector": CONNECTOR}})
            assert r.status_code == 200, r.text
            info = r.json()["attachment"]["connection_info"]
            targets = cloud.volume.targets
            path = targets.login(info, CONNECTOR["initiator"])
            assert path.name == f"volume-{volume_id}" and os.path.getsize(path) == GIB
            with pytest.raises(TargetLoginFailed, match="authorization failure"):
                targets.login(info, "iqn.2004-10.com.ubuntu:01:stranger")
            with pytest.raises(TargetLoginFailed, match="authentication failure"):
                targets.login({**info, "auth_password": "wrong"}, CONNECTOR["initiator"])
            with pytest.raises(TargetLoginFailed, match="LUN 0 not found"):
                targets.login({**info, "target_lun": 0}, CONNECTOR["initiator"])
            assert "Target 1: iqn.2010-10.org.openstack:volume-" in targets.show()
            # the export goes with the volume's last attachment
            admin = ServiceClient(cloud, "admin", "ADMIN_PASS", component="test",
                                  project="admin")
            r = await admin.send("DELETE", f"{base}/attachments/"
                                 f"{r.json()['attachment']['id']}", headers=MV)
            assert r.status_code == 200, r.text
            assert targets.describe() == []
            with pytest.raises(TargetLoginFailed, match="No records found"):
                targets.login(info, CONNECTOR["initiator"])
            await admin.aclose()
        finally:
            await client.aclose()
    in_cloud(tmp_path, scenario)


# -- types, services, zones, limits ---------------------------------------------------------

def test_volume_types(demo_conn: Connection, admin_conn: Connection, http: httpx.Client,
                      demo_h: dict, demo_project: str) -> None:
    types = {t.name: t for t in demo_conn.block_storage.types()}
    assert set(types) == {"__DEFAULT__", "lvmdriver-1"}
    assert types["lvmdriver-1"].extra_specs == {"volume_backend_name": "lvmdriver-1"}
    r = http.post(vpath(demo_project, "types"), headers=demo_h,
                  json={"volume_type": {"name": "mine"}})
    assert fault(r, 403, "forbidden") == ("Policy doesn't allow "
                                          "volume_extension:types_manage:create to be performed.")
    made = admin_conn.block_storage.create_type(name="fast", extra_specs={"tier": "gold"})
    assert admin_conn.block_storage.get_type(made).extra_specs == {"tier": "gold"}
    admin_conn.block_storage.delete_type(made)
    assert "fast" not in [t.name for t in demo_conn.block_storage.types()]


def test_services_zones_and_limits(admin_conn: Connection, http: httpx.Client, demo_h: dict,
                                   demo_project: str) -> None:
    services = {(s.binary, s.host): s for s in admin_conn.block_storage.services()}
    assert set(services) == {("cinder-scheduler", "controller"),
                             ("cinder-volume", "controller@lvmdriver-1")}
    assert all(s.state == "up" and s.status == "enabled" and s.availability_zone == "nova"
               for s in services.values())
    r = http.get(vpath(demo_project, "os-services"), headers=demo_h)
    assert fault(r, 403, "forbidden") == ("Policy doesn't allow volume_extension:services:index "
                                          "to be performed.")
    r = http.get(vpath(demo_project, "os-availability-zone"), headers=demo_h)
    assert r.json() == {"availabilityZoneInfo": [{"zoneName": "nova",
                                                  "zoneState": {"available": True}}]}
    absolute = http.get(vpath(demo_project, "limits"), headers=demo_h).json()["limits"][
        "absolute"]
    assert absolute["maxTotalVolumes"] == 10 and absolute["maxTotalVolumeGigabytes"] == 1000


# -- restart ---------------------------------------------------------------------------------

def test_state_survives_a_restart_and_creating_goes_to_error(tmp_path: Path) -> None:
    async def make(cloud: Cloud) -> tuple[str, str]:
        ctx_user = cloud.identity.list("user", {"name": "demo"})[0]
        project = cloud.identity.list("project", {"name": "demo"})[0]
        from labkit.cloud.bus import MessageContext
        from labkit.cloud.volume.models import Caller
        caller = Caller(project_id=project.id, user_id=ctx_user.id)
        ctx = MessageContext(request_id="req-test", source="cinder-api")
        kept = cloud.volume.api.create(ctx, caller, {"size": 1, "name": "kept"})
        stuck = cloud.volume.api.create(ctx, caller, {"size": 1, "name": "stuck"})
        await cloud.bus.drain()
        # as if cinder-volume stopped half way through creating it
        cloud.volume.api.set_status(ctx, stuck.id, status="creating")
        return kept.id, stuck.id

    kept, stuck = in_cloud(tmp_path, make)

    async def after(cloud: Cloud) -> dict[str, str]:
        return {v: cloud.volume.api.get_any(v).status for v in (kept, stuck)}

    assert in_cloud(tmp_path, after) == {kept: "available", stuck: "error"}


def test_no_sdk_error_leaks(demo_conn: Connection) -> None:
    with pytest.raises(sdk_exceptions.NotFoundException):
        demo_conn.block_storage.get_volume("00000000-0000-4000-8000-000000000001")
