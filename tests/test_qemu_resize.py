"""Cold resize on the qemu driver: real guests restart with a new flavor on another host
(or the same one), keep their volumes and their floating IP's ssh forward, and a revert
brings back the old guest. The driver is driven as nova-compute drives it
(migrate_disk_and_power_off on the source, finish_migration on the dest, then
confirm_migration on the source or destroy on the dest + finish_revert_migration).

Needs qemu and the tiny guest image: skips without them, fails instead when
LABKIT_REQUIRE_QEMU=1 (as tests/test_qemu_driver.py). The real-guest tests run in file
order and share one guest; at most one guest runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_qemu_driver import VIRT_TYPE, make_guest, need, network_info
from test_real_guests import forward, guest, qemu_cloud, ssh_ok

from conftest import connection
from labkit.cloud.guest import static_metadata
from labkit.cloud.virt.driver import GuestNotFound, GuestSpec, VolumeAttachment
from labkit.cloud.virt.imagecache import ImageCache, cache_name
from labkit.cloud.virt.libvirt_xml import GuestPaths, domain_xml
from labkit.cloud.virt.qemu import RUNNING, SHUTDOWN, QemuDriver, ResizeFailed, kill_orphans
from labkit.cloud.virt.qemu_command import UserNet, qemu_command

UUID = "7e5a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
VOLUME_ID = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
FLOATING = "172.24.4.40"
MARKER = "labkit resize marker"
BOOT_TIMEOUT = 180  # a guard against a hung guest, never an assertion about speed
GiB = 1024**3


def flavor(name: str, memory_mb: int, vcpus: int, root_gb: int) -> dict[str, Any]:
    return {"name": name, "memory_mb": memory_mb, "vcpus": vcpus, "root_gb": root_gb,
            "ephemeral_gb": 0, "swap": 0, "flavorid": name, "extra_specs": {}}


OLD = flavor("m1.small-ish", 192, 1, 1)
NEW = flavor("m1.bigger", 256, 2, 2)


def spec(fl: dict[str, Any], request_id: str = "req-resize", **extra: Any) -> GuestSpec:
    """The guest as nova hands it to the driver with flavor `fl` (and the floating IP)."""
    base = make_guest(UUID, nets=network_info([FLOATING]), root_gb=fl["root_gb"])
    return dataclasses.replace(base, memory_mb=fl["memory_mb"], vcpus=fl["vcpus"],
                               flavor=dict(fl), request_id=request_id, **extra)


def attachment(root: Path, host: str) -> VolumeAttachment:
    """One cinder volume, connected on `host`: the host's own by-path link to the
    target's file (os-brick's job on a real host; nova connects it before the driver)."""
    backing = root / "cinder-volumes" / f"volume-{VOLUME_ID}"
    backing.parent.mkdir(parents=True, exist_ok=True)
    if not backing.exists():
        with open(backing, "wb") as f:
            f.truncate(64 * 1024**2)
    link = (root / "hosts" / host / "dev/disk/by-path" /
            f"ip-10.0.0.11:3260-iscsi-iqn.2010-10.org.openstack:volume-{VOLUME_ID}-lun-1")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(backing)
    return VolumeAttachment(volume_id=VOLUME_ID, device="/dev/vdb", path=str(link),
                            serial=VOLUME_ID, request_id="req-attach")


def disk_info(path: Path) -> dict[str, Any]:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                     capture_output=True, text=True, check=True).stdout)


# -- without booting: a shut-off guest moves, with qemu-img only

def _stopped_driver(home: Path, host: str, fail_downloads: bool = False,
                    traced: list[str] | None = None) -> QemuDriver:
    async def download(image_id: str, dest: Path) -> None:
        if fail_downloads:
            raise RuntimeError("glance says 404")
        dest.write_bytes(b"\0" * 1024**2)

    steps = traced if traced is not None else []
    instances = home / "hosts" / host / "instances"
    return QemuDriver(host, instances, ImageCache(instances / "_base", download),
                      virt_type="qemu", metadata_url="http://x/metadata",
                      metadata_secret_file=home / "secret",
                      trace=lambda rid, summary, detail: steps.append(summary))


def _define_stopped(driver: QemuDriver, guest: GuestSpec) -> Path:
    """A guest as spawn leaves it, but never started: overlay on a cached base."""
    base = driver.image_cache.path(guest.image["id"])
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_bytes(b"\0" * 1024**2)
    paths = GuestPaths.for_folder(driver.instances_dir / guest.uuid, kernel=False,
                                  ramdisk=False)
    paths.folder.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                    str(paths.disk), "1G"], check=True)
    xml = domain_xml(guest, virt_type="qemu", paths=paths, network_info=guest.network_info)
    paths.xml.write_text(xml)
    net = UserNet.from_network_info(guest.network_info, "stub-proxy", "vm-a")
    command = qemu_command(xml, user_net=net, qmp_socket=paths.qmp_socket,
                           pidfile=paths.pidfile, console_log=paths.console_log)
    paths.record.write_text(json.dumps({
        "uuid": guest.uuid, "name": guest.name, "virt_type": "qemu", "command": command,
        "pid": None, "netdev": "hostnet0", "paths": paths.as_dict()}))
    driver.adopt(guest.uuid, SHUTDOWN)
    return paths.folder


def test_a_shut_off_guest_moves_to_another_host_and_confirm_cleans_up(tmp_path: Path) -> None:
    need(image=False)
    traced: list[str] = []
    src = _stopped_driver(tmp_path, "compute-1", traced=traced)
    # glance cannot deliver the image: the dest copies the base from the source's cache
    dst = _stopped_driver(tmp_path, "compute-2", fail_downloads=True, traced=traced)
    image = {"id": "img-plain", "name": "plain", "disk_format": "raw", "properties": {}}
    old = dataclasses.replace(spec(OLD), image=image)
    new = dataclasses.replace(spec(NEW), image=image)
    folder = _define_stopped(src, old)
    att = attachment(tmp_path, "compute-2")

    info = asyncio.run(src.migrate_disk_and_power_off(UUID, "compute-2", NEW))
    json.dumps(info)  # disk_info travels in an RPC message
    kept = src.resize_folder(UUID)
    dest_folder = tmp_path / "hosts/compute-2/instances" / UUID
    assert not folder.exists() and (kept / "disk").exists()
    assert info["folder"] == str(dest_folder) and info["was_running"] is False
    assert info["disks"][0]["backing_file"] == str(src.image_cache.path("img-plain"))
    assert UUID not in src.guests

    asyncio.run(dst.finish_migration(new, info, [att], power_on=False))
    assert dst.power_state(UUID) == SHUTDOWN  # a stopped server stays stopped
    disk = disk_info(dest_folder / "disk")
    assert disk["virtual-size"] == 2 * GiB  # root_gb 1 -> 2
    assert disk["backing-filename"] == str(dst.image_cache.path("img-plain"))
    assert dst.image_cache.path("img-plain").name == cache_name("img-plain")
    assert any("copy the base from compute-1" in s for s in traced), traced
    described = dst.describe(UUID)
    assert "<memory unit=\"KiB\">262144</memory>" in described["domain_xml"]
    assert "<vcpu>2</vcpu>" in described["domain_xml"]
    assert att.path in described["domain_xml"] and described["volumes"][0]["device"] == "/dev/vdb"
    command = " ".join(described["command"])
    assert " -m 256 " in command and " -smp 2," in command and att.path in command
    assert described["forwards"][0]["floating_ip"] == FLOATING  # picked, bound at start
    with pytest.raises(GuestNotFound):
        src.describe(UUID)

    # a restart of the cloud in VERIFY_RESIZE: a new driver confirms from the files alone
    src = _stopped_driver(tmp_path, "compute-1")
    asyncio.run(src.confirm_migration(UUID))
    assert not kept.exists() and (dest_folder / "disk").exists()
    asyncio.run(src.confirm_migration(UUID))  # twice is no error


def test_resize_down_and_a_missing_migrated_disk_fail_clearly(tmp_path: Path) -> None:
    need(image=False)
    src = _stopped_driver(tmp_path, "compute-1")
    dst = _stopped_driver(tmp_path, "compute-2")
    image = {"id": "img-plain", "name": "plain", "disk_format": "raw", "properties": {}}
    old = dataclasses.replace(spec(NEW), image=image, root_gb=2)
    folder = _define_stopped(src, old)
    # the disk grew to 3 GiB (a flavor of 3 GiB, say): a 2 GiB flavor cannot hold it
    subprocess.run(["qemu-img", "resize", "-q", str(folder / "disk"), "3G"], check=True)
    with pytest.raises(ResizeFailed, match="Unable to resize disk down"):
        asyncio.run(src.migrate_disk_and_power_off(UUID, "compute-2", OLD | {"root_gb": 2}))
    assert (folder / "disk").exists() and not src.resize_folder(UUID).exists()
    with pytest.raises(ResizeFailed, match="migrated disk"):
        asyncio.run(dst.finish_migration(old, {"folder": "/nowhere"}, [], power_on=True))
    # a revert with nothing kept says so
    with pytest.raises(ResizeFailed, match="nothing to revert"):
        asyncio.run(dst.finish_revert_migration(old, [], power_on=True))


def test_a_same_host_revert_restores_the_kept_files(tmp_path: Path) -> None:
    need(image=False)
    drv = _stopped_driver(tmp_path, "compute-1")
    image = {"id": "img-plain", "name": "plain", "disk_format": "raw", "properties": {}}
    old = dataclasses.replace(spec(OLD), image=image)
    new = dataclasses.replace(spec(NEW), image=image)
    folder = _define_stopped(drv, old)
    before = (folder / "disk").read_bytes()
    info = asyncio.run(drv.migrate_disk_and_power_off(UUID, "compute-1", NEW))
    assert info["folder"] == str(folder)
    asyncio.run(drv.finish_migration(new, info, [], power_on=False))
    assert disk_info(folder / "disk")["virtual-size"] == 2 * GiB
    assert drv.resize_folder(UUID).exists()
    # revert: the dest's destroy (the same driver) leaves <uuid>_resize alone; the
    # revert works from the files (a new driver, as after a restart of the cloud)
    asyncio.run(drv.destroy(UUID))
    assert drv.resize_folder(UUID).exists() and not folder.exists()
    drv = _stopped_driver(tmp_path, "compute-1")
    asyncio.run(drv.finish_revert_migration(old, [], power_on=False))
    assert not drv.resize_folder(UUID).exists()
    assert (folder / "disk").read_bytes() == before
    assert "<memory unit=\"KiB\">196608</memory>" in drv.describe(UUID)["domain_xml"]


# -- real guests

@dataclasses.dataclass
class Rig:
    home: Path
    image: Any
    loop: asyncio.AbstractEventLoop
    key: Path
    meta: Path
    changes: list[str] = dataclasses.field(default_factory=list)
    drivers: dict[str, QemuDriver] = dataclasses.field(default_factory=dict)
    measured: dict[str, Any] = dataclasses.field(default_factory=dict)

    def run(self, coro: Any, timeout: float = BOOT_TIMEOUT) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def driver(self, host: str) -> QemuDriver:
        if host in self.drivers:
            return self.drivers[host]
        files = {"img-machine": self.image.disk, "img-kernel": self.image.kernel,
                 "img-ramdisk": self.image.ramdisk}

        async def download(image_id: str, dest: Path) -> None:
            shutil.copyfile(files[image_id], dest)

        script = self.home / "stub_proxy.py"

        def proxy(url: str, secret: Path, uuid: str, project: str) -> str:
            return f"{sys.executable} -S {script} {self.meta}"

        instances = self.home / "hosts" / host / "instances"
        d = QemuDriver(host, instances, ImageCache(instances / "_base", download),
                       virt_type=VIRT_TYPE, metadata_url="http://127.0.0.1:9/metadata",
                       metadata_secret_file=self.home / "metadata_secret",
                       on_power_change=self.changes.append, metadata_proxy=proxy)
        self.drivers[host] = d
        return d

    def wait_ready(self, driver: QemuDriver, count: int = 1) -> None:
        async def poll() -> None:
            while driver.console_output(UUID).count("labkit-tiny ready") < count:
                await asyncio.sleep(0.1)
        try:
            self.run(poll())
        except TimeoutError:
            pytest.fail(f"the guest on {driver.host} never got ready:\n"
                        f"{driver.console_output(UUID, 30)}")

    def ssh(self, driver: QemuDriver, command: str, timeout: float = 90) -> str:
        """Run `command` in the guest through its floating IP's forward on `driver`'s host
        until it succeeds."""
        port = driver.describe(UUID)["forwards"][0]["port"]
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
                 "-i", str(self.key), "-p", str(port), "root@127.0.0.1", command],
                capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                return done.stdout
            if time.monotonic() > deadline:
                pytest.fail(f"{command!r} kept failing: {done.stdout}{done.stderr}")
            time.sleep(0.5)

    def facts(self, driver: QemuDriver) -> dict[str, Any]:
        """What the guest itself says: memory, CPUs, disks, the volume's serial."""
        out = self.ssh(driver, "grep MemTotal /proc/meminfo; nproc; cat /sys/block/vda/size; "
                               "cat /sys/block/vdb/serial; echo; "
                               f"head -c {len(MARKER)} /dev/vdb")
        lines = out.splitlines()
        return {"memtotal_kb": int(lines[0].split()[1]), "nproc": int(lines[1]),
                "vda_bytes": int(lines[2]) * 512, "vdb_serial": lines[3].strip(),
                "vdb_head": lines[4] if len(lines) > 4 else ""}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    image = need(image=True)
    if not (shutil.which("ssh") and shutil.which("ssh-keygen")):
        pytest.skip("needs ssh and ssh-keygen")
    home = tmp_path_factory.mktemp("resize-home")
    meta = home / "metadata"
    (meta / "latest/meta-data/public-keys/0").mkdir(parents=True)
    (meta / "latest/meta-data/hostname").write_text("vm-a\n")
    key = home / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    shutil.copyfile(key.with_suffix(".pub"), meta / "latest/meta-data/public-keys/0/openssh-key")
    (home / "stub_proxy.py").write_text(Path(static_metadata.__file__).read_text())
    loop = asyncio.new_event_loop()
    r = Rig(home=home, image=image, loop=loop, key=key, meta=meta)
    try:
        yield r
    finally:
        for d in r.drivers.values():
            with contextlib.suppress(Exception):  # kill_orphans below is the backstop
                r.run(d.shutdown(), timeout=30)
        kill_orphans(home)
        loop.close()
        if r.measured:
            print(f"\nguest facts ({VIRT_TYPE}): {json.dumps(r.measured)}")


def _qemu_pids(home: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if b"qemu-system" in argv.split(b"\0")[0] and os.fsencode(f"{home}/") in argv \
                        and state != "Z":
                    found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def booted(rig: Rig) -> dict[str, Any]:
    """The guest on compute-1 with the old flavor and a volume (hot-plugged), measured."""
    d1 = rig.driver("compute-1")
    rig.run(d1.spawn(spec(OLD, request_id="req-boot")))
    rig.wait_ready(d1)
    att = attachment(rig.home, "compute-1")
    rig.run(d1.attach_volume(UUID, att))
    rig.ssh(d1, f"printf '{MARKER}' | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null")
    facts = rig.facts(d1)
    rig.measured["before"] = facts
    return facts


def test_cross_host_resize_restarts_the_guest_with_the_new_flavor(
        rig: Rig, booted: dict[str, Any]) -> None:
    d1, d2 = rig.driver("compute-1"), rig.driver("compute-2")
    assert booted["nproc"] == 1 and booted["vdb_serial"] == VOLUME_ID[:20]
    assert booted["vda_bytes"] == 1 * GiB
    old_pid = d1.describe(UUID)["pid"]

    info = rig.run(d1.migrate_disk_and_power_off(UUID, "compute-2", NEW, request_id="req-r"))
    assert info["was_running"] is True
    assert old_pid not in _qemu_pids(rig.home)
    assert (rig.home / f"hosts/compute-1/instances/{UUID}_resize/disk").exists()
    assert not (rig.home / f"hosts/compute-1/instances/{UUID}").exists()

    # nova connected the volume on compute-2: its own by-path link to the same LUN
    att2 = attachment(rig.home, "compute-2")
    rig.run(d2.finish_migration(spec(NEW), info, [att2], power_on=True))
    rig.wait_ready(d2)
    after = rig.facts(d2)
    rig.measured["after"] = after
    assert after["nproc"] == 2
    grew = after["memtotal_kb"] - booted["memtotal_kb"]
    assert 48 * 1024 < grew <= 64 * 1024, (booted, after)  # 192 -> 256 MiB
    assert after["vda_bytes"] == 2 * GiB  # root_gb 1 -> 2
    assert after["vdb_serial"] == VOLUME_ID[:20] and after["vdb_head"] == MARKER
    described = d2.describe(UUID)
    assert described["host"] == "compute-2" and described["pid"] in _qemu_pids(rig.home)
    assert described["forwards"][0]["floating_ip"] == FLOATING
    assert described["volumes"][0]["path"] == att2.path
    assert disk_info(Path(described["folder"]) / "disk")["backing-filename"] == str(
        d2.image_cache.path("img-machine"))
    with pytest.raises(GuestNotFound):
        d1.describe(UUID)
    assert UUID not in rig.changes  # every stop was asked for
    assert len(_qemu_pids(rig.home)) == 1


def test_revert_brings_back_the_old_guest_on_the_source(rig: Rig,
                                                       booted: dict[str, Any]) -> None:
    d1, d2 = rig.driver("compute-1"), rig.driver("compute-2")
    # revert_resize on the dest: destroy the new guest and its copy of the disk
    rig.run(d2.destroy(UUID))
    assert not (rig.home / f"hosts/compute-2/instances/{UUID}").exists()
    assert _qemu_pids(rig.home) == []
    rig.run(d1.finish_revert_migration(spec(OLD, request_id="req-revert"),
                                       [attachment(rig.home, "compute-1")], power_on=True))
    rig.wait_ready(d1, count=2)  # the console log of the first boot came back with its folder
    facts = rig.facts(d1)
    rig.measured["reverted"] = facts
    assert facts["memtotal_kb"] == booted["memtotal_kb"] and facts["nproc"] == 1
    assert facts["vda_bytes"] == 1 * GiB and facts["vdb_head"] == MARKER
    assert not d1.resize_folder(UUID).exists()
    assert d1.power_state(UUID) == RUNNING
    assert d1.describe(UUID)["forwards"][0]["floating_ip"] == FLOATING


def test_same_host_resize_and_confirm(rig: Rig, booted: dict[str, Any]) -> None:
    d1 = rig.driver("compute-1")
    info = rig.run(d1.migrate_disk_and_power_off(UUID, "compute-1", NEW))
    assert d1.resize_folder(UUID).exists() and Path(info["folder"]) == d1.instances_dir / UUID
    rig.run(d1.finish_migration(spec(NEW), info, [attachment(rig.home, "compute-1")],
                                power_on=True))
    rig.wait_ready(d1)  # a fresh folder, a fresh console log
    facts = rig.facts(d1)
    rig.measured["same_host"] = facts
    assert facts["nproc"] == 2 and facts["memtotal_kb"] > booted["memtotal_kb"] + 48 * 1024
    assert facts["vdb_head"] == MARKER
    rig.run(d1.confirm_migration(UUID))
    assert not d1.resize_folder(UUID).exists()
    assert d1.power_state(UUID) == RUNNING
    assert rig.ssh(d1, "echo alive").strip() == "alive"
    rig.run(d1.destroy(UUID))
    assert _qemu_pids(rig.home) == []
    assert UUID not in rig.changes


# -- end to end: openstacksdk on a cloud with the qemu driver

E2E_FLAVOR = "m1.resize-test"


@pytest.fixture(scope="module")
def e2e_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A cloud of this module's own on the qemu driver; no qemu of it may outlive it."""
    with qemu_cloud(tmp_path_factory.mktemp("resize-cloud")) as info:
        yield info


def test_resize_through_the_sdk_moves_the_guest_with_its_volume_and_ssh(
        e2e_cloud: Any, tmp_path: Path) -> None:
    """openstacksdk: a server with a volume and a floating IP is resized to more memory and
    vCPUs (VERIFY_RESIZE on the other host, ssh through the same floating IP shows them),
    confirmed (the source's `<id>_resize` goes), then resized back and reverted (the
    guest comes back with the memory it had before)."""
    admin, demo = connection(e2e_cloud, "labkit-admin"), connection(e2e_cloud, "labkit")
    made = ed25519.Ed25519PrivateKey.generate()
    key = tmp_path / "id_ed25519"
    key.write_bytes(made.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    key.chmod(0o600)
    public = made.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH).decode()
    bigger = admin.compute.create_flavor(name=E2E_FLAVOR, ram=256, vcpus=2, disk=1)
    demo.compute.create_keypair(name="resize-key", public_key=public)
    image = demo.image.find_image("labkit-tiny", ignore_missing=False)
    nano = demo.compute.find_flavor("m1.nano", ignore_missing=False)
    net = demo.network.find_network("demo-net", ignore_missing=False)
    server = demo.compute.create_server(name="resize-vm", image_id=image.id,
                                        flavor_id=nano.id, networks=[{"uuid": net.id}],
                                        key_name="resize-key")
    volume = demo.block_storage.create_volume(size=1, name="resize-data")
    http = httpx.Client(base_url=e2e_cloud.url, timeout=30)
    token = admin.auth_token
    fips: list[Any] = []
    try:
        server = demo.compute.wait_for_server(server, status="ACTIVE", wait=BOOT_TIMEOUT)
        demo.block_storage.wait_for_status(volume, "available", wait=BOOT_TIMEOUT)
        demo.compute.create_volume_attachment(server, volume=volume)
        demo.block_storage.wait_for_status(volume, "in-use", wait=BOOT_TIMEOUT)
        (port,) = demo.network.ports(device_id=server.id)
        public_net = demo.network.find_network("public", ignore_missing=False)
        fips.append(demo.network.create_ip(floating_network_id=public_net.id,
                                           port_id=port.id))
        address = fips[0].floating_ip_address

        def inside() -> tuple[int, int, str]:
            """MemTotal (kB), CPUs and the volume's serial, over ssh via the floating IP."""
            fwd = forward(http, token, server.id, address)
            deadline = time.monotonic() + 60
            while True:  # a volume of a guest that just booted may take a moment
                # `|| true`: a volume not plugged yet is a retry here, not a failure
                out = ssh_ok(fwd["port"], key, "grep MemTotal /proc/meminfo; nproc; cat "
                                               "/sys/block/vdb/serial 2>/dev/null || true"
                             ).split()
                if len(out) == 5 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert len(out) == 5, out
            return int(out[1]), int(out[3]), out[4]

        before = inside()
        assert before[1:] == (1, volume.id[:20])
        source = guest(http, token, server.id)["host"]

        demo.compute.resize_server(server, bigger.id)
        server = demo.compute.wait_for_server(server, status="VERIFY_RESIZE",
                                              wait=BOOT_TIMEOUT)
        assert server.flavor["original_name"] == E2E_FLAVOR
        dest = guest(http, token, server.id)["host"]
        assert dest != source  # allow_resize_to_same_host is off, as nova's default
        after = inside()
        print(f"\nguest over ssh: MemTotal {before[0]} kB, {before[1]} vCPU on {source} -> "
              f"{after[0]} kB, {after[1]} vCPUs on {dest}")
        assert after[1:] == (2, volume.id[:20])
        assert after[0] - before[0] > 100 * 1024  # 128 -> 256 MiB
        kept = Path(e2e_cloud.home) / "hosts" / source / "instances" / f"{server.id}_resize"
        assert kept.exists()

        demo.compute.confirm_server_resize(server)
        server = demo.compute.wait_for_server(server, status="ACTIVE", wait=BOOT_TIMEOUT)
        deadline = time.monotonic() + 60
        while kept.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not kept.exists()
        assert inside() == after

        # back to m1.nano, then revert: the 256 MiB guest returns on its host
        demo.compute.resize_server(server, nano.id)
        server = demo.compute.wait_for_server(server, status="VERIFY_RESIZE",
                                              wait=BOOT_TIMEOUT)
        assert inside()[:2] == before[:2]
        demo.compute.revert_server_resize(server)
        server = demo.compute.wait_for_server(server, status="ACTIVE", wait=BOOT_TIMEOUT)
        assert guest(http, token, server.id)["host"] == dest
        assert inside() == after
    finally:
        with contextlib.suppress(Exception):
            demo.compute.delete_server(server)
            demo.compute.wait_for_delete(server, wait=120)
        with contextlib.suppress(Exception):
            demo.block_storage.wait_for_status(volume, "available", wait=60)
            demo.block_storage.delete_volume(volume)
        for fip in fips:
            with contextlib.suppress(Exception):
                demo.network.delete_ip(fip)
        http.close()
        admin.close()
        demo.close()
