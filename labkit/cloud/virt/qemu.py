"""The qemu driver: real guests, as nova's libvirt driver runs them (without libvirtd).

spawn does what nova.virt.libvirt.driver.LibvirtDriver.spawn does, step by step: fetch
the images into the host's cache (imagecache.py), copy the kernel and ramdisk of an AMI
into the instance folder, make the root disk a qcow2 overlay on the cached base, write
libvirt.xml, then start the domain (here: run the qemu command derived from the XML,
qemu_command.py) and wait until the monitor says it runs. Power operations, the
console log, floating IPs (loopback ports forwarded to the guest's ssh) and adoption
after a restart of the cloud follow.

Each guest's qemu runs in a session of its own, so it outlives a crash of the cloud;
the next cloud adopts it (adopt) or, when its state is thrown away, kills it
(kill_orphans). An instance folder holds: disk, kernel, ramdisk, libvirt.xml,
console.log, qemu.log, qemu.pid, guest.json (what this driver needs to take the guest
over again: the command, the forwards, the volumes, the pid) and usually qmp.sock.

Volumes (attach_volume, detach_volume) are hot-plugged over QMP into a running guest
(hotplug.py) and written into libvirt.xml as <disk> elements; the command line is
derived from the XML again, so a guest that starts later (power on, hard reboot, a
restart of the cloud) has its volumes. A guest that is not running only gets the XML.
QMP is blocking socket I/O: async methods run it in a thread.

A cold resize (migrate_disk_and_power_off, finish_migration, confirm_migration,
finish_revert_migration) is qemu_resize.py's ColdResize, which QemuDriver inherits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.cloud.netinfo import floating_ips
from labkit.cloud.virt.qemu_resize import ColdResize
from labkit.cloud.virt.qemu_resize import ResizeFailed as ResizeFailed  # re-exported

if TYPE_CHECKING:
    from labkit.cloud.virt.driver import GuestSpec, VolumeAttachment
    from labkit.cloud.virt.imagecache import ImageCache

log = logging.getLogger(__name__)

QUIT_GRACE = 3.0  # seconds from QMP quit to SIGKILL
START_DEADLINE = 30.0  # seconds for a new qemu to report "running"
FORWARD_BASE = 20000  # floating IP a.b.c.d forwards from 127.0.0.1:20000 + (int(ip) % 10000)
FORWARD_HOST = "127.0.0.1"
GUEST_SSH_PORT = 22
# the metadata proxy's --url inside the -netdev guestfwd=...-cmd:... argument
METADATA_URL = re.compile(r"--url \S+")

# power states, as labkit.cloud.compute.instances numbers them (nova's power_state)
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED = 0, 1, 3, 4, 6


# -- processes (stdlib only: kill_orphans runs where nothing else is imported)

def _pid_alive(pid: int) -> bool:
    """Is `pid` a live process (a zombie is dead)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _owns(pid: int | None, folder: Path) -> bool:
    """Is `pid` a live qemu of the guest in `folder`? Its command line names files there
    (checked so that a recycled pid never gets killed)."""
    if not pid or not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return os.fsencode(str(folder).rstrip("/") + "/") in cmdline


def _recorded_pids(folder: Path) -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError, ValueError, TypeError):
        pid = json.loads((folder / "guest.json").read_text()).get("pid")
        if pid:
            pids.append(int(pid))
    with contextlib.suppress(OSError, ValueError):
        pids.append(int((folder / "qemu.pid").read_text().strip()))
    return list(dict.fromkeys(pids))


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_orphans(home: Path) -> int:
    """Kill every qemu whose guest lives under home/hosts/*/instances/*/ (a cloud whose
    state is being thrown away, or a crashed one's guests). How many were killed."""
    from labkit.cloud.virt.libvirt_xml import short_socket_dir

    killed = 0
    for folder in Path(home).glob("hosts/*/instances/*/"):
        for pid in _recorded_pids(folder):
            if _owns(pid, folder):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                    _wait_dead(pid, 2.0)
        # a deep folder's QMP socket lives in a short folder of the temp dir: no qemu
        # listens there any more, and a state folder thrown away would leave it behind
        shutil.rmtree(short_socket_dir(folder), ignore_errors=True)
    return killed


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((FORWARD_HOST, port))
        except OSError:
            return False
    return True


def preferred_port(floating_ip: str) -> int:
    return FORWARD_BASE + int(ipaddress.ip_address(floating_ip)) % 10000


# -- short QMP exchanges, run in a thread by the async methods

def _monitor_says_running(sock: Path) -> bool:
    from labkit.cloud.virt.qmp import QMP, QMPError

    try:
        with QMP(sock, timeout=0.5) as q:
            return bool(q.query_status().get("running"))
    except QMPError:
        return False


def _monitor_quit(sock: Path) -> None:
    from labkit.cloud.virt.qmp import QMP, QMPError

    with contextlib.suppress(QMPError), QMP(sock, timeout=0.5) as q:
        q.quit()


def _monitor_hostfwd_remove(sock: Path, netdev: str, port: int, host: str) -> None:
    from labkit.cloud.virt.qmp import QMP, QMPError

    with contextlib.suppress(QMPError), QMP(sock) as q:
        q.hostfwd_remove(netdev, port, host)


# -- the driver

@dataclass
class _Guest:
    """What the driver holds for one guest (guest.json on disk)."""

    uuid: str
    name: str
    paths: Any  # GuestPaths
    command: list[str]
    virt_type: str
    netdev: str | None
    forwards: list[dict[str, Any]] = field(default_factory=list)
    image_cache: list[dict[str, Any]] = field(default_factory=list)
    # attached volumes: volume_id, device, serial, path, qemu_device, root_port, node_names
    volumes: list[dict[str, Any]] = field(default_factory=list)
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    stopping: bool = False  # the driver asked qemu to stop: its exit is no news
    generation: int = 0  # bumped at each start, so a stale watcher stays quiet
    unwatch: Callable[[], None] | None = None

    def record(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "virt_type": self.virt_type,
                "command": self.command, "pid": self.pid, "netdev": self.netdev,
                "forwards": self.forwards, "image_cache": self.image_cache,
                "volumes": self.volumes, "paths": self.paths.as_dict()}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> _Guest:
        from labkit.cloud.virt.libvirt_xml import GuestPaths

        p = data["paths"]
        paths = GuestPaths(**{k: (Path(v) if v else None) for k, v in p.items()})
        return cls(uuid=data["uuid"], name=data.get("name", ""), paths=paths,
                   command=list(data["command"]), virt_type=data.get("virt_type", "qemu"),
                   netdev=data.get("netdev"), forwards=list(data.get("forwards", [])),
                   image_cache=list(data.get("image_cache", [])),
                   volumes=list(data.get("volumes", [])), pid=data.get("pid"))


ProxyCommand = Callable[[str, Path, str, str], str]


class QemuDriver(ColdResize):
    """nova-compute's hypervisor driver for real qemu guests on this machine.

    `trace(request_id, summary, detail)` records each step; `on_power_change(uuid)` is
    called when a guest's qemu exits without the driver asking (nova learns this from
    libvirt's lifecycle events). `metadata_proxy` builds the per-connection command
    behind the metadata address (default: labkit.cloud.network.metadata_proxy)."""

    name = "qemu"

    def __init__(self, host: str, instances_dir: Path, image_cache: ImageCache, *,
                 virt_type: str,
                 metadata_url: str, metadata_secret_file: Path,
                 trace: Callable[[str | None, str, dict[str, Any]], None] | None = None,
                 on_power_change: Callable[[str], None] | None = None,
                 step_seconds: float = 0.0,
                 metadata_proxy: ProxyCommand | None = None,
                 detach_timeout: float | None = None) -> None:
        if virt_type not in ("qemu", "kvm"):
            raise ValueError(f"virt_type must be qemu or kvm, not {virt_type!r}")
        self.host = host
        self.instances_dir = Path(instances_dir)
        self.image_cache = image_cache
        self.virt_type = virt_type
        self.metadata_url = metadata_url
        self.metadata_secret_file = Path(metadata_secret_file)
        self.trace = trace
        self.on_power_change = on_power_change
        self.step_seconds = step_seconds
        self.metadata_proxy = metadata_proxy
        self.detach_timeout = detach_timeout  # None: hotplug.DETACH_TIMEOUT
        self.guests: dict[str, _Guest] = {}
        # one operation at a time per guest (nova holds the instance's lock likewise)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- small helpers

    def _trace(self, request_id: str | None, summary: str, **detail: Any) -> None:
        if self.trace is not None:
            try:
                self.trace(request_id, summary, detail)
            except Exception:  # a broken trace must never break a guest
                log.exception("trace of %r failed", summary)

    def _lock(self, uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(uuid, asyncio.Lock())

    async def _step(self) -> None:
        if self.step_seconds:
            await asyncio.sleep(self.step_seconds)

    def _proxy_command(self, uuid: str, project_id: str) -> str:
        make = self.metadata_proxy
        if make is None:
            from labkit.cloud.network.metadata_proxy import proxy_command
            make = proxy_command
        return make(self.metadata_url, self.metadata_secret_file, uuid, project_id)

    def _guest(self, uuid: str) -> _Guest:
        from labkit.cloud.virt.driver import GuestNotFound

        if uuid not in self.guests:
            raise GuestNotFound(f"no guest {uuid} on the qemu hypervisor of {self.host}")
        return self.guests[uuid]

    def _save(self, g: _Guest) -> None:
        path = g.paths.record
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(g.record(), indent=2) + "\n")
        os.replace(tmp, path)

    def _load(self, uuid: str) -> _Guest | None:
        try:
            return _Guest.from_record(
                json.loads((self.instances_dir / uuid / "guest.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _alive(self, g: _Guest) -> bool:
        if g.proc is not None and g.proc.pid == g.pid:
            return g.proc.poll() is None  # our child: poll also reaps it
        return _owns(g.pid, g.paths.folder)

    # -- building

    async def _fetch(self, image_id: str, role: str, cache_log: list[dict[str, Any]]) -> Path:
        # the cache traces its own hits and downloads; the driver keeps them for describe()
        path, hit = await self.image_cache.fetch(image_id)
        cache_log.append({"image_id": image_id, "role": role, "path": str(path), "hit": hit})
        return path

    async def spawn(self, guest: GuestSpec) -> None:
        """Build the instance folder and start the guest (nova's LibvirtDriver.spawn)."""
        from labkit.cloud.virt.driver import SpawnFailed
        from labkit.cloud.virt.libvirt_xml import GuestPaths, direct_io_supported, domain_xml
        from labkit.cloud.virt.qemu_command import UserNet, qemu_command

        rid = guest.request_id
        old = self.guests.get(guest.uuid)
        if old is not None and self._alive(old):
            raise SpawnFailed(f"guest {guest.uuid} already runs on {self.host}")
        folder = self.instances_dir / guest.uuid
        try:
            folder.mkdir(parents=True, exist_ok=True)
            props = guest.image.get("properties") or {}
            kernel_id, ramdisk_id = props.get("kernel_id"), props.get("ramdisk_id")
            paths = GuestPaths.for_folder(folder, kernel=bool(kernel_id),
                                          ramdisk=bool(ramdisk_id))
            cache_log: list[dict[str, Any]] = []
            base = await self._fetch(guest.image["id"], "machine image", cache_log)
            for image_id, dest, role in ((kernel_id, paths.kernel, "kernel"),
                                         (ramdisk_id, paths.ramdisk, "ramdisk")):
                if image_id and dest is not None:
                    src = await self._fetch(image_id, role, cache_log)
                    # nova copies an AMI's kernel and ramdisk next to the disk
                    await asyncio.to_thread(shutil.copyfile, src, dest)
                    self._trace(rid, f"copy the {role} into the instance folder",
                                source=str(src), dest=str(dest))
            await self._step()
            await self._create_disk(rid, guest, base, paths.disk)
            cache = "none" if direct_io_supported(folder) else "writethrough"
            xml = domain_xml(guest, virt_type=self.virt_type, paths=paths,
                             network_info=guest.network_info, disk_cache=cache)
            paths.xml.write_text(xml)
            self._trace(rid, f"write libvirt.xml for {guest.name}", path=str(paths.xml),
                        virt_type=self.virt_type)
            user_net = (UserNet.from_network_info(
                guest.network_info, self._proxy_command(guest.uuid, guest.project_id),
                guest.hostname or None) if guest.network_info else None)
            command = qemu_command(xml, user_net=user_net, qmp_socket=paths.qmp_socket,
                                   pidfile=paths.pidfile, console_log=paths.console_log)
        except SpawnFailed:
            raise
        except Exception as exc:
            raise SpawnFailed(f"preparing {guest.name} on {self.host} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        g = _Guest(uuid=guest.uuid, name=guest.name, paths=paths, command=command,
                   virt_type=self.virt_type,
                   netdev=user_net.netdev_id if user_net is not None else None,
                   image_cache=cache_log)
        self.guests[guest.uuid] = g
        self._save(g)
        await self._step()
        await self._start(g, rid)
        await self.network_changed(guest.uuid, guest.network_info, request_id=rid)

    async def _create_disk(self, rid: str | None, guest: GuestSpec, base: Path,
                           disk: Path) -> None:
        """The root disk: a qcow2 overlay whose backing file is the cached base image."""
        backing_format = "qcow2" if guest.image.get("disk_format") == "qcow2" else "raw"
        cmd = ["qemu-img", "create", "-f", "qcow2", "-F", backing_format, "-b", str(base),
               str(disk)]
        size = guest.root_gb * 1024**3
        if guest.root_gb and size >= base.stat().st_size:
            cmd.append(f"{guest.root_gb}G")  # root_gb 0: the image's own size
        done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"qemu-img create failed: {done.stderr.strip()}")
        self._trace(rid, f"create the root disk (qcow2 over {base.name[:12]})",
                    command=cmd)

    async def _start(self, g: _Guest, rid: str | None = None) -> None:
        """Run the guest's qemu and wait for its monitor to say "running"."""
        from labkit.cloud.virt.driver import SpawnFailed

        g.paths.qmp_socket.parent.mkdir(parents=True, exist_ok=True)
        g.paths.qmp_socket.unlink(missing_ok=True)
        g.paths.pidfile.unlink(missing_ok=True)
        # a guest made before a restart of the cloud asks the metadata service where the
        # cloud listens now (its port may have changed)
        g.command = [METADATA_URL.sub(f"--url {self.metadata_url}", arg) for arg in g.command]
        with open(g.paths.log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting qemu\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(g.command, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, cwd=g.paths.folder,
                                        start_new_session=True)
            except OSError as exc:
                raise SpawnFailed(f"cannot run {g.command[0]}: {exc}") from exc
        g.proc, g.pid, g.stopping = proc, proc.pid, False
        g.generation += 1
        self._save(g)
        self._trace(rid, f"start qemu for {g.name} (pid {proc.pid})", command=g.command,
                    pid=proc.pid, virt_type=g.virt_type)
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SpawnFailed(f"qemu for {g.name} on {self.host} exited with "
                                  f"{proc.returncode}: {_tail(g.paths.log)}")
            if await asyncio.to_thread(_monitor_says_running, g.paths.qmp_socket):
                break
            if time.monotonic() - started > START_DEADLINE:
                await self._stop(g)
                raise SpawnFailed(f"qemu for {g.name} on {self.host} did not run within "
                                  f"{START_DEADLINE:.0f} s: {_tail(g.paths.log)}")
            await asyncio.sleep(0.05)
        self._trace(rid, f"{g.name} is running (QMP query-status)", pid=proc.pid,
                    seconds=round(time.monotonic() - started, 3))
        self._watch(g)

    # -- watching for exits nobody asked for

    def _watch(self, g: _Guest) -> None:
        """Call on_power_change when this qemu exits unasked (libvirt's lifecycle event)."""
        self._unwatch(g)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): power_state still sees the truth
        pid, generation = g.pid, g.generation
        if pid is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            task = loop.create_task(self._poll_exit(g, generation))
            g.unwatch = task.cancel
            return

        def exited() -> None:
            self._unwatch(g)
            self._exited(g, generation)

        def unwatch() -> None:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        loop.add_reader(fd, exited)
        g.unwatch = unwatch

    def _unwatch(self, g: _Guest) -> None:
        if g.unwatch is not None:
            unwatch, g.unwatch = g.unwatch, None
            unwatch()

    async def _poll_exit(self, g: _Guest, generation: int) -> None:
        while self._alive(g):
            await asyncio.sleep(0.2)
        self._exited(g, generation)

    def _exited(self, g: _Guest, generation: int) -> None:
        if g.proc is not None:
            g.proc.poll()  # reap it
        if generation != g.generation or g.stopping or self.guests.get(g.uuid) is not g:
            return
        self._trace(None, f"qemu of {g.name} exited unasked", pid=g.pid,
                    log_tail=_tail(g.paths.log, 5))
        if self.on_power_change is not None:
            try:
                self.on_power_change(g.uuid)
            except Exception:
                log.exception("on_power_change(%s) failed", g.uuid)

    # -- stopping

    async def _stop(self, g: _Guest, grace: float = QUIT_GRACE) -> None:
        """QMP quit, then SIGKILL if qemu is still there after `grace` seconds."""
        g.stopping = True
        self._unwatch(g)
        if g.pid is not None and self._alive(g):
            await asyncio.to_thread(_monitor_quit, g.paths.qmp_socket)
            deadline = time.monotonic() + grace
            while self._alive(g) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self._alive(g):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(g.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while self._alive(g) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
        if g.proc is not None:
            g.proc.poll()
        g.proc, g.pid = None, None

    async def destroy(self, uuid: str) -> None:
        """Stop the guest and remove its folder (nova's destroy with cleanup)."""
        g = self.guests.pop(uuid, None) or self._load(uuid)
        if g is not None:
            if g.pid is None:  # a record from disk: the pid the folder names
                g.pid = next((p for p in _recorded_pids(g.paths.folder)
                              if _owns(p, g.paths.folder)), None)
            await self._stop(g)
            sock_dir = g.paths.qmp_socket.parent
            if sock_dir.name.startswith("labkit-qmp-"):
                shutil.rmtree(sock_dir, ignore_errors=True)
        folder = self.instances_dir / uuid
        if folder.exists():
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def power_off(self, uuid: str) -> None:
        g = self._guest(uuid)
        async with self._lock(uuid):
            await self._stop(g)
            self._save(g)

    async def power_on(self, uuid: str) -> None:
        """Start again from the saved command: same disk, console log appended."""
        g = self._guest(uuid)
        async with self._lock(uuid):
            if self._alive(g):
                return
            await self._start(g)
            await self._reapply_forwards(g)

    async def reboot(self, uuid: str, hard: bool) -> None:
        """Soft: QMP system_reset. Hard: kill qemu and start it again (nova's hard reboot
        destroys the domain and creates it anew)."""
        from labkit.cloud.virt.qmp import QMP, QMPError

        g = self._guest(uuid)
        async with self._lock(uuid):
            if not hard and self._alive(g):
                try:
                    with QMP(g.paths.qmp_socket) as q:
                        await asyncio.to_thread(q.system_reset)
                    return
                except QMPError:
                    log.warning("soft reboot of %s failed; rebooting hard", uuid)
            await self._stop(g)
            await self._start(g)
            await self._reapply_forwards(g)

    def power_state(self, uuid: str) -> int:
        from labkit.cloud.virt.qmp import QMP, QMPError

        g = self.guests.get(uuid)
        if g is None:
            return NOSTATE
        if g.pid is None or not self._alive(g):
            return SHUTDOWN
        try:
            with QMP(g.paths.qmp_socket, timeout=1.0) as q:
                status = q.query_status().get("status", "running")
        except QMPError:
            return RUNNING  # the process lives; its monitor is busy with someone else
        if status in ("running", "postmigrate", "finish-migrate"):
            return RUNNING
        if status in ("internal-error", "guest-panicked", "io-error"):
            return CRASHED
        if status == "shutdown":
            return SHUTDOWN
        return PAUSED

    def adopt(self, uuid: str, power_state: int) -> None:
        """After a restart of the cloud: find this guest's qemu (its pid in guest.json or
        the pidfile, checked against /proc/<pid>/cmdline) and watch it again. When none
        runs, nothing is started: power_state reports SHUTDOWN."""
        g = self._load(uuid)
        if g is None:
            log.warning("adopt %s: no guest.json under %s", uuid, self.instances_dir)
            return
        g.pid = next((p for p in _recorded_pids(g.paths.folder) if _owns(p, g.paths.folder)),
                     None)
        self.guests[uuid] = g
        if g.pid is not None:
            g.generation += 1
            self._watch(g)
        self._save(g)
        self._trace(None, f"adopt {g.name}: " + (f"qemu pid {g.pid} runs" if g.pid
                                                  else "no qemu runs"),
                    uuid=uuid, pid=g.pid, recorded_power_state=power_state)

    # -- what the cloud and notebooks ask

    def console_output(self, uuid: str, lines: int | None = None) -> str:
        """The serial console's log (nova's get_console_output); "" when there is none."""
        g = self.guests.get(uuid)
        path = g.paths.console_log if g else self.instances_dir / uuid / "console.log"
        try:
            text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
        except OSError:
            return ""
        if lines is None:
            return text
        if lines <= 0:
            return ""
        kept = text.splitlines(keepends=True)[-lines:]
        return "".join(kept)

    async def network_changed(self, uuid: str, network_info: list[dict[str, Any]],
                              request_id: str | None = None) -> None:
        """Floating IPs become loopback ports forwarded to the guest's ssh (port 22):
        new ones are added, ones no longer there removed. Recorded in guest.json, and
        applied again whenever the guest starts. Every vif's floating IPs lead to the
        one NIC with traffic (qemu_command.py says why there is only one)."""
        from labkit.cloud.virt.qmp import QMPError

        g = self.guests.get(uuid)
        if g is None:
            return
        wanted = floating_ips(network_info)
        running = g.netdev is not None and self._alive(g)
        kept: list[dict[str, Any]] = []
        for fwd in g.forwards:
            if fwd["floating_ip"] in wanted:
                kept.append(fwd)
                continue
            if running:
                await asyncio.to_thread(_monitor_hostfwd_remove, g.paths.qmp_socket,
                                        g.netdev, fwd["port"], fwd["host"])
            self._trace(request_id, f"remove forward {fwd['host']}:{fwd['port']} "
                                    f"(floating IP {fwd['floating_ip']} gone)", **fwd)
        g.forwards = kept
        have = {f["floating_ip"] for f in kept}
        for fip in wanted:
            if fip in have or g.netdev is None:
                continue
            fwd = {"floating_ip": fip, "host": FORWARD_HOST, "port": 0,
                   "guest_port": GUEST_SSH_PORT}
            try:
                fwd["port"] = (await asyncio.to_thread(self._add_forward, g, fip) if running
                               else self._pick_port(fip))
            except (RuntimeError, QMPError) as exc:
                self._trace(request_id, f"cannot forward floating IP {fip}: {exc}",
                            floating_ip=fip)
                continue
            g.forwards.append(fwd)
            self._trace(request_id, f"forward {FORWARD_HOST}:{fwd['port']} to "
                                    f"{g.name}:22 for floating IP {fip}", **fwd)
        self._save(g)

    def _ports_taken(self) -> set[int]:
        return {f["port"] for g in self.guests.values() for f in g.forwards}

    def _pick_port(self, floating_ip: str, skip: set[int] | None = None) -> int:
        taken = self._ports_taken() | (skip or set())
        port = preferred_port(floating_ip)
        for _ in range(20000):
            if port not in taken and _port_free(port):
                return port
            port = port + 1 if port < 65535 else FORWARD_BASE
        raise RuntimeError("no free loopback port for a floating IP forward")

    def _add_forward(self, g: _Guest, floating_ip: str, port: int | None = None) -> int:
        """hostfwd_add on a free port (trying the next one if qemu cannot bind it)."""
        from labkit.cloud.virt.qmp import QMP, QMPError

        tried: set[int] = set()
        with QMP(g.paths.qmp_socket) as q:
            for _ in range(50):
                if port is None or port in tried:
                    port = self._pick_port(floating_ip, tried)
                try:
                    q.hostfwd_add(g.netdev or "", port, GUEST_SSH_PORT, FORWARD_HOST)
                    return port
                except QMPError:
                    tried.add(port)
        raise RuntimeError(f"qemu could not forward any loopback port for {floating_ip}")

    async def _reapply_forwards(self, g: _Guest) -> None:
        """A fresh qemu has no forwards: add the recorded ones, on the same ports if free."""
        from labkit.cloud.virt.qmp import QMPError

        if g.netdev is None or not g.forwards:
            return
        for fwd in g.forwards:
            try:
                fwd["port"] = await asyncio.to_thread(self._add_forward, g, fwd["floating_ip"],
                                                      fwd["port"])
            except (RuntimeError, QMPError) as exc:
                self._trace(None, f"cannot forward floating IP {fwd['floating_ip']} again: "
                                  f"{exc}", **fwd)
        self._save(g)

    # -- volumes

    def _write_xml(self, g: _Guest, xml: str) -> None:
        """A new libvirt.xml, and the command line derived from its disks again."""
        from labkit.cloud.virt.libvirt_xml import parse_domain
        from labkit.cloud.virt.qemu_command import volume_args, without_volume_args

        tmp = g.paths.xml.with_name(g.paths.xml.name + ".tmp")
        tmp.write_text(xml)
        os.replace(tmp, g.paths.xml)
        g.command = without_volume_args(g.command) + volume_args(parse_domain(xml).disks)

    async def attach_volume(self, uuid: str, volume: VolumeAttachment) -> None:
        """Plug the volume in (hot-plug over QMP when the guest runs) and keep it in
        libvirt.xml and guest.json, so every later start of the guest has it."""
        from labkit.cloud.virt.driver import VolumeAttachFailed
        from labkit.cloud.virt.hotplug import Hotplug
        from labkit.cloud.virt.libvirt_xml import (
            add_volume_disk,
            direct_io_file,
            free_root_port,
            parse_domain,
            volume_disk,
        )
        from labkit.cloud.virt.qemu_command import volume_node_names

        g = self._guest(uuid)
        rid = volume.request_id
        async with self._lock(uuid):
            xml = g.paths.xml.read_text()
            dom = parse_domain(xml)
            target = volume.device.removeprefix("/dev/")
            if any(v["volume_id"] == volume.volume_id for v in g.volumes) or any(
                    d.serial == volume.serial for d in dom.disks):
                raise VolumeAttachFailed(f"volume {volume.volume_id} is already attached "
                                         f"to {g.name}")
            if any(d.target == target for d in dom.disks):
                raise VolumeAttachFailed(f"{g.name} already has a disk {volume.device}")
            if not os.path.exists(volume.path):
                raise VolumeAttachFailed(f"the host has no device {volume.path} for volume "
                                         f"{volume.volume_id} (is the volume connected?)")
            port = free_root_port(dom)
            if port is None:
                raise VolumeAttachFailed(
                    f"no free PCIe root port on {g.name} for volume {volume.volume_id}: all "
                    f"{dom.pcie_root_ports} are taken (nova's [libvirt] num_pcie_ports)")
            try:
                disk = volume_disk(path=volume.path, target=target, serial=volume.serial,
                                   pci_bus=port, read_only=volume.read_only,
                                   direct_io=await asyncio.to_thread(direct_io_file,
                                                                     volume.path))
            except ValueError as exc:
                raise VolumeAttachFailed(f"cannot attach volume {volume.volume_id}: "
                                         f"{exc}") from exc
            if g.pid is not None and self._alive(g):
                await Hotplug(g.paths.qmp_socket,
                              lambda summary, detail: self._trace(rid, summary, **detail),
                              **self._hotplug_options()).plug(disk)
            else:
                self._trace(rid, f"{g.name} is not running: {volume.device} is only written "
                                 f"into libvirt.xml, for its next start",
                            volume_id=volume.volume_id)
            self._write_xml(g, add_volume_disk(xml, disk))
            g.volumes.append({
                "volume_id": volume.volume_id, "device": f"/dev/{target}",
                "serial": volume.serial, "path": volume.path, "read_only": volume.read_only,
                "qemu_device": disk.alias, "root_port": f"pci.{port}",
                "node_names": list(volume_node_names(volume.serial))})
            self._save(g)
            self._trace(rid, f"libvirt.xml: <disk> {target} for volume {volume.volume_id} "
                             f"on root port pci.{port}", path=volume.path, cache=disk.cache)

    def _hotplug_options(self) -> dict[str, Any]:
        if self.detach_timeout is None:
            return {}
        return {"detach_timeout": self.detach_timeout}

    async def detach_volume(self, uuid: str, volume_id: str,
                            request_id: str | None = None) -> None:
        """Unplug the volume (device_del, DEVICE_DELETED, blockdev-del when the guest
        runs) and drop it from libvirt.xml and guest.json. A volume the guest does not
        have is no error (nova goes on with the detach). VolumeAttachFailed when the guest
        does not release the disk in time: it stays attached, and the detach may be
        tried again."""
        from labkit.cloud.virt.hotplug import Hotplug
        from labkit.cloud.virt.libvirt_xml import parse_domain, remove_volume_disk

        g = self._guest(uuid)
        async with self._lock(uuid):
            record = next((v for v in g.volumes if v["volume_id"] == volume_id), None)
            serial = record["serial"] if record is not None else volume_id
            xml = g.paths.xml.read_text()
            disk = next((d for d in parse_domain(xml).disks if d.serial == serial), None)
            if disk is None and record is None:
                self._trace(request_id, f"volume {volume_id} is not attached to {g.name}: "
                                        "nothing to unplug", volume_id=volume_id)
                return
            if disk is not None:
                if g.pid is not None and self._alive(g):
                    await Hotplug(g.paths.qmp_socket,
                                  lambda summary, detail: self._trace(request_id, summary,
                                                                      **detail),
                                  **self._hotplug_options()).unplug(disk)
                self._write_xml(g, remove_volume_disk(xml, serial))
            g.volumes = [v for v in g.volumes if v["volume_id"] != volume_id]
            self._save(g)
            self._trace(request_id, f"libvirt.xml: removed the <disk> of volume {volume_id}",
                        volume_id=volume_id)

    def describe(self, uuid: str) -> dict[str, Any]:
        """What the hypervisor holds for this guest (for the inspection API)."""
        g = self._guest(uuid)
        try:
            xml = g.paths.xml.read_text()
        except OSError:
            xml = None
        alive = g.pid is not None and self._alive(g)
        return {"driver": self.name, "host": self.host, "virt_type": g.virt_type,
                "domain_xml": xml, "command": list(g.command),
                "pid": g.pid if alive else None, "qmp_socket": str(g.paths.qmp_socket),
                "console_path": str(g.paths.console_log), "folder": str(g.paths.folder),
                "forwards": [dict(f) for f in g.forwards],
                "image_cache": [dict(e) for e in g.image_cache],
                "volumes": [dict(v) for v in g.volumes],
                # a resize's source keeps the old files until confirm or revert
                "resize_kept": (str(self.resize_folder(uuid))
                                if self.resize_folder(uuid).exists() else None),
                "power_state": self.power_state(uuid)}

    async def shutdown(self) -> None:
        """The cloud is stopping: stop every guest this driver started or adopted (their
        folders stay; the next cloud finds them shut off)."""
        guests = list(self.guests.values())
        await asyncio.gather(*(self._stop(g) for g in guests), return_exceptions=True)
        for g in guests:
            with contextlib.suppress(OSError):
                self._save(g)
