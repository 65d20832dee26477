"""os-brick's part of an attach, on the compute host: its connector, and the iSCSI login.

nova-compute asks os-brick for the host's connector properties (its iSCSI initiator
name, its IP, its host name) and gives them to cinder, which exports the volume to
that initiator and answers the connection info (portal, target IQN, LUN, CHAP). os-brick
then logs in to the target and waits for the kernel's disk to appear as
/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<lun>, the path libvirt is given.

Here the target is cinder's in-process one (`cloud.volume.targets.login`, what tgtd
or LIO is on the volume node): it checks the portal, IQN, LUN, initiator and CHAP as a
target would and answers the volume's backing file. The host's "disk" is a symlink to
it at <home>/hosts/<host>/dev/disk/by-path/..., so the path has the shape a real one has
and a qemu guest can open it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud

ISCSI = "iscsi"
# Debian's and Ubuntu's open-iscsi make the initiator name with this prefix
INITIATOR_PREFIX = "iqn.2004-10.com.ubuntu:01:"


class BrickError(Exception):
    """os-brick could not connect (or disconnect) the volume on this host."""


def initiator_name(host: str) -> str:
    """The host's /etc/iscsi/initiatorname.iscsi: stable, made from the host's name."""
    return INITIATOR_PREFIX + hashlib.sha256(host.encode()).hexdigest()[:12]


def connector_properties(host_record: dict[str, Any]) -> dict[str, Any]:
    """os-brick's get_connector_properties for one lab host (data/hosts.yaml's entry)."""
    name = str(host_record["name"])
    return {"platform": str(host_record.get("cpu_arch", "x86_64")), "os_type": "linux",
            "ip": host_record.get("management_ip"), "host": name,
            "initiator": initiator_name(name), "multipath": False,
            "enforce_multipath": False, "do_local_attach": False}


def host_dev(home: Path, host: str) -> Path:
    """The compute host's /dev, inside the cloud's state folder."""
    return home / "hosts" / host / "dev"


def by_path(home: Path, host: str, data: dict[str, Any]) -> Path:
    """Where udev names an iSCSI LUN: /dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<lun>."""
    try:
        portal, iqn, lun = data["target_portal"], data["target_iqn"], data["target_lun"]
    except KeyError as exc:
        raise BrickError(f"The connection info has no {exc.args[0]}: not an iSCSI "
                         f"target os-brick can log in to") from exc
    return host_dev(home, host) / "disk" / "by-path" / f"ip-{portal}-iscsi-{iqn}-lun-{lun}"


def _iscsi_data(connection_info: dict[str, Any]) -> dict[str, Any]:
    kind = connection_info.get("driver_volume_type")
    if kind != ISCSI:
        # os-brick's InitiatorConnector.factory refuses a protocol it has no connector for
        raise BrickError(f"Invalid InitiatorConnector protocol specified {kind}")
    return dict(connection_info.get("data") or {})


def connect_volume(cloud: Cloud, host: str, connection_info: dict[str, Any]) -> dict[str, Any]:
    """Log in to the target as `host`'s initiator; the host's device for the volume:
    {"type": "block", "path": <the by-path name>}."""
    data = _iscsi_data(connection_info)
    volume = getattr(cloud, "volume", None)
    if volume is None:
        raise BrickError("Could not login to any iSCSI portal: no block storage service "
                         "runs in this cloud")
    from labkit.cloud.volume import TargetLoginFailed

    try:
        backing = volume.targets.login(data, initiator_name(host))
    except TargetLoginFailed as exc:
        raise BrickError(f"Could not login to any iSCSI portal: {exc}") from exc
    path = by_path(cloud.settings.home, host, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a second login (after a restart of the cloud) finds the device already there
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(Path(backing).resolve(), path)
    return {"type": "block", "path": str(path)}


def disconnect_volume(cloud: Cloud, host: str, connection_info: dict[str, Any]) -> None:
    """Log out: the host's device for the volume goes. Nothing to do if it is gone."""
    data = _iscsi_data(connection_info)
    path = by_path(cloud.settings.home, host, data)
    if path.is_symlink() or path.exists():
        path.unlink()
