"""Start, stop, find and reset the embedded cloud's process. The CLI and labkit.connect use this."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from labkit.cloud.settings import CloudSettings
from labkit.paths import cloud_home

# What `reset` removes: the state, never the settings or the log.
STATE_FILES = ("*.sqlite", "*.sqlite-wal", "*.sqlite-shm", "boot", "fernet-keys", "clouds.yaml",
               "up.lock", "hosts", "faults.json")


# How labkit's own "is it up?" requests name themselves in the trace.
PROBE_AGENT = "labkit-probe"


class CloudError(RuntimeError):
    """The embedded cloud did not start or stop as asked."""


@dataclass(frozen=True)
class CloudInfo:
    home: Path
    pid: int
    port: int
    url: str

    @property
    def clouds_yaml(self) -> Path:
        return self.home / "clouds.yaml"


def running(home: Path | None = None) -> CloudInfo | None:
    """The cloud serving this state folder, if one answers."""
    home = home or cloud_home()
    try:
        state = json.loads((home / "cloud.json").read_text())
    except (OSError, ValueError):
        return None
    if not _alive(state["pid"]):
        return None
    try:
        ok = httpx.get(state["url"] + "/identity/v3", timeout=2,
                       headers={"User-Agent": PROBE_AGENT}).status_code == 200
    except httpx.HTTPError:
        ok = False
    return CloudInfo(home, state["pid"], state["port"], state["url"]) if ok else None


def up(settings: CloudSettings | None = None, timeout: float = 30) -> CloudInfo:
    """Start the cloud in the background and return once it answers; reuse a running one."""
    settings = settings or CloudSettings.from_env()
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    # one starter at a time per state folder: two kernels calling connect() at once must
    # not start two servers on one database
    with open(home / "up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return running(home) or _start(settings, timeout)


def _start(settings: CloudSettings, timeout: float) -> CloudInfo:
    home = settings.home
    previous = home / "settings.json"
    if settings.port == 0 and previous.exists():
        settings = settings.with_port(CloudSettings.from_json(previous.read_text()).port)
    previous.write_text(settings.to_json())
    (home / "cloud.json").unlink(missing_ok=True)
    log = open(home / "cloud.log", "ab")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen(
        [sys.executable, "-m", "labkit.cloud.server", str(home)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # outlives the kernel or shell that started it
    )
    log.close()
    try:
        return _wait_until_up(proc, home, timeout)
    except BaseException:
        # timed out or interrupted, maybe before cloud.json named the pid: stop it here
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        (home / "cloud.json").unlink(missing_ok=True)
        raise


def _wait_until_up(proc: subprocess.Popen[bytes], home: Path, timeout: float) -> CloudInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CloudError(f"the embedded cloud exited with status {proc.returncode}; "
                             f"the end of {home / 'cloud.log'}:\n{_tail(home / 'cloud.log')}")
        info = running(home)
        if info is not None:
            return info
        time.sleep(0.05)
    raise CloudError(f"the embedded cloud did not answer within {timeout:.0f} s; "
                     f"see {home / 'cloud.log'}")


def down(home: Path | None = None, timeout: float = 10) -> bool:
    """Stop the cloud and everything it started, its guests included. True if one was
    running."""
    home = home or cloud_home()
    try:
        stopped = _stop_server(home, timeout)
        # a server of this folder that cloud.json does not name (two starts that raced):
        # stopping "the cloud" means every one of them
        return _stop_strays(home, timeout) or stopped
    finally:
        # guests of a cloud that crashed, or that did not stop them in time
        _kill_guests(home)


def _stop_strays(home: Path, timeout: float) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    pids = [int(p.name) for p in proc.iterdir()
            if p.name.isdigit() and int(p.name) != os.getpid() and _serves(int(p.name), home)]
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
    return bool(pids)


def _kill_guests(home: Path) -> None:
    if not (home / "hosts").is_dir():
        return
    from labkit.cloud.virt.qemu import kill_orphans

    kill_orphans(home)


def _stop_server(home: Path, timeout: float) -> bool:
    try:
        pid = json.loads((home / "cloud.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return False
    if not _alive(pid) or not _serves(pid, home):
        # gone, or the pid now belongs to something else: never signal a stranger
        (home / "cloud.json").unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
    (home / "cloud.json").unlink(missing_ok=True)
    return True


def reset(home: Path | None = None) -> CloudInfo | None:
    """Put the lab back to its first state; restart the cloud if it was running."""
    home = home or cloud_home()
    was_running = down(home)
    for pattern in STATE_FILES:
        for path in home.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if was_running:
        settings_file = home / "settings.json"
        return up(CloudSettings.from_json(settings_file.read_text()))
    return None


def env_exports(info: CloudInfo) -> str:
    """The shell lines that point the openstack CLI at this cloud."""
    return (f"export OS_CLIENT_CONFIG_FILE={info.clouds_yaml}\n"
            f"export OS_CLOUD=labkit\n")


def _alive(pid: int) -> bool:
    """Is the process running? A zombie (exited, not yet reaped by its parent) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it
        return done == 0
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _serves(pid: int, home: Path) -> bool:
    """Is `pid` the cloud server of this state folder?"""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc here: trust cloud.json
    return b"labkit.cloud.server" in args and str(home).encode() in args


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass  # not a group leader (a server someone else started), or not ours to group
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
