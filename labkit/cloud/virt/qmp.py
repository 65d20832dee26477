"""A small QMP client: the JSON monitor libvirt drives qemu with.

Synchronous and stdlib only: blocking socket I/O, so async code runs each call in a
thread (asyncio.to_thread). Timeouts are short because a monitor that does not answer
at once means a qemu that is gone or stuck. qemu sends events only to the monitors
connected when they happen, and in between the answers to commands: those read while
waiting for an answer are kept in `events`, in order, for `wait_event`, so a caller
that wants an event a command causes keeps one connection from the command to the wait.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

TIMEOUT = 2.0


class QMPError(Exception):
    """qemu answered with an error, or the monitor could not be reached."""


class QMPTimeout(QMPError):
    """Nothing (or not the awaited event) came within the time allowed."""


class QMP:
    """One connection to a qemu's QMP socket; connects on first use."""

    def __init__(self, path: Path | str, timeout: float = TIMEOUT) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._id = 0

    def __enter__(self) -> QMP:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise QMPError(f"cannot reach the QMP socket {self.path}: {exc}") from exc
        self._sock, self._buf = sock, b""
        try:
            self.greeting = self._read(time.monotonic() + self.timeout)
            if "QMP" not in self.greeting:
                raise QMPError(f"not a QMP greeting: {self.greeting}")
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout(f"no answer from {self.path} within {self.timeout} s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QMPTimeout(f"no answer from {self.path} within {self.timeout} s") from exc
            except OSError as exc:
                raise QMPError(f"QMP connection lost: {exc}") from exc
            if not chunk:
                raise QMPError("qemu closed the QMP connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd: str, **args: Any) -> Any:
        """Run one command; its `return` value, or QMPError with qemu's error text."""
        self.connect()
        assert self._sock is not None
        self._id += 1
        msg: dict[str, Any] = {"execute": cmd, "id": self._id}
        if args:
            msg["arguments"] = args
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise QMPError(f"QMP connection lost: {exc}") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if "event" in reply:
                self.events.append(reply)
            elif reply.get("id") == self._id:
                if "error" in reply:
                    err = reply["error"]
                    raise QMPError(f"{cmd}: {err.get('class')}: {err.get('desc')}")
                return reply.get("return")

    def wait_event(self, name: str, timeout: float | None = None,
                   **data: Any) -> dict[str, Any]:
        """The first event called `name` whose data holds `data` (kept or still to come);
        QMPTimeout when none comes within `timeout` seconds. Other events stay kept."""
        def matches(ev: dict[str, Any]) -> bool:
            return ev.get("event") == name and all(
                ev.get("data", {}).get(k) == v for k, v in data.items())
        self.connect()
        wait = timeout if timeout is not None else self.timeout
        deadline = time.monotonic() + wait
        while True:
            for i, ev in enumerate(self.events):
                if matches(ev):
                    return self.events.pop(i)
            try:
                reply = self._read(deadline)
            except QMPTimeout as exc:
                raise QMPTimeout(f"no {name} event {data or ''} from {self.path} "
                                 f"within {wait} s") from exc
            if "event" in reply:
                self.events.append(reply)

    # -- helpers

    def query_status(self) -> dict[str, Any]:
        """{"status": "running" | "paused" | ..., "running": bool, ...}"""
        return self.execute("query-status")

    def quit(self) -> None:
        """Stop qemu now (libvirt's destroy); qemu may hang up before it answers."""
        try:
            self.execute("quit")
        except QMPError as exc:
            if "closed" not in str(exc) and "lost" not in str(exc):
                raise
        finally:
            self.close()

    def system_reset(self) -> None:
        self.execute("system_reset")

    def hmp(self, command: str) -> str:
        """A human monitor command (some, like hostfwd_add, exist only there)."""
        return self.execute("human-monitor-command", **{"command-line": command}) or ""

    def hostfwd_add(self, netdev: str, host_port: int, guest_port: int,
                    host_addr: str = "127.0.0.1") -> None:
        out = self.hmp(f"hostfwd_add {netdev} tcp:{host_addr}:{host_port}-:{guest_port}")
        if out.strip():  # HMP says nothing on success
            raise QMPError(f"hostfwd_add {host_addr}:{host_port}: {out.strip()}")

    def hostfwd_remove(self, netdev: str, host_port: int, host_addr: str = "127.0.0.1") -> None:
        """Remove a forward; one that is not there is no error."""
        out = self.hmp(f"hostfwd_remove {netdev} tcp:{host_addr}:{host_port}")
        if out.strip() and "removed" not in out and "not found" not in out:
            raise QMPError(f"hostfwd_remove {host_addr}:{host_port}: {out.strip()}")
