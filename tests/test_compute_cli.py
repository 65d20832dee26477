"""Nova through the real `openstack` CLI: what a reader types in a JupyterLab terminal.

Each test runs the CLI (a fresh process: discovery, a token, the call) against one
fresh embedded cloud, as the demo member (cloud `labkit`) or the admin
(`labkit-admin`), and reads its JSON output (`-f json`) where it shows data.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

Run = Callable[..., subprocess.CompletedProcess[str]]
IMAGE_NAME = "labkit-tiny"
ADMIN = "labkit-admin"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def create_server(openstack_cli: Run, name: str, *extra: str) -> dict[str, Any]:
    return as_json(openstack_cli("server", "create", "--flavor", "m1.nano", "--image",
                                 IMAGE_NAME, *extra, "--wait", name, "-f", "json"))


@pytest.fixture(scope="module")
def server(openstack_cli: Run) -> dict[str, Any]:
    """One server booted through the CLI, shared by the tests that read it."""
    return create_server(openstack_cli, "cli-vm")


@pytest.mark.parametrize("network", [(), ("--nic", "none"), ("--no-network",)],
                         ids=["default", "nic-none", "no-network"])
def test_server_create_waits_until_active(openstack_cli: Run,
                                          network: tuple[str, ...]) -> None:
    name = "cli-create-" + (network[-1] if network else "default")
    created = create_server(openstack_cli, name, *network)
    try:
        assert created["status"] == "ACTIVE"
        assert created["name"] == name
        assert created["OS-EXT-STS:power_state"] == 1  # -f json keeps nova's number
        assert created["OS-EXT-STS:task_state"] is None
        assert created["flavor"]["name"] == "m1.nano"
        assert created["image"].startswith(IMAGE_NAME)
    finally:
        ok(openstack_cli("server", "delete", "--wait", created["id"]))


def test_server_list_shows_the_server(openstack_cli: Run, server: dict[str, Any]) -> None:
    listed = as_json(openstack_cli("server", "list", "-f", "json"))
    row = next(r for r in listed if r["ID"] == server["id"])
    assert (row["Name"], row["Status"], row["Image"], row["Flavor"]) == (
        "cli-vm", "ACTIVE", IMAGE_NAME, "m1.nano")
    table = ok(openstack_cli("server", "list"))
    assert "cli-vm" in table and "ACTIVE" in table


def test_server_list_filters_by_status_and_name(openstack_cli: Run,
                                                server: dict[str, Any]) -> None:
    active = as_json(openstack_cli("server", "list", "--status", "ACTIVE", "-f", "json"))
    assert server["id"] in [r["ID"] for r in active]
    shutoff = as_json(openstack_cli("server", "list", "--status", "SHUTOFF", "-f", "json"))
    assert server["id"] not in [r["ID"] for r in shutoff]
    named = as_json(openstack_cli("server", "list", "--name", "^cli-v", "-f", "json"))
    assert [r["ID"] for r in named] == [server["id"]]


def test_server_show_by_name(openstack_cli: Run, server: dict[str, Any]) -> None:
    shown = as_json(openstack_cli("server", "show", "cli-vm", "-f", "json"))
    assert shown["id"] == server["id"]
    assert shown["status"] == "ACTIVE"
    assert shown["OS-EXT-STS:vm_state"] == "active"


def test_server_show_of_a_missing_server_fails_plainly(openstack_cli: Run) -> None:
    result = openstack_cli("server", "show", "no-such-server")
    assert result.returncode == 1
    assert "No Server found for no-such-server" in result.stderr


def test_admin_sees_the_host_in_server_show(openstack_cli: Run,
                                            server: dict[str, Any]) -> None:
    shown = as_json(openstack_cli("server", "show", server["id"], "-f", "json",
                                  cloud_name=ADMIN))
    assert shown["OS-EXT-SRV-ATTR:host"] in {"compute-1", "compute-2"}
    member = as_json(openstack_cli("server", "show", server["id"], "-f", "json"))
    assert member.get("OS-EXT-SRV-ATTR:host") is None


def wait_cli_status(openstack_cli: Run, name: str, status: str,
                    timeout: float = 30) -> dict[str, Any]:
    """`server show` until the status is reached (each CLI run takes a while: no sleep)."""
    deadline = time.monotonic() + timeout
    shown = as_json(openstack_cli("server", "show", name, "-f", "json"))
    while shown["status"] != status and time.monotonic() < deadline:
        shown = as_json(openstack_cli("server", "show", name, "-f", "json"))
    assert shown["status"] == status, shown
    return shown


def test_server_stop_and_start(openstack_cli: Run) -> None:
    created = create_server(openstack_cli, "cli-power")
    try:
        ok(openstack_cli("server", "stop", "cli-power"))
        shown = wait_cli_status(openstack_cli, "cli-power", "SHUTOFF")
        assert shown["OS-EXT-STS:power_state"] == 4
        again = openstack_cli("server", "stop", "cli-power")
        assert again.returncode == 1
        assert "while it is in vm_state stopped" in again.stderr
        ok(openstack_cli("server", "start", "cli-power"))
        assert wait_cli_status(openstack_cli, "cli-power", "ACTIVE")[
            "OS-EXT-STS:power_state"] == 1
    finally:
        ok(openstack_cli("server", "delete", "--wait", created["id"]))


def test_server_delete_waits_until_gone(openstack_cli: Run) -> None:
    created = create_server(openstack_cli, "cli-doomed")
    ok(openstack_cli("server", "delete", "--wait", "cli-doomed"))
    listed = as_json(openstack_cli("server", "list", "-f", "json"))
    assert created["id"] not in [r["ID"] for r in listed]
    gone = openstack_cli("server", "show", created["id"])
    assert gone.returncode == 1


def test_server_event_list_and_show(openstack_cli: Run, server: dict[str, Any]) -> None:
    events = as_json(openstack_cli("server", "event", "list", "cli-vm", "-f", "json"))
    assert [e["Action"] for e in events] == ["create"]
    request_id = events[0]["Request ID"]
    assert request_id.startswith("req-")
    shown = as_json(openstack_cli("server", "event", "show", "cli-vm", request_id,
                                  "-f", "json"))
    assert shown["action"] == "create"
    assert shown["request_id"] == request_id
    assert [(e["event"], e["result"]) for e in shown["events"]] == [
        ("compute__do_build_and_run_instance", "Success")]


def test_flavor_create_as_admin_and_refused_as_member(openstack_cli: Run) -> None:
    refused = openstack_cli("flavor", "create", "--ram", "64", "--disk", "1", "--vcpus", "1",
                            "cli-flavor")
    assert refused.returncode == 1
    assert "403" in refused.stderr
    assert "os_compute_api:os-flavor-manage:create" in refused.stderr
    made = as_json(openstack_cli("flavor", "create", "--ram", "64", "--disk", "1",
                                 "--vcpus", "1", "cli-flavor", "-f", "json", cloud_name=ADMIN))
    try:
        assert (made["name"], made["ram"], made["vcpus"], made["disk"]) == (
            "cli-flavor", 64, 1, 1)
        listed = as_json(openstack_cli("flavor", "list", "-f", "json"))
        assert "cli-flavor" in [f["Name"] for f in listed]
    finally:
        ok(openstack_cli("flavor", "delete", made["id"], cloud_name=ADMIN))


def test_keypair_create_from_a_public_key_file(openstack_cli: Run, tmp_path: Path) -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    key_file = tmp_path / "id_ed25519.pub"
    key_file.write_text(public + " reader@lab\n")
    made = as_json(openstack_cli("keypair", "create", "--public-key", str(key_file),
                                 "cli-key", "-f", "json"))
    try:
        assert made["name"] == "cli-key"
        assert made["type"] == "ssh"
        shown = as_json(openstack_cli("keypair", "show", "cli-key", "-f", "json"))
        assert shown["fingerprint"] == made["fingerprint"]
        listed = as_json(openstack_cli("keypair", "list", "-f", "json"))
        assert "cli-key" in [k["Name"] for k in listed]
    finally:
        ok(openstack_cli("keypair", "delete", "cli-key"))


def test_image_list(openstack_cli: Run) -> None:
    listed = as_json(openstack_cli("image", "list", "-f", "json"))
    assert sorted((i["Name"], i["Status"]) for i in listed) == [
        (IMAGE_NAME, "active"), (f"{IMAGE_NAME}-kernel", "active"),
        (f"{IMAGE_NAME}-ramdisk", "active")]


def test_compute_service_list_as_admin(openstack_cli: Run) -> None:
    listed = as_json(openstack_cli("compute", "service", "list", "-f", "json",
                                   cloud_name=ADMIN))
    rows = {(s["Binary"], s["Host"]): s for s in listed}
    assert set(rows) == {("nova-conductor", "controller"), ("nova-scheduler", "controller"),
                         ("nova-compute", "compute-1"), ("nova-compute", "compute-2")}
    assert {(s["Status"], s["State"]) for s in listed} == {("enabled", "up")}
    assert rows[("nova-compute", "compute-1")]["Zone"] == "nova"
    assert rows[("nova-conductor", "controller")]["Zone"] == "internal"


def test_compute_service_list_is_refused_to_a_member(openstack_cli: Run) -> None:
    refused = openstack_cli("compute", "service", "list")
    assert refused.returncode == 1
    assert "os_compute_api:os-services:list" in refused.stderr


def test_hypervisor_list_as_admin(openstack_cli: Run) -> None:
    listed = as_json(openstack_cli("hypervisor", "list", "-f", "json", cloud_name=ADMIN))
    assert sorted((h["Hypervisor Hostname"], h["Hypervisor Type"], h["State"])
                  for h in listed) == [("compute-1", "QEMU", "up"), ("compute-2", "QEMU", "up")]


def test_hypervisor_show_by_name(openstack_cli: Run, server: dict[str, Any]) -> None:
    shown = as_json(openstack_cli("hypervisor", "show", "compute-1", "-f", "json",
                                  cloud_name=ADMIN))
    assert shown["hypervisor_hostname"] == "compute-1"
    assert shown["state"] == "up"
    assert shown["aggregates"] == []
    assert shown["service_host"] == "compute-1" or shown.get("service_details", {}).get(
        "host") == "compute-1"


def test_availability_zone_list(openstack_cli: Run) -> None:
    listed = as_json(openstack_cli("availability", "zone", "list", "--compute", "-f", "json"))
    assert [(z["Zone Name"], z["Zone Status"]) for z in listed] == [("nova", "available")]


def test_quota_show_compute(openstack_cli: Run, server: dict[str, Any]) -> None:
    shown = as_json(openstack_cli("quota", "show", "--compute", "-f", "json"))
    limits = {row["Resource"]: row["Limit"] for row in shown}
    assert (limits["instances"], limits["cores"], limits["ram"]) == (10, 20, 51200)


def test_quota_show_usage_counts_the_server(openstack_cli: Run,
                                            server: dict[str, Any]) -> None:
    shown = as_json(openstack_cli("quota", "show", "--compute", "--usage", "-f", "json"))
    rows = {row["Resource"]: row for row in shown}
    assert rows["instances"]["In Use"] >= 1


def test_quota_show_of_every_service(openstack_cli: Run) -> None:
    ok(openstack_cli("quota", "show"))


def test_limits_show_absolute(openstack_cli: Run, server: dict[str, Any]) -> None:
    shown = as_json(openstack_cli("limits", "show", "--absolute", "-f", "json"))
    values = {row["Name"]: row["Value"] for row in shown}
    assert values["total_instances_used"] >= 1
    assert values["max_total_instances"] == 10
