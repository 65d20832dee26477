"""Flavors: nova's sizes for servers, their extra specs and which projects see private ones.

The model speaks nova's own field names (memory_mb, root_gb, ephemeral_gb,
flavorid) as nova's Flavor object does; the API handlers rename them for the
wire (ram, disk, OS-FLV-EXT-DATA:ephemeral, id). Flavors are plain dicts to the
rest of nova: a server keeps a copy of its flavor as it was at boot
(`Flavors.embedded` is the shape microversion 2.47 shows).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, NotFound
from labkit.cloud.ids import IdSource

# nova's VALID_SORT_KEYS for GET /flavors
SORT_KEYS = ("created_at", "description", "disabled", "ephemeral_gb", "flavorid", "id",
             "is_public", "memory_mb", "name", "root_gb", "rxtx_factor", "swap",
             "updated_at", "vcpu_weight", "vcpus")


class FlavorRow(ComputeBase):
    """nova_api.flavors: the flavorid is what the API calls the id; id is the row's number."""

    __tablename__ = "flavors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flavorid: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    memory_mb: Mapped[int] = mapped_column(Integer)
    vcpus: Mapped[int] = mapped_column(Integer)
    root_gb: Mapped[int] = mapped_column(Integer)
    ephemeral_gb: Mapped[int] = mapped_column(Integer, default=0)
    swap: Mapped[int] = mapped_column(Integer, default=0)
    rxtx_factor: Mapped[float] = mapped_column(Float, default=1.0)
    vcpu_weight: Mapped[int | None] = mapped_column(Integer, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    extra_specs: Mapped[list[FlavorExtraSpecRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin")
    projects: Mapped[list[FlavorProjectRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin")


class FlavorExtraSpecRow(ComputeBase):
    """nova_api.flavor_extra_specs: key/value hints for the scheduler and the driver."""

    __tablename__ = "flavor_extra_specs"
    __table_args__ = (UniqueConstraint("flavor_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flavor_id: Mapped[int] = mapped_column(ForeignKey("flavors.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(255))


class FlavorProjectRow(ComputeBase):
    """nova_api.flavor_projects: a project that may use a private flavor."""

    __tablename__ = "flavor_projects"
    __table_args__ = (UniqueConstraint("flavor_id", "project_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flavor_id: Mapped[int] = mapped_column(ForeignKey("flavors.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(255))


def _as_dict(row: FlavorRow) -> dict[str, Any]:
    return {
        "id": row.id, "flavorid": row.flavorid, "name": row.name,
        "memory_mb": row.memory_mb, "vcpus": row.vcpus, "root_gb": row.root_gb,
        "ephemeral_gb": row.ephemeral_gb, "swap": row.swap, "rxtx_factor": row.rxtx_factor,
        "vcpu_weight": row.vcpu_weight, "disabled": row.disabled, "is_public": row.is_public,
        "description": row.description, "created_at": row.created_at,
        "updated_at": row.updated_at,
        "extra_specs": {spec.key: spec.value for spec in row.extra_specs},
    }


def _regex(text: str) -> re.Pattern[str]:
    """A name filter as a regex, or literally when it is not a valid one."""
    try:
        return re.compile(text)
    except re.error:
        return re.compile(re.escape(text))


def _visible(row: FlavorRow, project_id: str | None, is_admin: bool) -> bool:
    """Nova's rule: admins see every flavor; others public ones and those shared with them."""
    return (is_admin or row.is_public
            or any(p.project_id == project_id for p in row.projects))


class Flavors:
    """Every flavor of the cloud, in the nova database."""

    def __init__(self, db: Database, ids: IdSource) -> None:
        self.db = db
        self.ids = ids

    # -- reading -----------------------------------------------------------------------

    def _row(self, s: Session, flavorid: str) -> FlavorRow:
        row = s.scalar(select(FlavorRow).where(FlavorRow.flavorid == str(flavorid)))
        if row is None:
            raise NotFound(f"Flavor {flavorid} could not be found.")
        return row

    def get(self, flavor_id: str) -> dict[str, Any]:
        """Any flavor by its flavorid, public or not (what nova's internals see)."""
        with self.db.session() as s:
            return _as_dict(self._row(s, flavor_id))

    def find_for_project(self, flavor_id: str, project_id: str | None,
                         is_admin: bool) -> dict[str, Any]:
        """A flavor as this caller may see it: NotFound for a private flavor not shared."""
        with self.db.session() as s:
            row = self._row(s, flavor_id)
            if not _visible(row, project_id, is_admin):
                raise NotFound(f"Flavor {flavor_id} could not be found.")
            return _as_dict(row)

    def list(self, *, project_id: str | None, is_admin: bool, is_public: bool | None = True,
             min_ram: int | None = None, min_disk: int | None = None,
             disabled: bool | None = None, name: str | None = None,
             sort_key: str = "flavorid", sort_dir: str = "asc", limit: int | None = None,
             marker: str | None = None) -> list[dict[str, Any]]:
        """Flavors as nova's FlavorList.get_all filters, sorts and pages them.

        is_public True: public ones plus private ones shared with project_id; False:
        private ones only; None: all (nova's handlers allow that only to admins).
        """
        if sort_key not in SORT_KEYS:
            raise BadRequest(f"Invalid input for query parameters sort_key. Value: {sort_key}. "
                             f"'{sort_key}' is not one of {list(SORT_KEYS)}")
        if sort_dir not in ("asc", "desc"):
            raise BadRequest(f"Invalid input for query parameters sort_dir. Value: {sort_dir}. "
                             f"'{sort_dir}' is not one of ['asc', 'desc']")
        with self.db.session() as s:
            rows = [r for r in s.scalars(select(FlavorRow))
                    if _visible(r, project_id, is_admin)]
            if min_ram is not None:
                rows = [r for r in rows if r.memory_mb >= min_ram]
            if min_disk is not None:
                rows = [r for r in rows if r.root_gb >= min_disk]
            if disabled is not None:
                rows = [r for r in rows if r.disabled == disabled]
            if name is not None:
                # nova matches the name as a regular expression
                pattern = _regex(name)
                rows = [r for r in rows if pattern.search(r.name)]
            if is_public is True:
                rows = [r for r in rows if r.is_public
                        or any(p.project_id == project_id for p in r.projects)]
            elif is_public is False:
                rows = [r for r in rows if not r.is_public]
            flavors = [_as_dict(r) for r in rows]

        # nova sorts by the key, then the row id; None sorts first as SQL's NULLs do in asc
        def order(f: dict[str, Any]) -> tuple[Any, ...]:
            value = f[sort_key]
            return (value is not None, value if value is not None else 0, f["id"])
        flavors.sort(key=order, reverse=sort_dir == "desc")
        if marker is not None:
            at = [i for i, f in enumerate(flavors) if f["flavorid"] == marker]
            if not at:
                raise BadRequest(f"marker [{marker}] not found")
            flavors = flavors[at[0] + 1:]
        if limit is not None:
            flavors = flavors[:limit]
        return flavors

    # -- writing -----------------------------------------------------------------------

    def create(self, name: str, memory_mb: int, vcpus: int, root_gb: int, *,
               flavorid: str | None = None, ephemeral_gb: int = 0, swap: int = 0,
               rxtx_factor: float = 1.0, is_public: bool = True,
               description: str | None = None,
               extra_specs: dict[str, str] | None = None) -> dict[str, Any]:
        """A new flavor; Conflict when its name or id is taken. A missing id is a new UUID."""
        name = name.strip()
        if not name:
            raise BadRequest("Flavor names can not be empty.")
        flavorid = str(flavorid) if flavorid not in (None, "") else self.ids.uuid("flavor")
        for label, value, least in (("ram", memory_mb, 1), ("vcpus", vcpus, 1),
                                    ("disk", root_gb, 0), ("ephemeral", ephemeral_gb, 0),
                                    ("swap", swap, 0)):
            if int(value) < least:
                raise BadRequest(f"{label} must be >= {least}")
        if float(rxtx_factor) <= 0:
            raise BadRequest("'rxtx_factor' argument must be a float between 0 and 3.40282e+38")
        with self.db.session() as s:
            if s.scalar(select(FlavorRow.id).where(FlavorRow.name == name)) is not None:
                raise Conflict(f"Flavor with name {name} already exists.")
            if s.scalar(select(FlavorRow.id).where(FlavorRow.flavorid == flavorid)) is not None:
                raise Conflict(f"Flavor with ID {flavorid} already exists.")
            row = FlavorRow(flavorid=flavorid, name=name, memory_mb=int(memory_mb),
                            vcpus=int(vcpus), root_gb=int(root_gb),
                            ephemeral_gb=int(ephemeral_gb), swap=int(swap),
                            rxtx_factor=float(rxtx_factor), is_public=bool(is_public),
                            disabled=False, description=description, created_at=time.time())
            row.extra_specs = [FlavorExtraSpecRow(key=k, value=str(v))
                               for k, v in (extra_specs or {}).items()]
            s.add(row)
            s.flush()
            return _as_dict(row)

    def delete(self, flavor_id: str) -> None:
        """Remove a flavor; servers keep their own copy of it, as in nova."""
        with self.db.session() as s:
            s.delete(self._row(s, flavor_id))

    def set_description(self, flavor_id: str, description: str | None) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._row(s, flavor_id)
            row.description = description
            row.updated_at = time.time()
            s.flush()
            return _as_dict(row)

    # -- extra specs -------------------------------------------------------------------

    def extra_specs(self, flavor_id: str) -> dict[str, str]:
        return self.get(flavor_id)["extra_specs"]

    def extra_spec(self, flavor_id: str, key: str) -> str:
        specs = self.extra_specs(flavor_id)
        if key not in specs:
            raise NotFound(f"Flavor {flavor_id} has no extra specs with key {key}.")
        return specs[key]

    def update_extra_specs(self, flavor_id: str, specs: dict[str, str]) -> dict[str, str]:
        """Add or overwrite these keys; the others stay. Returns the keys given."""
        with self.db.session() as s:
            row = self._row(s, flavor_id)
            existing = {spec.key: spec for spec in row.extra_specs}
            for key, value in specs.items():
                if key in existing:
                    existing[key].value = str(value)
                else:
                    row.extra_specs.append(FlavorExtraSpecRow(key=key, value=str(value)))
            row.updated_at = time.time()
        return {k: str(v) for k, v in specs.items()}

    def delete_extra_spec(self, flavor_id: str, key: str) -> None:
        with self.db.session() as s:
            row = self._row(s, flavor_id)
            found = [spec for spec in row.extra_specs if spec.key == key]
            if not found:
                raise NotFound(f"Flavor {flavor_id} has no extra specs with key {key}.")
            row.extra_specs.remove(found[0])

    # -- access to private flavors ----------------------------------------------------

    def access(self, flavor_id: str) -> list[str]:
        """Projects that may use this private flavor (refused for a public one, as nova does)."""
        with self.db.session() as s:
            row = self._row(s, flavor_id)
            if row.is_public:
                raise NotFound("Access list not available for public flavors.")
            return sorted(p.project_id for p in row.projects)

    def add_access(self, flavor_id: str, project_id: str,
                   refuse_public: bool = True) -> list[str]:
        """Share a private flavor with a project (public ones refused from microversion 2.7)."""
        with self.db.session() as s:
            row = self._row(s, flavor_id)
            if row.is_public and refuse_public:
                raise Conflict("Can not add access to a public flavor.")
            if any(p.project_id == project_id for p in row.projects):
                raise Conflict(f"Flavor access already exists for flavor {flavor_id} "
                               f"and project {project_id} combination.")
            row.projects.append(FlavorProjectRow(project_id=project_id))
            s.flush()
            return sorted(p.project_id for p in row.projects)

    def remove_access(self, flavor_id: str, project_id: str) -> list[str]:
        with self.db.session() as s:
            row = self._row(s, flavor_id)
            found = [p for p in row.projects if p.project_id == project_id]
            if not found:
                raise NotFound(f"Flavor access not found for {flavor_id} / "
                               f"{project_id} combination.")
            row.projects.remove(found[0])
            s.flush()
            return sorted(p.project_id for p in row.projects)

    # -- the lab's flavors and a server's copy -----------------------------------------

    def bootstrap(self, lab_dir: Path) -> None:
        """Create the lab's flavors (data/flavors.yaml) that are not there yet, ids as given."""
        path = Path(lab_dir) / "flavors.yaml"
        if not path.exists():
            return
        entries = (yaml.safe_load(path.read_text()) or {}).get("flavors", [])
        for entry in entries:
            with self.db.session() as s:
                taken = s.scalar(select(FlavorRow.id).where(
                    (FlavorRow.flavorid == str(entry["id"])) | (FlavorRow.name == entry["name"])))
            if taken is not None:
                continue
            self.create(entry["name"], entry["ram"], entry["vcpus"], entry["disk"],
                        flavorid=str(entry["id"]), ephemeral_gb=entry.get("ephemeral", 0),
                        swap=entry.get("swap", 0), rxtx_factor=entry.get("rxtx_factor", 1.0),
                        is_public=entry.get("is_public", True),
                        description=entry.get("description"),
                        extra_specs=entry.get("extra_specs"))

    @staticmethod
    def embedded(flavor: dict[str, Any], with_extra_specs: bool = True) -> dict[str, Any]:
        """A server's flavor as GET /servers/{id} shows it from 2.47 on.

        `with_extra_specs`: nova shows them only to callers its policy lets read
        extra specs (everyone, by default in the 2.79 era).
        """
        shown: dict[str, Any] = {
            "vcpus": flavor["vcpus"], "ram": flavor["memory_mb"], "disk": flavor["root_gb"],
            "ephemeral": flavor["ephemeral_gb"], "swap": flavor["swap"],
            "original_name": flavor["name"]}
        if with_extra_specs:
            shown["extra_specs"] = dict(flavor.get("extra_specs") or {})
        return shown
