"""Server groups: a project's named sets of servers the scheduler keeps together or apart.

One policy per group (affinity, anti-affinity, soft-affinity, soft-anti-affinity);
anti-affinity may carry the rule max_server_per_host. Servers join a group at
boot (the `group` scheduler hint) and leave it when deleted.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Forbidden, NotFound
from labkit.cloud.ids import IdSource

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
DEFAULT_QUOTA = 10  # nova's [quota] server_groups


class ServerGroupRow(ComputeBase):
    """nova_api.instance_groups (with its policy and rules folded in, as one policy per group)."""

    __tablename__ = "instance_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    policy: Mapped[str] = mapped_column(String(255))
    rules: Mapped[str] = mapped_column(Text, default="{}")  # JSON, as nova stores it
    created_at: Mapped[float] = mapped_column(Float)

    members: Mapped[list[ServerGroupMemberRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="ServerGroupMemberRow.id")


class ServerGroupMemberRow(ComputeBase):
    """nova_api.instance_group_member: a server in a group (a server is in one group at most)."""

    __tablename__ = "instance_group_member"
    __table_args__ = (UniqueConstraint("group_id", "instance_uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("instance_groups.id", ondelete="CASCADE"))
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)


def _as_dict(row: ServerGroupRow) -> dict[str, Any]:
    return {"id": row.uuid, "name": row.name, "project_id": row.project_id,
            "user_id": row.user_id, "policy": row.policy, "rules": json.loads(row.rules),
            "members": [m.instance_uuid for m in row.members], "created_at": row.created_at}


class ServerGroups:
    """Every project's server groups, in the nova database."""

    def __init__(self, db: Database, ids: IdSource) -> None:
        self.db = db
        self.ids = ids

    def _row(self, s: Session, group_id: str) -> ServerGroupRow:
        row = s.scalar(select(ServerGroupRow).where(ServerGroupRow.uuid == group_id))
        if row is None:
            raise NotFound(f"Instance group {group_id} could not be found.")
        return row

    @staticmethod
    def _check_owner(row: ServerGroupRow, project_id: str | None, is_admin: bool,
                     action: str) -> None:
        # nova finds any group by uuid, then its policy refuses other projects' groups
        if not is_admin and row.project_id != project_id:
            raise Forbidden(f"Policy doesn't allow os_compute_api:os-server-groups:{action} "
                            "to be performed.")

    def get(self, group_id: str, project_id: str | None = None,
            is_admin: bool = True) -> dict[str, Any]:
        """A group with its policy, rules and members.

        NotFound when there is none; Forbidden (nova's policy refusal) when it
        belongs to another project and the caller is not an admin.
        """
        with self.db.session() as s:
            row = self._row(s, group_id)
            self._check_owner(row, project_id, is_admin, "show")
            return _as_dict(row)

    def list(self, project_id: str | None, all_projects: bool = False) -> list[dict[str, Any]]:
        """A project's groups (every project's with all_projects), oldest first."""
        with self.db.session() as s:
            query = select(ServerGroupRow).order_by(ServerGroupRow.id)
            if not all_projects:
                query = query.where(ServerGroupRow.project_id == project_id)
            return [_as_dict(r) for r in s.scalars(query)]

    def count(self, project_id: str) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(ServerGroupRow)
                            .where(ServerGroupRow.project_id == project_id)) or 0

    def create(self, name: str, policy: str, project_id: str, user_id: str,
               rules: dict[str, Any] | None = None,
               quota: int | None = DEFAULT_QUOTA) -> dict[str, Any]:
        """A new group. Rules are for anti-affinity only, as in nova."""
        if policy not in POLICIES:
            raise BadRequest(f"Invalid server group policy: {policy}")
        rules = dict(rules or {})
        if rules and policy != "anti-affinity":
            raise BadRequest("Only anti-affinity policy supports rules.")
        if quota is not None and quota >= 0 and self.count(project_id) >= quota:
            raise Forbidden("Quota exceeded, too many server groups.")
        with self.db.session() as s:
            row = ServerGroupRow(uuid=self.ids.uuid("server-group"), name=name,
                                 project_id=project_id, user_id=user_id, policy=policy,
                                 rules=json.dumps(rules), created_at=time.time())
            s.add(row)
            s.flush()
            return _as_dict(row)

    def delete(self, group_id: str, project_id: str | None = None,
               is_admin: bool = True) -> None:
        with self.db.session() as s:
            row = self._row(s, group_id)
            self._check_owner(row, project_id, is_admin, "delete")
            s.delete(row)

    def add_member(self, group_id: str, instance_uuid: str) -> dict[str, Any]:
        """Put a server in a group (at boot); adding it twice changes nothing."""
        with self.db.session() as s:
            row = self._row(s, group_id)
            if instance_uuid not in (m.instance_uuid for m in row.members):
                row.members.append(ServerGroupMemberRow(instance_uuid=instance_uuid))
                s.flush()
            return _as_dict(row)

    def remove_member(self, instance_uuid: str) -> None:
        """Take a deleted server out of whatever group holds it."""
        with self.db.session() as s:
            for member in s.scalars(select(ServerGroupMemberRow).where(
                    ServerGroupMemberRow.instance_uuid == instance_uuid)):
                s.delete(member)

    def group_of(self, instance_uuid: str) -> dict[str, Any] | None:
        """The group a server belongs to, or None (what 2.71 shows as server_groups)."""
        with self.db.session() as s:
            member = s.scalar(select(ServerGroupMemberRow).where(
                ServerGroupMemberRow.instance_uuid == instance_uuid))
            if member is None:
                return None
            row = s.get(ServerGroupRow, member.group_id)
            return _as_dict(row) if row is not None else None
