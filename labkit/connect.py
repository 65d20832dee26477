"""`labkit.connect()`: an openstacksdk Connection to a real cloud or to the embedded one."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.cloud import process

if TYPE_CHECKING:  # openstacksdk is imported on first use: the cloud process never needs it
    from openstack.connection import Connection

EMBEDDED_CLOUDS = ("labkit", "labkit-admin")


class NoAdminAccess(RuntimeError):
    """This cloud's configuration names no admin credentials."""


def connect(cloud: str | None = None) -> Connection:
    """Connect to `cloud`, else to `$OS_CLOUD`, else to the embedded cloud (started if needed).

    The names `labkit` and `labkit-admin` always mean the embedded cloud.
    """
    import openstack
    from openstack.config import OpenStackConfig
    from openstack.connection import Connection

    name = cloud or os.environ.get("OS_CLOUD")
    if name and name not in EMBEDDED_CLOUDS:
        return openstack.connect(cloud=name)
    info = process.up()
    config = OpenStackConfig(config_files=[str(info.clouds_yaml)], vendor_files=[])
    return Connection(config=config.get_one(cloud=name or "labkit"))


def connect_admin(cloud: str | None = None) -> Connection:
    """An admin connection: `labkit-admin` on the embedded cloud, else `$LABKIT_ADMIN_CLOUD`."""
    name = cloud or os.environ.get("OS_CLOUD")
    if not name or name in EMBEDDED_CLOUDS:
        return connect("labkit-admin")
    admin = os.environ.get("LABKIT_ADMIN_CLOUD")
    if not admin:
        raise NoAdminAccess(f"no admin credentials for cloud {name!r}: set LABKIT_ADMIN_CLOUD "
                            f"to the clouds.yaml entry of an admin")
    return connect(admin)


def embedded_cloud_at(auth_url: str) -> process.CloudInfo | None:
    """The embedded cloud running here, if `auth_url` is its keystone."""
    info = process.running()
    return info if info is not None and auth_url.startswith(info.url) else None


def is_embedded(conn: Connection) -> bool:
    """Does this connection talk to the embedded cloud running here?"""
    return embedded_cloud_at((conn.config.get_auth_args() or {}).get("auth_url", "")) is not None


def use_cli(conn: Connection) -> str | None:
    """Point `!openstack ...` in this kernel at the same cloud as `conn`; the cloud's name.

    The CLI is installed beside the kernel's Python, and `!` commands run in an
    80-column pseudo-terminal, so tables are allowed to be as wide as they need.
    """
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ["PATH"].split(os.pathsep):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    os.environ["CLIFF_MAX_TERM_WIDTH"] = "400"
    info = embedded_cloud_at((conn.config.get_auth_args() or {}).get("auth_url", ""))
    if info is not None:
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(info.clouds_yaml)
        os.environ["OS_CLOUD"] = "labkit"
    return os.environ.get("OS_CLOUD")
