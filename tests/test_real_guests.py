"""Real guests booted through the embedded cloud on the qemu driver, checked as a user would.

The scenario tests a real cloud gets (tempest's server basic ops, minimum basic) run here
against a cloud of this module's own on the qemu driver: a server booted with the
`openstack` CLI and a key pair, its serial console, ssh through a floating IP with the
key the metadata service gave the guest, the metadata and user data seen from inside,
the domain XML and qemu command line the cloud made, the image cache of a second boot,
a qemu killed behind nova's back, a restart of the whole cloud, and a delete that leaves
nothing behind on the host.

Needs qemu and the tiny guest image (`labkit image build`): the module skips without
them, and fails instead when LABKIT_REQUIRE_QEMU=1 (`make test`) or CI is set.

At most two guests run at once (the machine may have two cores shared with other work).
Every wait polls against a generous deadline; no test asserts on how long anything took.
The tests run in file order and share one server, which the last two restart and delete.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import auth_header, pid_alive, start_cloud, stop_cloud
from labkit.cloud.guest import READY_LINE
from labkit.cloud.process import CloudInfo
from labkit.cloud.virt import host as virt_host

Run = Callable[..., subprocess.CompletedProcess[str]]

# Guards against a hung guest or cloud, never claims about speed (TCG on a loaded machine).
READY_TIMEOUT = 120  # a guest's console reaching READY_LINE
STATE_TIMEOUT = 120  # a server's status or a floating IP's forward settling
SSH_TIMEOUT = 120  # the guest's sshd answering through the forward
POLL = 1.0  # seconds between polls: each one costs a request (or a CLI run) on a busy machine

BANNER = re.compile(r"^labkit-tiny: hostname (?P<hostname>\S+), address (?P<address>[\d.]+)/"
                    r"(?P<prefix>\d+), metadata (?P<metadata>[\d.]+)$", re.MULTILINE)
KEY_NAME = "real-guests-key"
SERVER_NAME = "real-vm"
# The guest's /init runs a "#!" user data script with its output on the console. The
# arithmetic proves a shell ran it: the script's text alone never shows "42".
USER_DATA = '#!/bin/sh\necho "user data says $((6 * 7))"\n'
USER_DATA_OUTPUT = "user data says 42"
NANO_MEMORY_KIB = 128 * 1024
ACCEL = {"qemu": "tcg", "kvm": "kvm"}  # the domain type -> qemu's accelerator
SERVERS = "/compute/v2.1/servers"
RUNNING, SHUTDOWN = 1, 4  # nova's power_state


# -- qemu here, or skip (fail where it must work) -------------------------------------------

def require_qemu() -> None:
    """Skip the module when qemu or the guest image is missing; fail instead in CI."""
    from labkit.cloud.guest import built_image

    missing = []
    if not virt_host.qemu_available():
        missing.append("qemu (apt-get install qemu-system-x86 qemu-utils)")
    if built_image() is None:
        missing.append("the tiny guest image (labkit image build)")
    if not missing:
        return
    why = "real guests need " + " and ".join(missing)
    if os.environ.get("LABKIT_REQUIRE_QEMU") == "1" or os.environ.get("CI", "").lower() not in (
            "", "0", "false"):
        pytest.fail(f"LABKIT_REQUIRE_QEMU=1 or CI is set, but {why}")
    pytest.skip(why)


# -- small helpers ----------------------------------------------------------------------------

def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    """Call `fetch` every POLL seconds until `done` says yes or the deadline passes."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(POLL)
        value = fetch()
    return value


@contextlib.contextmanager
def qemu_cloud(home: Path) -> Iterator[CloudInfo]:
    """A cloud on the qemu driver at `home`; once it is down, none of its guests may be left."""
    require_qemu()
    info = start_cloud(home, virt="qemu")
    try:
        yield info
    finally:
        stop_cloud(home)
        left = qemu_pids(home)
        assert not left, f"qemu processes of {home} outlived `down`: {left}"


def qemu_pids(home: Path, *needles: str) -> list[int]:
    """Live qemu-system processes of the cloud at `home` whose command line also contains
    every one of `needles`. Deterministic clouds elsewhere on this machine make the same
    server ids, so an id alone does not say whose guest a process is."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not os.path.basename(argv[0]).startswith(b"qemu-system"):
            continue
        line = b" ".join(argv).decode(errors="replace")
        if all(n in line for n in (f"{home}/", *needles)) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def compute(token: str) -> dict[str, str]:
    return {**auth_header(token), "OpenStack-API-Version": "compute 2.79"}


def show(http: httpx.Client, token: str, server_id: str) -> dict[str, Any] | None:
    """The server as nova's API shows it (admin: with host and power state), None once gone."""
    r = http.get(f"{SERVERS}/{server_id}", headers=compute(token))
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()["server"]


def wait_status(http: httpx.Client, token: str, server_id: str, status: str) -> dict[str, Any]:
    shown = poll(lambda: show(http, token, server_id),
                 lambda s: s is not None and s["status"] in (status, "ERROR"), STATE_TIMEOUT)
    assert shown is not None and shown["status"] == status, shown
    return shown


def console_text(http: httpx.Client, token: str, server_id: str) -> str:
    """The whole console log through nova's API (cheaper to poll than the CLI)."""
    r = http.post(f"{SERVERS}/{server_id}/action", headers=compute(token),
                  json={"os-getConsoleOutput": {}})
    assert r.status_code == 200, r.text
    return r.json()["output"]


def wait_ready(http: httpx.Client, token: str, server_id: str, times: int = 1) -> str:
    """The console once it holds READY_LINE `times` times (the log survives a reboot)."""
    text = poll(lambda: console_text(http, token, server_id),
                lambda t: t.count(READY_LINE) >= times, READY_TIMEOUT)
    assert text.count(READY_LINE) >= times, f"not ready ({times}) yet:\n{text}"
    return text


def banner(console: str) -> dict[str, str]:
    """The guest's last "hostname ..., address ..., metadata ..." line, parsed."""
    found = list(BANNER.finditer(console))
    assert found, f"no banner line on the console:\n{console}"
    return found[-1].groupdict()


def guest(http: httpx.Client, admin_token: str, server_id: str) -> dict[str, Any]:
    """What the hypervisor holds for the server (labkit's inspection API, admin only)."""
    r = http.get(f"/labkit/v1/guests/{server_id}", headers=auth_header(admin_token))
    assert r.status_code == 200, r.text
    return r.json()


def forward(http: httpx.Client, admin_token: str, server_id: str,
            address: str) -> dict[str, Any]:
    """The loopback forward of a floating IP, once the qemu driver has added it. Its port is
    only preferred: another cloud on this machine may hold it, so always ask."""
    forwards = poll(lambda: guest(http, admin_token, server_id)["forwards"],
                    lambda fs: any(f["floating_ip"] == address for f in fs), STATE_TIMEOUT)
    found = [f for f in forwards if f["floating_ip"] == address]
    assert len(found) == 1, forwards
    return found[0]


def ssh(port: int, key: Path, command: str) -> tuple[int, str]:
    """Run `command` as root in the guest over ssh at 127.0.0.1:`port`, offering only `key`;
    retried until SSH_TIMEOUT while the forward or the guest's sshd is not answering."""
    import paramiko

    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    deadline = time.monotonic() + SSH_TIMEOUT
    while True:
        client = paramiko.SSHClient()
        # every guest makes a new host key: a user would accept it once, like this
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port=port, username="root", pkey=pkey,
                           allow_agent=False, look_for_keys=False, timeout=30,
                           banner_timeout=30, auth_timeout=30)
            _, stdout, stderr = client.exec_command(command, timeout=60)
            output = stdout.read().decode() + stderr.read().decode()
            return stdout.channel.recv_exit_status(), output
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"no ssh to root@127.0.0.1:{port}: {exc!r}") from exc
            time.sleep(POLL)
        finally:
            client.close()


def ssh_ok(port: int, key: Path, command: str) -> str:
    status, output = ssh(port, key, command)
    assert status == 0, f"{command!r} exited with {status}:\n{output}"
    return output


def event_actions(run: Run, server_id: str, cloud_name: str) -> list[str]:
    rows = as_json(run("server", "event", "list", server_id, "-f", "json",
                       cloud_name=cloud_name))
    return [row["Action"] for row in rows]


# -- the module's cloud and what its tests share -----------------------------------------------

@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudInfo]:
    """This module's own cloud on the qemu driver (overrides conftest's model-driver one)."""
    with qemu_cloud(tmp_path_factory.mktemp("labkit-qemu-home")) as info:
        yield info


@pytest.fixture(scope="module")
def key(openstack_cli: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new ed25519 key in OpenSSH's format, its public half imported as KEY_NAME."""
    private = tmp_path_factory.mktemp("keys") / "id_ed25519"
    made = ed25519.Ed25519PrivateKey.generate()
    private.write_bytes(made.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    private.chmod(0o600)
    public = made.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH)
    pub = private.with_name("id_ed25519.pub")
    pub.write_text(public.decode() + " real-guests@labkit\n")
    ok(openstack_cli("keypair", "create", "--public-key", str(pub), KEY_NAME))
    yield private
    ok(openstack_cli("keypair", "delete", KEY_NAME))


def public_key(key: Path) -> str:
    return key.with_name(key.name + ".pub").read_text().strip()


@pytest.fixture(scope="module")
def vm(openstack_cli: Run, key: Path, tmp_path_factory: pytest.TempPathFactory,
       http: httpx.Client, admin_token: str) -> Iterator[dict[str, Any]]:
    """The module's server: demo's, with the key pair and a user data script, created
    with `--wait`. The last tests restart and delete it; whatever is left goes at the end."""
    script = tmp_path_factory.mktemp("user-data") / "user-data.sh"
    script.write_text(USER_DATA)
    created = as_json(openstack_cli(
        "server", "create", "--image", "labkit-tiny", "--flavor", "m1.nano",
        "--network", "demo-net", "--key-name", KEY_NAME, "--user-data", str(script),
        "--wait", "-f", "json", SERVER_NAME))
    yield created
    if show(http, admin_token, created["id"]) is not None:
        ok(openstack_cli("server", "delete", "--wait", created["id"]))


@pytest.fixture(scope="module")
def port(vm: dict[str, Any], openstack_cli: Run) -> dict[str, Any]:
    """The server's port as `openstack port list --server` shows it, with its subnet's prefix."""
    (row,) = as_json(openstack_cli("port", "list", "--server", vm["id"], "-f", "json"))
    (fixed,) = row["Fixed IP Addresses"]
    subnet = as_json(openstack_cli("subnet", "show", fixed["subnet_id"], "-f", "json"))
    return {"id": row["ID"], "mac": row["MAC Address"], "ip": fixed["ip_address"],
            "prefix": ipaddress.ip_network(subnet["cidr"]).prefixlen}


@pytest.fixture(scope="module")
def hostname(vm: dict[str, Any], http: httpx.Client, admin_token: str) -> str:
    """The name the guest should call itself: nova's hostname in its dhcp_domain, novalocal."""
    shown = show(http, admin_token, vm["id"])
    assert shown is not None
    return f"{shown['OS-EXT-SRV-ATTR:hostname']}.novalocal"


@pytest.fixture(scope="module")
def floating(vm: dict[str, Any], openstack_cli: Run, http: httpx.Client,
             admin_token: str) -> Iterator[dict[str, Any]]:
    """A floating IP from `public` on the server, and the loopback forward it became."""
    fip = as_json(openstack_cli("floating", "ip", "create", "public", "-f", "json"))
    address = fip["floating_ip_address"]
    try:
        ok(openstack_cli("server", "add", "floating", "ip", vm["id"], address))
        yield {"address": address, **forward(http, admin_token, vm["id"], address)}
    finally:
        ok(openstack_cli("floating", "ip", "delete", fip["id"]))


@pytest.fixture(scope="module")
def second(vm: dict[str, Any], openstack_cli: Run, http: httpx.Client,
           admin_token: str) -> Iterator[dict[str, Any]]:
    """A second server (admin's, no key) pinned to the first one's host."""
    host = guest(http, admin_token, vm["id"])["host"]
    created = as_json(openstack_cli(
        "server", "create", "--image", "labkit-tiny", "--flavor", "m1.nano",
        "--network", "demo-net", "--availability-zone", f"nova:{host}", "--wait",
        "-f", "json", "real-vm-2", cloud_name="labkit-admin"))
    yield created
    if show(http, admin_token, created["id"]) is not None:
        ok(openstack_cli("server", "delete", "--wait", created["id"],
                         cloud_name="labkit-admin"))


# -- a server, its console -------------------------------------------------------------------

def test_server_create_with_wait_returns_it_active(vm: dict[str, Any], http: httpx.Client,
                                                   admin_token: str) -> None:
    assert vm["status"] == "ACTIVE"
    shown = show(http, admin_token, vm["id"])
    assert shown is not None and shown["OS-EXT-STS:power_state"] == RUNNING
    assert guest(http, admin_token, vm["id"])["driver"] == "qemu"


def test_console_log_shows_ready_and_a_banner_with_hostname_and_fixed_ip(
        vm: dict[str, Any], port: dict[str, Any], hostname: str, openstack_cli: Run,
        http: httpx.Client, admin_token: str) -> None:
    wait_ready(http, admin_token, vm["id"])
    console = ok(openstack_cli("console", "log", "show", vm["id"]))
    assert READY_LINE in console.splitlines()
    said = banner(console)
    assert said["hostname"] == hostname
    assert (said["address"], int(said["prefix"])) == (port["ip"], port["prefix"])


def test_console_log_lines_2_returns_at_most_two_lines_of_the_log(
        vm: dict[str, Any], openstack_cli: Run, http: httpx.Client, admin_token: str) -> None:
    full = wait_ready(http, admin_token, vm["id"]).splitlines()
    tail = ok(openstack_cli("console", "log", "show", "--lines", "2", vm["id"])).splitlines()
    tail = [line for line in tail if line.strip()]  # the CLI adds a blank line of its own
    assert 1 <= len(tail) <= 2
    assert all(line in full for line in tail)


# -- ssh through a floating IP ---------------------------------------------------------------

def test_a_floating_ip_becomes_a_loopback_forward_to_the_guests_ssh(
        floating: dict[str, Any]) -> None:
    assert floating["host"] == "127.0.0.1"
    assert floating["guest_port"] == 22
    assert 0 < floating["port"] < 65536


def test_ssh_with_the_injected_key_shows_the_ports_fixed_ip_on_eth0(
        vm: dict[str, Any], floating: dict[str, Any], key: Path, port: dict[str, Any],
        http: httpx.Client, admin_token: str) -> None:
    wait_ready(http, admin_token, vm["id"])
    shown = ssh_ok(floating["port"], key, "ip -4 addr show eth0")
    assert f"inet {port['ip']}/{port['prefix']} " in shown, shown


def test_ssh_hostname_is_the_servers_hostname(vm: dict[str, Any], floating: dict[str, Any],
                                              key: Path, hostname: str) -> None:
    assert ssh_ok(floating["port"], key, "hostname").strip() == hostname


# -- metadata and user data, from inside -----------------------------------------------------

def metadata_ip(http: httpx.Client, admin_token: str, server_id: str) -> str:
    return banner(wait_ready(http, admin_token, server_id))["metadata"]


def test_metadata_json_names_the_server_its_hostname_and_its_key(
        vm: dict[str, Any], floating: dict[str, Any], key: Path, hostname: str,
        http: httpx.Client, admin_token: str) -> None:
    ip = metadata_ip(http, admin_token, vm["id"])
    meta = json.loads(ssh_ok(floating["port"], key,
                             f"wget -qO- http://{ip}/openstack/latest/meta_data.json"))
    assert meta["uuid"] == vm["id"]
    assert meta["hostname"] == hostname
    assert {name: text.strip() for name, text in meta["public_keys"].items()} == {
        KEY_NAME: public_key(key)}


def test_ec2_metadata_hands_out_the_public_key(vm: dict[str, Any], floating: dict[str, Any],
                                               key: Path, http: httpx.Client,
                                               admin_token: str) -> None:
    ip = metadata_ip(http, admin_token, vm["id"])
    got = ssh_ok(floating["port"], key,
                 f"wget -qO- http://{ip}/latest/meta-data/public-keys/0/openssh-key")
    assert got.strip() == public_key(key)


def test_a_user_data_script_runs_and_prints_on_the_console(
        vm: dict[str, Any], openstack_cli: Run, http: httpx.Client, admin_token: str) -> None:
    wait_ready(http, admin_token, vm["id"])
    console = ok(openstack_cli("console", "log", "show", vm["id"])).splitlines()
    assert USER_DATA_OUTPUT in console


# -- what the hypervisor was told ------------------------------------------------------------

def test_domain_xml_names_instance_uuid_memory_and_mac(vm: dict[str, Any], port: dict[str, Any],
                                                       http: httpx.Client,
                                                       admin_token: str) -> None:
    described = guest(http, admin_token, vm["id"])
    root = ET.fromstring(described["domain_xml"])
    assert re.fullmatch(r"instance-[0-9a-f]{8}", described["instance_name"])
    assert root.findtext("name") == described["instance_name"]
    assert root.findtext("uuid") == vm["id"]
    memory = root.find("memory")
    assert memory is not None and memory.get("unit") == "KiB"
    assert memory.text == str(NANO_MEMORY_KIB)
    assert [m.get("address") for m in root.findall("devices/interface/mac")] == [port["mac"]]
    assert root.get("type") == described["virt_type"]


def test_qemu_command_matches_the_domain_and_is_what_runs(
        vm: dict[str, Any], port: dict[str, Any], http: httpx.Client, admin_token: str) -> None:
    described = guest(http, admin_token, vm["id"])
    command: list[str] = described["command"]
    root = ET.fromstring(described["domain_xml"])

    def value(option: str) -> str:
        return command[command.index(option) + 1]

    assert value("-name").split(",")[0] == f"guest={described['instance_name']}"
    assert value("-uuid") == vm["id"]
    assert int(value("-m")) * 1024 == NANO_MEMORY_KIB
    assert value("-accel") == ACCEL[root.get("type", "")]
    assert any(f"mac={port['mac']}" in arg.split(",") for arg in command)
    # the process the cloud reports runs that very command line
    running = Path(f"/proc/{described['pid']}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [arg.decode() for arg in running] == command


# -- the image cache -------------------------------------------------------------------------

def test_the_second_boot_on_a_host_hits_the_image_cache(
        vm: dict[str, Any], second: dict[str, Any], http: httpx.Client,
        admin_token: str) -> None:
    first, again = guest(http, admin_token, vm["id"]), guest(http, admin_token, second["id"])
    assert again["host"] == first["host"]
    roles = {"machine image", "kernel", "ramdisk"}
    assert {e["role"] for e in first["image_cache"]} == roles
    assert {e["role"] for e in again["image_cache"]} == roles
    # the module's cloud is new: its first boot fetched everything, the second nothing
    assert [e["hit"] for e in first["image_cache"]] == [False] * 3
    assert [e["hit"] for e in again["image_cache"]] == [True] * 3
    paths = {e["image_id"]: e["path"] for e in first["image_cache"]}
    assert {e["image_id"]: e["path"] for e in again["image_cache"]} == paths


# -- a qemu killed behind nova's back --------------------------------------------------------

def test_a_killed_qemu_turns_the_server_shutoff_and_server_start_boots_it_again(
        cloud: CloudInfo, second: dict[str, Any], openstack_cli: Run, http: httpx.Client,
        admin_token: str) -> None:
    wait_ready(http, admin_token, second["id"])
    pid = guest(http, admin_token, second["id"])["pid"]
    os.kill(pid, signal.SIGKILL)

    off = wait_status(http, admin_token, second["id"], "SHUTOFF")
    assert off["OS-EXT-STS:power_state"] == SHUTDOWN
    assert "stop" in event_actions(openstack_cli, second["id"], "labkit-admin")
    assert not qemu_pids(cloud.home, second["id"])

    ok(openstack_cli("server", "start", second["id"], cloud_name="labkit-admin"))
    on = wait_status(http, admin_token, second["id"], "ACTIVE")
    assert on["OS-EXT-STS:power_state"] == RUNNING
    assert "start" in event_actions(openstack_cli, second["id"], "labkit-admin")
    wait_ready(http, admin_token, second["id"], times=2)
    assert guest(http, admin_token, second["id"])["pid"] != pid
    # a guest that just needs to be off should not hold a CPU: stop it for the tests after
    ok(openstack_cli("server", "stop", second["id"], cloud_name="labkit-admin"))
    wait_status(http, admin_token, second["id"], "SHUTOFF")


# -- a restart of the whole cloud, then a delete (these two run last: they change `vm`) -------

def test_a_cloud_restart_keeps_the_server_shutoff_and_server_start_brings_ssh_back(
        cloud: CloudInfo, vm: dict[str, Any], floating: dict[str, Any], key: Path,
        hostname: str, openstack_cli: Run, http: httpx.Client, admin_token: str) -> None:
    before = wait_ready(http, admin_token, vm["id"]).count(READY_LINE)
    assert qemu_pids(cloud.home, vm["id"])

    stop_cloud(cloud.home)
    assert not qemu_pids(cloud.home)

    info = start_cloud(cloud.home, virt="qemu")
    http.base_url = httpx.URL(info.url)  # the port is kept, but follow it if not
    shown = show(http, admin_token, vm["id"])
    assert shown is not None and shown["status"] == "SHUTOFF"
    assert shown["OS-EXT-STS:power_state"] == SHUTDOWN
    assert not qemu_pids(cloud.home)

    ok(openstack_cli("server", "start", vm["id"]))
    wait_status(http, admin_token, vm["id"], "ACTIVE")
    wait_ready(http, admin_token, vm["id"], times=before + 1)
    # the floating IP's forward is set up again as the guest starts
    again = forward(http, admin_token, vm["id"], floating["address"])
    assert ssh_ok(again["port"], key, "hostname").strip() == hostname


def test_server_delete_wait_leaves_no_qemu_and_no_instance_folder(
        cloud: CloudInfo, vm: dict[str, Any], openstack_cli: Run, http: httpx.Client,
        admin_token: str) -> None:
    described = guest(http, admin_token, vm["id"])
    folder = Path(described["folder"])
    assert folder == cloud.home / "hosts" / described["host"] / "instances" / vm["id"]
    assert folder.is_dir() and qemu_pids(cloud.home, vm["id"])

    ok(openstack_cli("server", "delete", "--wait", vm["id"]))
    assert show(http, admin_token, vm["id"]) is None
    assert not qemu_pids(cloud.home, vm["id"])
    assert not pid_alive(described["pid"])
    assert not folder.exists()
    assert not Path(described["qmp_socket"]).exists()
