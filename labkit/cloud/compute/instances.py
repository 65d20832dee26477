"""Instances as nova stores them: the row, its faults, its actions and their events.

The states follow nova's vocabulary: `vm_state` (what the instance is), `task_state`
(what is being done to it), `power_state` (what the hypervisor reports). The API's
`status` is derived from the first two, as nova's state map does.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.db import Database
from labkit.cloud.errors import NotFound

# power_state values (nova.compute.power_state)
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED = 0, 1, 3, 4, 6, 7

# vm_state → status, and the task states that override it for that vm_state
# (nova.api.openstack.common's state map)
_REBOOT = {"rebooting": "REBOOT", "reboot_pending": "REBOOT", "reboot_started": "REBOOT",
           "rebooting_hard": "HARD_REBOOT", "reboot_pending_hard": "HARD_REBOOT",
           "reboot_started_hard": "HARD_REBOOT"}
_REBUILD = {"rebuilding": "REBUILD", "rebuild_block_device_mapping": "REBUILD",
            "rebuild_spawning": "REBUILD"}
_RESIZE = {"resize_prep": "RESIZE", "resize_migrating": "RESIZE",
           "resize_migrated": "RESIZE", "resize_finish": "RESIZE"}
STATE_MAP: dict[str, tuple[str, dict[str, str]]] = {
    "building": ("BUILD", {}),
    "active": ("ACTIVE", {**_REBOOT, **_REBUILD, **_RESIZE, "migrating": "MIGRATING",
                          "set_admin_password": "PASSWORD"}),
    "stopped": ("SHUTOFF", {**_RESIZE, **_REBUILD}),
    "resized": ("VERIFY_RESIZE", {"resize_reverting": "REVERT_RESIZE"}),
    "paused": ("PAUSED", {"migrating": "MIGRATING"}),
    "suspended": ("SUSPENDED", {}),
    "rescued": ("RESCUE", {}),
    "error": ("ERROR", _REBUILD),
    "deleted": ("DELETED", {}),
    "soft-delete": ("SOFT_DELETED", {}),
    "shelved": ("SHELVED", {}),
    "shelved_offloaded": ("SHELVED_OFFLOADED", {}),
}
STATUSES = {status for status, _ in STATE_MAP.values()} | {
    status for _, by_task in STATE_MAP.values() for status in by_task.values()}


def status_of(vm_state: str, task_state: str | None) -> str:
    default, by_task = STATE_MAP.get(vm_state, ("UNKNOWN", {}))
    return by_task.get(task_state or "", default)


class Instance(ComputeBase):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    image_ref: Mapped[str] = mapped_column(String(36))
    flavor: Mapped[dict[str, Any]] = mapped_column(JSON)  # a copy, as nova keeps one
    key_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    vm_state: Mapped[str] = mapped_column(String(32))
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    power_state: Mapped[int] = mapped_column(Integer, default=NOSTATE)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    availability_zone: Mapped[str | None] = mapped_column(String(255), nullable=True)
    requested_availability_zone: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reservation_id: Mapped[str] = mapped_column(String(255))
    launch_index: Mapped[int] = mapped_column(Integer, default=0)
    hostname: Mapped[str] = mapped_column(String(255))
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_drive: Mapped[str] = mapped_column(String(16), default="")
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    security_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    requested_networks: Mapped[Any] = mapped_column(JSON, nullable=True)
    block_device_mapping: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    scheduler_hints: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    group_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    access_ip_v4: Mapped[str] = mapped_column(String(64), default="")
    access_ip_v6: Mapped[str] = mapped_column(String(64), default="")
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    locked_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    launched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    terminated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)

    @property
    def status(self) -> str:
        return status_of(self.vm_state, self.task_state)

    @property
    def name(self) -> str:
        """The hypervisor's name for it, from nova's instance_name_template."""
        return f"instance-{self.id:08x}"


class InstanceInfoCache(ComputeBase):
    """Nova's instance_info_caches: the instance's ports as nova last learnt them from
    neutron (network info as JSON). The API's `addresses` are read from here, never
    from neutron."""

    __tablename__ = "instance_info_caches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.uuid"), unique=True,
                                               index=True)
    network_info: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    updated_at: Mapped[float] = mapped_column(Float)


class InstanceFault(ComputeBase):
    __tablename__ = "instance_faults"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.uuid"), index=True)
    code: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(String(255))
    details: Mapped[str] = mapped_column(Text, default="")
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class InstanceAction(ComputeBase):
    __tablename__ = "instance_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    start_time: Mapped[float] = mapped_column(Float)
    finish_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class InstanceActionEvent(ComputeBase):
    __tablename__ = "instance_actions_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action_id: Mapped[int] = mapped_column(ForeignKey("instance_actions.id"), index=True)
    event: Mapped[str] = mapped_column(String(255))
    start_time: Mapped[float] = mapped_column(Float)
    finish_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[str | None] = mapped_column(String(255), nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    details: Mapped[str | None] = mapped_column(Text, nullable=True)


class SchedulingDecision(ComputeBase):
    """What the scheduler saw and chose for one instance at one attempt (labkit's own)."""

    __tablename__ = "scheduling_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    request_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)
    decision: Mapped[dict[str, Any]] = mapped_column(JSON)


class Instances:
    """Reads and writes of instances and their history; every write in its own transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, session: Session, uuid: str, project_id: str | None = None,
            include_deleted: bool = False) -> Instance:
        """The instance, or NotFound as nova says it; `project_id` limits it to one project."""
        query = select(Instance).where(Instance.uuid == uuid)
        if not include_deleted:
            query = query.where(Instance.deleted.is_(False))
        if project_id is not None:
            query = query.where(Instance.project_id == project_id)
        instance = session.scalar(query)
        if instance is None:
            raise NotFound(f"Instance {uuid} could not be found.")
        return instance

    def update(self, uuid: str, **values: Any) -> tuple[Instance, dict[str, Any]]:
        """Write `values`; the instance as it now is, and what those fields held before."""
        with self.db.session() as s:
            instance = self.get(s, uuid, include_deleted=True)
            before = {key: getattr(instance, key) for key in values}
            for key, value in values.items():
                setattr(instance, key, value)
            instance.updated_at = time.time()
            return instance, before

    def start_action(self, session: Session, instance_uuid: str, action: str,
                     request_id: str, user_id: str, project_id: str) -> None:
        now = time.time()
        session.add(InstanceAction(instance_uuid=instance_uuid, action=action,
                                   request_id=request_id, user_id=user_id,
                                   project_id=project_id, start_time=now, updated_at=now))

    def _action(self, session: Session, instance_uuid: str,
                request_id: str | None) -> InstanceAction | None:
        query = select(InstanceAction).where(InstanceAction.instance_uuid == instance_uuid)
        if request_id is not None:
            query = query.where(InstanceAction.request_id == request_id)
        return session.scalar(query.order_by(InstanceAction.id.desc()))

    def start_event(self, instance_uuid: str, request_id: str | None, event: str,
                    host: str | None) -> None:
        with self.db.session() as s:
            action = self._action(s, instance_uuid, request_id)
            if action is None:
                return
            now = time.time()
            action.updated_at = now
            s.add(InstanceActionEvent(action_id=action.id, event=event, start_time=now,
                                      host=host))

    def finish_event(self, instance_uuid: str, request_id: str | None, event: str,
                     error: str | None = None, traceback: str | None = None) -> None:
        """Close the event ("Success" or "Error"); an error also marks the action failed."""
        with self.db.session() as s:
            action = self._action(s, instance_uuid, request_id)
            if action is None:
                return
            row = s.scalar(select(InstanceActionEvent)
                           .where(InstanceActionEvent.action_id == action.id,
                                  InstanceActionEvent.event == event,
                                  InstanceActionEvent.finish_time.is_(None))
                           .order_by(InstanceActionEvent.id.desc()))
            if row is None:
                return
            now = time.time()
            row.finish_time = now
            row.result = "Error" if error else "Success"
            row.traceback = traceback
            row.details = error
            action.updated_at = now
            if error:
                action.message = "Error"

    def network_info(self, session: Session, instance_uuid: str) -> list[dict[str, Any]]:
        """The instance's cached network info ([] before its ports are made)."""
        row = session.scalar(select(InstanceInfoCache)
                             .where(InstanceInfoCache.instance_uuid == instance_uuid))
        return list(row.network_info) if row is not None else []

    def network_infos(self, session: Session,
                      instance_uuids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The cached network info of many instances at once (a server listing)."""
        if not instance_uuids:
            return {}
        rows = session.scalars(select(InstanceInfoCache)
                               .where(InstanceInfoCache.instance_uuid.in_(instance_uuids)))
        return {r.instance_uuid: list(r.network_info) for r in rows}

    def set_network_info(self, instance_uuid: str, network_info: list[dict[str, Any]]) -> None:
        """Replace the instance's cached network info (nova's
        update_instance_cache_with_nw_info)."""
        with self.db.session() as s:
            row = s.scalar(select(InstanceInfoCache)
                           .where(InstanceInfoCache.instance_uuid == instance_uuid))
            if row is None:
                s.add(InstanceInfoCache(instance_uuid=instance_uuid,
                                        network_info=list(network_info),
                                        updated_at=time.time()))
            else:
                row.network_info = list(network_info)
                row.updated_at = time.time()

    def add_fault(self, instance_uuid: str, code: int, message: str, details: str = "",
                  host: str | None = None) -> None:
        with self.db.session() as s:
            s.add(InstanceFault(instance_uuid=instance_uuid, code=code, message=message[:255],
                                details=details, host=host, created_at=time.time()))

    def latest_fault(self, session: Session, instance_uuid: str) -> InstanceFault | None:
        return session.scalar(select(InstanceFault)
                              .where(InstanceFault.instance_uuid == instance_uuid)
                              .order_by(InstanceFault.id.desc()))

    def record_decision(self, instance_uuid: str, request_id: str | None,
                        decision: dict[str, Any]) -> None:
        with self.db.session() as s:
            attempts = s.scalars(select(SchedulingDecision.id).where(
                SchedulingDecision.instance_uuid == instance_uuid)).all()
            s.add(SchedulingDecision(instance_uuid=instance_uuid, request_id=request_id,
                                     attempt=len(attempts) + 1, time=time.time(),
                                     decision=decision))

    def decisions(self, instance_uuid: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(SchedulingDecision)
                             .where(SchedulingDecision.instance_uuid == instance_uuid)
                             .order_by(SchedulingDecision.attempt)).all()
            return [{"attempt": r.attempt, "request_id": r.request_id, "time": r.time,
                     "decision": r.decision} for r in rows]
