"""ssh from a notebook into a server, the way a user reaches a guest through its floating IP.

    key = labkit.ensure_keypair(conn)                 # a local key, imported as "labkit-key"
    server = conn.compute.create_server(..., key_name="labkit-key")
    labkit.wait_for_console(conn, server)             # the guest says it is ready
    labkit.ssh(server, "uname -a", conn=conn)         # after `server add floating ip`

On a real cloud the floating IP is the guest's address and ssh listens on port 22.
On the embedded cloud a floating IP is a loopback port that qemu forwards to the
guest's port 22: `endpoint()` asks the cloud's inspection API for it.

No prompts get in the reader's way: unknown host keys are accepted and no
known_hosts file is read or written (every guest makes a new host key, and these
are throwaway machines); only the key file given (or the one named after the
server's key pair) is offered, never an agent's. ssh goes through paramiko, which
is imported on first use.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.paths import keys_dir

# paramiko logs each failed attempt with a traceback; with no handler of its own that
# lands in the notebook cell, while run() retries until the guest's sshd answers
logging.getLogger("paramiko").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from openstack.compute.v2.server import Server
    from openstack.connection import Connection

try:
    from labkit.cloud.guest import READY_LINE
except ImportError:  # the guest package is optional for a notebook-only install
    READY_LINE = "labkit-tiny ready"

DEFAULT_KEY = "labkit-key"
RETRY_PAUSE = 0.5  # seconds between attempts while the guest's sshd is not up yet
POLL_SECONDS = 1.0  # how often wait_for_console reads the console again
CHUNK = 65536


class NoSshRoute(RuntimeError):
    """Nothing outside the server's network can reach its ssh port (no floating IP, no
    forward, or no guest at all)."""


@dataclass(repr=False)
class SshResult:
    """What a command printed and how it ended, shown like a terminal session."""

    command: str
    stdout: str
    stderr: str
    exit_status: int
    user: str = "root"
    host: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def check(self) -> SshResult:
        """This result, or RuntimeError with what the command said if it failed."""
        if not self.ok:
            raise RuntimeError(f"{self.command!r} exited with status {self.exit_status}:\n"
                               f"{self.stderr or self.stdout}")
        return self

    def _prompt(self) -> str:
        where = f"{self.user}@{self.host}" if self.host else self.user
        return f"{where}:~# {self.command}"

    def __str__(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:
        lines = [self._prompt(), (self.stdout + self.stderr).rstrip("\n")]
        if self.exit_status:
            lines.append(f"(exit status {self.exit_status})")
        return "\n".join(line for line in lines if line)

    def _repr_html_(self) -> str:
        err = (f"<span style='color:#b22222'>{html.escape(self.stderr)}</span>"
               if self.stderr else "")
        status = (f"<p><em>exit status {self.exit_status}</em></p>" if self.exit_status else "")
        return (f"<pre><b>{html.escape(self._prompt())}</b>\n{html.escape(self.stdout)}{err}"
                f"</pre>{status}")


# -- the key pair -----------------------------------------------------------------------------

def _key_path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} cannot name a key file")
    return keys_dir() / name


def _make_key(path: Path) -> None:
    """A new ed25519 key in OpenSSH's format at `path` (0600), its public half beside it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    path.with_name(path.name + ".pub").write_text(public_key(path) + "\n")


def public_key(path: Path) -> str:
    """The OpenSSH public key line of the private key at `path`."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    return f"{line} labkit"


def _blob(public: str | None) -> tuple[str, ...]:
    """A public key without its comment: type and base64 data."""
    return tuple((public or "").split()[:2])


def ensure_keypair(conn: Connection, name: str = DEFAULT_KEY) -> Path:
    """The private key for key pair `name`, made if needed, its public half in the cloud.

    The private key lives at `keys_dir()/<name>` (ed25519, OpenSSH format, mode 0600;
    `$LABKIT_KEYS` moves the folder). If the cloud has no key pair of that name for
    this user, the public key is imported as one. If the cloud's key pair of that name
    holds another key (made elsewhere, or the local file was lost and remade), it is
    deleted and the local key imported in its place: servers booted with the old key
    keep it, new ones get this one. Returns the private key's path.
    """
    from openstack import exceptions

    path = _key_path(name)
    if not path.exists():
        _make_key(path)
    local = public_key(path)
    try:
        remote = conn.compute.get_keypair(name)
    except exceptions.NotFoundException:
        remote = None
    if remote is not None and _blob(remote.public_key) == _blob(local):
        return path
    if remote is not None:
        conn.compute.delete_keypair(name)
    conn.compute.create_keypair(name=name, public_key=local)
    return path


# -- where to connect -------------------------------------------------------------------------

def _server(conn: Connection, server: Server | str) -> Server:
    """The server as the API shows it now (its addresses change as floating IPs come)."""
    server_id = server if isinstance(server, str) else server.id
    found = conn.compute.find_server(server_id, ignore_missing=False)
    return conn.compute.get_server(found.id)


def floating_ips(server: Server) -> list[str]:
    """The server's floating IPs, as `addresses` lists them."""
    return [a["addr"] for entries in (server.addresses or {}).values() for a in entries
            if a.get("OS-EXT-IPS:type") == "floating"]


def _no_floating_ip(server: Server) -> NoSshRoute:
    return NoSshRoute(
        f"Server {server.name} ({server.id}) has no floating IP, so nothing outside its "
        f"network can reach its ssh port. Give it one, then try again:\n"
        f"  openstack floating ip create public\n"
        f"  openstack server add floating ip {server.name} <the address it printed>")


def _guest(conn: Connection, server_id: str) -> dict[str, Any] | None:
    """What the embedded cloud's hypervisor holds for the server (its inspection API), or
    None when it holds nothing."""
    from labkit.connect import connect

    admin = connect("labkit-admin")
    try:
        base = admin.config.get_auth_args()["auth_url"].rsplit("/identity", 1)[0]
        response = admin.session.get(f"{base}/labkit/v1/guests/{server_id}", raise_exc=False)
    finally:
        admin.close()
    if response.status_code == 404:
        return None
    response.raise_for_status()
    data = response.json()
    return data.get("guest", data) if isinstance(data, dict) else None


def endpoint(conn: Connection, server: Server | str) -> tuple[str, int]:
    """(host, port) to ssh to the server.

    On a real cloud: its first floating IP, port 22. On the embedded cloud: the loopback
    port qemu forwards to the guest's port 22 for that floating IP. NoSshRoute, saying
    what to do, when the server has no floating IP or no guest to forward to.
    """
    from labkit.connect import is_embedded

    found = _server(conn, server)
    addresses = floating_ips(found)
    if not addresses:
        raise _no_floating_ip(found)
    if not is_embedded(conn):
        return addresses[0], 22
    guest = _guest(conn, found.id)
    if guest is None:
        raise NoSshRoute(
            f"The embedded cloud's hypervisor holds no guest for server {found.name} "
            f"(status {found.status}): nothing answers behind {addresses[0]}. A server "
            f"must be ACTIVE on the qemu driver to be reached.")
    if guest.get("driver") == "model":
        raise NoSshRoute(
            f"Server {found.name} runs on the embedded cloud's model driver, which (like "
            f"nova's fake driver) starts no guest: there is no machine behind "
            f"{addresses[0]} to ssh to. Real guests need the qemu driver: "
            f"`labkit image build`, then restart the cloud (LABKIT_VIRT=qemu forces it).")
    forwards = [f for f in guest.get("forwards") or [] if f.get("guest_port", 22) == 22]
    chosen = next((f for f in forwards if f.get("floating_ip") == addresses[0]),
                  forwards[0] if forwards else None)
    if chosen is None:
        raise NoSshRoute(
            f"Server {found.name} has the floating IP {addresses[0]}, but its guest has no "
            f"port forward for it yet (the cloud adds one when neutron tells nova about the "
            f"address). Wait a moment and try again; `openstack server show {found.name}` "
            f"shows the address once nova knows it.")
    return str(chosen["host"]), int(chosen["port"])


# -- running a command ------------------------------------------------------------------------

def _connect(host: str, port: int, user: str, key_file: Path, deadline: float) -> Any:
    """A connected, authenticated paramiko SSHClient; retries until `deadline` while the
    guest's sshd is not answering yet (a forward that accepts, then closes, makes
    paramiko fail reading the protocol banner). A refused key is final."""
    import paramiko

    last: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no ssh server answered on {host}:{port} in time "
                               f"(last: {last!r})") from last
        client = paramiko.SSHClient()
        # no known_hosts: every guest makes a new host key, and nothing should prompt
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(host, port, username=user, key_filename=str(key_file),
                           look_for_keys=False, allow_agent=False,
                           timeout=min(10.0, remaining), banner_timeout=min(15.0, remaining),
                           auth_timeout=min(15.0, remaining))
            return client
        except paramiko.AuthenticationException:
            client.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            last = exc
            time.sleep(min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))


def _execute(client: Any, command: str, deadline: float) -> tuple[bytes, bytes, int]:
    """Run `command` on one channel; (stdout, stderr, exit status), reading both streams
    as they come so neither fills its window while the other is awaited."""
    channel = client.get_transport().open_session(timeout=max(1.0, deadline - time.monotonic()))
    channel.settimeout(0.1)
    channel.exec_command(command)
    out, err = bytearray(), bytearray()
    out_done = err_done = False
    while not (out_done and err_done):
        if time.monotonic() > deadline:
            channel.close()
            raise TimeoutError(f"{command!r} did not finish in time")
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(CHUNK)
        try:
            if not out_done:
                data = channel.recv(CHUNK)
                out_done = data == b""
                out += data
            else:
                data = channel.recv_stderr(CHUNK)
                err_done = data == b""
                err += data
        except TimeoutError:  # socket.timeout (an alias since 3.10): nothing new yet
            continue
    if not channel.status_event.wait(max(0.1, deadline - time.monotonic())):
        raise TimeoutError(f"{command!r} sent no exit status in time")
    status = channel.recv_exit_status()
    channel.close()
    return bytes(out), bytes(err), status


def run(conn: Connection | None, server: Server | str | None, command: str, *,
        user: str = "root", key_file: Path | str | None = None, host: str | None = None,
        port: int | None = None, timeout: float = 120) -> SshResult:
    """Run `command` on the server over ssh and return what it printed.

    `key_file` defaults to `keys_dir()/<the server's key pair name>` (ensure_keypair
    keeps it there); `host` and `port` default to `endpoint(conn, server)`. Connecting
    is retried until `timeout` seconds have passed, since a guest that just went
    ACTIVE may not run sshd yet; a refused key fails at once.
    """
    deadline = time.monotonic() + timeout
    found = None
    if key_file is None or host is None or port is None:
        if conn is None or server is None:
            raise ValueError("without conn and server, give key_file, host and port")
        found = _server(conn, server)
    if key_file is None:
        assert found is not None
        if not found.key_name:
            raise NoSshRoute(f"Server {found.name} was booted without a key pair, so no key "
                             f"can log in. Boot it with key_name (labkit.ensure_keypair "
                             f"makes {DEFAULT_KEY!r}).")
        key_file = keys_dir() / found.key_name
        if not key_file.exists():
            raise FileNotFoundError(
                f"No private key {key_file} for key pair {found.key_name!r}: labkit."
                f"ensure_keypair(conn, {found.key_name!r}) makes one (and replaces the "
                f"cloud's copy), or pass key_file=")
    if host is None or port is None:
        assert conn is not None and found is not None
        found_host, found_port = endpoint(conn, found)
        host, port = host or found_host, port or found_port
    client = _connect(host, port, user, Path(key_file), deadline)
    try:
        out, err, status = _execute(client, command, deadline)
    finally:
        client.close()
    return SshResult(command=command, stdout=out.decode("utf-8", errors="replace"),
                     stderr=err.decode("utf-8", errors="replace"), exit_status=status,
                     user=user, host=found.name if found is not None else host)


def wait_for_console(conn: Connection, server: Server | str, text: str = READY_LINE,
                     timeout: float = 180, after: str = "") -> str:
    """Poll the server's console log (`openstack console log show`) until `text` shows;
    the log so far. TimeoutError with its last lines if it never does; NoSshRoute at once
    on the embedded cloud's model driver, whose servers have no guest to print it.

    The log keeps every boot: after a reboot or a start, pass the log as it was before
    (`after=`), and only what the guest printed since counts."""
    from openstack import exceptions

    from labkit.connect import is_embedded

    server_id = server if isinstance(server, str) else server.id
    if is_embedded(conn):
        guest = _guest(conn, server_id)
        if guest is not None and guest.get("driver") == "model":
            raise NoSshRoute(f"Server {server_id} runs on the model driver, which starts no "
                             f"guest: nothing will ever print {text!r} on its console.")
    deadline = time.monotonic() + timeout
    output = ""
    while True:
        # a server not running yet answers 409; keep asking until the deadline
        with contextlib.suppress(exceptions.HttpException):
            output = conn.compute.get_server_console_output(server_id).get("output") or ""
        if text in output[len(after):]:
            return output
        if time.monotonic() >= deadline:
            tail = "\n".join(output.splitlines()[-20:]) or "(the console log is empty)"
            raise TimeoutError(f"{text!r} did not appear on the console of {server_id} in "
                               f"{timeout:.0f} s. Its last lines:\n{tail}")
        time.sleep(POLL_SECONDS)


__all__ = ["DEFAULT_KEY", "READY_LINE", "NoSshRoute", "SshResult", "endpoint",
           "ensure_keypair", "floating_ips", "public_key", "run", "wait_for_console"]
