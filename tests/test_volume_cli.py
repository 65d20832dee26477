"""Cinder through the real `openstack` CLI: what a reader types in a JupyterLab terminal.

Each test runs the CLI (a fresh process: discovery, a token, the call) against the
module's fresh embedded cloud and reads its JSON output.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

Run = Callable[..., subprocess.CompletedProcess[str]]
ADMIN = "labkit-admin"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def wait_status(openstack_cli: Run, kind: tuple[str, ...], ident: str, status: str,
                timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown = as_json(openstack_cli(*kind, "show", ident, "-f", "json"))
    while shown["status"] != status and time.monotonic() < deadline:
        time.sleep(0.2)
        shown = as_json(openstack_cli(*kind, "show", ident, "-f", "json"))
    assert shown["status"] == status, shown
    return shown


def test_volume_create_show_set_list_delete(openstack_cli: Run) -> None:
    created = as_json(openstack_cli("volume", "create", "--size", "1", "--description",
                                    "from the CLI", "cli-vol", "-f", "json"))
    assert created["name"] == "cli-vol" and created["size"] == 1
    shown = wait_status(openstack_cli, ("volume",), "cli-vol", "available")
    assert shown["type"] == "lvmdriver-1" and shown["bootable"] is False

    ok(openstack_cli("volume", "set", "--name", "cli-vol-2", "--property", "course=labkit",
                     "cli-vol"))
    shown = as_json(openstack_cli("volume", "show", "cli-vol-2", "-f", "json"))
    assert shown["properties"] == {"course": "labkit"}

    listed = as_json(openstack_cli("volume", "list", "-f", "json"))
    (row,) = [v for v in listed if v["Name"] == "cli-vol-2"]
    assert (row["Status"], row["Size"], row["Attached to"]) == ("available", 1, [])

    ok(openstack_cli("volume", "delete", "cli-vol-2"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = [v["Name"] for v in as_json(openstack_cli("volume", "list", "-f", "json"))]
        if "cli-vol-2" not in names:
            break
        time.sleep(0.2)
    assert "cli-vol-2" not in names


def test_volume_show_of_missing_volume_fails(openstack_cli: Run) -> None:
    result = openstack_cli("volume", "show", "no-such-volume")
    assert result.returncode == 1
    assert "No Volume found for no-such-volume" in result.stderr


def test_snapshot_create_list_delete(openstack_cli: Run) -> None:
    as_json(openstack_cli("volume", "create", "--size", "1", "snap-src", "-f", "json"))
    wait_status(openstack_cli, ("volume",), "snap-src", "available")
    as_json(openstack_cli("volume", "snapshot", "create", "--volume", "snap-src",
                          "cli-snap", "-f", "json"))
    shown = wait_status(openstack_cli, ("volume", "snapshot"), "cli-snap", "available")
    assert shown["size"] == 1
    listed = as_json(openstack_cli("volume", "snapshot", "list", "-f", "json"))
    assert "cli-snap" in [s["Name"] for s in listed]
    # a volume with snapshots cannot go: cinder's refusal reaches the reader
    refused = openstack_cli("volume", "delete", "snap-src")
    assert refused.returncode == 1
    assert "must not be migrating, attached, belong to a group, have snapshots" in (
        refused.stderr)
    ok(openstack_cli("volume", "snapshot", "delete", "cli-snap"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "cli-snap" in [
            s["Name"] for s in as_json(openstack_cli("volume", "snapshot", "list", "-f",
                                                     "json"))]:
        time.sleep(0.2)
    ok(openstack_cli("volume", "delete", "snap-src"))


def test_volume_type_list(openstack_cli: Run) -> None:
    listed = as_json(openstack_cli("volume", "type", "list", "-f", "json"))
    assert {t["Name"] for t in listed} == {"__DEFAULT__", "lvmdriver-1"}


def test_volume_service_list_is_for_admins(openstack_cli: Run) -> None:
    listed = as_json(openstack_cli("volume", "service", "list", "-f", "json", cloud_name=ADMIN))
    assert {(s["Binary"], s["Host"], s["Zone"], s["Status"], s["State"]) for s in listed} == {
        ("cinder-scheduler", "controller", "nova", "enabled", "up"),
        ("cinder-volume", "controller@lvmdriver-1", "nova", "enabled", "up")}
    refused = openstack_cli("volume", "service", "list")
    assert refused.returncode == 1
    assert "Policy doesn't allow volume_extension:services:index to be performed." in (
        refused.stderr)


def test_availability_zone_list_volume(openstack_cli: Run) -> None:
    listed = as_json(openstack_cli("availability", "zone", "list", "--volume", "-f", "json"))
    assert listed == [{"Zone Name": "nova", "Zone Status": "available"}]


def test_quota_show_volume(openstack_cli: Run) -> None:
    shown = as_json(openstack_cli("quota", "show", "--volume", "demo", "-f", "json",
                                  cloud_name=ADMIN))
    values = {row["Resource"]: row["Limit"] for row in shown} if isinstance(shown, list) \
        else shown
    assert values["volumes"] == 10 and values["gigabytes"] == 1000
    assert values["snapshots"] == 10
