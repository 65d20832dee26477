"""labkit.ssh_client, the way into a guest: key pairs, where to connect, running commands.

Key pairs and endpoints against one fresh embedded cloud (model driver) through
openstacksdk. Commands run against a small ssh server made with paramiko on a free
loopback port, in this process: a guest's dropbear, started by a user who is not
root, can only log in as that user with keys from that user's real home, so it
cannot stand in here; the qemu guest's own dropbear is exercised by the guest tests.
The server drops its first connections right after accepting them, as qemu's port
forward does while the guest's sshd is not up yet.
"""

from __future__ import annotations

import io
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from openstack.connection import Connection

from conftest import wait_for
from labkit import ssh_client as ssh
from labkit.cloud.process import CloudInfo
from labkit.paths import keys_dir

IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny
NANO = "42"
BUILD_TIMEOUT = 60  # a guard against a hung build, never a claim about speed


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "keys"
    monkeypatch.setenv("LABKIT_KEYS", str(folder))
    return folder


def as_real_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """labkit finds no embedded cloud at its home: the fixture's cloud looks like a real one."""
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "no-cloud-here"))


def as_embedded_cloud(monkeypatch: pytest.MonkeyPatch, cloud: CloudInfo) -> None:
    monkeypatch.setenv("LABKIT_HOME", str(cloud.home))


# -- key pairs ---------------------------------------------------------------------------------

def test_keys_dir_follows_labkit_keys(keys: Path) -> None:
    assert keys_dir() == keys.resolve()


def test_ensure_keypair_makes_a_key_and_imports_it(demo_conn: Connection, keys: Path) -> None:
    path = ssh.ensure_keypair(demo_conn, "made-here")
    assert path == keys.resolve() / "made-here"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    local = ssh.public_key(path)
    assert local.startswith("ssh-ed25519 ")
    assert path.with_name("made-here.pub").read_text().strip() == local
    remote = demo_conn.compute.get_keypair("made-here")
    assert remote.public_key.split()[:2] == local.split()[:2]


def test_ensure_keypair_reuses_what_matches(demo_conn: Connection, keys: Path) -> None:
    first = ssh.ensure_keypair(demo_conn, "reused")
    key_text = first.read_text()
    created = demo_conn.compute.get_keypair("reused").created_at
    assert ssh.ensure_keypair(demo_conn, "reused") == first
    assert first.read_text() == key_text
    assert demo_conn.compute.get_keypair("reused").created_at == created


def test_ensure_keypair_replaces_a_different_cloud_key(demo_conn: Connection,
                                                        keys: Path) -> None:
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    demo_conn.compute.create_keypair(name="stale", public_key=other)
    path = ssh.ensure_keypair(demo_conn, "stale")
    assert demo_conn.compute.get_keypair("stale").public_key.split()[:2] == \
        ssh.public_key(path).split()[:2]
    # the local key lost: a new one is made and replaces the cloud's copy
    path.unlink()
    again = ssh.ensure_keypair(demo_conn, "stale")
    assert demo_conn.compute.get_keypair("stale").public_key.split()[:2] == \
        ssh.public_key(again).split()[:2]


def test_a_key_name_cannot_leave_the_keys_folder(demo_conn: Connection, keys: Path) -> None:
    with pytest.raises(ValueError):
        ssh.ensure_keypair(demo_conn, "../outside")


# -- where to connect --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(demo_conn: Connection, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server on demo-net (model driver) with key pair "labkit-key", no floating IP yet."""
    folder = tmp_path_factory.mktemp("server-keys")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_KEYS", str(folder))
        ssh.ensure_keypair(demo_conn, ssh.DEFAULT_KEY)
    net = demo_conn.network.find_network("demo-net", ignore_missing=False)
    made = demo_conn.compute.create_server(name="ssh-vm", image_id=IMAGE, flavor_id=NANO,
                                           networks=[{"uuid": net.id}],
                                           key_name=ssh.DEFAULT_KEY)
    made = demo_conn.compute.wait_for_server(made, wait=BUILD_TIMEOUT)
    made.keys_folder = folder
    yield made
    demo_conn.compute.delete_server(made)


def test_endpoint_without_a_floating_ip_says_what_to_do(demo_conn: Connection, server: Any,
                                                        cloud: CloudInfo,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    as_embedded_cloud(monkeypatch, cloud)
    with pytest.raises(ssh.NoSshRoute, match="openstack server add floating ip ssh-vm"):
        ssh.endpoint(demo_conn, server)


@pytest.fixture(scope="module")
def floating(demo_conn: Connection, server: Any) -> str:
    public = demo_conn.network.find_network("public", ignore_missing=False)
    port = next(demo_conn.network.ports(device_id=server.id))
    fip = demo_conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    shown = wait_for(lambda: demo_conn.compute.get_server(server.id),
                     lambda s: ssh.floating_ips(s), BUILD_TIMEOUT)
    assert ssh.floating_ips(shown) == [fip.floating_ip_address]
    return fip.floating_ip_address


def test_endpoint_on_a_real_cloud_is_the_floating_ip(demo_conn: Connection, server: Any,
                                                     floating: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    as_real_cloud(monkeypatch, tmp_path)
    assert ssh.endpoint(demo_conn, server) == (floating, 22)
    assert ssh.endpoint(demo_conn, server.id) == (floating, 22)


def test_endpoint_on_the_model_driver_says_there_is_no_guest(
        demo_conn: Connection, server: Any, floating: str, cloud: CloudInfo,
        monkeypatch: pytest.MonkeyPatch) -> None:
    as_embedded_cloud(monkeypatch, cloud)
    with pytest.raises(ssh.NoSshRoute, match="model driver") as refused:
        ssh.endpoint(demo_conn, server)
    assert floating in str(refused.value)


def test_wait_for_console_on_the_model_driver(demo_conn: Connection, server: Any,
                                              cloud: CloudInfo, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    as_embedded_cloud(monkeypatch, cloud)
    with pytest.raises(ssh.NoSshRoute, match="model driver"):
        ssh.wait_for_console(demo_conn, server)
    # seen as a real cloud, the console is polled: the model's lines are there, "ready" never
    as_real_cloud(monkeypatch, tmp_path)
    log = ssh.wait_for_console(demo_conn, server, text="runs no guest")
    assert "runs no guest" in log
    with pytest.raises(TimeoutError, match="runs no guest"):
        ssh.wait_for_console(demo_conn, server, timeout=0.5)
    # what the log held before (a previous boot's lines) does not count
    with pytest.raises(TimeoutError):
        ssh.wait_for_console(demo_conn, server, text="runs no guest", timeout=0.5, after=log)


# -- running commands, against a paramiko ssh server -------------------------------------------

class _Session(paramiko.ServerInterface):
    """One connection's ssh server side: root with one public key; exec requests only."""

    def __init__(self, allowed: str) -> None:
        self.allowed = allowed
        self.command: bytes | None = None
        self.asked = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "root" and key.get_base64() == self.allowed
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (paramiko.OPEN_SUCCEEDED if kind == "session"
                else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        self.command = command
        self.asked.set()
        return True


class FakeGuest:
    """An ssh server on a free loopback port that runs commands with /bin/sh; its first
    `drop` connections are closed right after they are accepted."""

    def __init__(self, allowed_public_key: str, drop: int = 0) -> None:
        self.allowed = allowed_public_key.split()[1]
        self.drop = drop
        self.dropped = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()).decode()
        self.host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
        self.transports: list[paramiko.Transport] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.dropped < self.drop:
                self.dropped += 1
                conn.close()
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        self.transports.append(transport)
        transport.add_server_key(self.host_key)
        session = _Session(self.allowed)
        try:
            transport.start_server(server=session)
        except (paramiko.SSHException, EOFError):
            return
        channel = transport.accept(20)
        if channel is None or not session.asked.wait(20):
            return
        done = subprocess.run(["/bin/sh", "-c", (session.command or b"").decode()],
                              capture_output=True, timeout=60, check=False)
        channel.sendall(done.stdout)
        channel.sendall_stderr(done.stderr)
        channel.send_exit_status(done.returncode)
        channel.shutdown_write()
        channel.close()

    def close(self) -> None:
        self.sock.close()
        for transport in self.transports:
            transport.close()


@pytest.fixture
def key_file(tmp_path: Path, demo_conn: Connection, keys: Path) -> Path:
    return ssh.ensure_keypair(demo_conn, "runner")


@pytest.fixture
def guest(key_file: Path) -> Iterator[FakeGuest]:
    made = FakeGuest(ssh.public_key(key_file), drop=3)
    yield made
    made.close()


def test_run_returns_output_and_exit_status(guest: FakeGuest, key_file: Path) -> None:
    result = ssh.run(None, None, "echo out; echo err >&2; exit 3", key_file=key_file,
                     host="127.0.0.1", port=guest.port, timeout=60)
    assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 3)
    assert not result.ok
    assert guest.dropped == 3  # the first connections met no sshd, and were tried again
    assert repr(result) == "root@127.0.0.1:~# echo out; echo err >&2; exit 3\nout\nerr\n" \
                           "(exit status 3)"
    assert "<pre>" in result._repr_html_()
    with pytest.raises(RuntimeError, match="status 3"):
        result.check()


def test_run_reads_large_outputs_on_both_streams(guest: FakeGuest, key_file: Path) -> None:
    command = "head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2"
    result = ssh.run(None, None, command, key_file=key_file, host="127.0.0.1",
                     port=guest.port, timeout=120)
    assert result.ok
    assert (len(result.stdout), len(result.stderr)) == (3000000, 3000000)


def test_run_finds_key_and_endpoint_from_the_server(
        demo_conn: Connection, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_KEYS", str(server.keys_folder))
    key = keys_dir() / server.key_name
    fake = FakeGuest(ssh.public_key(key))
    try:
        monkeypatch.setattr(ssh, "endpoint", lambda conn, srv: ("127.0.0.1", fake.port))
        result = ssh.run(demo_conn, server, "echo hello from $(id -un)", timeout=60)
    finally:
        fake.close()
    assert result.ok and result.stdout.startswith("hello from ")
    assert str(result) == result.stdout and result.host == "ssh-vm"


def test_a_refused_key_fails_at_once(demo_conn: Connection, keys: Path, tmp_path: Path) -> None:
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    fake = FakeGuest(other)
    key = ssh.ensure_keypair(demo_conn, "refused")
    started = time.monotonic()
    try:
        with pytest.raises(paramiko.AuthenticationException):
            ssh.run(None, None, "true", key_file=key, host="127.0.0.1", port=fake.port,
                    timeout=60)
    finally:
        fake.close()
    assert time.monotonic() - started < 30


def test_run_gives_up_at_the_deadline(key_file: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        ssh.run(None, None, "true", key_file=key_file, host="127.0.0.1", port=port, timeout=1)


def test_run_without_a_key_pair_on_the_server_says_so(demo_conn: Connection) -> None:
    class Keyless:
        id, name, key_name = "x", "keyless", None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssh, "_server", lambda conn, srv: Keyless())
        with pytest.raises(ssh.NoSshRoute, match="without a key pair"):
            ssh.run(demo_conn, "keyless", "true")
