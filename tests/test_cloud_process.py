"""The embedded cloud's process: `labkit cloud up|down|status|reset|env`, connect(), inspect."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openstack.connection import Connection

import labkit
from conftest import (
    BIN,
    SUBPROCESS_TIMEOUT,
    clean_env,
    connection,
    console_script,
    pid_alive,
    start_cloud,
    stop_cloud,
)
from labkit.cloud import process
from labkit.cloud.process import CloudInfo
from labkit.inspect import Hidden, inspector

Labkit = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh state folder; whatever cloud a test starts in it is stopped afterwards."""
    path = tmp_path / "labkit-home"
    yield path
    stop_cloud(path)


@pytest.fixture
def labkit_cli(home: Path) -> Labkit:
    """Run the `labkit` console script with LABKIT_HOME set to this test's state folder."""
    exe = console_script("labkit")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], env=clean_env(LABKIT_HOME=str(home)),
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                              check=False)
    return run


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\n" \
                                   f"stderr: {result.stderr}"
    return result


def status(labkit_cli: Labkit) -> dict:
    return json.loads(labkit_cli("cloud", "status", "--json").stdout)


def admin(home: Path) -> Connection:
    info = process.running(home)
    assert info is not None, "the cloud is not running"
    return connection(info, "labkit-admin")


def project_names(home: Path) -> set[str]:
    conn = admin(home)
    try:
        return {p.name for p in conn.identity.projects()}
    finally:
        conn.close()


# -- up, status, env, down --------------------------------------------------------------------

def test_up_returns_once_the_cloud_answers(labkit_cli: Labkit, home: Path) -> None:
    result = ok(labkit_cli("cloud", "up"))
    info = process.running(home)
    assert info is not None
    assert info.url in result.stdout and f"pid {info.pid}" in result.stdout
    assert info.clouds_yaml.exists()
    # it answers right away: no waiting after `up` returned
    connection(info, "labkit").authorize()


def test_second_up_reuses_the_running_cloud(labkit_cli: Labkit, home: Path) -> None:
    ok(labkit_cli("cloud", "up"))
    first = process.running(home)
    ok(labkit_cli("cloud", "up"))
    second = process.running(home)
    assert first is not None and second is not None
    assert second.pid == first.pid and second.port == first.port


def test_status_says_running_and_exits_0(labkit_cli: Labkit, home: Path) -> None:
    ok(labkit_cli("cloud", "up"))
    info = process.running(home)
    result = ok(labkit_cli("cloud", "status"))
    assert "is running" in result.stdout and info.url in result.stdout
    data = status(labkit_cli)
    assert data["running"] is True and data["pid"] == info.pid and data["url"] == info.url
    assert data["home"] == str(home)


def test_status_exits_non_zero_when_down(labkit_cli: Labkit) -> None:
    result = labkit_cli("cloud", "status")
    assert result.returncode != 0
    assert "not running" in result.stdout
    assert status(labkit_cli)["running"] is False


def test_status_exits_non_zero_after_down(labkit_cli: Labkit) -> None:
    ok(labkit_cli("cloud", "up"))
    ok(labkit_cli("cloud", "down"))
    assert labkit_cli("cloud", "status").returncode != 0


def test_env_prints_the_exports(labkit_cli: Labkit, home: Path) -> None:
    ok(labkit_cli("cloud", "up"))
    lines = ok(labkit_cli("cloud", "env")).stdout.splitlines()
    assert f"export OS_CLIENT_CONFIG_FILE={home / 'clouds.yaml'}" in lines
    assert "export OS_CLOUD=labkit" in lines


def test_env_fails_when_the_cloud_is_down(labkit_cli: Labkit) -> None:
    result = labkit_cli("cloud", "env")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "not running" in result.stderr


def test_eval_env_then_openstack_token_issue_works_in_bash(labkit_cli: Labkit,
                                                            home: Path) -> None:
    console_script("openstack")
    ok(labkit_cli("cloud", "up"))
    env = clean_env(LABKIT_HOME=str(home), PATH=f"{BIN}:{clean_env().get('PATH', '')}")
    result = subprocess.run(
        ["bash", "-c", 'set -e; eval "$(labkit cloud env)"; '
                       'echo "cloud=$OS_CLOUD"; openstack token issue -f value -c user_id'],
        env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "cloud=labkit"
    demo = admin(home).identity.find_user("demo", ignore_missing=False)
    assert lines[1] == demo.id


def test_down_leaves_no_process(labkit_cli: Labkit, home: Path) -> None:
    ok(labkit_cli("cloud", "up"))
    info = process.running(home)
    assert pid_alive(info.pid)
    result = ok(labkit_cli("cloud", "down"))
    assert "stopped" in result.stdout
    assert not pid_alive(info.pid)
    assert process.running(home) is None
    assert not (home / "cloud.json").exists()


def test_down_when_not_running_says_so(labkit_cli: Labkit) -> None:
    result = ok(labkit_cli("cloud", "down"))
    assert "was not running" in result.stdout


# -- state across restarts and reset -----------------------------------------------------------

def test_state_survives_a_restart_on_the_same_port(labkit_cli: Labkit, home: Path) -> None:
    ok(labkit_cli("cloud", "up"))
    before = process.running(home)
    conn = admin(home)
    conn.identity.create_project(name="kept-across-restart")
    conn.close()
    ok(labkit_cli("cloud", "down"))
    ok(labkit_cli("cloud", "up"))
    after = process.running(home)
    assert after.pid != before.pid
    assert after.port == before.port and after.url == before.url
    assert "kept-across-restart" in project_names(home)


def test_reset_brings_back_the_first_state(labkit_cli: Labkit, home: Path) -> None:
    ok(labkit_cli("cloud", "up"))
    conn = admin(home)
    conn.identity.create_project(name="gone-after-reset")
    conn.close()
    assert "gone-after-reset" in project_names(home)
    ok(labkit_cli("cloud", "reset"))
    info = process.running(home)
    assert info is not None, "reset of a running cloud leaves it running"
    names = project_names(home)
    assert "gone-after-reset" not in names
    assert {"admin", "service", "demo", "alt_demo"} <= names
    for cloud in ("labkit", "labkit-admin"):
        conn = connection(info, cloud)
        conn.authorize()
        conn.close()


def test_reset_of_a_stopped_cloud_removes_the_state(labkit_cli: Labkit, home: Path) -> None:
    ok(labkit_cli("cloud", "up"))
    conn = admin(home)
    conn.identity.create_project(name="gone-after-reset")
    conn.close()
    ok(labkit_cli("cloud", "down"))
    result = ok(labkit_cli("cloud", "reset"))
    assert "state removed" in result.stdout
    assert process.running(home) is None
    assert not list(home.glob("*.sqlite"))
    ok(labkit_cli("cloud", "up"))
    assert "gone-after-reset" not in project_names(home)


# -- deterministic mode --------------------------------------------------------------------------

def _identity_ids(info: CloudInfo) -> dict[str, str]:
    conn = connection(info, "labkit-admin")
    try:
        ids = {f"user:{u.name}": u.id for u in conn.identity.users()}
        ids.update({f"project:{p.name}": p.id for p in conn.identity.projects()})
        return ids
    finally:
        conn.close()


def test_deterministic_clouds_give_identical_ids(tmp_path: Path) -> None:
    homes = [tmp_path / "first", tmp_path / "second"]
    try:
        ids = [_identity_ids(start_cloud(home)) for home in homes]
    finally:
        for home in homes:
            stop_cloud(home)
    assert "user:demo" in ids[0] and "project:demo" in ids[0]
    assert ids[0] == ids[1]


def test_non_deterministic_clouds_give_different_ids(tmp_path: Path) -> None:
    homes = [tmp_path / "first", tmp_path / "second"]
    try:
        ids = [_identity_ids(start_cloud(home, deterministic=False)) for home in homes]
    finally:
        for home in homes:
            stop_cloud(home)
    assert set(ids[0].values()).isdisjoint(ids[1].values())


# -- labkit.connect and labkit.inspect ------------------------------------------------------------

@pytest.fixture
def labkit_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's environment pointed at the test's state folder, and nothing else."""
    for name in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE", "LABKIT_FOREIGN", "LABKIT_PORT",
                 "LABKIT_DETERMINISTIC", "LABKIT_LAB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LABKIT_HOME", str(home))
    return home


def test_connect_starts_the_cloud_when_needed(labkit_env: Path) -> None:
    assert process.running(labkit_env) is None
    conn = labkit.connect()
    try:
        assert process.running(labkit_env) is not None
        conn.authorize()
        access = conn.session.auth.get_access(conn.session)
        assert (access.username, access.project_name) == ("demo", "demo")
    finally:
        conn.close()


def test_connect_reuses_a_running_cloud(labkit_env: Path) -> None:
    info = start_cloud(labkit_env)
    conn = labkit.connect_admin()
    try:
        assert process.running(labkit_env).pid == info.pid
        conn.authorize()
        assert conn.session.auth.get_access(conn.session).username == "admin"
    finally:
        conn.close()


def test_inspector_reads_the_trace_of_the_embedded_cloud(labkit_env: Path) -> None:
    conn = labkit.connect()
    try:
        conn.authorize()
        trace = inspector(conn).trace(kind="api")
        assert trace
        assert not isinstance(trace, Hidden)
        assert any("/identity/v3/auth/tokens" in e["summary"] for e in trace)
    finally:
        conn.close()


def test_foreign_mode_hides_the_trace_with_an_explanation(
        labkit_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = labkit.connect()
    monkeypatch.setenv("LABKIT_FOREIGN", "1")
    try:
        inspect = inspector(conn)
        assert not inspect.available
        trace = inspect.trace()
        assert isinstance(trace, Hidden)
        assert not trace
        assert len(trace) == 0 and list(trace) == []
        assert "LABKIT_FOREIGN" in trace.why
        assert "Not visible on this cloud" in repr(trace)
        assert trace.operator and "grep" in trace.operator
        assert "LABKIT_FOREIGN" in trace._repr_markdown_()
    finally:
        conn.close()
