"""The real `openstack` CLI (python-openstackclient) against the embedded cloud, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from labkit.cloud.process import CloudInfo

pytestmark = pytest.mark.cli

Run = Callable[..., subprocess.CompletedProcess[str]]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\n" \
                                   f"stderr: {result.stderr}"
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"{result.args} succeeded: {result.stdout}"
    return result.stderr + result.stdout


def test_token_issue_as_demo(openstack_cli: Run) -> None:
    token = as_json(openstack_cli("token", "issue", "-f", "json"))
    assert token["id"].startswith("gAAAAA")
    assert len(token["project_id"]) == 32 and len(token["user_id"]) == 32
    assert token["expires"]


def test_catalog_list_shows_every_service(openstack_cli: Run, cloud: CloudInfo) -> None:
    rows = as_json(openstack_cli("catalog", "list", "-f", "json"))
    by_type = {row["Type"]: row for row in rows}
    assert set(by_type) == {"identity", "compute", "network", "image", "placement",
                            "block-storage", "volumev3"}
    endpoints = by_type["identity"]["Endpoints"]
    text = json.dumps(endpoints)
    for interface in ("public", "internal", "admin"):
        assert interface in text
    assert cloud.url + "/identity" in text and "RegionOne" in text


def test_project_list_as_admin(openstack_cli: Run) -> None:
    rows = as_json(openstack_cli("project", "list", "-f", "json", cloud_name="labkit-admin"))
    assert {"admin", "service", "demo", "alt_demo"} <= {r["Name"] for r in rows}


def test_project_list_with_os_cloud_option(openstack_cli: Run) -> None:
    rows = as_json(openstack_cli("--os-cloud", "labkit-admin", "project", "list", "-f", "json"))
    assert "demo" in {r["Name"] for r in rows}


def test_user_list_as_admin(openstack_cli: Run) -> None:
    rows = as_json(openstack_cli("--os-cloud", "labkit-admin", "user", "list", "-f", "json"))
    assert {"admin", "demo", "alt_demo", "nova", "placement"} <= {r["Name"] for r in rows}


def test_user_list_as_demo_fails_with_403(openstack_cli: Run) -> None:
    output = failed(openstack_cli("user", "list"))
    assert "403" in output
    assert "not authorized" in output


def test_bad_password_fails_with_401(openstack_cli: Run) -> None:
    output = failed(openstack_cli("--os-password", "wrong", "token", "issue"))
    assert "HTTP 401" in output
    assert "requires authentication" in output


def test_revoked_token_no_longer_works(openstack_cli: Run, cloud: CloudInfo) -> None:
    token = as_json(openstack_cli("token", "issue", "-f", "json"))

    def with_token(*args: str) -> subprocess.CompletedProcess[str]:
        return openstack_cli(
            "--os-auth-type", "token", "--os-token", token["id"],
            "--os-auth-url", cloud.url + "/identity", "--os-identity-api-version", "3",
            "--os-project-id", token["project_id"], *args, cloud_name=None)

    assert as_json(with_token("token", "issue", "-f", "json"))["user_id"] == token["user_id"]
    ok(openstack_cli("token", "revoke", token["id"]))
    output = failed(with_token("token", "issue", "-f", "json"))
    assert "401" in output


def test_role_assignment_list_with_names(openstack_cli: Run) -> None:
    rows = as_json(openstack_cli("--os-cloud", "labkit-admin", "role", "assignment", "list",
                                 "--names", "-f", "json"))
    seen = {(r["Role"], r["User"], r["Project"]) for r in rows}
    assert {("admin", "admin@Default", "admin@Default"),
            ("member", "demo@Default", "demo@Default"),
            ("admin", "nova@Default", "service@Default")} <= seen


def test_project_create_and_delete_as_admin(openstack_cli: Run) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    admin = {"cloud_name": "labkit-admin"}
    created = as_json(openstack_cli("project", "create", name, "--description", "from the CLI",
                                    "-f", "json", **admin))
    assert created["name"] == name and created["domain_id"] == "default"
    shown = as_json(openstack_cli("project", "show", name, "-f", "json", **admin))
    assert shown["id"] == created["id"]
    ok(openstack_cli("project", "delete", name, **admin))
    rows = as_json(openstack_cli("project", "list", "-f", "json", **admin))
    assert name not in {r["Name"] for r in rows}


def test_project_create_as_demo_fails_with_403(openstack_cli: Run) -> None:
    output = failed(openstack_cli("project", "create", f"cli-{uuid.uuid4().hex[:8]}"))
    assert "403" in output


def test_duplicate_project_create_fails_with_409(openstack_cli: Run) -> None:
    output = failed(openstack_cli("project", "create", "demo", cloud_name="labkit-admin"))
    assert "409" in output and "Duplicate" in output
