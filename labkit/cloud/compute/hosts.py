"""Nova's services and compute nodes: who runs where, and what each compute host has.

The lab's hosts come from data/hosts.yaml. At start, each nova service registers
its row (as a real service does when it starts) and each compute host its
compute node; usage is summed from the instances placed on the host, as the
resource tracker does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from labkit.cloud.compute.base import ComputeBase
from labkit.cloud.compute.instances import Instance
from labkit.cloud.db import Database
from labkit.cloud.errors import NotFound
from labkit.cloud.ids import IdSource
from labkit.cloud.labfiles import lab_hosts

QEMU_VERSION = 8002002  # qemu 8.2.2, as libvirt reports versions
DEFAULT_ZONE = "nova"  # nova's default_availability_zone
INTERNAL_ZONE = "internal"  # where nova lists services that are not nova-compute


class Service(ComputeBase):
    __tablename__ = "services"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    binary: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(255))
    zone: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    forced_down: Mapped[bool] = mapped_column(Boolean, default=False)
    report_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ComputeNode(ComputeBase):
    __tablename__ = "compute_nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    host: Mapped[str] = mapped_column(String(255), unique=True)
    hypervisor_hostname: Mapped[str] = mapped_column(String(255))
    host_ip: Mapped[str] = mapped_column(String(64))
    availability_zone: Mapped[str] = mapped_column(String(255))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    local_gb: Mapped[int] = mapped_column(Integer)
    cpu_allocation_ratio: Mapped[float] = mapped_column(Float)
    ram_allocation_ratio: Mapped[float] = mapped_column(Float)
    disk_allocation_ratio: Mapped[float] = mapped_column(Float)
    reserved_host_memory_mb: Mapped[int] = mapped_column(Integer)
    reserved_host_disk_mb: Mapped[int] = mapped_column(Integer)
    hypervisor_type: Mapped[str] = mapped_column(String(64))
    hypervisor_version: Mapped[int] = mapped_column(Integer)
    cpu_info: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Hosts:
    def __init__(self, db: Database, ids: IdSource, lab: Path) -> None:
        self.db = db
        self.ids = ids
        self.lab = lab
        self.hosts = lab_hosts(lab)

    def compute_hosts(self) -> list[dict[str, Any]]:
        return [h for h in self.hosts if h.get("role") == "compute"]

    def controller(self) -> str:
        return next((h["name"] for h in self.hosts if h.get("role") == "controller"),
                    "controller")

    def register(self) -> None:
        """Rows for every nova service and compute node of the lab (idempotent)."""
        now = time.time()
        with self.db.session() as s:
            for binary in ("nova-conductor", "nova-scheduler"):
                self._service(s, self.controller(), binary, binary.removeprefix("nova-"),
                              INTERNAL_ZONE, now)
            for host in self.compute_hosts():
                zone = host.get("availability_zone", DEFAULT_ZONE)
                self._service(s, host["name"], "nova-compute", "compute", zone, now)
                self._node(s, host, zone, now)

    def _service(self, s: Session, host: str, binary: str, topic: str, zone: str,
                 now: float) -> None:
        row = s.scalar(select(Service).where(Service.host == host, Service.binary == binary))
        if row is None:
            s.add(Service(uuid=self.ids.uuid("service"), host=host, binary=binary,
                          topic=topic, zone=zone, created_at=now, updated_at=now))
        else:
            row.zone = zone
            row.updated_at = now
            row.report_count += 1

    def _node(self, s: Session, host: dict[str, Any], zone: str, now: float) -> None:
        row = s.scalar(select(ComputeNode).where(ComputeNode.host == host["name"]))
        values = dict(
            hypervisor_hostname=host["name"], host_ip=host.get("management_ip", ""),
            availability_zone=zone, vcpus=host["vcpus"], memory_mb=host["memory_mb"],
            local_gb=host["disk_gb"],
            cpu_allocation_ratio=float(host.get("cpu_allocation_ratio", 4.0)),
            ram_allocation_ratio=float(host.get("ram_allocation_ratio", 1.0)),
            disk_allocation_ratio=float(host.get("disk_allocation_ratio", 1.0)),
            reserved_host_memory_mb=int(host.get("reserved_host_memory_mb", 512)),
            reserved_host_disk_mb=int(host.get("reserved_host_disk_mb", 0)),
            hypervisor_type=host.get("hypervisor_type", "QEMU"),
            hypervisor_version=QEMU_VERSION,
            cpu_info={"arch": host.get("cpu_arch", "x86_64"), "model": "qemu64",
                      "vendor": "AMD", "features": [],
                      "topology": {"cells": 1, "sockets": host["vcpus"], "cores": 1,
                                   "threads": 1}},
            updated_at=now)
        if row is None:
            s.add(ComputeNode(uuid=self.ids.uuid("compute-node"), host=host["name"],
                              created_at=now, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)

    # -- reads

    def services(self) -> list[Service]:
        with self.db.session() as s:
            return list(s.scalars(select(Service).order_by(Service.id)))

    def service(self, service_id: str) -> Service:
        with self.db.session() as s:
            row = s.scalar(select(Service).where(Service.uuid == service_id))
            if row is None:
                raise NotFound(f"Service {service_id} could not be found.")
            return row

    def compute_service(self, host: str) -> Service | None:
        with self.db.session() as s:
            return s.scalar(select(Service).where(Service.host == host,
                                                  Service.binary == "nova-compute"))

    def set_service(self, service_id: str, **values: Any) -> Service:
        with self.db.session() as s:
            row = s.scalar(select(Service).where(Service.uuid == service_id))
            if row is None:
                raise NotFound(f"Service {service_id} could not be found.")
            for key, value in values.items():
                setattr(row, key, value)
            # updated_at stays the last heartbeat: it is what says the service is up
            # (nova keeps a separate last_seen_up for this; our table has only one)
            return row

    def report_state(self, host: str, binary: str) -> None:
        """A heartbeat (nova's Service.report_state): updated_at now, report_count + 1."""
        with self.db.session() as s:
            row = s.scalar(select(Service).where(Service.host == host,
                                                 Service.binary == binary))
            if row is not None:
                row.updated_at = time.time()
                row.report_count += 1

    def nodes(self) -> list[ComputeNode]:
        with self.db.session() as s:
            return list(s.scalars(select(ComputeNode).order_by(ComputeNode.id)))

    def node(self, node_id: str) -> ComputeNode:
        with self.db.session() as s:
            row = s.scalar(select(ComputeNode).where(ComputeNode.uuid == node_id))
            if row is None:
                raise NotFound(f"Hypervisor {node_id} could not be found.")
            return row

    def node_for(self, host: str) -> ComputeNode:
        with self.db.session() as s:
            row = s.scalar(select(ComputeNode).where(ComputeNode.host == host))
            if row is None:
                raise NotFound(f"Compute host {host} could not be found.")
            return row

    def instance_uuids(self, host: str) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(Instance.uuid).where(
                Instance.host == host, Instance.deleted.is_(False))))
