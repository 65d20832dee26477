"""Nova's block_device_mapping table: which volume an instance has, on which device.

A row is made by the compute host when nova-api asks it to reserve a device name
(nova's reserve_block_device_name), before cinder is asked for anything; the attach
then fills in the cinder attachment id and, once the host is connected, cinder's
connection info. Detach (and the delete of the server) marks the row deleted, as
nova soft-deletes its rows. The instance's root disk (/dev/vda, from the image) has
no row here: this lab boots from images only.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, Select, String, select
from sqlalchemy.orm import Mapped, mapped_column

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.db import Database
from labkit.cloud.errors import NotFound
from labkit.cloud.ids import IdSource

ROOT_DEVICE = "/dev/vda"  # the image's disk, as the libvirt driver names it on virtio
_DEVICE = re.compile(r"^(/dev/(?:x?[a-z]?d?))([a-z]+)[0-9]*$")


class VolumeBDMNotFound(NotFound):
    """nova's VolumeBDMNotFound."""

    def __init__(self, volume_id: str) -> None:
        super().__init__(f"No volume Block Device Mapping with id {volume_id}.")


class BlockDeviceMapping(ComputeBase):
    __tablename__ = "block_device_mapping"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    volume_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    attachment_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    device_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source_type: Mapped[str] = mapped_column(String(32), default="volume")
    destination_type: Mapped[str] = mapped_column(String(32), default="volume")
    boot_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # cinder's connection info as the attach got it (driver_volume_type, data, serial)
    connection_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    delete_on_termination: Mapped[bool] = mapped_column(Boolean, default=False)
    tag: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


def device_letter(index: int) -> str:
    """nova's generate_device_letter: 0 is a, 25 z, 26 aa."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def match_device(device: str) -> tuple[str, str] | None:
    """nova's block_device.match_device: ("/dev/vd", "b") for "/dev/vdb"; None if odd."""
    found = _DEVICE.match(device)
    return (found.group(1), found.group(2)) if found else None


def next_device_name(used: list[str], root: str = ROOT_DEVICE) -> str:
    """The lowest free name after the root disk's prefix (nova's get_next_device_name)."""
    prefix, root_letter = match_device(root) or ("/dev/vd", "a")
    taken = {root_letter}
    for name in used:
        found = match_device(name)
        if found:
            taken.add(found[1])
    index = 0
    while device_letter(index) in taken:
        index += 1
    return prefix + device_letter(index)


def _live() -> Select[tuple[BlockDeviceMapping]]:
    return select(BlockDeviceMapping).where(BlockDeviceMapping.deleted.is_(False))


class BlockDevices:
    """Reads and writes of block device mappings; every write in its own transaction."""

    def __init__(self, db: Database, ids: IdSource) -> None:
        self.db = db
        self.ids = ids

    def for_instance(self, instance_uuid: str) -> list[BlockDeviceMapping]:
        """The instance's mappings, oldest first."""
        with self.db.session() as s:
            return list(s.scalars(_live().where(
                BlockDeviceMapping.instance_uuid == instance_uuid)
                .order_by(BlockDeviceMapping.id)))

    def for_instances(self, uuids: list[str]) -> dict[str, list[BlockDeviceMapping]]:
        """Many instances' mappings at once (a server listing)."""
        found: dict[str, list[BlockDeviceMapping]] = {u: [] for u in uuids}
        if not uuids:
            return found
        with self.db.session() as s:
            for bdm in s.scalars(_live().where(
                    BlockDeviceMapping.instance_uuid.in_(uuids))
                    .order_by(BlockDeviceMapping.id)):
                found[bdm.instance_uuid].append(bdm)
        return found

    def for_volume(self, volume_id: str) -> list[BlockDeviceMapping]:
        """Every live mapping of the volume, whatever the instance (nova's get_by_volume)."""
        with self.db.session() as s:
            return list(s.scalars(_live().where(
                BlockDeviceMapping.volume_id == volume_id).order_by(BlockDeviceMapping.id)))

    def get(self, volume_id: str, instance_uuid: str) -> BlockDeviceMapping:
        """nova's get_by_volume_and_instance; VolumeBDMNotFound when there is none."""
        with self.db.session() as s:
            bdm = s.scalar(_live().where(
                BlockDeviceMapping.volume_id == volume_id,
                BlockDeviceMapping.instance_uuid == instance_uuid))
        if bdm is None:
            raise VolumeBDMNotFound(volume_id)
        return bdm

    def reserve(self, instance_uuid: str, volume_id: str, *, tag: str | None = None,
                delete_on_termination: bool = False) -> BlockDeviceMapping | None:
        """A new mapping on the next free device name, in one transaction with the read of
        the names in use; None when the volume already has a mapping on this instance."""
        now = time.time()
        with self.db.session() as s:
            rows = list(s.scalars(_live().where(
                BlockDeviceMapping.instance_uuid == instance_uuid)))
            if any(r.volume_id == volume_id for r in rows):
                return None
            bdm = BlockDeviceMapping(
                uuid=self.ids.uuid("bdm"), instance_uuid=instance_uuid, volume_id=volume_id,
                device_name=next_device_name([r.device_name for r in rows if r.device_name]),
                source_type="volume", destination_type="volume", boot_index=None,
                delete_on_termination=delete_on_termination, tag=tag, created_at=now,
                updated_at=now)
            s.add(bdm)
            return bdm

    def update(self, bdm_uuid: str, **values: Any) -> BlockDeviceMapping:
        with self.db.session() as s:
            bdm = s.scalar(select(BlockDeviceMapping).where(BlockDeviceMapping.uuid == bdm_uuid))
            if bdm is None:
                raise NotFound(f"No Block Device Mapping with id {bdm_uuid}.")
            for key, value in values.items():
                setattr(bdm, key, value)
            bdm.updated_at = time.time()
            return bdm

    def destroy(self, bdm_uuid: str) -> None:
        """Soft-delete, as nova's BlockDeviceMapping.destroy leaves the row marked deleted."""
        with self.db.session() as s:
            bdm = s.scalar(select(BlockDeviceMapping).where(BlockDeviceMapping.uuid == bdm_uuid))
            if bdm is not None and not bdm.deleted:
                bdm.deleted = True
                bdm.deleted_at = time.time()
