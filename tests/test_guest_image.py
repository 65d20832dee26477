"""labkit-tiny, the tiny guest: the build cache's rules, and a real boot under bare qemu.

The unit tests need nothing but Python. The boot tests start qemu (TCG, as CI may have
no KVM) on the image `labkit image build` left in the cache, with qemu's user-mode
network and a stub metadata service written here, then check the console banner, the
user data's output and ssh with the stub's key. They skip when qemu, the image or an
ssh client is missing, unless LABKIT_REQUIRE_QEMU=1 (or CI) is set: then they fail.
Measurements (boot to ready, RSS and CPU of the idle guest) go to artifacts/guest/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labkit import cli
from labkit.cloud import guest
from labkit.cloud.guest import READY_LINE, GuestBuildError, built_image, load_build
from labkit.cloud.guest import build as gbuild

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts" / "guest"
QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")
META_IP, FIXED_IP, GATEWAY = "172.16.1.254", "172.16.1.7", "172.16.1.1"
HOSTNAME = "test-vm-1"
READY_DEADLINE = 90.0  # seconds from launch to the ready line (about 6 s under TCG)
SSH_DEADLINE = 60.0
USER_DATA = "#!/bin/sh\necho \"user-data ran on $(hostname): $((6 * 7))\"\n"


# --- unit: the cache --------------------------------------------------------------------------

@pytest.fixture
def fixed_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """busybox and dropbear "installed" at fixed versions, whatever this machine has."""
    versions = {gbuild.BUSYBOX_PACKAGE: "1:1.35.0-test", gbuild.DROPBEAR_PACKAGE: "2022.83-test"}
    monkeypatch.setattr(gbuild, "installed_version", versions.get)


def fake_build(cache: Path, name: str, *, inputs: dict | None = None, built_at: str = "2025-01-01",
               manifest: bool = True, ramdisk_size: int | None = None) -> Path:
    """A build folder like build_image makes (tiny files), complete unless told otherwise."""
    folder = cache / name
    folder.mkdir(parents=True)
    files = {}
    for role, fname, data in (("kernel", guest.KERNEL_FILE, b"kernel"),
                              ("ramdisk", guest.RAMDISK_FILE, b"ramdisk"),
                              ("disk", guest.DISK_FILE, b"disk")):
        (folder / fname).write_bytes(data)
        size = ramdisk_size if role == "ramdisk" and ramdisk_size is not None else len(data)
        files[role] = {"path": fname, "size": size, "sha256": "0" * 64}
    if manifest:
        (folder / guest.MANIFEST).write_text(json.dumps({
            "key": name, "kernel_version": "6.1.0-test-cloud-amd64", "built_at": built_at,
            "key_inputs": inputs or {}, "files": files}))
    return folder


def test_cache_key_changes_when_init_script_changes(tmp_path: Path, fixed_versions: None) -> None:
    one, two, same = tmp_path / "one.sh", tmp_path / "two.sh", tmp_path / "same.sh"
    one.write_text("#!/bin/sh\necho one\n")
    two.write_text("#!/bin/sh\necho two\n")
    same.write_text(one.read_text())
    key = {p: gbuild.cache_key(gbuild.key_inputs("6.1.0-56-cloud-amd64", "6.1.192-2", p))
           for p in (one, two, same)}
    assert key[one] != key[two]
    assert key[one] == key[same]
    assert key[one].startswith("6.1.0-56-cloud-amd64-")
    # the kernel and busybox's version are in the key too
    assert key[one] != gbuild.cache_key(gbuild.key_inputs("6.1.0-57-cloud-amd64", "6.1.200-1", one))
    inputs = gbuild.key_inputs("6.1.0-56-cloud-amd64", "6.1.192-2", one)
    assert key[one] != gbuild.cache_key({**inputs, gbuild.BUSYBOX_PACKAGE: "1:1.36.0-1"})


def test_built_image_finds_only_complete_builds(tmp_path: Path) -> None:
    cache = tmp_path / "guest"
    assert built_image(cache) is None  # no cache folder at all
    cache.mkdir()
    fake_build(cache, ".tmp-abc/6.1.0-x-000000000001")  # a build still in its temp folder
    fake_build(cache, "6.1.0-x-000000000002", manifest=False)  # no manifest: not finished
    fake_build(cache, "6.1.0-x-000000000003", ramdisk_size=99)  # a file cut short
    (cache / "debs").mkdir()
    assert built_image(cache) is None
    assert guest.complete_builds(cache) == []

    fake_build(cache, "6.1.0-x-000000000004", built_at="2025-01-01T10:00:00+00:00")
    image = built_image(cache)
    assert image is not None and image.key == "6.1.0-x-000000000004"
    assert image.kernel == cache / image.key / "vmlinuz"
    assert image.kernel_version == "6.1.0-test-cloud-amd64"
    assert image.sizes() == {"kernel": 6, "ramdisk": 7, "disk": 4}

    fake_build(cache, "6.1.0-x-000000000005", built_at="2025-02-01T10:00:00+00:00")
    assert built_image(cache).key == "6.1.0-x-000000000005"  # the newest
    # ... unless an older one was made from this package's init.sh and the newest was not
    current = {"init_sha256": guest.init_script_sha256()}
    fake_build(cache, "6.1.0-x-000000000006", inputs=current, built_at="2025-01-15")
    assert built_image(cache).key == "6.1.0-x-000000000006"
    assert load_build(cache / "6.1.0-x-000000000003") is None


def test_cli_image_build_reuses_the_cache_without_apt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_versions: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    cache = guest.cache_dir()
    assert cache == tmp_path / "guest"
    folder = fake_build(cache, "6.1.0-x-0000000000aa", inputs=gbuild.local_inputs())

    def no_tools(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a cached build must not run apt or dpkg: {args}")

    monkeypatch.setattr(gbuild, "_run", no_tools)
    monkeypatch.setattr(gbuild, "_check_tools", no_tools)
    started = time.monotonic()
    assert cli.main(["image", "build"]) == 0
    assert time.monotonic() - started < 1.0
    out = capsys.readouterr().out
    assert "reusing the cached labkit-tiny build" in out
    assert str(folder / "vmlinuz") in out and "6.1.0-test-cloud-amd64" in out

    # another init.sh means another build: the cached one does not match it
    (tmp_path / "other-init.sh").write_text("#!/bin/sh\n")
    assert gbuild.cached_build(cache, tmp_path / "other-init.sh") is None


@pytest.mark.parametrize(("tool", "package"), [
    ("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("cpio", "cpio"), ("depmod", "kmod")])
def test_missing_tools_name_the_debian_package(
        monkeypatch: pytest.MonkeyPatch, tool: str, package: str) -> None:
    real_which = shutil.which
    monkeypatch.setattr(gbuild.shutil, "which", lambda name, path=None:
                        None if name == tool else real_which(name, path=path))
    with pytest.raises(GuestBuildError, match=f"install the Debian package {package}"):
        gbuild._which(tool)


def test_missing_busybox_or_dropbear_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gbuild, "_which", lambda tool: tool)
    monkeypatch.setattr(gbuild, "installed_version",
                        lambda package: None if package == "dropbear-bin" else "1")
    monkeypatch.setattr(gbuild, "BUSYBOX", Path(sys.executable))
    monkeypatch.setattr(gbuild, "DROPBEAR", Path(sys.executable))
    with pytest.raises(GuestBuildError, match="install the Debian package dropbear-bin"):
        gbuild._check_tools()


def test_module_order_loads_dependencies_first(tmp_path: Path) -> None:
    # modules.dep as depmod writes it for Debian's cloud kernel
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko "
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko "
        "kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/virtio/virtio.ko\n")
    names = [Path(m).stem for m in gbuild._module_order(tmp_path, gbuild.TOP_MODULES)]
    assert names == ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                     "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk"]
    with pytest.raises(GuestBuildError, match="no module virtio_gpu"):
        gbuild._module_order(tmp_path, ("virtio_gpu",))


def test_init_script_is_valid_sh_and_prints_the_contract_lines() -> None:
    script = guest.INIT_SCRIPT.read_text()
    assert script.startswith("#!/bin/sh\n")
    assert f'echo "{READY_LINE}"' in script
    assert ('echo "labkit-tiny: hostname $(hostname), address ${address:-(none)}, '
            'metadata ${meta:-(none)}"') in script
    assert "wget -T" not in script  # segfaults in Debian's busybox 1.35
    # parse it (-n) with the shell that will run it when busybox is here, else with sh
    busybox = shutil.which("busybox")
    shell = [busybox, "sh"] if busybox else ["/bin/sh"]
    subprocess.run([*shell, "-n", str(guest.INIT_SCRIPT)], check=True)


# --- boot under qemu ----------------------------------------------------------------------------

def _unavailable(reason: str) -> None:
    required = os.environ.get("LABKIT_REQUIRE_QEMU") == "1" or os.environ.get("CI")
    if required:
        pytest.fail(f"{reason} (run `make setup`, which runs `labkit image build`)")
    pytest.skip(reason)


# The stub metadata service: qemu's guestfwd starts it for each connection; it reads one
# HTTP request on stdin and answers on stdout, as labkit's metadata proxy does.
STUB = '''\
import json, sys
ROUTES = json.loads({routes!r})
line = sys.stdin.buffer.readline().decode("latin-1")
while sys.stdin.buffer.readline() not in (b"\\r\\n", b"\\n", b""):
    pass
parts = line.split()
path = parts[1] if len(parts) > 1 else "/"
with open({log!r}, "a") as log:
    log.write(path + "\\n")
body = ROUTES.get(path)
status = "200 OK" if body is not None else "404 Not Found"
if {broken!r}:
    body, status = None, "500 Internal Server Error"
data = (body if body is not None else status + "\\n").encode()
sys.stdout.buffer.write(("HTTP/1.0 %s\\r\\nContent-Type: text/plain\\r\\nContent-Length: %d\\r\\n"
                         "Connection: close\\r\\n\\r\\n" % (status, len(data))).encode() + data)
sys.stdout.buffer.flush()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshClient:
    """ssh as root@127.0.0.1:port with one key: paramiko when importable, else OpenSSH."""

    def __init__(self, folder: Path) -> None:
        self.key = folder / "id_test"
        try:
            import paramiko
        except ImportError:
            paramiko = None
        self.paramiko = paramiko
        if paramiko is not None:
            pkey = paramiko.RSAKey.generate(2048)
            pkey.write_private_key_file(str(self.key))
            self.public_key = f"{pkey.get_name()} {pkey.get_base64()} labkit-test\n"
            return
        if not (shutil.which("ssh") and shutil.which("ssh-keygen")):
            _unavailable("no ssh client: neither paramiko nor OpenSSH's ssh and ssh-keygen")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labkit-test",
                        "-f", str(self.key)], check=True)
        self.public_key = (folder / "id_test.pub").read_text()

    def run(self, port: int, command: str, timeout: float = 20.0) -> tuple[int, str]:
        if self.paramiko is not None:
            client = self.paramiko.SSHClient()
            client.set_missing_host_key_policy(self.paramiko.AutoAddPolicy())
            try:
                client.connect("127.0.0.1", port=port, username="root",
                               key_filename=str(self.key), timeout=timeout, banner_timeout=timeout,
                               auth_timeout=timeout, allow_agent=False, look_for_keys=False)
                _, stdout, stderr = client.exec_command(command, timeout=timeout)
                out = stdout.read().decode() + stderr.read().decode()
                return stdout.channel.recv_exit_status(), out
            except (OSError, self.paramiko.SSHException) as exc:
                return 255, str(exc)
            finally:
                client.close()
        proc = subprocess.run(
            ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={int(timeout)}",
             "-i", str(self.key), "-p", str(port), "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout + 10, stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout + proc.stderr


@dataclass
class Guest:
    proc: subprocess.Popen
    console: Path
    requests: Path
    ssh_port: int
    ssh: SshClient
    ready_seconds: float = 0.0
    measurements: dict = field(default_factory=dict)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""


def _image() -> guest.GuestImage:
    if shutil.which(QEMU) is None or not QBOOT.exists():
        _unavailable(f"{QEMU} or {QBOOT} is missing (Debian package qemu-system-x86)")
    image = built_image()
    if image is None:
        _unavailable(f"no labkit-tiny image in {guest.cache_dir()}: run `labkit image build`")
    return image


def _boot(folder: Path, image: guest.GuestImage, *, broken_metadata: bool = False) -> Guest:
    """Start qemu the way the brief's qemu driver will, wait for the ready line."""
    folder.mkdir(parents=True, exist_ok=True)
    ssh = SshClient(folder)
    requests, console = folder / "requests.log", folder / "console.log"
    routes = {"/latest/meta-data/hostname": HOSTNAME,
              "/latest/meta-data/public-keys/0/openssh-key": ssh.public_key,
              "/openstack/latest/user_data": USER_DATA}
    stub = folder / "metadata_stub.py"
    stub.write_text(STUB.format(routes=json.dumps(routes), log=str(requests),
                                broken=broken_metadata))
    command = f"{sys.executable} -S {stub}"
    assert "," not in command, "qemu's option parser would split the command at a comma"
    port = _free_port()
    netdev = (f"user,id=n0,net=172.16.1.0/24,host={GATEWAY},dhcpstart={FIXED_IP},restrict=on,"
              f"guestfwd=tcp:{META_IP}:80-cmd:{command},hostfwd=tcp:127.0.0.1:{port}-:22")
    argv = [QEMU, "-machine", "q35", "-bios", str(QBOOT), "-accel", "tcg", "-m", "128",
            "-nographic", "-nodefaults", "-serial", f"file:{console}",
            "-kernel", str(image.kernel), "-initrd", str(image.ramdisk),
            "-append", f"console=ttyS0 mitigations=off quiet labkit.metadata={META_IP}",
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,mac=fa:16:3e:00:00:01"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=(folder / "qemu.out").open("w"),
                            stderr=subprocess.STDOUT)
    vm = Guest(proc=proc, console=console, requests=requests, ssh_port=port, ssh=ssh)
    try:
        while READY_LINE not in vm.console_text():
            if proc.poll() is not None:
                pytest.fail(f"qemu exited with {proc.returncode}: "
                            f"{(folder / 'qemu.out').read_text()}\n{vm.console_text()}")
            if time.monotonic() - started > READY_DEADLINE:
                pytest.fail(f"no '{READY_LINE}' within {READY_DEADLINE:.0f} s; console:\n"
                            f"{vm.console_text()}")
            time.sleep(0.1)  # polling the console file, not waiting a fixed time
        vm.ready_seconds = time.monotonic() - started
    except BaseException:
        _stop(vm)
        raise
    return vm


def _stop(vm: Guest) -> None:
    if vm.proc.poll() is None:
        vm.proc.kill()
    vm.proc.wait(timeout=30)


def _save(name: str, vm: Guest) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}-console.log").write_text(vm.console_text())
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(
        {"ready_seconds": round(vm.ready_seconds, 2), **vm.measurements}, indent=2) + "\n")


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """One labkit-tiny guest under qemu (TCG), shared by the tests below; killed after them."""
    image = _image()
    vm = _boot(tmp_path_factory.mktemp("guest"), image)
    try:
        yield vm
    finally:
        _stop(vm)
        _save("boot", vm)
        print(f"labkit-tiny boot measurements: ready after {vm.ready_seconds:.1f} s, "
              f"{vm.measurements}")


def _banner(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("labkit-tiny: hostname ")]
    assert lines, f"no banner on the console:\n{text}"
    return lines[-1].strip()


def test_guest_boots_with_the_address_and_hostname_it_was_given(booted: Guest) -> None:
    text = booted.console_text()
    assert _banner(text) == (f"labkit-tiny: hostname {HOSTNAME}, address {FIXED_IP}/24, "
                             f"metadata {META_IP}")
    assert text.rstrip().splitlines()[-1].strip() == READY_LINE
    failures = [ln for ln in text.splitlines()
                if ln.startswith("labkit-tiny: ") and not ln.startswith("labkit-tiny: hostname ")]
    assert failures == [], text
    assert booted.requests.read_text().split() == [
        "/latest/meta-data/hostname", "/latest/meta-data/public-keys/0/openssh-key",
        "/openstack/latest/user_data"]
    booted.measurements["ready_seconds"] = round(booted.ready_seconds, 2)
    assert booted.ready_seconds < READY_DEADLINE


def test_user_data_script_runs_and_prints_on_the_console(booted: Guest) -> None:
    assert f"user-data ran on {HOSTNAME}: 42" in booted.console_text()


def test_ssh_with_the_metadata_key_sees_the_dhcp_address(booted: Guest) -> None:
    deadline = time.monotonic() + SSH_DEADLINE
    started = time.monotonic()
    while True:
        code, out = booted.ssh.run(booted.ssh_port, "ip -4 addr show eth0")
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # dropbear makes its host key on the first connection
    assert code == 0, f"ssh failed: {out}\nconsole:\n{booted.console_text()}"
    assert f"inet {FIXED_IP}/24" in out
    booted.measurements["first_ssh_seconds"] = round(time.monotonic() - started, 2)
    code, out = booted.ssh.run(booted.ssh_port, "hostname; cat /etc/os-release; lsmod")
    assert code == 0 and out.splitlines()[0] == HOSTNAME and "virtio_net" in out


def test_idle_guest_uses_little_cpu(booted: Guest) -> None:
    pid = booted.proc.pid
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before, t0 = cpu_seconds(), time.monotonic()
    time.sleep(3.0)  # a measuring window, not a wait for something to happen
    share = (cpu_seconds() - before) / (time.monotonic() - t0)
    booted.measurements.update(rss_mib=round(rss_kb / 1024, 1),
                               idle_cpu_percent=round(share * 100, 2))
    # /init sleeps a day at a time; anything polling every second would show up here
    assert share < 0.10, f"the idle guest used {share:.1%} of a core"


def test_broken_metadata_service_is_reported_and_boot_goes_on(tmp_path: Path) -> None:
    image = _image()
    vm = _boot(tmp_path / "broken", image, broken_metadata=True)
    try:
        text = vm.console_text()
        assert (f"labkit-tiny: no hostname from the metadata service at http://{META_IP}/ "
                "(tried 3 times)") in text
        assert _banner(text) == (f"labkit-tiny: hostname (none), address {FIXED_IP}/24, "
                                 f"metadata {META_IP}")
        assert "user-data ran" not in text
    finally:
        _stop(vm)
        _save("broken-metadata", vm)
