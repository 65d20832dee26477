"""labkit: the life of a VM in OpenStack, explorable.

`labkit.connect()` gives an openstacksdk Connection to a real cloud or to the
embedded one; `labkit.inspect` shows what the public API cannot; `labkit.ssh` runs a
command in a server's guest through its floating IP.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.connect import connect, connect_admin

if TYPE_CHECKING:
    from openstack.compute.v2.server import Server
    from openstack.connection import Connection

    from labkit.ssh_client import SshResult

__all__ = ["connect", "connect_admin", "ensure_keypair", "ssh", "wait_for_console"]
__version__ = "0.1.0"


def ssh(server: Server | str, command: str, *, conn: Connection | None = None,
        **options: Any) -> SshResult:
    """Run `command` in the server's guest over ssh, with the key the server was booted
    with, through its floating IP (labkit.ssh_client.run; `conn` defaults to
    labkit.connect())."""
    from labkit.ssh_client import run

    return run(conn or connect(), server, command, **options)


def ensure_keypair(conn: Connection, name: str = "labkit-key") -> Path:
    """A local ssh key imported into the cloud as key pair `name`; its private key's path."""
    from labkit.ssh_client import ensure_keypair as ensure

    return ensure(conn, name)


def wait_for_console(conn: Connection, server: Server | str, text: str | None = None,
                     timeout: float = 180, after: str = "") -> str:
    """The server's console log once it shows `text` (the tiny guest's ready line); after a
    reboot or start, pass the log as it was before (`after=`) to wait for the new boot."""
    from labkit.ssh_client import READY_LINE
    from labkit.ssh_client import wait_for_console as wait

    return wait(conn, server, text or READY_LINE, timeout=timeout, after=after)
