"""Volume types: DevStack's two (`__DEFAULT__`, which cinder's schema creates, and
`lvmdriver-1`, the default type, naming its backend in `volume_backend_name`), and the ones
admins create. Members see the public types and the private ones shared with them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, NotFound
from labkit.cloud.ids import IdSource
from labkit.cloud.volume.errors import type_not_found
from labkit.cloud.volume.models import Caller, Volume, VolumeType

DEFAULT_TYPE_NAME = "__DEFAULT__"


class VolumeTypes:
    def __init__(self, db: Database, ids: IdSource, backend_name: str) -> None:
        self.db = db
        self.ids = ids
        self.backend_name = backend_name
        # cinder's [DEFAULT] default_volume_type, which DevStack sets to its backend's type
        self.default_name = backend_name

    def bootstrap(self) -> None:
        with self.db.session() as s:
            if s.scalars(select(VolumeType)).first() is not None:
                return
            s.add(VolumeType(id=self.ids.uuid("volume-type"), name=DEFAULT_TYPE_NAME,
                             description="Default Volume Type", extra_specs={}))
            s.add(VolumeType(id=self.ids.uuid("volume-type"), name=self.backend_name,
                             description=None,
                             extra_specs={"volume_backend_name": self.backend_name}))

    @staticmethod
    def visible(caller: Caller, row: VolumeType) -> bool:
        return caller.is_admin or row.is_public or caller.project_id in row.projects

    def find(self, s: Session, caller: Caller, ref: str) -> VolumeType:
        """A type by id, or by name as volume create accepts it."""
        row = s.get(VolumeType, ref)
        if row is None or row.deleted:
            row = s.scalars(select(VolumeType).where(VolumeType.name == ref,
                                                     VolumeType.deleted.is_(False))).first()
        if row is None or not self.visible(caller, row):
            raise type_not_found(ref)
        return row

    def default(self, s: Session) -> VolumeType:
        row = s.scalars(select(VolumeType).where(VolumeType.name == self.default_name,
                                                 VolumeType.deleted.is_(False))).first()
        if row is None:
            row = s.scalars(select(VolumeType).where(
                VolumeType.name == DEFAULT_TYPE_NAME, VolumeType.deleted.is_(False))).one()
        return row

    def names(self) -> dict[str, str]:
        with self.db.session() as s:
            return {t.id: t.name for t in s.scalars(select(VolumeType))}

    def list(self, caller: Caller, is_public: bool | None = None) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(VolumeType).where(VolumeType.deleted.is_(False))
                             .order_by(VolumeType.created_at, VolumeType.name))
            return [self.view(r) for r in rows if self.visible(caller, r)
                    and (is_public is None or r.is_public == is_public)]

    def get(self, caller: Caller, ref: str) -> dict[str, Any]:
        with self.db.session() as s:
            if ref == "default":
                return self.view(self.default(s))
            row = s.get(VolumeType, ref)
            if row is None or row.deleted or not self.visible(caller, row):
                raise type_not_found(ref)
            return self.view(row)

    @staticmethod
    def view(row: VolumeType) -> dict[str, Any]:
        return {"id": row.id, "name": row.name, "description": row.description,
                "is_public": row.is_public, "extra_specs": dict(row.extra_specs),
                "os-volume-type-access:is_public": row.is_public, "qos_specs_id": None}

    def create(self, name: str, description: str | None, is_public: bool,
               extra_specs: dict[str, str]) -> dict[str, Any]:
        with self.db.session() as s:
            taken = s.scalars(select(VolumeType).where(VolumeType.name == name,
                                                       VolumeType.deleted.is_(False))).first()
            if taken is not None:
                raise Conflict(f"Volume Type {name} already exists.")
            row = VolumeType(id=self.ids.uuid("volume-type"), name=name,
                             description=description, is_public=is_public,
                             extra_specs=dict(extra_specs))
            s.add(row)
            s.flush()
            return self.view(row)

    def update(self, type_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(VolumeType, type_id)
            if row is None or row.deleted:
                raise type_not_found(type_id)
            for key in ("name", "description", "is_public"):
                if key in fields:
                    setattr(row, key, fields[key])
            return self.view(row)

    def delete(self, type_id: str) -> None:
        with self.db.session() as s:
            row = s.get(VolumeType, type_id)
            if row is None or row.deleted:
                raise type_not_found(type_id)
            if row.name == DEFAULT_TYPE_NAME or row.name == self.default_name:
                raise BadRequest("Target volume type is still in use. Volume type "
                                 f"{type_id} is the default volume type and cannot be "
                                 "deleted.")
            in_use = s.scalars(select(Volume.id).where(Volume.volume_type_id == type_id,
                                                       Volume.deleted.is_(False))).first()
            if in_use is not None:
                raise BadRequest("Target volume type is still in use. Volume Type "
                                 f"{type_id} deletion is not allowed with volumes present "
                                 "with the type.")
            row.deleted = True

    def set_extra_specs(self, type_id: str, specs: dict[str, str]) -> dict[str, str]:
        with self.db.session() as s:
            row = s.get(VolumeType, type_id)
            if row is None or row.deleted:
                raise type_not_found(type_id)
            row.extra_specs = {**row.extra_specs, **specs}
            return dict(row.extra_specs)

    def extra_specs(self, caller: Caller, type_id: str) -> dict[str, str]:
        return dict(self.get(caller, type_id)["extra_specs"])

    def delete_extra_spec(self, type_id: str, key: str) -> None:
        with self.db.session() as s:
            row = s.get(VolumeType, type_id)
            if row is None or row.deleted:
                raise type_not_found(type_id)
            if key not in row.extra_specs:
                raise NotFound(f"Volume Type {type_id} has no extra specs with key {key}.")
            row.extra_specs = {k: v for k, v in row.extra_specs.items() if k != key}
