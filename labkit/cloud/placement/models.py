"""Placement's state and rules: resource providers, inventories, consumers and allocations.

No HTTP here. `Placement` is what the HTTP handlers call and what nova's scheduler and
compute hosts call in process. Every "does it fit" decision goes through
`labkit.cloud.placement.capacity`, the same function the scheduler playground asks.

Writes of allocations hold one lock and one database transaction for the check and the
write together, so claims racing from threads or asyncio tasks never oversubscribe.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, NotFound
from labkit.cloud.ids import IdSource
from labkit.cloud.placement import capacity
from labkit.cloud.placement.capacity import Inventory
from labkit.cloud.placement.exceptions import (
    CannotDeleteParent,
    ConcurrentUpdate,
    DuplicateName,
    InventoryInUse,
    ProviderInUse,
)

MAX_INT = 2147483647  # placement's db_const.MAX_INT: max_unit when none is given
# The project and user placement records for consumers written before 1.8 asked for them
INCOMPLETE_CONSUMER = "00000000-0000-0000-0000-000000000000"

# os-resource-classes' standard classes, in its order (placement lists them first)
STANDARD_RESOURCE_CLASSES = (
    "VCPU", "MEMORY_MB", "DISK_GB", "PCI_DEVICE", "SRIOV_NET_VF", "NUMA_SOCKET", "NUMA_CORE",
    "NUMA_THREAD", "NUMA_MEMORY_MB", "IPV4_ADDRESS", "VGPU", "VGPU_DISPLAY_HEAD",
    "NET_BW_EGR_KILOBIT_PER_SEC", "NET_BW_IGR_KILOBIT_PER_SEC", "PCPU",
    "MEM_ENCRYPTION_CONTEXT", "FPGA", "PGPU", "NET_PACKET_RATE_KILOPACKET_PER_SEC",
    "NET_PACKET_RATE_EGR_KILOPACKET_PER_SEC", "NET_PACKET_RATE_IGR_KILOPACKET_PER_SEC",
)

# A selection of os-traits' standard traits: the ones nova's drivers report most often
STANDARD_TRAITS = (
    "COMPUTE_ACCELERATORS", "COMPUTE_DEVICE_TAGGING", "COMPUTE_IMAGE_TYPE_AMI",
    "COMPUTE_IMAGE_TYPE_ARI", "COMPUTE_IMAGE_TYPE_AKI", "COMPUTE_IMAGE_TYPE_ISO",
    "COMPUTE_IMAGE_TYPE_QCOW2", "COMPUTE_IMAGE_TYPE_RAW", "COMPUTE_NET_ATTACH_INTERFACE",
    "COMPUTE_NET_ATTACH_INTERFACE_WITH_TAG", "COMPUTE_NET_VIF_MODEL_VIRTIO",
    "COMPUTE_NODE", "COMPUTE_RESCUE_BFV", "COMPUTE_STATUS_DISABLED",
    "COMPUTE_TRUSTED_CERTS", "COMPUTE_VOLUME_ATTACH_WITH_TAG", "COMPUTE_VOLUME_EXTEND",
    "COMPUTE_VOLUME_MULTI_ATTACH", "COMPUTE_GRAPHICS_MODEL_VGA",
    "COMPUTE_GRAPHICS_MODEL_VIRTIO", "HW_CPU_X86_AVX", "HW_CPU_X86_AVX2",
    "HW_CPU_X86_SSE", "HW_CPU_X86_SSE2", "HW_CPU_X86_SSE41", "HW_CPU_X86_SSE42",
    "HW_CPU_X86_VMX", "HW_CPU_X86_SVM", "HW_CPU_HYPERTHREADING", "HW_NIC_SRIOV",
    "MISC_SHARES_VIA_AGGREGATE", "STORAGE_DISK_HDD", "STORAGE_DISK_SSD",
)


class PlacementBase(DeclarativeBase):
    pass


class ResourceProvider(PlacementBase):
    __tablename__ = "resource_providers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    parent_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    root_uuid: Mapped[str] = mapped_column(String(36), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class InventoryRow(PlacementBase):
    __tablename__ = "inventories"
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("resource_providers.id", ondelete="CASCADE"), primary_key=True)
    resource_class: Mapped[str] = mapped_column(String(255), primary_key=True)
    total: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    min_unit: Mapped[int] = mapped_column(Integer, default=1)
    max_unit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    step_size: Mapped[int] = mapped_column(Integer, default=1)
    allocation_ratio: Mapped[float] = mapped_column(Float, default=1.0)


class Consumer(PlacementBase):
    """Whoever holds allocations (an instance, a migration); gone once it holds none."""

    __tablename__ = "consumers"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)


class AllocationRow(PlacementBase):
    __tablename__ = "allocations"
    __table_args__ = (UniqueConstraint("provider_id", "consumer_uuid", "resource_class"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("resource_providers.id", ondelete="CASCADE"), index=True)
    consumer_uuid: Mapped[str] = mapped_column(
        ForeignKey("consumers.uuid", ondelete="CASCADE"), index=True)
    resource_class: Mapped[str] = mapped_column(String(255))
    used: Mapped[int] = mapped_column(Integer)


class CustomResourceClass(PlacementBase):
    __tablename__ = "resource_classes"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)


class CustomTrait(PlacementBase):
    __tablename__ = "traits"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)


class ProviderTrait(PlacementBase):
    __tablename__ = "resource_provider_traits"
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("resource_providers.id", ondelete="CASCADE"), primary_key=True)
    trait: Mapped[str] = mapped_column(String(255), primary_key=True)


class ProviderAggregate(PlacementBase):
    __tablename__ = "resource_provider_aggregates"
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("resource_providers.id", ondelete="CASCADE"), primary_key=True)
    aggregate_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)


# -- what the model hands out ---------------------------------------------------------------

@dataclass(frozen=True)
class Provider:
    uuid: str
    name: str
    generation: int
    parent_uuid: str | None
    root_uuid: str
    updated_at: float


@dataclass
class ProviderVerdict:
    """One provider against one request: does it fit, and if not, why not."""

    uuid: str
    name: str
    fits: bool
    reasons: list[str]
    inventories: dict[str, Inventory]
    usages: dict[str, int]
    generation: int = 0
    parent_uuid: str | None = None
    root_uuid: str = ""
    traits: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConsumerInfo:
    uuid: str
    project_id: str
    user_id: str
    generation: int
    updated_at: float


@dataclass
class AllocationWrite:
    """New allocations for one consumer: {provider uuid: {resource class: amount}}.

    An empty `allocations` removes the consumer's. With `check_generation` the
    consumer's generation must equal `generation` (None: the consumer must not exist yet).
    """

    consumer_id: str
    allocations: dict[str, dict[str, int]]
    project_id: str
    user_id: str
    generation: int | None = None
    check_generation: bool = False


@dataclass
class RequestGroup:
    """One group of a request for candidates: resources, traits and aggregates to satisfy."""

    resources: dict[str, int] = field(default_factory=dict)
    required: set[str] = field(default_factory=set)
    forbidden: set[str] = field(default_factory=set)
    member_of: list[set[str]] = field(default_factory=list)  # each: any of these aggregates


def _inventory(row: InventoryRow) -> Inventory:
    return Inventory(total=row.total, reserved=row.reserved, min_unit=row.min_unit,
                     max_unit=row.max_unit, step_size=row.step_size,
                     allocation_ratio=row.allocation_ratio)


def _provider(row: ResourceProvider) -> Provider:
    return Provider(row.uuid, row.name, row.generation, row.parent_uuid, row.root_uuid,
                    row.updated_at)


def _consumer(row: Consumer) -> ConsumerInfo:
    return ConsumerInfo(row.uuid, row.project_id, row.user_id, row.generation, row.updated_at)


def capacity_of(inventory: Inventory) -> int:
    """The capacity placement reports in provider summaries: a whole number."""
    return int(inventory.capacity)


class Placement:
    """Placement's model over one SQLite database."""

    def __init__(self, db: Database, ids: IdSource) -> None:
        self.db = db
        self.ids = ids
        # check-then-write of allocations and inventories happens under this lock
        self._lock = threading.RLock()

    # -- resource providers ----------------------------------------------------------------

    def _row(self, s: Session, uuid: str) -> ResourceProvider:
        row = s.scalar(select(ResourceProvider).where(ResourceProvider.uuid == uuid))
        if row is None:
            raise NotFound(f"No resource provider with uuid {uuid} found")
        return row

    def _bump(self, row: ResourceProvider) -> None:
        row.generation += 1
        row.updated_at = time.time()

    @staticmethod
    def _generation_conflict(uuid: str, have: int, want: int) -> ConcurrentUpdate:
        return ConcurrentUpdate(
            f"resource provider generation conflict: resource provider {uuid} has "
            f"generation {have}, the request expected {want}. Get the provider again "
            "and retry.")

    def _check_generation(self, row: ResourceProvider, generation: int | None) -> None:
        if generation is not None and generation != row.generation:
            raise self._generation_conflict(row.uuid, row.generation, generation)

    def provider(self, uuid: str) -> Provider:
        with self.db.session() as s:
            return _provider(self._row(s, uuid))

    def create_provider(self, name: str, uuid: str | None = None,
                        parent_uuid: str | None = None) -> Provider:
        with self._lock, self.db.session() as s:
            uuid = uuid or self.ids.uuid("placement-provider")
            taken = [f"uuid: {uuid}"] if s.scalar(select(ResourceProvider.id).where(
                ResourceProvider.uuid == uuid)) else []
            if s.scalar(select(ResourceProvider.id).where(ResourceProvider.name == name)):
                taken.append(f"name: {name}")
            if taken:
                raise DuplicateName(
                    f"Conflicting resource provider {', '.join(taken)} already exists.")
            root = uuid
            if parent_uuid is not None:
                parent = s.scalar(select(ResourceProvider).where(
                    ResourceProvider.uuid == parent_uuid))
                if parent is None:
                    raise BadRequest(
                        f'Unable to create resource provider "{name}", {uuid}: Object action '
                        f"create failed because: parent provider UUID does not exist.")
                root = parent.root_uuid
            now = time.time()
            row = ResourceProvider(uuid=uuid, name=name, generation=0,
                                   parent_uuid=parent_uuid, root_uuid=root,
                                   created_at=now, updated_at=now)
            s.add(row)
            s.flush()
            return _provider(row)

    def update_provider(self, uuid: str, name: str | None = None,
                        parent_uuid: str | None = None, set_parent: bool = False) -> Provider:
        """Rename a provider, or give a root provider a parent (placement before 1.37
        allows nothing else: no re-parenting, no un-parenting)."""
        with self._lock, self.db.session() as s:
            row = self._row(s, uuid)
            if name is not None and name != row.name:
                if s.scalar(select(ResourceProvider.id).where(ResourceProvider.name == name)):
                    raise DuplicateName(f"Conflicting resource provider {name} already exists.")
                row.name = name
            if set_parent and parent_uuid != row.parent_uuid:
                failed = f"Unable to save resource provider {uuid}: Object action update failed"
                if row.parent_uuid is not None:
                    what = "un-parenting" if parent_uuid is None else "re-parenting"
                    raise BadRequest(f"{failed} because: {what} a provider is not currently "
                                     "allowed.")
                parent = s.scalar(select(ResourceProvider).where(
                    ResourceProvider.uuid == parent_uuid))
                if parent is None:
                    raise BadRequest(f"{failed} because: parent provider UUID does not exist.")
                if parent.root_uuid == row.uuid:
                    raise BadRequest(f"{failed} because: creating loop in the provider tree "
                                     "is not allowed.")
                row.parent_uuid = parent.uuid
                # the whole subtree now hangs under the parent's root
                for member in s.scalars(select(ResourceProvider).where(
                        ResourceProvider.root_uuid == row.uuid)):
                    member.root_uuid = parent.root_uuid
            row.updated_at = time.time()
            return _provider(row)

    def delete_provider(self, uuid: str) -> None:
        with self._lock, self.db.session() as s:
            row = self._row(s, uuid)
            if s.scalar(select(AllocationRow.id).where(AllocationRow.provider_id == row.id)):
                raise ProviderInUse(f"Unable to delete resource provider {uuid}: Resource "
                                    "provider has allocations.")
            if s.scalar(select(ResourceProvider.id).where(
                    ResourceProvider.parent_uuid == uuid)):
                raise CannotDeleteParent(f"Unable to delete parent resource provider {uuid}: "
                                         "It has child resource providers.")
            s.delete(row)

    def list_providers(self, *, uuid: str | None = None, name: str | None = None,
                       in_tree: str | None = None, resources: dict[str, int] | None = None,
                       member_of: list[set[str]] | None = None,
                       forbidden_aggregates: set[str] | None = None,
                       required: set[str] | None = None,
                       forbidden: set[str] | None = None) -> list[Provider]:
        """Providers matching every filter given, by name."""
        self._check_traits(set(required or ()) | set(forbidden or ()))
        if resources:
            self._check_resource_classes(set(resources))
        with self.db.session() as s:
            query = select(ResourceProvider).order_by(ResourceProvider.name)
            if uuid is not None:
                query = query.where(ResourceProvider.uuid == uuid)
            if name is not None:
                query = query.where(ResourceProvider.name == name)
            if in_tree is not None:
                root = s.scalar(select(ResourceProvider.root_uuid).where(
                    ResourceProvider.uuid == in_tree))
                if root is None:
                    return []
                query = query.where(ResourceProvider.root_uuid == root)
            rows = list(s.scalars(query))
            found = []
            for row in rows:
                group = RequestGroup(resources=resources or {}, required=set(required or ()),
                                     forbidden=set(forbidden or ()), member_of=member_of or [])
                if not self._matches(s, row, group, forbidden_aggregates or set()):
                    continue
                if resources and capacity.refusals(resources, self._inventories(s, row),
                                                   self._usages(s, row)):
                    continue
                found.append(_provider(row))
            return found

    def providers(self) -> list[dict]:
        """Every provider with its inventories and usages, by name (for tables and pictures)."""
        with self.db.session() as s:
            rows = s.scalars(select(ResourceProvider).order_by(ResourceProvider.name))
            return [{"uuid": r.uuid, "name": r.name, "generation": r.generation,
                     "parent_provider_uuid": r.parent_uuid, "root_provider_uuid": r.root_uuid,
                     "inventories": self._inventories(s, r), "usages": self._usages(s, r),
                     "traits": self._traits(s, r), "aggregates": self._aggregates(s, r)}
                    for r in rows]

    def ensure_provider(self, uuid: str, name: str,
                        inventories: dict[str, Inventory]) -> None:
        """Create the provider if it is missing, then make its inventories these.

        What a compute host does at start: idempotent, and the generation moves only
        when something changed.
        """
        with self._lock:
            with self.db.session() as s:
                row = s.scalar(select(ResourceProvider).where(ResourceProvider.uuid == uuid))
                exists = row is not None
                if exists and row.name != name:
                    row.name = name
            if not exists:
                self.create_provider(name, uuid=uuid)
            if self.inventories(uuid)[1] != inventories:
                self.set_inventories(uuid, inventories)

    # -- inventories -----------------------------------------------------------------------

    def _inventories(self, s: Session, row: ResourceProvider) -> dict[str, Inventory]:
        rows = s.scalars(select(InventoryRow).where(InventoryRow.provider_id == row.id)
                         .order_by(InventoryRow.resource_class))
        return {r.resource_class: _inventory(r) for r in rows}

    def _usages(self, s: Session, row: ResourceProvider,
                exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        query = (select(AllocationRow.resource_class, func.sum(AllocationRow.used))
                 .where(AllocationRow.provider_id == row.id)
                 .group_by(AllocationRow.resource_class))
        if exclude:
            query = query.where(AllocationRow.consumer_uuid.not_in(exclude))
        return {rc: int(used) for rc, used in s.execute(query)}

    def inventories(self, uuid: str) -> tuple[int, dict[str, Inventory]]:
        """The provider's generation and its inventories."""
        with self.db.session() as s:
            row = self._row(s, uuid)
            return row.generation, self._inventories(s, row)

    def set_inventories(self, uuid: str, inventories: dict[str, Inventory],
                        generation: int | None = None) -> int:
        """Replace the provider's whole inventory; returns the new generation.

        A class with allocations cannot be removed (409, as placement says).
        """
        self._check_resource_classes(set(inventories))
        with self._lock, self.db.session() as s:
            row = self._row(s, uuid)
            self._check_generation(row, generation)
            current = self._inventories(s, row)
            if current == inventories:
                return row.generation
            used = self._usages(s, row)
            gone = sorted(rc for rc in current if rc not in inventories and used.get(rc))
            if gone:
                raise InventoryInUse(
                    f"update conflict: Inventory for '{', '.join(gone)}' on resource provider "
                    f"'{uuid}' in use.")
            s.execute(delete(InventoryRow).where(InventoryRow.provider_id == row.id))
            for rc, inv in inventories.items():
                s.add(InventoryRow(provider_id=row.id, resource_class=rc, total=inv.total,
                                   reserved=inv.reserved, min_unit=inv.min_unit,
                                   max_unit=inv.max_unit, step_size=inv.step_size,
                                   allocation_ratio=inv.allocation_ratio))
            self._bump(row)
            return row.generation

    def set_inventory(self, uuid: str, resource_class: str, inventory: Inventory,
                      generation: int | None = None, *, create_only: bool = False,
                      update_only: bool = False) -> int:
        """Set one class's inventory, keeping the others; returns the new generation."""
        with self._lock:
            current_generation, current = self.inventories(uuid)
            if generation is not None and generation != current_generation:
                raise self._generation_conflict(uuid, current_generation, generation)
            if create_only and resource_class in current:
                raise ConcurrentUpdate(
                    f"Update conflict: Inventory for {resource_class} on resource provider "
                    f"{uuid} already exists.")
            if update_only and resource_class not in current:
                raise BadRequest(f"No inventory record with resource class {resource_class} "
                                 f"for resource provider {uuid}")
            return self.set_inventories(uuid, {**current, resource_class: inventory},
                                        current_generation)

    def delete_inventory(self, uuid: str, resource_class: str,
                         generation: int | None = None) -> int:
        with self._lock:
            current_generation, current = self.inventories(uuid)
            if resource_class not in current:
                raise NotFound(f"No inventory of class {resource_class} found for delete")
            remaining = {rc: inv for rc, inv in current.items() if rc != resource_class}
            return self.set_inventories(uuid, remaining,
                                        current_generation if generation is None else generation)

    # -- usages ----------------------------------------------------------------------------

    def usages(self, provider_uuid: str) -> dict[str, int]:
        """What is allocated of each class the provider has (0 when nothing is)."""
        with self.db.session() as s:
            row = self._row(s, provider_uuid)
            used = self._usages(s, row)
            return {rc: used.get(rc, 0)
                    for rc in sorted(set(self._inventories(s, row)) | set(used))}

    def provider_usages(self, provider_uuid: str) -> tuple[int, dict[str, int]]:
        with self.db.session() as s:
            generation = self._row(s, provider_uuid).generation
        return generation, self.usages(provider_uuid)

    def project_usages(self, project_id: str, user_id: str | None = None) -> dict[str, int]:
        """GET /usages: what a project (and optionally one of its users) holds."""
        with self.db.session() as s:
            query = (select(AllocationRow.resource_class, func.sum(AllocationRow.used))
                     .join(Consumer, Consumer.uuid == AllocationRow.consumer_uuid)
                     .where(Consumer.project_id == project_id)
                     .group_by(AllocationRow.resource_class))
            if user_id is not None:
                query = query.where(Consumer.user_id == user_id)
            return {rc: int(used) for rc, used in s.execute(query)}

    # -- fit: verdicts and candidates -------------------------------------------------------

    def _verdict(self, s: Session, row: ResourceProvider, resources: dict[str, int],
                 reasons: list[str] | None = None) -> ProviderVerdict:
        inventories = self._inventories(s, row)
        usages = self._usages(s, row)
        if reasons is None:
            reasons = capacity.refusals(resources, inventories, usages)
        return ProviderVerdict(uuid=row.uuid, name=row.name, fits=not reasons,
                               reasons=reasons, inventories=inventories,
                               usages={rc: usages.get(rc, 0) for rc in inventories},
                               generation=row.generation, parent_uuid=row.parent_uuid,
                               root_uuid=row.root_uuid, traits=self._traits(s, row))

    def verdicts(self, resources: dict[str, int]) -> list[ProviderVerdict]:
        """Every provider, by name, with whether `resources` fit it and every reason not."""
        with self.db.session() as s:
            rows = s.scalars(select(ResourceProvider).order_by(ResourceProvider.name))
            return [self._verdict(s, row, resources) for row in rows]

    def allocation_candidates(self, resources: dict[str, int],
                              limit: int | None = None) -> list[ProviderVerdict]:
        """The providers `resources` fit, by name; at most `limit` of them."""
        fitting = [v for v in self.verdicts(resources) if v.fits]
        return fitting if limit is None else fitting[:limit]

    def candidates(self, groups: dict[str, RequestGroup], group_policy: str | None = None,
                   limit: int | None = None) -> list[ProviderVerdict]:
        """Placement's GET /allocation_candidates without nested trees (as before 1.29):
        each candidate is one provider satisfying every group ("" is the unnumbered one).

        With group_policy "isolate", two or more numbered groups would need different
        providers, which a single-provider candidate cannot give.
        """
        for group in groups.values():
            self._check_resource_classes(set(group.resources))
            self._check_traits(group.required | group.forbidden)
        numbered = [g for key, g in groups.items() if key]
        if group_policy == "isolate" and len(numbered) > 1:
            return []
        total: dict[str, int] = defaultdict(int)
        for group in groups.values():
            for rc, amount in group.resources.items():
                total[rc] += amount
        found = []
        with self.db.session() as s:
            rows = s.scalars(select(ResourceProvider).order_by(ResourceProvider.name))
            for row in rows:
                if not all(self._matches(s, row, g, set()) for g in groups.values()):
                    continue
                inventories = self._inventories(s, row)
                usages = self._usages(s, row)
                # each group must fit on its own (min_unit, max_unit, step_size apply per
                # group's amount) and all of them together must fit the free capacity
                reasons = [r for g in groups.values()
                           for r in capacity.refusals(g.resources, inventories, {})]
                reasons += capacity.refusals(dict(total), inventories, usages)
                if not reasons:
                    found.append(self._verdict(s, row, dict(total), []))
                if limit is not None and len(found) >= limit:
                    break
        return found

    def _matches(self, s: Session, row: ResourceProvider, group: RequestGroup,
                 forbidden_aggregates: set[str]) -> bool:
        """Traits and aggregates of one group (resources are capacity's business)."""
        if group.required or group.forbidden:
            traits = set(self._traits(s, row))
            if not group.required <= traits or group.forbidden & traits:
                return False
        if group.member_of or forbidden_aggregates:
            aggregates = set(self._aggregates(s, row))
            if any(not (wanted & aggregates) for wanted in group.member_of):
                return False
            if forbidden_aggregates & aggregates:
                return False
        return True

    # -- allocations -----------------------------------------------------------------------

    def claim(self, consumer_id: str, allocations: dict[str, dict[str, int]],
              project_id: str, user_id: str) -> None:
        """Allocate for a consumer, replacing what it held; Conflict when it no longer fits."""
        self.write_allocations([AllocationWrite(consumer_id, allocations, project_id, user_id)])

    def release(self, consumer_id: str) -> None:
        """Drop every allocation of the consumer (nothing to do when it holds none)."""
        with self._lock, self.db.session() as s:
            consumer = s.get(Consumer, consumer_id)
            if consumer is None:
                return
            for provider in self._consumer_providers(s, consumer_id):
                self._bump(provider)
            s.execute(delete(AllocationRow).where(AllocationRow.consumer_uuid == consumer_id))
            s.delete(consumer)

    def _consumer_providers(self, s: Session, consumer_id: str) -> list[ResourceProvider]:
        return list(s.scalars(select(ResourceProvider).join(
            AllocationRow, AllocationRow.provider_id == ResourceProvider.id).where(
            AllocationRow.consumer_uuid == consumer_id).distinct()))

    def allocations_for(self, consumer_id: str) -> dict[str, dict[str, int]]:
        """{provider uuid: {resource class: used}} for one consumer ({} when none)."""
        with self.db.session() as s:
            rows = s.execute(select(ResourceProvider.uuid, AllocationRow.resource_class,
                                    AllocationRow.used)
                             .join(ResourceProvider,
                                   ResourceProvider.id == AllocationRow.provider_id)
                             .where(AllocationRow.consumer_uuid == consumer_id)
                             .order_by(ResourceProvider.uuid, AllocationRow.resource_class))
            found: dict[str, dict[str, int]] = defaultdict(dict)
            for uuid, rc, used in rows:
                found[uuid][rc] = used
            return dict(found)

    def consumer_allocations(self, consumer_id: str
                             ) -> tuple[ConsumerInfo | None, dict[str, tuple[int, dict]]]:
        """The consumer and {provider uuid: (provider generation, {rc: used})}."""
        with self.db.session() as s:
            consumer = s.get(Consumer, consumer_id)
            found: dict[str, tuple[int, dict]] = {}
            for provider in self._consumer_providers(s, consumer_id):
                rows = s.scalars(select(AllocationRow).where(
                    AllocationRow.consumer_uuid == consumer_id,
                    AllocationRow.provider_id == provider.id))
                found[provider.uuid] = (provider.generation,
                                        {r.resource_class: r.used for r in rows})
            return (_consumer(consumer) if consumer else None), found

    def provider_allocations(self, provider_uuid: str
                             ) -> tuple[int, dict[str, tuple[int, dict[str, int]]]]:
        """The provider's generation and {consumer: (consumer generation, {rc: used})}."""
        with self.db.session() as s:
            row = self._row(s, provider_uuid)
            found: dict[str, tuple[int, dict[str, int]]] = {}
            rows = s.execute(select(AllocationRow, Consumer.generation)
                             .join(Consumer, Consumer.uuid == AllocationRow.consumer_uuid)
                             .where(AllocationRow.provider_id == row.id)
                             .order_by(AllocationRow.consumer_uuid))
            for allocation, generation in rows:
                entry = found.setdefault(allocation.consumer_uuid, (generation, {}))
                entry[1][allocation.resource_class] = allocation.used
            return row.generation, found

    def write_allocations(self, writes: list[AllocationWrite]) -> None:
        """Replace the allocations of one or more consumers, all or nothing.

        Under the lock and in one transaction: check consumer generations, then check
        every new allocation with capacity.refusals against usages that leave out these
        consumers' current allocations, then write.
        """
        with self._lock, self.db.session() as s:
            consumers = {w.consumer_id for w in writes}
            rows: dict[str, ResourceProvider] = {}
            for write in writes:
                self._check_consumer_generation(s, write)
                for uuid in write.allocations:
                    row = s.scalar(select(ResourceProvider).where(ResourceProvider.uuid == uuid))
                    if row is None:
                        raise BadRequest(f"Allocation for resource provider '{uuid}' that "
                                         "does not exist.")
                    rows[uuid] = row
            # usages without these consumers, then each new allocation added as it is checked
            used = {uuid: self._usages(s, row, exclude=consumers) for uuid, row in rows.items()}
            inventories = {uuid: self._inventories(s, row) for uuid, row in rows.items()}
            for write in writes:
                for uuid, resources in write.allocations.items():
                    for rc, amount in resources.items():
                        self._check_fit(uuid, rc, inventories[uuid].get(rc),
                                        used[uuid].get(rc, 0), amount)
                        used[uuid][rc] = used[uuid].get(rc, 0) + amount
            touched: dict[str, ResourceProvider] = dict(rows)
            now = time.time()
            for write in writes:
                for provider in self._consumer_providers(s, write.consumer_id):
                    touched[provider.uuid] = provider
                s.execute(delete(AllocationRow).where(
                    AllocationRow.consumer_uuid == write.consumer_id))
                consumer = s.get(Consumer, write.consumer_id)
                if not write.allocations:
                    if consumer is not None:
                        s.delete(consumer)
                    continue
                if consumer is None:
                    consumer = Consumer(uuid=write.consumer_id, project_id=write.project_id,
                                        user_id=write.user_id, generation=0, updated_at=now)
                    s.add(consumer)
                consumer.project_id = write.project_id
                consumer.user_id = write.user_id
                consumer.generation += 1
                consumer.updated_at = now
                s.flush()
                for uuid, resources in write.allocations.items():
                    for rc, amount in resources.items():
                        s.add(AllocationRow(provider_id=rows[uuid].id,
                                            consumer_uuid=write.consumer_id,
                                            resource_class=rc, used=amount))
            for provider in touched.values():
                self._bump(provider)

    def _check_consumer_generation(self, s: Session, write: AllocationWrite) -> None:
        if not write.check_generation:
            return
        consumer = s.get(Consumer, write.consumer_id)
        expected = consumer.generation if consumer else None
        if expected != write.generation:
            shown = "null" if expected is None else expected
            got = "null" if write.generation is None else write.generation
            raise ConcurrentUpdate(f"consumer generation conflict - expected {shown} but "
                                   f"got {got}")

    @staticmethod
    def _check_fit(uuid: str, rc: str, inventory: Inventory | None, used: int,
                   amount: int) -> None:
        reason = capacity.refusal(rc, inventory, used, amount)
        if reason is None:
            return
        if inventory is None:
            detail = f"Inventory for '{rc}' on resource provider '{uuid}' invalid."
        elif used + amount > inventory.capacity:
            detail = (f"Unable to create allocation for '{rc}' on resource provider "
                      f"'{uuid}'. The requested amount would exceed the capacity.")
        else:
            detail = (f"Unable to create allocation for '{rc}' on resource provider "
                      f"'{uuid}'. The requested amount would violate inventory constraints.")
        raise Conflict(f"Unable to allocate inventory: {detail} ({reason})")

    # -- resource classes ------------------------------------------------------------------

    def resource_classes(self) -> list[str]:
        with self.db.session() as s:
            custom = s.scalars(select(CustomResourceClass.name)
                               .order_by(CustomResourceClass.name))
            return [*STANDARD_RESOURCE_CLASSES, *custom]

    def has_resource_class(self, name: str) -> bool:
        return name in STANDARD_RESOURCE_CLASSES or self._custom_class(name)

    def _custom_class(self, name: str) -> bool:
        with self.db.session() as s:
            return s.get(CustomResourceClass, name) is not None

    def _check_resource_classes(self, names: set[str]) -> None:
        for name in sorted(names):
            if not self.has_resource_class(name):
                raise BadRequest(f"No such resource class {name}.")

    def create_resource_class(self, name: str) -> bool:
        """Add a custom class; False when it was already there."""
        with self._lock, self.db.session() as s:
            if name in STANDARD_RESOURCE_CLASSES or s.get(CustomResourceClass, name):
                return False
            s.add(CustomResourceClass(name=name))
            return True

    def _class_in_use(self, s: Session, name: str) -> bool:
        return bool(s.scalar(select(InventoryRow.provider_id).where(
            InventoryRow.resource_class == name).limit(1)))

    def rename_resource_class(self, name: str, new_name: str) -> None:
        with self._lock, self.db.session() as s:
            row = s.get(CustomResourceClass, name)
            if row is None:
                raise NotFound(f"No such resource class {name}.")
            if new_name in STANDARD_RESOURCE_CLASSES or s.get(CustomResourceClass, new_name):
                raise DuplicateName(f"Resource class already exists: {new_name}")
            if self._class_in_use(s, name):
                raise Conflict(f"Unable to update resource class {name}: it is in use by "
                               "inventories.")
            s.delete(row)
            s.add(CustomResourceClass(name=new_name))

    def delete_resource_class(self, name: str) -> None:
        with self._lock, self.db.session() as s:
            if name in STANDARD_RESOURCE_CLASSES:
                raise BadRequest(f"Cannot delete standard resource class {name}: Cannot "
                                 "delete standard resource class.")
            row = s.get(CustomResourceClass, name)
            if row is None:
                raise NotFound(f"No such resource class {name}.")
            if self._class_in_use(s, name):
                raise Conflict(f"Unable to delete resource class {name}: Cannot delete "
                               f"resource class {name}. Class is in use in inventory.")
            s.delete(row)

    # -- traits ----------------------------------------------------------------------------

    def traits(self, names: set[str] | None = None, prefix: str | None = None,
               associated: bool | None = None) -> list[str]:
        with self.db.session() as s:
            custom = list(s.scalars(select(CustomTrait.name)))
            in_use = set(s.scalars(select(ProviderTrait.trait).distinct()))
        found = sorted({*STANDARD_TRAITS, *custom})
        if names is not None:
            found = [t for t in found if t in names]
        if prefix is not None:
            found = [t for t in found if t.startswith(prefix)]
        if associated is not None:
            found = [t for t in found if (t in in_use) == associated]
        return found

    def has_trait(self, name: str) -> bool:
        with self.db.session() as s:
            return name in STANDARD_TRAITS or s.get(CustomTrait, name) is not None

    def _check_traits(self, names: set[str]) -> None:
        missing = sorted(n for n in names if not self.has_trait(n))
        if missing:
            raise BadRequest(f"No such trait(s): {', '.join(missing)}.")

    def create_trait(self, name: str) -> bool:
        """Add a custom trait; False when it was already there."""
        with self._lock, self.db.session() as s:
            if name in STANDARD_TRAITS or s.get(CustomTrait, name):
                return False
            s.add(CustomTrait(name=name))
            return True

    def delete_trait(self, name: str) -> None:
        with self._lock, self.db.session() as s:
            if name in STANDARD_TRAITS:
                raise BadRequest(f"Cannot delete standard trait {name}.")
            row = s.get(CustomTrait, name)
            if row is None:
                raise NotFound(f"No such trait(s): {name}.")
            if s.scalar(select(ProviderTrait.provider_id).where(ProviderTrait.trait == name)):
                raise Conflict(f"The trait {name} is in use by a resource provider.")
            s.delete(row)

    def _traits(self, s: Session, row: ResourceProvider) -> list[str]:
        return list(s.scalars(select(ProviderTrait.trait).where(
            ProviderTrait.provider_id == row.id).order_by(ProviderTrait.trait)))

    def provider_traits(self, uuid: str) -> tuple[int, list[str]]:
        with self.db.session() as s:
            row = self._row(s, uuid)
            return row.generation, self._traits(s, row)

    def set_provider_traits(self, uuid: str, traits: list[str],
                            generation: int | None = None) -> int:
        self._check_traits(set(traits))
        with self._lock, self.db.session() as s:
            row = self._row(s, uuid)
            self._check_generation(row, generation)
            s.execute(delete(ProviderTrait).where(ProviderTrait.provider_id == row.id))
            for trait in sorted(set(traits)):
                s.add(ProviderTrait(provider_id=row.id, trait=trait))
            self._bump(row)
            return row.generation

    # -- aggregates ------------------------------------------------------------------------

    def _aggregates(self, s: Session, row: ResourceProvider) -> list[str]:
        return list(s.scalars(select(ProviderAggregate.aggregate_uuid).where(
            ProviderAggregate.provider_id == row.id).order_by(ProviderAggregate.aggregate_uuid)))

    def provider_aggregates(self, uuid: str) -> tuple[int, list[str]]:
        with self.db.session() as s:
            row = self._row(s, uuid)
            return row.generation, self._aggregates(s, row)

    def set_provider_aggregates(self, uuid: str, aggregates: list[str],
                                generation: int | None = None, bump: bool = True) -> int:
        with self._lock, self.db.session() as s:
            row = self._row(s, uuid)
            self._check_generation(row, generation)
            s.execute(delete(ProviderAggregate).where(ProviderAggregate.provider_id == row.id))
            for aggregate in sorted(set(aggregates)):
                s.add(ProviderAggregate(provider_id=row.id, aggregate_uuid=aggregate))
            if bump:
                self._bump(row)
            return row.generation
