"""Nova's migrations table: one row per move of an instance (a resize is a cold migration
to a new flavor), and the placement step every move starts with.

The row carries the move from beginning to end: which host it leaves and which it goes
to, the flavors before and after (only here: the instance's own flavor changes when the
destination finishes), and its status, as nova names them:
pre-migrating → migrating → post-migrating → finished (the server is VERIFY_RESIZE)
→ confirming → confirmed, or reverting → reverted, or error.

While a move is under way its row's uuid is a placement consumer of its own: it holds
the instance's old allocation on the source host, so that the instance (the other
consumer) can hold the new flavor on the destination (nova's
replace_allocation_with_migration).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Float, Integer, String, or_, select
from sqlalchemy.orm import Mapped, mapped_column

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.compute.instances import Instance
from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, NotFound
from labkit.cloud.ids import IdSource
from labkit.cloud.placement.models import AllocationWrite

if TYPE_CHECKING:
    from labkit.cloud.bus import MessageContext
    from labkit.cloud.compute.service import ComputeService

# a migration in one of these has ended: the instance can be moved again
DONE = ("confirmed", "reverted", "error", "failed", "completed", "done", "cancelled")


class Migration(ComputeBase):
    __tablename__ = "migrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    migration_type: Mapped[str] = mapped_column(String(32), default="resize")
    source_compute: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source_node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dest_compute: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dest_node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dest_host: Mapped[str | None] = mapped_column(String(255), nullable=True)  # dest's ip
    status: Mapped[str] = mapped_column(String(32), index=True)
    old_flavor: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    new_flavor: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the vm_state the instance had when the move began (nova keeps it in the instance's
    # system_metadata): a stopped server comes back stopped
    old_vm_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class MigrationNotFound(NotFound):
    """nova's MigrationNotFound."""

    def __init__(self, migration_id: int | str) -> None:
        super().__init__(f"Migration {migration_id} could not be found.")


class MarkerNotFound(BadRequest):
    """nova's MarkerNotFound: a listing's marker names no migration (400)."""

    def __init__(self, marker: str) -> None:
        super().__init__(f"Marker {marker} could not be found.")


class Migrations:
    """Reads and writes of migration rows; every write in its own transaction. The rows
    returned are detached copies: read them freely, write through `update`."""

    def __init__(self, db: Database, ids: IdSource) -> None:
        self.db = db
        self.ids = ids

    def create(self, instance_uuid: str, *, migration_type: str = "resize",
               source_compute: str | None = None, source_node: str | None = None,
               dest_compute: str | None = None, dest_node: str | None = None,
               dest_host: str | None = None, status: str = "pre-migrating",
               old_flavor: dict[str, Any] | None = None,
               new_flavor: dict[str, Any] | None = None,
               project_id: str | None = None, user_id: str | None = None,
               old_vm_state: str | None = None) -> Migration:
        now = time.time()
        row = Migration(uuid=self.ids.uuid("migration"), instance_uuid=instance_uuid,
                        migration_type=migration_type, source_compute=source_compute,
                        source_node=source_node, dest_compute=dest_compute,
                        dest_node=dest_node, dest_host=dest_host, status=status,
                        old_flavor=dict(old_flavor or {}), new_flavor=dict(new_flavor or {}),
                        project_id=project_id, user_id=user_id, old_vm_state=old_vm_state,
                        created_at=now,
                        updated_at=now)
        with self.db.session() as s:
            s.add(row)
            s.flush()
        return row

    def get(self, migration_id: int | str) -> Migration:
        """By id (an int, or digits) or uuid; MigrationNotFound when there is none."""
        with self.db.session() as s:
            if isinstance(migration_id, int) or str(migration_id).isdigit():
                row = s.get(Migration, int(migration_id))
            else:
                row = s.scalar(select(Migration).where(Migration.uuid == migration_id))
            if row is None:
                raise MigrationNotFound(migration_id)
            return row

    def update(self, migration_id: int, **values: Any) -> Migration:
        with self.db.session() as s:
            row = s.get(Migration, migration_id)
            if row is None:
                raise MigrationNotFound(migration_id)
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = time.time()
            return row

    def for_instance(self, instance_uuid: str, status: str | None = None) -> list[Migration]:
        """The instance's migrations, oldest first."""
        query = select(Migration).where(Migration.instance_uuid == instance_uuid)
        if status is not None:
            query = query.where(Migration.status == status)
        with self.db.session() as s:
            return list(s.scalars(query.order_by(Migration.id)))

    def in_progress(self, instance_uuid: str) -> Migration | None:
        """The instance's migration that has not ended (at most one), or None."""
        with self.db.session() as s:
            return s.scalar(select(Migration)
                            .where(Migration.instance_uuid == instance_uuid,
                                   Migration.status.not_in(DONE))
                            .order_by(Migration.id.desc()))

    def unconfirmed(self, older_than: float) -> list[Migration]:
        """Resizes waiting for a confirm ("finished") last updated before the time
        `older_than` (a time.time() value): what nova's _poll_unconfirmed_resizes confirms."""
        with self.db.session() as s:
            return list(s.scalars(select(Migration)
                                  .where(Migration.status == "finished",
                                         Migration.updated_at <= older_than)
                                  .order_by(Migration.id)))

    def listing(self, filters: dict[str, Any] | None = None) -> list[Migration]:
        """For GET /os-migrations, newest first. Filters (each optional): host (source or
        dest compute), status, instance_uuid, migration_type, source_compute,
        changes_since / changes_before (times, on updated_at), marker (a uuid; the rows
        after it), limit. MarkerNotFound for an unknown marker."""
        filters = {k: v for k, v in (filters or {}).items() if v is not None}
        query = select(Migration)
        if "host" in filters:
            host = filters["host"]
            query = query.where(or_(Migration.source_compute == host,
                                    Migration.dest_compute == host))
        for name in ("status", "instance_uuid", "migration_type", "source_compute"):
            if name in filters:
                query = query.where(getattr(Migration, name) == filters[name])
        if "changes_since" in filters:
            query = query.where(Migration.updated_at >= float(filters["changes_since"]))
        if "changes_before" in filters:
            query = query.where(Migration.updated_at <= float(filters["changes_before"]))
        with self.db.session() as s:
            rows = list(s.scalars(query.order_by(Migration.created_at.desc(),
                                                 Migration.id.desc())))
        if "marker" in filters:
            marker = str(filters["marker"])
            at = next((i for i, r in enumerate(rows) if r.uuid == marker), None)
            if at is None:
                raise MarkerNotFound(marker)
            rows = rows[at + 1:]
        if "limit" in filters:
            rows = rows[:int(filters["limit"])]
        return rows


def move_allocation(nova: ComputeService, ctx: MessageContext, source: str,
                    from_consumer: str, to_consumer: str) -> None:
    """Hand the whole allocation of `from_consumer` to `to_consumer` in one write
    (nova's move_allocations): `from_consumer` ends with none; what `to_consumer` held
    before is replaced. Project and user come from the instance row (either consumer
    may be the instance; the other is a migration). `source` names the caller in the
    trace (e.g. nova-conductor, nova-compute@compute-1)."""
    allocations = nova.placement.allocations_for(from_consumer)
    project_id, user_id = _owner(nova, from_consumer, to_consumer)
    nova.placement.write_allocations([
        AllocationWrite(to_consumer, allocations, project_id, user_id),
        AllocationWrite(from_consumer, {}, project_id, user_id)])
    nova.placement_event(ctx, source, f"POST /allocations → 204 "
                         f"({from_consumer[:8]}… → {to_consumer[:8]}…)",
                         from_consumer=from_consumer, to_consumer=to_consumer,
                         allocations=allocations, outcome="moved")


def _owner(nova: ComputeService, *consumers: str) -> tuple[str, str]:
    """The project and user of the instance among the consumers (or of the migration's)."""
    with nova.database.session() as s:
        for uuid in consumers:
            instance = s.scalar(select(Instance).where(Instance.uuid == uuid))
            if instance is not None:
                return instance.project_id, instance.user_id
            migration = s.scalar(select(Migration).where(Migration.uuid == uuid))
            if migration is not None:
                instance = s.scalar(select(Instance).where(
                    Instance.uuid == migration.instance_uuid))
                if instance is not None:
                    return instance.project_id, instance.user_id
    raise NotFound(f"No instance for consumers {', '.join(consumers)}")
