"""Cinder's quotas: per-project limits for volumes, snapshots and gigabytes (and the
per-type `volumes_<type>` ones), usage counted from the live rows, checked at create and
extend with the messages cinder's quota_utils raises.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.cloud.db import Database
from labkit.cloud.volume.errors import (
    QuotaError,
    size_exceeds_quota,
    snapshot_limit_exceeded,
    volume_limit_exceeded,
)
from labkit.cloud.volume.models import Quota, Snapshot, Volume

# cinder's [DEFAULT] quota_* options
DEFAULTS = {"volumes": 10, "snapshots": 10, "gigabytes": 1000, "backups": 10,
            "backup_gigabytes": 1000, "groups": 10, "per_volume_gigabytes": -1}
PER_TYPE = ("volumes", "gigabytes", "snapshots")


class Quotas:
    def __init__(self, db: Database) -> None:
        self.db = db

    def resources(self, type_names: list[str]) -> list[str]:
        return [*DEFAULTS, *(f"{r}_{t}" for t in type_names for r in PER_TYPE)]

    def defaults(self, type_names: list[str]) -> dict[str, int]:
        return {r: DEFAULTS.get(r, -1) for r in self.resources(type_names)}

    def limits(self, project_id: str, type_names: list[str]) -> dict[str, int]:
        found = self.defaults(type_names)
        with self.db.session() as s:
            for row in s.scalars(select(Quota).where(Quota.project_id == project_id)):
                if row.resource in found:
                    found[row.resource] = row.hard_limit
        return found

    def usage(self, s: Session, project_id: str,
              type_names: dict[str, str]) -> dict[str, int]:
        """What the project's live volumes and snapshots hold (errors count until deleted)."""
        used: dict[str, int] = {"volumes": 0, "gigabytes": 0, "snapshots": 0}
        for v in s.scalars(select(Volume).where(Volume.project_id == project_id,
                                                Volume.deleted.is_(False))):
            name = type_names.get(v.volume_type_id or "", "")
            for key in ("volumes", f"volumes_{name}"):
                used[key] = used.get(key, 0) + 1
            for key in ("gigabytes", f"gigabytes_{name}"):
                used[key] = used.get(key, 0) + v.size
        for snap in s.scalars(select(Snapshot).where(Snapshot.project_id == project_id,
                                                     Snapshot.deleted.is_(False))):
            name = type_names.get(snap.volume_type_id or "", "")
            for key in ("snapshots", f"snapshots_{name}"):
                used[key] = used.get(key, 0) + 1
            for key in ("gigabytes", f"gigabytes_{name}"):
                used[key] = used.get(key, 0) + snap.volume_size
        return used

    def show(self, project_id: str, type_names: dict[str, str],
             usage: bool) -> dict[str, Any]:
        limits = self.limits(project_id, sorted(set(type_names.values())))
        if not usage:
            return dict(limits)
        with self.db.session() as s:
            used = self.usage(s, project_id, type_names)
        return {r: {"limit": limit, "in_use": used.get(r, 0), "reserved": 0}
                for r, limit in limits.items()}

    def update(self, project_id: str, values: dict[str, int]) -> None:
        with self.db.session() as s:
            for resource, limit in values.items():
                row = s.get(Quota, (project_id, resource))
                if row is None:
                    s.add(Quota(project_id=project_id, resource=resource, hard_limit=limit))
                else:
                    row.hard_limit = limit

    def delete(self, project_id: str) -> None:
        with self.db.session() as s:
            for row in s.scalars(select(Quota).where(Quota.project_id == project_id)):
                s.delete(row)

    def check(self, s: Session, project_id: str, type_names: dict[str, str],
              type_name: str, deltas: dict[str, int], resource: str) -> None:
        """Refuse what would go over a limit, as QUOTAS.reserve and process_reserve_over_quota.

        `deltas` uses the plain names (volumes, gigabytes, snapshots); each also counts
        against the volume type's own quota. `resource` is what is being made
        ("volumes" or "snapshots"), which picks the message.
        """
        limits = self.limits(project_id, sorted(set(type_names.values())))
        size = deltas.get("gigabytes", 0)
        per_volume = limits["per_volume_gigabytes"]
        if resource == "volumes" and "volumes" in deltas and 0 <= per_volume < size:
            raise QuotaError("VolumeSizeExceedsLimit", f"Requested volume size {size}G is "
                             f"larger than maximum allowed limit {per_volume}G.")
        used = self.usage(s, project_id, type_names)
        wanted = dict(deltas)
        wanted.update({f"{k}_{type_name}": v for k, v in deltas.items()})
        overs = sorted(k for k, v in wanted.items()
                       if limits.get(k, -1) >= 0 and used.get(k, 0) + v > limits[k])
        for over in overs:
            if "gigabytes" in over:
                raise size_exceeds_quota(over, size, limits[over], used.get(over, 0))
            if resource == "volumes" and over.startswith("volumes"):
                raise volume_limit_exceeded(limits[over], over)
            if resource == "snapshots" and over.startswith("snapshots"):
                raise snapshot_limit_exceeded(limits[over])
        if overs:
            raise QuotaError("UnexpectedOverQuota", f"Unexpected over quota on {overs[0]}.")
