"""The tutorial's volume story on real guests, through openstacksdk: a volume outlives
the instance it was written in.

A cloud of this module's own on the qemu driver boots two servers with a key pair and
a floating IP each. A 1 GB volume is attached to the first (cinder's attachments API,
nova's os-volume_attachments, QMP hot-plug into the running guest): the guest sees
/dev/vdb with the volume id as its serial and writes a marker with dd. The volume is
detached (the disk leaves the guest), attached to the second server, and the marker
reads back there. Everything is deleted at the end.

Needs qemu and the tiny guest image (`labkit image build`): skips without them, fails
instead when LABKIT_REQUIRE_QEMU=1 or CI is set. The tests run in file order and share
the servers and the volume.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openstack.connection import Connection
from test_real_guests import qemu_cloud, qemu_pids

import labkit
from conftest import connection
from labkit.cloud.process import CloudInfo

KEY_NAME = "volume-guests-key"
MARKER = "written in the first guest"
VOLUME_GB = 1
STATE_TIMEOUT = 180  # a guard against a hung cloud or guest, never a claim about speed
POLL = 1.0
# virtio-blk hands the guest at most 20 bytes of serial: the volume id, cut short
SERIAL_BYTES = 20


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool],
         timeout: float = STATE_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(POLL)
        value = fetch()
    return value


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudInfo]:
    """This module's own cloud on the qemu driver; labkit.ssh finds it through LABKIT_HOME
    and the key pair's private key in LABKIT_KEYS."""
    home = tmp_path_factory.mktemp("labkit-volume-home")
    keys = tmp_path_factory.mktemp("volume-keys")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_HOME", str(home))
        mp.setenv("LABKIT_KEYS", str(keys))
        with qemu_cloud(home) as info:
            yield info


@pytest.fixture(scope="module")
def conn(cloud: CloudInfo) -> Iterator[Connection]:
    c = connection(cloud, "labkit")
    yield c
    c.close()


@pytest.fixture(scope="module")
def servers(conn: Connection) -> Iterator[list[Any]]:
    """Two ACTIVE servers with the key pair and a floating IP each, their guests ready."""
    labkit.ensure_keypair(conn, KEY_NAME)
    image = conn.image.find_image("labkit-tiny", ignore_missing=False)
    flavor = conn.compute.find_flavor("m1.nano", ignore_missing=False)
    net = conn.network.find_network("demo-net", ignore_missing=False)
    public = conn.network.find_network("public", ignore_missing=False)
    made: list[Any] = []
    fips: list[Any] = []
    try:
        for name in ("volume-vm-1", "volume-vm-2"):
            made.append(conn.compute.create_server(
                name=name, image_id=image.id, flavor_id=flavor.id,
                networks=[{"uuid": net.id}], key_name=KEY_NAME))
        made = [conn.compute.wait_for_server(s, wait=STATE_TIMEOUT) for s in made]
        for server in made:
            port = next(conn.network.ports(device_id=server.id))
            fips.append(conn.network.create_ip(floating_network_id=public.id,
                                               port_id=port.id))
        for server in made:
            labkit.wait_for_console(conn, server, timeout=STATE_TIMEOUT)
        yield made
    finally:
        for server in made:
            with contextlib.suppress(Exception):
                conn.compute.delete_server(server)
        for fip in fips:
            with contextlib.suppress(Exception):
                conn.network.delete_ip(fip)
        for server in made:
            with contextlib.suppress(Exception):
                conn.compute.wait_for_delete(server, wait=STATE_TIMEOUT)


@pytest.fixture(scope="module")
def volume(conn: Connection) -> Iterator[Any]:
    made = conn.block_storage.create_volume(size=VOLUME_GB, name="volume-guests-data")
    made = conn.block_storage.wait_for_status(made, "available", wait=STATE_TIMEOUT)
    yield made
    with contextlib.suppress(Exception):
        conn.block_storage.delete_volume(made)
        conn.block_storage.wait_for_delete(made, wait=STATE_TIMEOUT)


def ssh(conn: Connection, server: Any, command: str) -> str:
    result = labkit.ssh(server, command, conn=conn, timeout=STATE_TIMEOUT)
    assert result.ok, f"{command!r} exited with {result.exit_status}: {result.stderr}"
    return result.stdout


def ssh_until(conn: Connection, server: Any, command: str, want: Callable[[str], bool],
              timeout: float = 60) -> str:
    """`command`'s output once `want` accepts it (a hot-plugged disk takes a moment)."""
    return poll(lambda: labkit.ssh(server, command, conn=conn, timeout=STATE_TIMEOUT).stdout,
                want, timeout)


def attach(conn: Connection, server: Any, volume: Any) -> Any:
    attachment = conn.compute.create_volume_attachment(server, volume=volume)
    conn.block_storage.wait_for_status(volume, "in-use", wait=STATE_TIMEOUT)
    return attachment


def detach(conn: Connection, server: Any, volume: Any) -> None:
    conn.compute.delete_volume_attachment(server, volume)
    conn.block_storage.wait_for_status(volume, "available", wait=STATE_TIMEOUT)


# -- the story -------------------------------------------------------------------------------

def test_an_attached_volume_appears_in_the_guest_as_vdb_with_its_serial(
        conn: Connection, servers: list[Any], volume: Any) -> None:
    first = servers[0]
    assert "vdb" not in ssh(conn, first, "ls /sys/block").split()
    attachment = attach(conn, first, volume)
    assert attachment.device == "/dev/vdb"
    shown = conn.block_storage.get_volume(volume)
    assert [(a["server_id"], a["device"]) for a in shown.attachments] == [
        (first.id, "/dev/vdb")]
    serial = ssh_until(conn, first, "cat /sys/block/vdb/serial 2>/dev/null",
                       lambda out: out.strip() != "")
    assert serial.strip() == volume.id[:SERIAL_BYTES]
    sectors = ssh(conn, first, "cat /sys/block/vdb/size").strip()
    assert int(sectors) * 512 == VOLUME_GB * 1024**3


def test_the_guest_writes_a_marker_and_the_detach_takes_the_disk_away(
        conn: Connection, servers: list[Any], volume: Any) -> None:
    first = servers[0]
    ssh(conn, first, f"printf '{MARKER}' | dd of=/dev/vdb bs=512 conv=sync,fsync")
    assert ssh(conn, first, f"head -c {len(MARKER)} /dev/vdb") == MARKER
    detach(conn, first, volume)
    assert conn.block_storage.get_volume(volume).attachments == []
    assert "vdb" not in ssh(conn, first, "ls /sys/block").split()
    assert ssh(conn, first, "echo still here").strip() == "still here"


def test_the_volume_moves_to_a_second_server_and_the_marker_reads_back(
        conn: Connection, servers: list[Any], volume: Any) -> None:
    second = servers[1]
    attachment = attach(conn, second, volume)
    assert attachment.device == "/dev/vdb"
    ssh_until(conn, second, "cat /sys/block/vdb/serial 2>/dev/null",
              lambda out: out.strip() == volume.id[:SERIAL_BYTES])
    assert ssh(conn, second, f"head -c {len(MARKER)} /dev/vdb") == MARKER
    detach(conn, second, volume)
    assert "vdb" not in ssh(conn, second, "ls /sys/block").split()


def test_deleting_the_volume_and_the_servers_leaves_nothing(
        cloud: CloudInfo, conn: Connection, servers: list[Any], volume: Any) -> None:
    conn.block_storage.delete_volume(volume)
    conn.block_storage.wait_for_delete(volume, wait=STATE_TIMEOUT)
    assert conn.block_storage.find_volume(volume.id) is None
    for server in servers:
        conn.compute.delete_server(server)
    for server in servers:
        conn.compute.wait_for_delete(server, wait=STATE_TIMEOUT)
        assert not qemu_pids(cloud.home, server.id)
