"""Nova's quotas for instances, cores and ram: limits per project, usage counted live.

Like nova since Pike, usage is counted from the instances themselves rather than
kept in a ledger, so it cannot drift. A request over a limit is refused with a 403
and nova's message before anything is created.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.compute.instances import Instance
from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Forbidden

# nova's [quota] defaults
DEFAULTS = {"instances": 10, "cores": 20, "ram": 51200, "metadata_items": 128,
            "key_pairs": 100, "server_groups": 10, "server_group_members": 10,
            "injected_files": 5, "injected_file_content_bytes": 10240,
            "injected_file_path_bytes": 255}
COUNTED = ("instances", "cores", "ram")


class QuotaLimit(ComputeBase):
    __tablename__ = "quotas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    resource: Mapped[str] = mapped_column(String(255))
    hard_limit: Mapped[int] = mapped_column(Integer)


class QuotaExceeded(Forbidden):
    pass


class Quotas:
    def __init__(self, db: Database) -> None:
        self.db = db

    def limits(self, project_id: str) -> dict[str, int]:
        """The project's limits: its own where set, nova's defaults elsewhere (-1: none)."""
        found = dict(DEFAULTS)
        with self.db.session() as s:
            for row in s.scalars(select(QuotaLimit).where(QuotaLimit.project_id == project_id)):
                found[row.resource] = row.hard_limit
        return found

    def set_limits(self, project_id: str, values: dict[str, Any],
                   force: bool = False) -> dict[str, int]:
        """Set some limits; below what the project already uses only with `force`, as
        nova checks every value before it writes any."""
        used = self.usage(project_id) if not force else {}
        for resource, value in values.items():
            if resource not in DEFAULTS:
                raise BadRequest(f"Invalid input for field/attribute quota_set. Additional "
                                 f"properties are not allowed ('{resource}' was unexpected)")
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise BadRequest(f"Invalid input for field/attribute {resource}. Value: "
                                 f"{value}. {value!r} is not valid: a quota is an integer of "
                                 "-1 (no limit) or more")
            minimum = used.get(resource, 0)
            if value != -1 and value < minimum:
                raise BadRequest(f"Quota limit {value} for {resource} must be greater than "
                                 f"or equal to already used and reserved {minimum}.")
        with self.db.session() as s:
            for resource, value in values.items():
                row = s.scalar(select(QuotaLimit).where(QuotaLimit.project_id == project_id,
                                                        QuotaLimit.resource == resource))
                if row is None:
                    s.add(QuotaLimit(project_id=project_id, resource=resource,
                                     hard_limit=value))
                else:
                    row.hard_limit = value
        return self.limits(project_id)

    def own_limit(self, project_id: str, resource: str) -> int | None:
        """The project's own limit of `resource`; None when nova's default applies."""
        with self.db.session() as s:
            return s.scalar(select(QuotaLimit.hard_limit).where(
                QuotaLimit.project_id == project_id, QuotaLimit.resource == resource))

    def reset(self, project_id: str, resource: str | None = None) -> None:
        """Back to nova's defaults: every limit of the project, or only `resource`'s."""
        query = select(QuotaLimit).where(QuotaLimit.project_id == project_id)
        if resource is not None:
            query = query.where(QuotaLimit.resource == resource)
        with self.db.session() as s:
            for row in s.scalars(query):
                s.delete(row)

    def usage(self, project_id: str) -> dict[str, int]:
        with self.db.session() as s:
            flavors = s.scalars(select(Instance.flavor).where(
                Instance.project_id == project_id, Instance.deleted.is_(False))).all()
        return {"instances": len(flavors), "cores": sum(f["vcpus"] for f in flavors),
                "ram": sum(f["memory_mb"] for f in flavors)}

    def how_many_fit(self, project_id: str, flavor: dict[str, Any], min_count: int,
                     max_count: int) -> int:
        """The most instances (up to max_count) the quotas allow; QuotaExceeded with
        nova's message if not even min_count fit."""
        limits = self.limits(project_id)
        used = self.usage(project_id)
        each = {"instances": 1, "cores": flavor["vcpus"], "ram": flavor["memory_mb"]}
        allowed = max_count
        for resource in COUNTED:
            if limits[resource] < 0 or each[resource] == 0:
                continue
            room = max(limits[resource] - used[resource], 0) // each[resource]
            allowed = min(allowed, room)
        if allowed >= min_count:
            return allowed
        over = next(r for r in COUNTED if limits[r] >= 0 and each[r]
                    and used[r] + each[r] * min_count > limits[r])
        raise QuotaExceeded(
            f"Quota exceeded for {over}: Requested {each[over] * min_count}, but already "
            f"used {used[over]} of {limits[over]} {over}")

    def check_upsize(self, project_id: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """A resize from flavor `old` to `new` (nova's _check_quota_for_upsize): only what
        grows (cores, ram) is checked; QuotaExceeded with nova's message when over."""
        limits = self.limits(project_id)
        used = self.usage(project_id)
        deltas = {"cores": new["vcpus"] - old.get("vcpus", 0),
                  "ram": new["memory_mb"] - old.get("memory_mb", 0)}
        over = [r for r, d in deltas.items()
                if d > 0 and limits[r] >= 0 and used[r] + d > limits[r]]
        if over:
            raise QuotaExceeded(
                f"Quota exceeded for {', '.join(over)}: Requested "
                f"{', '.join(str(deltas[r]) for r in over)}, but already used "
                f"{', '.join(str(used[r]) for r in over)} of "
                f"{', '.join(str(limits[r]) for r in over)} {', '.join(over)}")
