"""cinder-volume's backend: the LVM driver's volume group as files, and tgtd's iSCSI targets.

Each logical volume of the volume group "cinder-volumes" is a sparse raw file
`<home>/hosts/controller/cinder-volumes/volume-<id>` (lvcreate -V for a thin LV is a
truncate here; lvextend a bigger truncate; a snapshot a sparse copy). The iSCSI target
helper (`tgtadm`, what the LVM driver uses by default) is `Targets`: it exports a volume
at attachment update with CHAP credentials and an initiator ACL, and compute hosts log in
to it in process (`login`) instead of over TCP: that is the one place the embedded cloud
attaches the file itself rather than an iSCSI session.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labkit.cloud.db import Database
from labkit.cloud.ids import IdSource
from labkit.cloud.volume.models import Export, iso

GIB = 1024 ** 3
VOLUME_GROUP = "cinder-volumes"
# cinder's [DEFAULT] target_prefix, target_port and the tgt helper's LUN (0 is the controller)
TARGET_PREFIX = "iqn.2010-10.org.openstack:"
TARGET_PORT = 3260
TGT_LUN = 1
# cinder.volume.volume_utils.generate_password's alphabet (no look-alike characters)
QCOW2_MAGIC = b"QFI\xfb"
CHAP_SYMBOLS = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class BackendError(Exception):
    """The backend could not do what cinder-volume asked (the volume goes to error)."""


class TargetLoginFailed(Exception):
    """An initiator could not log in to a target (iscsiadm's login failure)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LVMBackend:
    """The volume group: one sparse file per logical volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, volume_id: str) -> Path:
        return self.root / f"volume-{volume_id}"

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.root / f"_snapshot-{snapshot_id}"

    def create(self, volume_id: str, size_gb: int) -> Path:
        """lvcreate: a file of size_gb GiB that takes no space until written."""
        path = self.path(volume_id)
        path.touch()
        os.truncate(path, size_gb * GIB)
        return path

    def extend(self, volume_id: str, size_gb: int) -> None:
        path = self.path(volume_id)
        if not path.exists():
            raise BackendError(f"logical volume {VOLUME_GROUP}/volume-{volume_id} not found")
        os.truncate(path, size_gb * GIB)

    def delete(self, volume_id: str) -> None:
        self.path(volume_id).unlink(missing_ok=True)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.snapshot_path(snapshot_id).unlink(missing_ok=True)

    async def copy(self, source: Path, dest: Path, size_gb: int) -> None:
        """A sparse copy (what an LVM snapshot or a clone is here), then sized to size_gb."""
        if not source.exists():
            raise BackendError(f"{source.name} not found in volume group {VOLUME_GROUP}")
        await run("cp", "--sparse=always", str(source), str(dest))
        os.truncate(dest, max(dest.stat().st_size, size_gb * GIB))

    async def write_image(self, data: bytes, disk_format: str | None, dest: Path,
                          size_gb: int) -> None:
        """copy_image_to_volume: as cinder's image_utils.fetch_to_raw, the format is what
        `qemu-img info` finds in the bytes (glance's ami/aki images are raw): raw bytes go
        on the volume as they are, qcow2 through `qemu-img convert -O raw`."""
        found = "qcow2" if data[:4] == QCOW2_MAGIC else "raw"
        if found == "raw":
            dest.write_bytes(data)
        else:
            if shutil.which("qemu-img") is None:
                raise BackendError(f"Image is {found} (glance says {disk_format}): converting "
                                   "it to raw needs qemu-img, which is not installed on "
                                   "this machine")
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".image-") as tmp:
                tmp.write(data)
                tmp.flush()
                await run("qemu-img", "convert", "-f", found, "-O", "raw", tmp.name, str(dest))
        if dest.stat().st_size > size_gb * GIB:
            raise BackendError(f"Image virtual size is larger than the volume "
                               f"({size_gb} GiB)")
        os.truncate(dest, size_gb * GIB)


async def run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BackendError(f"{' '.join(argv[:2])} failed: {(err or out).decode().strip()}")


def _chap_word(ids: IdSource, stream: str, length: int) -> str:
    raw = ids.random_bytes(stream, length)
    return "".join(CHAP_SYMBOLS[b % len(CHAP_SYMBOLS)] for b in raw)


class Targets:
    """tgtd on the volume node: the iSCSI targets cinder-volume exported, kept in cinder.sqlite.

    `login(data, initiator)` is what `iscsiadm --login` is to a compute host: it checks
    the portal, IQN, LUN, the target's ACL and CHAP, and gives the volume's backing file.
    """

    def __init__(self, db: Database, backend: LVMBackend, ids: IdSource, ip: str) -> None:
        self.db = db
        self.backend = backend
        self.ids = ids
        self.portal = f"{ip}:{TARGET_PORT}"

    @staticmethod
    def iqn(volume_id: str) -> str:
        return f"{TARGET_PREFIX}volume-{volume_id}"

    def create_export(self, volume_id: str, initiator: str | None) -> Export:
        """tgtadm --op new (once per volume) and bind the connector's initiator to it."""
        with self.db.session() as s:
            export = s.get(Export, volume_id)
            if export is None:
                used = set(s.scalars(select(Export.tid)))
                tid = next(n for n in range(1, len(used) + 2) if n not in used)
                export = Export(
                    volume_id=volume_id, tid=tid, iqn=self.iqn(volume_id), lun=TGT_LUN,
                    portal=self.portal, path=str(self.backend.path(volume_id)),
                    auth_username=_chap_word(self.ids, "chap-user", 20),
                    auth_password=_chap_word(self.ids, "chap-password", 16), initiators=[])
                s.add(export)
            if initiator and initiator not in export.initiators:
                export.initiators = [*export.initiators, initiator]
            s.flush()
            s.expunge(export)
            return export

    def remove_export(self, volume_id: str) -> bool:
        """tgt-admin --delete: the target goes. True if there was one."""
        with self.db.session() as s:
            export = s.get(Export, volume_id)
            if export is None:
                return False
            s.delete(export)
            return True

    def export(self, volume_id: str) -> Export | None:
        with self.db.session() as s:
            export = s.get(Export, volume_id)
            if export is not None:
                s.expunge(export)
            return export

    @staticmethod
    def provider_location(export: Export) -> str:
        """What the tgt helper stores on the volume: "<portal>,<tid> <iqn> <lun>"."""
        return f"{export.portal},{export.tid} {export.iqn} {export.lun}"

    @staticmethod
    def provider_auth(export: Export) -> str:
        return f"CHAP {export.auth_username} {export.auth_password}"

    def login(self, data: dict[str, Any], initiator: str) -> Path:
        """Log `initiator` in to the target `data` (connection_info's data) names.

        Returns the exported volume's backing file; TargetLoginFailed with iscsiadm's
        reason when the portal, target, LUN, ACL or CHAP do not match.
        """
        if "data" in data and isinstance(data["data"], dict):
            data = data["data"]
        portal = data.get("target_portal")
        iqn = data.get("target_iqn")
        if portal != self.portal:
            raise TargetLoginFailed(f"iscsiadm: cannot make connection to {portal}: "
                                    "no iSCSI portal listens there (the volume node's "
                                    f"portal is {self.portal})")
        with self.db.session() as s:
            export = s.scalars(select(Export).where(Export.iqn == iqn)).first()
            if export is None:
                raise TargetLoginFailed(f"iscsiadm: No records found: target {iqn} is not "
                                        f"exported at {portal}")
            if data.get("target_lun") != export.lun:
                raise TargetLoginFailed(f"LUN {data.get('target_lun')} not found on target "
                                        f"{iqn} (it exports LUN {export.lun})")
            if initiator not in export.initiators:
                raise TargetLoginFailed(f"iscsiadm: Could not login to [iface: default, "
                                        f"target: {iqn}, portal: {portal}]: authorization "
                                        f"failure: initiator {initiator} is not in the "
                                        "target's ACL")
            if (data.get("auth_method") != "CHAP"
                    or data.get("auth_username") != export.auth_username
                    or data.get("auth_password") != export.auth_password):
                raise TargetLoginFailed(f"iscsiadm: Could not login to [iface: default, "
                                        f"target: {iqn}, portal: {portal}]: iSCSI login "
                                        "failed due to authentication failure (CHAP)")
            path = Path(export.path)
        if not path.exists():
            raise TargetLoginFailed(f"target {iqn}: its backing store {path} is gone")
        return path

    def describe(self) -> list[dict[str, Any]]:
        """Every target, as data: what `tgtadm --mode target --op show` prints."""
        with self.db.session() as s:
            rows = list(s.scalars(select(Export).order_by(Export.tid)))
            return [{"tid": e.tid, "iqn": e.iqn, "lun": e.lun, "portal": e.portal,
                     "volume_id": e.volume_id, "backing_store": e.path,
                     "lv_path": f"/dev/{VOLUME_GROUP}/volume-{e.volume_id}",
                     "size_bytes": Path(e.path).stat().st_size if Path(e.path).exists() else 0,
                     "account": e.auth_username, "acl": list(e.initiators),
                     "created_at": iso(e.created_at)} for e in rows]

    def show(self) -> str:
        """`tgtadm --lld iscsi --mode target --op show`, as tgtd would print these targets."""
        lines: list[str] = []
        for t in self.describe():
            mb = round(t["size_bytes"] / 1_000_000)
            lines += [f"Target {t['tid']}: {t['iqn']}",
                      "    System information:", "        Driver: iscsi",
                      "        State: ready", "    I_T nexus information:",
                      "    LUN information:",
                      "        LUN: 0", "            Type: controller",
                      f"            SCSI ID: IET     {t['tid']:04x}0000",
                      f"            SCSI SN: beaf{t['tid']}0",
                      "            Size: 0 MB, Block size: 1", "            Online: Yes",
                      "            Backing store type: null",
                      "            Backing store path: None",
                      f"        LUN: {t['lun']}", "            Type: disk",
                      f"            SCSI ID: IET     {t['tid']:04x}{t['lun']:04x}",
                      f"            SCSI SN: beaf{t['tid']}{t['lun']}",
                      f"            Size: {mb} MB, Block size: 512",
                      "            Online: Yes", "            Readonly: No",
                      "            Thin-provisioning: No",
                      "            Backing store type: rdwr",
                      f"            Backing store path: {t['lv_path']}",
                      f"            (in the embedded cloud: {t['backing_store']})",
                      "    Account information:", f"        {t['account']}",
                      "    ACL information:",
                      *[f"        {i}" for i in t["acl"]]]
        return "\n".join(lines) + ("\n" if lines else "")
