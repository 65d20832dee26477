"""Real-guest figures for `make bench` (bench.py runs them): the qemu driver, beside a bare
qemu of the same image started by hand in the same run.

What a reader waits for when they boot labkit-tiny on the embedded cloud, and what qemu
alone would make them wait. Each figure is taken on a cloud started with `virt="qemu"`
(under KVM when it is hardware KVM, else TCG; the header line says which):

- One guest, `--guest-runs` times (medians; a warm-up boot before them, printed but left
  out of the medians, fills the compute hosts' image cache as any cloud's first boot of
  an image does):
  POST /servers (labkit-tiny, m1.nano, demo-net, an imported key pair) until GET shows
  ACTIVE; until its console (os-getConsoleOutput) shows READY_LINE; until an ssh login
  through a floating IP's forward runs `true`. Floors: the same kernel and initrd
  (labkit.cloud.guest.built_image()) under qemu started by hand with the cloud's own
  -machine, -accel, -cpu, -bios, -m, -smp and kernel command line, a user-mode network
  with the same dhcpstart and a hostfwd to port 22, and a stdlib metadata responder on
  the same guestfwd address (without one the guest's /init waits for retries and gets
  no ssh key). Measured from launch until QMP says running (what ACTIVE waits for),
  until READY_LINE is in the serial log, until the same ssh login runs `true`.
- Eight guests at once (one POST with min_count=max_count=8): until all are ACTIVE and
  until every console shows READY_LINE. Floor: eight bare qemus launched together.
- RSS per idle guest: the qemu processes' VmRSS (pids from GET /labkit/v1/guests/<id>)
  summed and divided by their count, `--guest-idle` seconds after the last was ready.
  Floor: the same for the eight bare qemus.

Every wait polls against a deadline (a guard, never a target). Every process started here
(clouds, qemus, the metadata responders qemu runs) is stopped on the way out, also on an
error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout, installed or not

from labkit.cloud import process  # noqa: E402
from labkit.cloud.guest import READY_LINE, GuestImage, built_image, static_metadata  # noqa: E402
from labkit.cloud.settings import CloudSettings  # noqa: E402
from labkit.cloud.virt import host as virt_host  # noqa: E402
from labkit.cloud.virt.qmp import QMP, QMPError  # noqa: E402

START_TIMEOUT = 60.0  # seconds for a cloud to start: a guard, never a target
GUEST_TIMEOUT = 300.0  # seconds for guests to get somewhere (8 at once under TCG): a guard
# Between polls. The driver itself asks QMP every 50 ms before it reports ACTIVE; polling
# the API much faster would only take CPU from the guests being measured (2 cores here).
POLL_API = 0.05
POLL_CONSOLE = 0.1  # the same pace for the cloud's console API and the bare serial log
SSH_RETRY = 0.1
COMPUTE = {"OpenStack-API-Version": "compute 2.79"}
IMAGE, FLAVOR, NETWORK, EXTERNAL = "labkit-tiny", "m1.nano", "demo-net", "public"
BARE_HOSTNAME = "bare"

# The bare guest's metadata service (labkit/cloud/guest/static_metadata.py): qemu runs
# it for each connection to the metadata address, as the cloud's guestfwd runs its proxy.
METADATA_RESPONDER = Path(static_metadata.__file__).read_text()


@dataclass
class Figure:
    """One row of bench.py's table (bench.Row has the same fields)."""

    figure: str
    value: float
    floor_name: str
    floor: float
    target: str = ""
    met: bool | None = None
    unit: str = "s"  # s or MiB
    relative: str = "%"  # how the value compares with its floor: "%" overhead or "x"


def unavailable() -> str | None:
    """Why real guests cannot be measured here, or None when they can."""
    if not virt_host.qemu_available():
        return (f"{virt_host.QEMU_SYSTEM} or {virt_host.QEMU_IMG} is not installed "
                f"(Debian: apt-get install qemu-system-x86 qemu-utils)")
    if built_image() is None:
        return "the tiny guest image is not built (run `labkit image build`)"
    return None


def accelerator() -> str:
    """What the cloud's virt_type auto picks here, and why, for the header line."""
    problem = virt_host.kvm_problem()
    return "KVM" if problem is None else f"TCG ({problem})"


# --- small tools -------------------------------------------------------------------------

def until(check: Callable[[], bool], what: str, pause: float,
          timeout: float = GUEST_TIMEOUT) -> float:
    """Poll `check` every `pause` seconds; the perf_counter() when it first said yes."""
    deadline = time.perf_counter() + timeout
    while True:
        if check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(pause)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """VmRSS of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_strays(folder: Path) -> None:
    """SIGKILL every process whose command line names `folder`: a qemu (or a cloud) whose
    owner was interrupted before it could be stopped the ordinary way."""
    needle = os.fsencode(str(folder))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)


@dataclass
class SshKey:
    """An ed25519 key made for this run: paramiko's private half, OpenSSH's public line."""

    private: Any
    public: str

    @classmethod
    def make(cls) -> SshKey:
        import paramiko
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        return cls(paramiko.Ed25519Key.from_private_key(io.StringIO(pem)),
                   f"{public} labkit-bench")


def ssh_true(port: int, key: SshKey, timeout: float = GUEST_TIMEOUT) -> float:
    """Log in as root at 127.0.0.1:`port` until `true` runs there; perf_counter() then.
    A refused connection or a missing banner (sshd not up yet) is tried again."""
    import paramiko

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # retries are expected
    deadline = time.perf_counter() + timeout
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port, username="root", pkey=key.private,
                           look_for_keys=False, allow_agent=False, timeout=10,
                           banner_timeout=10, auth_timeout=10)
            _, stdout, _ = client.exec_command("true", timeout=10)
            if stdout.channel.recv_exit_status() == 0:
                return time.perf_counter()
        except (paramiko.SSHException, OSError, EOFError):
            pass
        finally:
            client.close()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no ssh login on 127.0.0.1:{port} within {timeout:.0f} s")
        time.sleep(SSH_RETRY)


# --- the cloud ---------------------------------------------------------------------------

class GuestCloud:
    """An embedded cloud on the qemu driver in a state folder of its own, driven over
    plain HTTP as the demo user (and, where an operator would, the admin)."""

    def __init__(self, home: Path, key: SshKey) -> None:
        self.home, self.key = home, key
        self.client = httpx.Client(timeout=60)
        self.url = ""
        self.demo: dict[str, str] = {}
        self.admin: dict[str, str] = {}
        self.pids: dict[str, int] = {}  # server id -> its qemu's pid, once seen

    def __enter__(self) -> GuestCloud:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        process.down(self.home)  # the cloud, and the guests it started
        kill_strays(self.home)  # whatever an interrupted start left behind

    def _token(self, user: str, password: str, project: str) -> tuple[str, str]:
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
        r = self.client.post(self.url + "/identity/v3/auth/tokens", json=body)
        r.raise_for_status()
        return r.headers["X-Subject-Token"], r.json()["token"]["project"]["id"]

    def _get(self, path: str, headers: dict[str, str]) -> Any:
        r = self.client.get(self.url + path, headers=headers)
        r.raise_for_status()
        return r.json()

    def _start(self) -> None:
        info = process.up(CloudSettings(home=self.home, virt="qemu"), timeout=START_TIMEOUT)
        self.url = info.url
        demo_token, project = self._token("demo", "DEMO_PASS", "demo")
        admin_token, _ = self._token("admin", "ADMIN_PASS", "admin")
        self.demo = {"X-Auth-Token": demo_token, **COMPUTE}
        self.admin = {"X-Auth-Token": admin_token, **COMPUTE}
        self.image_id = self._get(f"/image/v2/images?name={IMAGE}", self.demo)["images"][0]["id"]
        flavors = self._get("/compute/v2.1/flavors", self.demo)["flavors"]
        self.flavor_id = next(f["id"] for f in flavors if f["name"] == FLAVOR)
        networks = self._get("/networking/v2.0/networks", self.demo)["networks"]
        self.network_id = next(n["id"] for n in networks if n["name"] == NETWORK)
        public = next(n["id"] for n in networks if n["name"] == EXTERNAL)
        r = self.client.post(self.url + "/compute/v2.1/os-keypairs", headers=self.demo,
                             json={"keypair": {"name": "bench", "public_key": self.key.public}})
        r.raise_for_status()
        # as an operator would: room for a batch of guests in the demo project
        quota = {"quota_set": {"instances": 100, "cores": 200, "ram": 1_000_000}}
        self.client.put(f"{self.url}/compute/v2.1/os-quota-sets/{project}", json=quota,
                        headers=self.admin).raise_for_status()
        # one floating IP, moved from guest to guest
        r = self.client.post(self.url + "/networking/v2.0/floatingips", headers=self.demo,
                             json={"floatingip": {"floating_network_id": public}})
        r.raise_for_status()
        self.floating_ip = r.json()["floatingip"]

    def boot(self, name: str, count: int = 1) -> list[str]:
        """POST /servers (one request, min_count = max_count = count): the servers' ids."""
        server: dict[str, Any] = {
            "name": name, "imageRef": self.image_id, "flavorRef": self.flavor_id,
            "networks": [{"uuid": self.network_id}], "key_name": "bench"}
        if count > 1:
            server.update(min_count=count, max_count=count, return_reservation_id=True)
        r = self.client.post(self.url + "/compute/v2.1/servers", json={"server": server},
                             headers=self.demo)
        r.raise_for_status()
        if count == 1:
            return [r.json()["server"]["id"]]
        rid = r.json()["reservation_id"]
        shown = self._get(f"/compute/v2.1/servers?reservation_id={rid}", self.demo)["servers"]
        if len(shown) != count:
            raise RuntimeError(f"reservation {rid} holds {len(shown)} servers, not {count}")
        return [s["id"] for s in shown]

    def statuses(self) -> dict[str, str]:
        shown = self._get("/compute/v2.1/servers/detail", self.demo)["servers"]
        return {s["id"]: s["status"] for s in shown}

    def all_active(self, ids: list[str]) -> bool:
        status = self.statuses()
        failed = [i for i in ids if status.get(i) == "ERROR"]
        if failed:
            fault = self._get(f"/compute/v2.1/servers/{failed[0]}", self.demo)["server"]
            raise RuntimeError(f"server {failed[0]} went ERROR: {fault.get('fault')}")
        return all(status.get(i) == "ACTIVE" for i in ids)

    def guest(self, server_id: str) -> dict[str, Any]:
        """The admin's inspection API: what the hypervisor holds for this server."""
        found = self._get(f"/labkit/v1/guests/{server_id}", self.admin)
        if found.get("pid"):
            self.pids[server_id] = found["pid"]
        return found

    def console_ready(self, server_id: str) -> bool:
        r = self.client.post(f"{self.url}/compute/v2.1/servers/{server_id}/action",
                             json={"os-getConsoleOutput": {"length": 50}}, headers=self.demo)
        r.raise_for_status()
        return READY_LINE in r.json()["output"]

    def ssh_port(self, server_id: str) -> int:
        """Give the server the floating IP; the loopback port qemu forwards to its ssh."""
        ports = self._get(f"/networking/v2.0/ports?device_id={server_id}", self.demo)["ports"]
        r = self.client.put(f"{self.url}/networking/v2.0/floatingips/{self.floating_ip['id']}",
                            json={"floatingip": {"port_id": ports[0]["id"]}},
                            headers=self.demo)
        r.raise_for_status()
        forwards: list[dict[str, Any]] = []

        def forwarded() -> bool:
            forwards[:] = self.guest(server_id)["forwards"]
            return bool(forwards)
        until(forwarded, "the floating IP's forward", POLL_API, timeout=60)
        return int(forwards[0]["port"])

    def delete(self, ids: list[str]) -> None:
        """DELETE each server; wait until the API forgets them and their qemus are gone."""
        for server_id in ids:
            self.guest(server_id)  # note its pid, to see the qemu go
            self.client.delete(f"{self.url}/compute/v2.1/servers/{server_id}",
                               headers=self.demo).raise_for_status()

        def gone() -> bool:
            listed = self.statuses()
            return (not any(i in listed for i in ids)
                    and not any(pid_alive(self.pids[i]) for i in ids if i in self.pids))
        until(gone, "deleting the servers", POLL_API, timeout=120)


def cloud_boot(cloud: GuestCloud, name: str) -> dict[str, Any]:
    """One guest: seconds from POST /servers to ACTIVE, to READY_LINE, to an ssh login;
    the cloud's qemu command; image cache hits. The server is deleted afterwards."""
    start = time.perf_counter()
    [server_id] = cloud.boot(name)
    active = until(lambda: cloud.all_active([server_id]), "ACTIVE", POLL_API)
    port = cloud.ssh_port(server_id)
    ready = until(lambda: cloud.console_ready(server_id), "READY_LINE", POLL_CONSOLE)
    logged_in = ssh_true(port, cloud.key)
    described = cloud.guest(server_id)
    # after an error the server stays: the run ends, and closing the cloud stops its qemu
    cloud.delete([server_id])
    return {"active": active - start, "ready": ready - start, "ssh": logged_in - start,
            "command": described["command"], "virt_type": described["virt_type"],
            "cache": [e["hit"] for e in described["image_cache"]]}


def cloud_batch(cloud: GuestCloud, count: int, idle: float) -> dict[str, float]:
    """`count` guests from one POST: seconds to all ACTIVE and to every READY_LINE; the
    mean RSS of their qemus `idle` seconds later (MiB). Deleted afterwards."""
    start = time.perf_counter()
    ids = cloud.boot("batch", count)
    active = until(lambda: cloud.all_active(ids), f"{count} ACTIVE", POLL_API)
    waiting = set(ids)

    def all_ready() -> bool:
        waiting.difference_update([i for i in list(waiting) if cloud.console_ready(i)])
        return not waiting
    ready = until(all_ready, f"READY_LINE on {count} consoles", POLL_CONSOLE)
    time.sleep(idle)  # let them settle: the figure is an idle guest's
    pids = [cloud.guest(i)["pid"] for i in ids]
    rss = sum(rss_kib(pid) for pid in pids) / len(pids) / 1024
    cloud.delete(ids)
    return {"active": active - start, "ready": ready - start, "rss": rss}


# --- the bare floor ----------------------------------------------------------------------

def _option(command: list[str], flag: str) -> str | None:
    """The value after `flag` in an argv, or None."""
    with contextlib.suppress(ValueError, IndexError):
        return command[command.index(flag) + 1]
    return None


@dataclass(frozen=True)
class BarePlan:
    """How to start the same guest by hand: the cloud's machine options, the built image,
    and a user-mode network shaped like the cloud guest's."""

    qemu: str
    machine_args: list[str]  # -machine, -accel, -cpu, -bios, -m, -smp as the cloud ran them
    kernel: Path
    initrd: Path
    append: str
    netdev: dict[str, str]  # net, host, dhcpstart and dns as the cloud gave them
    metadata_ip: str

    @classmethod
    def from_cloud(cls, command: list[str], image: GuestImage) -> BarePlan:
        machine_args: list[str] = []
        for flag in ("-machine", "-accel", "-cpu", "-bios", "-m", "-smp"):
            value = _option(command, flag)
            if value is not None:
                machine_args += [flag, value]
        append = _option(command, "-append") or ""
        meta = next((a.split("=", 1)[1] for a in append.split()
                     if a.startswith("labkit.metadata=")), None)
        netdev_arg = _option(command, "-netdev")
        if meta is None or netdev_arg is None:
            raise RuntimeError(f"the cloud's qemu has no metadata address or no -netdev: "
                               f"{command}")
        # the guestfwd value holds no commas (qemu_command.py refuses them)
        parts = dict(p.split("=", 1) for p in netdev_arg.split(",")[1:] if "=" in p)
        netdev = {k: parts[k] for k in ("net", "host", "dhcpstart", "dns") if k in parts}
        return cls(qemu=command[0], machine_args=machine_args, kernel=image.kernel,
                   initrd=image.ramdisk, append=append, netdev=netdev, metadata_ip=meta)

    def command(self, folder: Path, ssh_port: int | None) -> list[str]:
        """The argv of one bare guest whose files live in `folder` (made by BareGuest)."""
        responder = (f"{sys.executable} -S {folder.parent / 'metadata.py'} "
                     f"{folder.parent / 'metadata'}")
        netdev = ",".join(["user,id=net0", *(f"{k}={v}" for k, v in self.netdev.items()),
                           "restrict=on", f"guestfwd=tcp:{self.metadata_ip}:80-cmd:{responder}"])
        if ssh_port is not None:
            netdev += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        return [self.qemu, "-name", f"bare-{folder.name}", *self.machine_args,
                "-no-user-config", "-nodefaults", "-nographic",
                "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", self.append,
                "-qmp", f"unix:{folder / 'qmp.sock'},server=on,wait=off",
                "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0",
                "-serial", f"file:{folder / 'console.log'}"]


def write_metadata(root: Path, key: SshKey) -> None:
    """What the bare guest's /init asks for: a hostname and the ssh key (no user data)."""
    (root / "metadata.py").write_text(METADATA_RESPONDER)
    meta = root / "metadata" / "latest" / "meta-data"
    (meta / "public-keys" / "0").mkdir(parents=True, exist_ok=True)
    (meta / "hostname").write_text(BARE_HOSTNAME + "\n")
    (meta / "public-keys" / "0" / "openssh-key").write_text(key.public + "\n")


@dataclass
class BareGuest:
    """One qemu started by hand, in a session of its own (stop() ends it and its
    metadata responders)."""

    plan: BarePlan
    folder: Path
    ssh_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seen: set[str] = field(default_factory=set)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "qemu.log", "wb") as log:
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(self.plan.command(self.folder, self.ssh_port),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def _alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            log = (self.folder / "qemu.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"bare qemu {self.folder.name} exited: {log}")

    def running(self) -> bool:
        self._alive()
        try:
            with QMP(self.folder / "qmp.sock", timeout=0.5) as q:
                return bool(q.query_status().get("running"))
        except QMPError:
            return False

    def ready(self) -> bool:
        self._alive()
        try:
            return READY_LINE in (self.folder / "console.log").read_text(errors="replace")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a throwaway guest: no grace needed
        self.proc.wait()


def bare_boot(plan: BarePlan, root: Path, name: str, key: SshKey) -> dict[str, float]:
    """One bare guest: seconds from launch to QMP running, to READY_LINE, to ssh `true`."""
    guest = BareGuest(plan, root / name, ssh_port=free_port())
    try:
        guest.start()
        running = until(guest.running, "bare qemu running", POLL_API)
        ready = until(guest.ready, "bare READY_LINE", POLL_CONSOLE)
        assert guest.ssh_port is not None
        logged_in = ssh_true(guest.ssh_port, key)
        return {"active": running - guest.started, "ready": ready - guest.started,
                "ssh": logged_in - guest.started}
    finally:
        guest.stop()


def bare_batch(plan: BarePlan, root: Path, count: int, idle: float) -> dict[str, float]:
    """`count` bare guests launched together: seconds to all running, to every READY_LINE;
    their mean RSS (MiB) `idle` seconds later."""
    guests = [BareGuest(plan, root / f"batch-{i}") for i in range(count)]
    try:
        start = time.perf_counter()
        for guest in guests:
            guest.start()
        running = until(lambda: all(g.running() for g in guests), f"{count} bare running",
                        POLL_API)
        waiting = list(guests)

        def all_ready() -> bool:
            waiting[:] = [g for g in waiting if not g.ready()]
            return not waiting
        ready = until(all_ready, f"READY_LINE on {count} bare consoles", POLL_CONSOLE)
        time.sleep(idle)
        rss = sum(rss_kib(g.proc.pid) for g in guests if g.proc) / count / 1024
        return {"active": running - start, "ready": ready - start, "rss": rss}
    finally:
        for guest in guests:
            guest.stop()


# --- the figures -------------------------------------------------------------------------

@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="labkit-bench-guests-"))
    try:
        yield path
    finally:
        kill_strays(path)  # nothing should be left; a guard against an interrupted stop
        shutil.rmtree(path, ignore_errors=True)


def _seconds(value: float) -> str:
    return f"{value:.2f} s"


def run(runs: int = 3, batch: int = 8, idle: float = 10.0,
        log: Callable[[str], None] = print) -> list[Figure]:
    """Measure everything above; progress goes to `log`. The caller checked unavailable().
    Each bare qemu is stopped where it is measured; the cloud (and its guests) when the
    block below ends, however it ends; the work folder is swept last."""
    if runs < 1 or batch < 1:
        raise ValueError("runs and batch must be at least 1")
    image = built_image()
    if image is None:
        raise RuntimeError("the tiny guest image is not built (run `labkit image build`)")
    key = SshKey.make()
    with _workdir() as root, GuestCloud(root / "cloud", key) as cloud:
        bare_root = root / "bare"
        bare_root.mkdir()
        write_metadata(bare_root, key)
        warm = cloud_boot(cloud, "warm-up")
        plan = BarePlan.from_cloud(warm["command"], image)
        hits = "".join("h" if hit else "m" for hit in warm["cache"])
        log(f"  warm-up (image cache {hits}, not in the medians): cloud ACTIVE "
            f"{_seconds(warm['active'])}, READY {_seconds(warm['ready'])}, ssh "
            f"{_seconds(warm['ssh'])}; virt_type {warm['virt_type']}")
        log(f"  bare qemu: {shlex.join(plan.command(bare_root / 'run-N', 22222))}")
        clouds: list[dict[str, Any]] = []
        bares: list[dict[str, float]] = []
        for i in range(runs):
            # alternate which goes first, so a busy moment of the machine hits both alike
            order = ("cloud", "bare") if i % 2 == 0 else ("bare", "cloud")
            for which in order:
                if which == "cloud":
                    clouds.append(cloud_boot(cloud, f"bench-{i}"))
                else:
                    bares.append(bare_boot(plan, bare_root, f"run-{i}", key))
            c, b = clouds[-1], bares[-1]
            log(f"  guest run {i + 1}: cloud ACTIVE {_seconds(c['active'])}, READY "
                f"{_seconds(c['ready'])}, ssh {_seconds(c['ssh'])} | bare running "
                f"{_seconds(b['active'])}, READY {_seconds(b['ready'])}, ssh "
                f"{_seconds(b['ssh'])}")
        many = cloud_batch(cloud, batch, idle)
        log(f"  {batch} at once, cloud: all ACTIVE {_seconds(many['active'])}, all READY "
            f"{_seconds(many['ready'])}, {many['rss']:.0f} MiB RSS per guest")
        cloud.close()  # its guests are gone; free the CPU for the bare batch
        bare_many = bare_batch(plan, bare_root, batch, idle)
        log(f"  {batch} at once, bare: all running {_seconds(bare_many['active'])}, all READY "
            f"{_seconds(bare_many['ready'])}, {bare_many['rss']:.0f} MiB RSS per guest")

    def med(rows: list[dict[str, Any]], name: str) -> float:
        return statistics.median(r[name] for r in rows)

    ready, bare_ready = med(clouds, "ready"), med(bares, "ready")
    ssh, bare_ssh = med(clouds, "ssh"), med(bares, "ssh")
    target = "cloud adds <= 15 %"
    return [
        Figure("1 guest: POST /servers to ACTIVE", med(clouds, "active"),
               "bare qemu: launch to QMP running", med(bares, "active"), relative="x"),
        Figure("1 guest: POST /servers to READY_LINE", ready,
               "bare qemu: launch to READY_LINE", bare_ready, target, ready <= 1.15 * bare_ready),
        Figure("1 guest: POST /servers to ssh `true`", ssh,
               "bare qemu: launch to ssh `true`", bare_ssh, target, ssh <= 1.15 * bare_ssh),
        Figure(f"{batch} guests, one POST: all ACTIVE", many["active"],
               f"{batch} bare qemus: all running", bare_many["active"], relative="x"),
        Figure(f"{batch} guests, one POST: all READY_LINE", many["ready"],
               f"{batch} bare qemus: all READY_LINE", bare_many["ready"]),
        Figure(f"RSS per idle guest ({batch} guests)", many["rss"],
               "bare qemu, same memory", bare_many["rss"], unit="MiB"),
    ]
