"""cinder-api's volume logic (cinder/volume/api.py): the checks and conditional updates that
move a volume, its snapshots and its attachments through cinder's states.

Each state change goes through `set_status`, which leaves it in the trace. Work that
cinder-volume does (creating the LV, exports, deleting) is cast or called over the bus.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.cloud.bus import MessageContext
from labkit.cloud.errors import BadRequest, NotFound
from labkit.cloud.trace import TraceEvent
from labkit.cloud.volume.errors import (
    InvalidInput,
    InvalidSnapshot,
    InvalidVolume,
    ResourceConflict,
    attachment_not_found,
    snapshot_not_found,
    volume_not_found,
)
from labkit.cloud.volume.models import Attachment, Caller, Snapshot, Volume, utcnow

if TYPE_CHECKING:
    from labkit.cloud.volume import VolumeService

MAX_LIMIT = 1000  # cinder's [DEFAULT] osapi_max_limit
DELETABLE = ("available", "error", "error_restoring", "error_extending", "error_managing")
# what members may filter volumes on (cinder's resource_filters.json); admins any column
MEMBER_FILTERS = ("name", "status", "metadata", "bootable", "migration_status",
                  "availability_zone", "group_id", "size", "created_at", "updated_at")
SORT_COLUMNS = {"name": "display_name", "display_name": "display_name", "id": "id",
                "status": "status", "size": "size", "created_at": "created_at",
                "updated_at": "updated_at", "availability_zone": "availability_zone",
                "bootable": "bootable", "project_id": "project_id"}


def or_words(values: tuple[str, ...] | list[str]) -> str:
    """cinder's utils.build_or_str."""
    return " or ".join(values)


def parse_sort(params: dict[str, str]) -> list[tuple[str, str]]:
    """?sort=key:dir,key2 or ?sort_key=&sort_dir= (cinder's common.get_sort_params)."""
    if "sort" in params:
        if "sort_key" in params or "sort_dir" in params:
            raise BadRequest("The 'sort_key' and 'sort_dir' parameters are deprecated and "
                             "cannot be used with the 'sort' parameter.")
        pairs = []
        for part in params["sort"].split(","):
            key, _, direction = part.strip().partition(":")
            pairs.append((key.strip(), (direction or "desc").strip()))
    else:
        keys = params.get("sort_key", "created_at").split(",")
        dirs = params.get("sort_dir", "desc").split(",")
        pairs = [(k, dirs[i] if i < len(dirs) else dirs[-1]) for i, k in enumerate(keys)]
    for key, direction in pairs:
        if direction not in ("asc", "desc"):
            raise InvalidInput("Unknown sort direction, must be 'desc' or 'asc'")
        if key not in SORT_COLUMNS:
            raise InvalidInput(f"Invalid sort key: {key}")
    if not any(k == "id" for k, _ in pairs):
        pairs.append(("id", pairs[0][1] if pairs else "desc"))
    return pairs


def parse_limit(params: dict[str, str]) -> int:
    if "limit" not in params:
        return MAX_LIMIT
    try:
        limit = int(params["limit"])
    except ValueError as exc:
        raise InvalidInput("limit param must be an integer") from exc
    if limit < 0:
        raise InvalidInput("limit param must be positive")
    return min(limit, MAX_LIMIT)


def parse_metadata_filter(value: str) -> dict[str, str]:
    try:
        found = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        try:
            found = json.loads(value)
        except ValueError as exc:
            raise InvalidInput(f"Invalid metadata filter: {value}") from exc
    if not isinstance(found, dict):
        raise InvalidInput(f"Invalid metadata filter: {value}")
    return {str(k): str(v) for k, v in found.items()}


def page(rows: list[Any], params: dict[str, str], key_of: Callable[[Any, str], Any],
         marker_name: str = "Marker") -> list[Any]:
    """Sort, then the rows after ?marker=, up to ?limit= (cinder's paginate_query)."""
    for key, direction in reversed(parse_sort(params)):
        rows.sort(key=lambda r, k=key: _sortable(key_of(r, SORT_COLUMNS[k])),
                  reverse=direction == "desc")
    marker = params.get("marker")
    if marker:
        ids = [r.id for r in rows]
        if marker not in ids:
            raise NotFound(f"Marker {marker} could not be found.")
        rows = rows[ids.index(marker) + 1:]
    return rows[:parse_limit(params)]


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value)


class VolumeAPI:
    """cinder.volume.api.API over cinder.sqlite."""

    def __init__(self, svc: VolumeService) -> None:
        self.svc = svc
        self.db = svc.database

    # -- state ----------------------------------------------------------------------------

    def set_status(self, ctx: MessageContext, volume_id: str, **values: Any) -> Volume:
        """Write `values` on the volume and leave the change in the trace."""
        with self.db.session() as s:
            row = s.get(Volume, volume_id)
            assert row is not None
            before = (row.status, row.attach_status)
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
        if (row.status, row.attach_status) != before or "status" in values:
            self.svc.trace.record(TraceEvent(
                kind="state", source=ctx.source, target="cinder-db",
                summary=f"volume {row.display_name or row.id[:8]}: status={row.status}",
                request_id=ctx.request_id,
                detail={"volume_id": row.id, "status": row.status,
                        "attach_status": row.attach_status,
                        **({"host": row.host} if row.host else {})}))
        return row

    def set_snapshot_status(self, ctx: MessageContext, snapshot_id: str,
                            **values: Any) -> Snapshot:
        with self.db.session() as s:
            row = s.get(Snapshot, snapshot_id)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
        self.svc.trace.record(TraceEvent(
            kind="state", source=ctx.source, target="cinder-db",
            summary=f"snapshot {row.display_name or row.id[:8]}: status={row.status}",
            request_id=ctx.request_id, detail={"snapshot_id": row.id, "status": row.status}))
        return row

    # -- reading --------------------------------------------------------------------------

    @staticmethod
    def _visible(caller: Caller, project_id: str) -> bool:
        return caller.is_admin or caller.project_id == project_id

    def get_row(self, s: Session, caller: Caller, volume_id: str) -> Volume:
        row = s.get(Volume, volume_id)
        if row is None or row.deleted or not self._visible(caller, row.project_id):
            raise volume_not_found(volume_id)
        return row

    def get(self, caller: Caller, volume_id: str) -> Volume:
        with self.db.session() as s:
            return self.get_row(s, caller, volume_id)

    def get_any(self, volume_id: str) -> Volume:
        """The row as cinder-volume reads it: any project, deleted or not."""
        with self.db.session() as s:
            row = s.get(Volume, volume_id)
            if row is None:
                raise volume_not_found(volume_id)
            return row

    def attachments_of(self, volume_ids: list[str]) -> dict[str, list[Attachment]]:
        found: dict[str, list[Attachment]] = {v: [] for v in volume_ids}
        if not volume_ids:
            return found
        with self.db.session() as s:
            for a in s.scalars(select(Attachment).where(Attachment.volume_id.in_(volume_ids),
                                                        Attachment.deleted.is_(False))
                               .order_by(Attachment.created_at)):
                found[a.volume_id].append(a)
        return found

    def list(self, caller: Caller, params: dict[str, str],
             version_at_least: Callable[[str], bool]) -> tuple[list[Volume], int]:
        """One page of the volumes the caller may list, and how many matched in all."""
        params = dict(params)
        all_tenants = caller.is_admin and "all_tenants" in params
        filters = {k: v for k, v in params.items()
                   if k not in ("all_tenants", "limit", "marker", "sort", "sort_key",
                                "sort_dir", "offset", "with_count")}
        if not caller.is_admin:
            filters = {k: v for k, v in filters.items()
                       if k in MEMBER_FILTERS or (k.endswith("~") and k[:-1] in MEMBER_FILTERS)}
        with self.db.session() as s:
            query = select(Volume).where(Volume.deleted.is_(False))
            if not all_tenants:
                project = filters.pop("project_id", None) if caller.is_admin else None
                query = query.where(Volume.project_id == (project or caller.project_id))
            rows = list(s.scalars(query))
        rows = [r for r in rows if self._matches(r, filters, version_at_least)]
        count = len(rows)
        return page(rows, params, lambda r, k: getattr(r, k)), count

    def _matches(self, row: Volume, filters: dict[str, str],
                 at_least: Callable[[str], bool]) -> bool:
        names = self.svc.types.names()
        for key, value in filters.items():
            like = key.endswith("~") and at_least("3.34")
            key = key.rstrip("~")
            if key == "metadata":
                wanted = parse_metadata_filter(value)
                if any(row.metadata_.get(k) != v for k, v in wanted.items()):
                    return False
                continue
            if key in ("name", "display_name"):
                actual: Any = row.display_name or ""
            elif key == "volume_type":
                actual = names.get(row.volume_type_id or "", "")
                if value == row.volume_type_id:
                    continue
            elif key == "bootable":
                actual = str(row.bootable).lower()
                value = "true" if value.lower() in ("1", "true", "t", "yes", "y") else "false"
            elif hasattr(Volume, key) and key not in ("metadata_",):
                actual = getattr(row, key)
                actual = "" if actual is None else str(actual)
            else:
                continue  # cinder drops filters it does not know
            if like:
                if str(value).lower() not in str(actual).lower():
                    return False
            elif str(actual) != str(value):
                return False
        return True

    # -- create ---------------------------------------------------------------------------

    def create(self, ctx: MessageContext, caller: Caller, spec: dict[str, Any]) -> Volume:
        """Check the request, reserve quota, write the row (creating), cast to the scheduler."""
        svc = self.svc
        size = spec.get("size")
        if size is not None and (isinstance(size, bool) or not _int_like(size)
                                 or int(size) <= 0):
            raise InvalidInput(f"Invalid volume size provided for create request: {size} "
                               "(size argument must be an integer (or string representation "
                               "of an integer) and greater than zero).")
        zone = spec.get("availability_zone") or svc.availability_zone
        if zone != svc.availability_zone:
            raise InvalidInput(f"Availability zone '{zone}' is invalid.")
        image: dict[str, Any] | None = None
        with self.db.session() as s:
            snapshot = source = None
            if spec.get("snapshot_id"):
                snapshot = self.get_snapshot_row(s, caller, spec["snapshot_id"])
                if snapshot.status != "available":
                    raise InvalidSnapshot("Originating snapshot status must be one of "
                                          "'available' values")
                size = snapshot.volume_size if size is None else int(size)
                if size < snapshot.volume_size:
                    raise InvalidInput(f"Volume size '{size}'GB cannot be smaller than the "
                                       f"snapshot size {snapshot.volume_size}GB. They must "
                                       "be >= original snapshot size.")
            if spec.get("source_volid"):
                source = self.get_row(s, caller, spec["source_volid"])
                if source.status not in ("available", "in-use"):
                    raise InvalidVolume("Source volume status must be 'available' or "
                                        f"'in-use', but is {source.status}.")
                size = source.size if size is None else int(size)
                if size < source.size:
                    raise InvalidInput(f"Volume size '{size}'GB cannot be smaller than "
                                       f"original volume size  {source.size}GB. They must "
                                       "be >= original volume size.")
            if spec.get("image_id"):
                image = self._image(caller, spec["image_id"])
                image_gb = -(-int(image.get("size") or 0) // 1024 ** 3)
                if size is None:
                    size = max(image_gb, int(image.get("min_disk") or 0), 1)
                if image_gb > int(size):
                    raise InvalidInput(f"Size of specified image {image_gb} is larger than "
                                       f"volume size {size}.")
                if int(image.get("min_disk") or 0) > int(size):
                    raise InvalidInput(f"Volume size {size}GB cannot be smaller than the "
                                       f"image minDisk size {image['min_disk']}GB.")
            if size is None:
                raise InvalidInput("Invalid volume size provided for create request: None "
                                   "(size argument must be an integer (or string "
                                   "representation of an integer) and greater than zero).")
            size = int(size)
            if spec.get("volume_type"):
                vtype = svc.types.find(s, caller, spec["volume_type"])
            elif snapshot is not None and snapshot.volume_type_id:
                vtype = svc.types.find(s, Caller(None, is_admin=True), snapshot.volume_type_id)
            elif source is not None and source.volume_type_id:
                vtype = svc.types.find(s, Caller(None, is_admin=True), source.volume_type_id)
            else:
                vtype = svc.types.default(s)
            names = svc.types.names()
            svc.quotas.check(s, caller.project_id or "", names, vtype.name,
                             {"volumes": 1, "gigabytes": size}, "volumes")
            metadata = spec.get("metadata") or {}
            row = Volume(
                id=svc.ids.uuid("volume"), project_id=caller.project_id,
                user_id=caller.user_id, display_name=spec.get("name"),
                display_description=spec.get("description"), size=size, status="creating",
                attach_status="detached", availability_zone=zone, volume_type_id=vtype.id,
                snapshot_id=snapshot.id if snapshot else None,
                source_volid=source.id if source else None,
                image_id=image["id"] if image else None,
                multiattach=bool(spec.get("multiattach")),
                metadata_={str(k): str(v) for k, v in metadata.items()},
                admin_metadata={}, image_metadata={}, created_at=utcnow())
            s.add(row)
        self.set_status(ctx, row.id, status="creating")
        svc.bus.cast(ctx.sent_by("cinder-api"), svc.scheduler.topic, "create_volume",
                     volume_id=row.id, request_spec={
                         "size": size, "volume_type": vtype.name,
                         "snapshot_id": row.snapshot_id, "source_volid": row.source_volid,
                         "image_id": row.image_id, "availability_zone": zone})
        return self.get(caller, row.id)

    def _image(self, caller: Caller, ref: str) -> dict[str, Any]:
        """The image as the caller may see it (cinder-api asks glance with the user's token)."""
        try:
            return self.svc.images.get_image(ref, caller.project_id, caller.is_admin)
        except NotFound as exc:
            raise BadRequest("Invalid image identifier or unable to access requested "
                             "image.") from exc

    # -- update, delete -------------------------------------------------------------------

    def update(self, caller: Caller, volume_id: str, fields: dict[str, Any]) -> Volume:
        with self.db.session() as s:
            row = self.get_row(s, caller, volume_id)
            if row.status == "maintenance":
                raise InvalidVolume("The volume cannot be updated during maintenance.")
            if "name" in fields:
                row.display_name = fields["name"]
            if "description" in fields:
                row.display_description = fields["description"]
            if "metadata" in fields:
                row.metadata_ = {str(k): str(v) for k, v in fields["metadata"].items()}
            row.updated_at = utcnow()
        return self.get(caller, volume_id)

    def set_metadata(self, caller: Caller, volume_id: str, metadata: dict[str, Any],
                     replace: bool) -> dict[str, str]:
        with self.db.session() as s:
            row = self.get_row(s, caller, volume_id)
            if row.status == "maintenance":
                raise InvalidVolume("Updating volume metadata is not allowed for volumes in "
                                    "maintenance status.")
            new = {str(k): str(v) for k, v in metadata.items()}
            row.metadata_ = new if replace else {**row.metadata_, **new}
            row.updated_at = utcnow()
            return dict(row.metadata_)

    def delete_metadata(self, caller: Caller, volume_id: str, key: str) -> None:
        with self.db.session() as s:
            row = self.get_row(s, caller, volume_id)
            if key not in row.metadata_:
                raise NotFound(f"Volume {volume_id} has no metadata with key {key}.")
            row.metadata_ = {k: v for k, v in row.metadata_.items() if k != key}

    def delete(self, ctx: MessageContext, caller: Caller, volume_id: str,
               cascade: bool = False, force: bool = False) -> None:
        """Refuse unless the volume may go (cinder's conditional update); then deleting and
        a cast to cinder-volume. Nothing changes when refused."""
        with self.db.session() as s:
            row = self.get_row(s, caller, volume_id)
            if force and not caller.is_admin:
                from labkit.cloud.volume.errors import policy_refused
                raise policy_refused("volume_extension:volume_admin_actions:force_delete")
            snaps = list(s.scalars(select(Snapshot).where(Snapshot.volume_id == volume_id,
                                                          Snapshot.deleted.is_(False))))
            attached = row.attach_status == "attached"
            status_ok = force or row.status in DELETABLE
            snaps_ok = (not snaps if not cascade else
                        force or all(sn.status in ("available", "error", "deleting")
                                     for sn in snaps))
            if row.host is None and row.status in DELETABLE and not snaps:
                # never scheduled: cinder-api deletes the row itself
                row.deleted = True
                row.status = "deleted"
                row.terminated_at = utcnow()
                return
            if attached or not status_ok or not snaps_ok or row.migration_status not in (
                    None, "", "success", "error"):
                status = "" if force else f"status must be {or_words(DELETABLE)} and"
                raise InvalidVolume(f"Volume {status} must not be migrating, attached, belong "
                                    "to a group, have snapshots, awaiting a transfer, or be "
                                    "disassociated from snapshots after volume transfer.")
            snapshot_ids = [sn.id for sn in snaps] if cascade else []
        self.set_status(ctx, volume_id, status="deleting", terminated_at=utcnow())
        for snap_id in snapshot_ids:
            self.set_snapshot_status(ctx, snap_id, status="deleting")
        self.svc.bus.cast(ctx.sent_by("cinder-api"), self.svc.volume_topic, "delete_volume",
                          volume_id=volume_id, cascade=cascade)

    # -- actions --------------------------------------------------------------------------

    def extend(self, ctx: MessageContext, caller: Caller, volume_id: str, new_size: Any,
               attached_allowed: bool) -> None:
        with self.db.session() as s:
            row = self.get_row(s, caller, volume_id)
            if isinstance(new_size, bool) or not _int_like(new_size):
                raise InvalidInput("New size for extend must be specified as an integer.")
            new_size = int(new_size)
            expected = ("in-use" if row.status == "in-use" and attached_allowed
                        else "available")
            if new_size - row.size <= 0:
                raise InvalidInput(f"New size for extend must be greater than current size. "
                                   f"(current: {row.size}, extended: {new_size}).")
            if row.status != expected:
                raise InvalidVolume(f"Volume {row.id} status must be "
                                    f"'{{'status': '{expected}'}}' to extend, currently "
                                    f"{row.status}.")
            names = self.svc.types.names()
            self.svc.quotas.check(s, row.project_id, names,
                                  names.get(row.volume_type_id or "", ""),
                                  {"gigabytes": new_size - row.size}, "volumes")
            previous = row.status
        self.set_status(ctx, volume_id, status="extending", previous_status=previous)
        self.svc.bus.cast(ctx.sent_by("cinder-api"), self.svc.volume_topic, "extend_volume",
                          volume_id=volume_id, new_size=new_size)

    def reset_status(self, ctx: MessageContext, caller: Caller, volume_id: str,
                     values: dict[str, Any]) -> None:
        with self.db.session() as s:
            self.get_row(s, caller, volume_id)
        self.set_status(ctx, volume_id, **values)

    def reserve(self, ctx: MessageContext, caller: Caller, volume_id: str) -> None:
        row = self.get(caller, volume_id)
        allowed = ("available", "in-use") if row.multiattach else ("available",)
        if row.status not in allowed:
            raise InvalidVolume(f"Volume status must be {or_words(allowed)} to reserve, but "
                                f"the status is {row.status}.")
        self.set_status(ctx, volume_id, status="attaching")

    def unreserve(self, ctx: MessageContext, caller: Caller, volume_id: str) -> None:
        row = self.get(caller, volume_id)
        if row.status != "attaching":
            return
        has = bool(self.attachments_of([volume_id])[volume_id])
        self.set_status(ctx, volume_id, status="in-use" if has else "available")

    def begin_detaching(self, ctx: MessageContext, caller: Caller, volume_id: str) -> None:
        row = self.get(caller, volume_id)
        if row.status != "in-use" or row.attach_status != "attached":
            raise InvalidVolume("Unable to detach volume. Volume status must be 'in-use' and "
                                "attach_status must be 'attached' to detach.")
        self.set_status(ctx, volume_id, status="detaching")

    def roll_detaching(self, ctx: MessageContext, caller: Caller, volume_id: str) -> None:
        row = self.get(caller, volume_id)
        if row.status == "detaching":
            self.set_status(ctx, volume_id, status="in-use")

    # -- attachments (3.27+) --------------------------------------------------------------

    def get_attachment_row(self, s: Session, caller: Caller, attachment_id: str) -> Attachment:
        row = s.get(Attachment, attachment_id)
        if row is None or row.deleted:
            raise attachment_not_found(attachment_id)
        volume = s.get(Volume, row.volume_id)
        if volume is None or not self._visible(caller, volume.project_id):
            raise attachment_not_found(attachment_id)
        return row

    def get_attachment(self, caller: Caller, attachment_id: str) -> Attachment:
        with self.db.session() as s:
            return self.get_attachment_row(s, caller, attachment_id)

    def list_attachments(self, caller: Caller, params: dict[str, str]) -> list[Attachment]:
        all_tenants = caller.is_admin and "all_tenants" in params
        with self.db.session() as s:
            query = (select(Attachment).join(Volume, Volume.id == Attachment.volume_id)
                     .where(Attachment.deleted.is_(False)))
            if not all_tenants:
                query = query.where(Volume.project_id == caller.project_id)
            rows = list(s.scalars(query))
        wanted = {"volume_id": params.get("volume_id"), "status": params.get("status"),
                  "instance_uuid": params.get("instance_id") or params.get("instance_uuid")}
        rows = [r for r in rows
                if (not wanted["volume_id"] or r.volume_id == wanted["volume_id"])
                and (not wanted["status"] or r.attach_status == wanted["status"])
                and (not wanted["instance_uuid"] or r.instance_uuid == wanted["instance_uuid"])]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        marker = params.get("marker")
        if marker:
            ids = [r.id for r in rows]
            if marker not in ids:
                raise NotFound(f"Marker {marker} could not be found.")
            rows = rows[ids.index(marker) + 1:]
        return rows[:parse_limit(params)]

    async def attachment_create(self, ctx: MessageContext, caller: Caller, volume_id: str,
                                instance_uuid: str | None, connector: dict[str, Any] | None,
                                mode: str) -> Attachment:
        with self.db.session() as s:
            volume = self.get_row(s, caller, volume_id)
            if "error" in volume.status:
                raise InvalidVolume("Volume attachments can not be created if the volume is "
                                    "in an error state. The Volume "
                                    f"{volume.id} currently has a status of: "
                                    f"{volume.status} ")
            allowed = (("available", "in-use", "downloading", "reserved") if volume.multiattach
                       else ("available", "downloading"))
            if volume.status not in allowed:
                existing = list(s.scalars(select(Attachment).where(
                    Attachment.volume_id == volume_id, Attachment.deleted.is_(False))))
                same = instance_uuid and volume.status in ("in-use", "reserved") and any(
                    a.instance_uuid == instance_uuid for a in existing)
                if not same:
                    raise InvalidVolume(f"Volume {volume.id} status must be "
                                        f"{or_words(allowed)} to reserve, but the current "
                                        f"status is {volume.status}.")
            row = Attachment(id=self.svc.ids.uuid("attachment"), volume_id=volume_id,
                             instance_uuid=instance_uuid, attach_status="reserved",
                             attach_mode="null", created_at=utcnow())
            s.add(row)
            status = volume.status
        if status in ("available", "downloading"):
            self.set_status(ctx, volume_id, status="reserved")
        if connector:
            return await self.attachment_update(ctx, caller, row.id, connector, mode=mode)
        if mode != "null":
            with self.db.session() as s:
                found = s.get(Attachment, row.id)
                assert found is not None
                found.attach_mode = mode
        return self.get_attachment(caller, row.id)

    async def attachment_update(self, ctx: MessageContext, caller: Caller, attachment_id: str,
                                connector: dict[str, Any], mode: str | None = None
                                ) -> Attachment:
        with self.db.session() as s:
            attachment = self.get_attachment_row(s, caller, attachment_id)
            volume = s.get(Volume, attachment.volume_id)
            assert volume is not None
            if "error" in volume.status:
                raise ResourceConflict("Volume attachments can not be updated if the volume "
                                       "is in an error state. The Volume "
                                       f"{volume.id} currently has a status of: "
                                       f"{volume.status} ")
            others = list(s.scalars(select(Attachment).where(
                Attachment.volume_id == volume.id, Attachment.deleted.is_(False))))
            if len(others) > 1 and not volume.multiattach and any(
                    a.connection_info for a in others):
                raise ResourceConflict(f"duplicate connectors detected on volume {volume.id}")
            if mode is not None and mode != "null":
                attachment.attach_mode = mode
            volume_id = volume.id
        # the connection is made by cinder-volume: an RPC call, as cinder-api makes it
        connection_info = await self.svc.bus.call(
            ctx.sent_by("cinder-api"), self.svc.volume_topic, "attachment_update",
            volume_id=volume_id, connector=dict(connector), attachment_id=attachment_id)
        with self.db.session() as s:
            found = s.get(Attachment, attachment_id)
            assert found is not None
            found.connection_info = connection_info
        return self.get_attachment(caller, attachment_id)

    def attachment_complete(self, ctx: MessageContext, caller: Caller,
                            attachment_id: str) -> None:
        with self.db.session() as s:
            attachment = self.get_attachment_row(s, caller, attachment_id)
            attachment.attach_status = "attached"
            volume_id = attachment.volume_id
        self.set_status(ctx, volume_id, status="in-use", attach_status="attached")

    async def attachment_delete(self, ctx: MessageContext, caller: Caller,
                                attachment_id: str) -> list[Attachment]:
        with self.db.session() as s:
            attachment = self.get_attachment_row(s, caller, attachment_id)
            volume_id = attachment.volume_id
            reserved = attachment.attach_status == "reserved"
        if not reserved:
            await self.svc.bus.call(ctx.sent_by("cinder-api"), self.svc.volume_topic,
                                    "attachment_delete", volume_id=volume_id,
                                    attachment_id=attachment_id)
        # volume.finish_detach
        with self.db.session() as s:
            found = s.get(Attachment, attachment_id)
            assert found is not None
            found.deleted = True
            found.attach_status = "detached"
            found.detach_time = utcnow()
        left = self.attachments_of([volume_id])[volume_id]
        if left:
            attached = any(a.attach_status == "attached" for a in left)
            self.set_status(ctx, volume_id,
                            status="in-use" if attached else "reserved",
                            attach_status="attached" if attached else "detached")
        else:
            self.set_status(ctx, volume_id, status="available", attach_status="detached")
        return left

    # -- snapshots ------------------------------------------------------------------------

    def get_snapshot_row(self, s: Session, caller: Caller, snapshot_id: str) -> Snapshot:
        row = s.get(Snapshot, snapshot_id)
        if row is None or row.deleted or not self._visible(caller, row.project_id):
            raise snapshot_not_found(snapshot_id)
        return row

    def get_snapshot(self, caller: Caller, snapshot_id: str) -> Snapshot:
        with self.db.session() as s:
            return self.get_snapshot_row(s, caller, snapshot_id)

    def list_snapshots(self, caller: Caller, params: dict[str, str]
                       ) -> tuple[list[Snapshot], int]:
        all_tenants = caller.is_admin and "all_tenants" in params
        with self.db.session() as s:
            query = select(Snapshot).where(Snapshot.deleted.is_(False))
            if not all_tenants:
                query = query.where(Snapshot.project_id == caller.project_id)
            rows = list(s.scalars(query))
        for key in ("status", "volume_id"):
            if params.get(key):
                rows = [r for r in rows if getattr(r, key) == params[key]]
        if params.get("name"):
            rows = [r for r in rows if r.display_name == params["name"]]
        if params.get("metadata"):
            wanted = parse_metadata_filter(params["metadata"])
            rows = [r for r in rows if all(r.metadata_.get(k) == v for k, v in wanted.items())]
        count = len(rows)
        return page(rows, params, lambda r, k: getattr(r, "volume_size" if k == "size"
                                                       else k, None)), count

    def create_snapshot(self, ctx: MessageContext, caller: Caller, volume_id: str,
                        name: str | None, description: str | None, metadata: dict[str, Any],
                        force: bool, allow_in_use: bool) -> Snapshot:
        with self.db.session() as s:
            volume = self.get_row(s, caller, volume_id)
            if not volume.host:
                raise InvalidVolume("The snapshot cannot be created because volume has not "
                                    "been scheduled to any host.")
            if volume.status == "error":
                raise InvalidVolume("The snapshot cannot be created when the volume is in "
                                    "error status.")
            valid = ("available", "in-use") if force or allow_in_use else ("available",)
            if volume.status not in valid:
                raise InvalidVolume(f"Volume {volume.id} status must be {', '.join(valid)}, "
                                    f"but current status is: {volume.status}.")
            names = self.svc.types.names()
            self.svc.quotas.check(s, volume.project_id, names,
                                  names.get(volume.volume_type_id or "", ""),
                                  {"snapshots": 1, "gigabytes": volume.size}, "snapshots")
            row = Snapshot(id=self.svc.ids.uuid("snapshot"), volume_id=volume.id,
                           project_id=volume.project_id, user_id=caller.user_id,
                           display_name=name, display_description=description,
                           status="creating", progress="0%", volume_size=volume.size,
                           volume_type_id=volume.volume_type_id,
                           metadata_={str(k): str(v) for k, v in (metadata or {}).items()},
                           created_at=utcnow())
            s.add(row)
        self.set_snapshot_status(ctx, row.id, status="creating")
        self.svc.bus.cast(ctx.sent_by("cinder-api"), self.svc.volume_topic, "create_snapshot",
                          snapshot_id=row.id, volume_id=volume_id)
        return self.get_snapshot(caller, row.id)

    def update_snapshot(self, caller: Caller, snapshot_id: str,
                        fields: dict[str, Any]) -> Snapshot:
        with self.db.session() as s:
            row = self.get_snapshot_row(s, caller, snapshot_id)
            if "name" in fields:
                row.display_name = fields["name"]
            if "description" in fields:
                row.display_description = fields["description"]
            if "metadata" in fields:
                row.metadata_ = {str(k): str(v) for k, v in fields["metadata"].items()}
            row.updated_at = utcnow()
        return self.get_snapshot(caller, snapshot_id)

    def delete_snapshot(self, ctx: MessageContext, caller: Caller, snapshot_id: str,
                        force: bool = False) -> None:
        with self.db.session() as s:
            row = self.get_snapshot_row(s, caller, snapshot_id)
            if not force and row.status not in ("available", "error"):
                raise InvalidSnapshot("Snapshot status must be available or error and must "
                                      "not be part of a group.")
            dependents = s.scalars(select(Volume.id).where(
                Volume.snapshot_id == snapshot_id, Volume.deleted.is_(False),
                Volume.status == "creating")).first()
            if dependents is not None:
                raise InvalidSnapshot(f"deleting snapshot {row.display_name or row.id} that "
                                      "has dependent volumes")
        self.set_snapshot_status(ctx, snapshot_id, status="deleting")
        self.svc.bus.cast(ctx.sent_by("cinder-api"), self.svc.volume_topic, "delete_snapshot",
                          snapshot_id=snapshot_id)


def _int_like(value: Any) -> bool:
    try:
        return str(int(str(value))) == str(value).strip() or isinstance(value, int)
    except ValueError:
        return False
