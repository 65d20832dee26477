"""Glance's state and rules: images, their properties, tags and members, and their data.

Rows live in SQLite (glance.sqlite); the bytes of each image live in a file of their own
under `<home>/images/`, as glance's filesystem store keeps them. Nothing here sees HTTP:
handlers.py parses requests into calls on `Images` and shapes what comes back.

Who may do what follows glance's default policies (secure RBAC) and its database layer:
an admin sees and changes everything; a project sees its own images, public and community
ones, and shared ones it is a member of; only the owner (or an admin) changes an image,
and only an admin makes one public. An image a caller cannot see is "not found", never
"forbidden", so its existence does not leak.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge
from labkit.cloud.faults import faults_of
from labkit.cloud.ids import IdSource
from labkit.cloud.image.exceptions import Gone, StoreUnavailable

# -- the tables ---------------------------------------------------------------------------


class ImageBase(DeclarativeBase):
    pass


class ImageRow(ImageBase):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(30))
    visibility: Mapped[str] = mapped_column(String(20))
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    os_hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    disk_format: Mapped[str | None] = mapped_column(String(20))
    container_format: Mapped[str | None] = mapped_column(String(20))
    size: Mapped[int | None] = mapped_column(Integer)
    virtual_size: Mapped[int | None] = mapped_column(Integer)
    checksum: Mapped[str | None] = mapped_column(String(32))
    os_hash_algo: Mapped[str | None] = mapped_column(String(64))
    os_hash_value: Mapped[str | None] = mapped_column(String(128))
    min_ram: Mapped[int] = mapped_column(Integer, default=0)
    min_disk: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    properties: Mapped[list[PropertyRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="PropertyRow.name")
    tags: Mapped[list[TagRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="TagRow.value")
    members: Mapped[list[MemberRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="MemberRow.member")


class PropertyRow(ImageBase):
    """An image property beyond glance's schema (hw_*, os_distro, ...): always a string."""

    __tablename__ = "image_properties"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"),
                                          primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class TagRow(ImageBase):
    __tablename__ = "image_tags"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"),
                                          primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)


class MemberRow(ImageBase):
    """A project a shared image is offered to; it sees the image once it accepts."""

    __tablename__ = "image_members"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"),
                                          primary_key=True)
    member: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


# -- glance's vocabulary ------------------------------------------------------------------

VISIBILITIES = ("public", "private", "shared", "community")
MEMBER_STATUSES = ("pending", "accepted", "rejected")
# glance's [image_format] defaults
DISK_FORMATS = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso",
                "ploop"]
CONTAINER_FORMATS = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]
# what the API never lets a client set, what it keeps for itself
READ_ONLY = ("created_at", "updated_at", "status", "checksum", "size", "virtual_size",
             "direct_url", "self", "file", "schema", "id", "os_hash_algo", "os_hash_value")
# what POST /v2/images refuses to be told (glance's ImageFactory)
READ_ONLY_ON_CREATE = ("created_at", "updated_at", "status", "checksum", "os_hash_algo",
                       "os_hash_value", "size", "virtual_size")
RESERVED = ("location", "deleted", "deleted_at")
RESERVED_PREFIX = "os_glance"
# the attributes an image has of its own (glance's domain Image); anything else is a property
ATTRIBUTES = ("name", "visibility", "protected", "os_hidden", "min_ram", "min_disk", "owner",
              "disk_format", "container_format", "tags", "checksum", "os_hash_algo",
              "os_hash_value", "size", "virtual_size", "status", "created_at", "updated_at",
              "locations", "id")
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at",
             "updated_at")
# glance's defaults: [DEFAULT] limit_param_default, api_limit_max, image_property_quota,
# image_tag_quota, image_member_quota; image_size_cap lowered from 1 TiB to suit a laptop
LIMIT_DEFAULT = 25
LIMIT_MAX = 1000
PROPERTY_QUOTA = 128
TAG_QUOTA = 128
MEMBER_QUOTA = 128
IMAGE_SIZE_CAP = 8 * 1024 ** 3
HASH_ALGO = "sha512"  # glance's [DEFAULT] hashing_algorithm
# the states an image may move to from each state (glance's domain model)
TRANSITIONS = {
    "queued": ("saving", "active", "deleted"),
    "saving": ("active", "killed", "deleted", "queued"),
    "active": ("deleted", "deactivated"),
    "killed": ("deleted",),
    "deactivated": ("active", "deleted"),
}


def base_properties() -> dict[str, Any]:
    """The JSON schema of an image's own attributes, as GET /v2/schemas/image shows them."""
    nullable_string = {"type": ["null", "string"]}
    return {
        "id": {"type": "string", "description": "An identifier for the image",
               "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                          "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
        "name": {**nullable_string, "description": "Descriptive name for the image",
                 "maxLength": 255},
        "status": {"type": "string", "readOnly": True, "description": "Status of the image",
                   "enum": ["queued", "saving", "active", "killed", "deleted", "uploading",
                            "importing", "pending_delete", "deactivated"]},
        "visibility": {"type": "string", "description": "Scope of image accessibility",
                       "enum": list(VISIBILITIES)},
        "protected": {"type": "boolean",
                      "description": "If true, image will not be deletable."},
        "os_hidden": {"type": "boolean", "description": "If true, image will not appear in "
                                                        "default image list response."},
        "checksum": {**nullable_string, "readOnly": True,
                     "description": "md5 hash of image contents.", "maxLength": 32},
        "os_hash_algo": {**nullable_string, "readOnly": True, "maxLength": 64,
                         "description": "Algorithm to calculate the os_hash_value"},
        "os_hash_value": {**nullable_string, "readOnly": True, "maxLength": 128,
                          "description": "Hexdigest of the image contents using the "
                                         "algorithm specified by the os_hash_algo"},
        "owner": {**nullable_string, "description": "Owner of the image", "maxLength": 255},
        "size": {"type": ["null", "integer"], "readOnly": True,
                 "description": "Size of image file in bytes"},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True,
                         "description": "Virtual size of image in bytes"},
        "container_format": {**nullable_string, "description": "Format of the container",
                             "enum": [None, *CONTAINER_FORMATS]},
        "disk_format": {**nullable_string, "description": "Format of the disk",
                        "enum": [None, *DISK_FORMATS]},
        "created_at": {"type": "string", "readOnly": True,
                       "description": "Date and time of image registration"},
        "updated_at": {"type": "string", "readOnly": True,
                       "description": "Date and time of the last image modification"},
        "tags": {"type": "array", "description": "List of strings related to the image",
                 "items": {"type": "string", "maxLength": 255}},
        "direct_url": {"type": "string", "readOnly": True,
                       "description": "URL to access the image file kept in external store"},
        "min_ram": {"type": "integer",
                    "description": "Amount of ram (in MB) required to boot image."},
        "min_disk": {"type": "integer",
                     "description": "Amount of disk space (in GB) required to boot image."},
        "self": {"type": "string", "readOnly": True, "description": "An image self url"},
        "file": {"type": "string", "readOnly": True, "description": "An image file url"},
        "stores": {"type": "string", "readOnly": True,
                   "description": "Store in which image data resides."},
        "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
        "locations": {"type": "array", "items": {
            "type": "object", "properties": {"url": {"type": "string", "maxLength": 255},
                                             "metadata": {"type": "object"}},
            "required": ["url", "metadata"]},
            "description": "A set of URLs to access the image file kept in external store"},
    }


def image_schema() -> dict[str, Any]:
    """GET /v2/schemas/image: the base attributes; other properties must be strings."""
    return {"name": "image", "properties": base_properties(),
            "additionalProperties": {"type": "string"},
            "links": [{"rel": "self", "href": "{self}"},
                      {"rel": "enclosure", "href": "{file}"},
                      {"rel": "describedby", "href": "{schema}"}]}


def images_schema() -> dict[str, Any]:
    """GET /v2/schemas/images: a page of images with its links."""
    return {"name": "images",
            "properties": {"images": {"type": "array", "items": image_schema()},
                           "first": {"type": "string"}, "next": {"type": "string"},
                           "schema": {"type": "string"}},
            "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                      {"rel": "describedby", "href": "{schema}"}]}


def member_schema() -> dict[str, Any]:
    return {"name": "member", "properties": {
        "member_id": {"type": "string",
                      "description": "An identifier for the image member (tenantId)"},
        "image_id": {"type": "string", "description": "An identifier for the image",
                     "pattern": base_properties()["id"]["pattern"]},
        "created_at": {"type": "string",
                       "description": "Date and time of image member creation"},
        "updated_at": {"type": "string",
                       "description": "Date and time of last modification of image member"},
        "status": {"type": "string", "description": "The status of this image member",
                   "enum": list(MEMBER_STATUSES)},
        "schema": {"type": "string", "readOnly": True}}}


def members_schema() -> dict[str, Any]:
    return {"name": "members",
            "properties": {"members": {"type": "array", "items": member_schema()},
                           "schema": {"type": "string"}},
            "links": [{"rel": "self", "href": "{self}"},
                      {"rel": "describedby", "href": "{schema}"}]}


def validate_against_schema(body: dict[str, Any]) -> None:
    """Check a new image (or one changed attribute) against the image schema, as glance does."""
    try:
        jsonschema.validate(body, image_schema())
    except jsonschema.ValidationError as exc:
        raise BadRequest(f"Provided object does not match schema 'image': {exc}") from exc


# -- who is asking ------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """What glance's policy looks at: the token's project, and whether it has admin."""

    project_id: str | None
    is_admin: bool = False
    roles: tuple[str, ...] = field(default=("member", "reader"))

    @property
    def is_member(self) -> bool:
        return self.is_admin or "member" in self.roles


@dataclass
class Change:
    """One JSON-patch operation, already parsed: op is add, replace or remove."""

    op: str
    path: str
    value: Any = None
    draft: int = 10  # 10 for application/openstack-images-v2.1-json-patch, 4 for v2.0


@dataclass
class ListQuery:
    """GET /v2/images, parsed: filters are glance's, plus any image property by name."""

    filters: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    member_status: str = "accepted"
    marker: str | None = None
    limit: int | None = None
    sort_keys: list[str] = field(default_factory=lambda: ["created_at"])
    sort_dirs: list[str] = field(default_factory=lambda: ["desc"])


def isotime(moment: datetime) -> str:
    """Glance's timestamps: whole seconds and a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"Unable to filter on a time: {text!r} is not an ISO 8601 "
                         f"date and time.") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def split_filter_op(expression: str) -> tuple[str, str]:
    """'in:a,b' -> ('in', 'a,b'); a bare value (or an ISO time) compares for equality."""
    left, sep, right = expression.partition(":")
    if not sep:
        return "eq", expression
    try:
        datetime.fromisoformat(expression.replace("Z", "+00:00"))
        return "eq", expression
    except ValueError:
        return left, right


def split_in_values(value: str) -> list[str]:
    """The values of an `in:` filter: comma-separated, double quotes around commas."""
    quoted = False
    for i, char in enumerate(value):
        if char != '"' or (i and value[i - 1] == "\\"):
            continue
        if not quoted and i and value[i - 1] != ",":
            raise BadRequest(f"Invalid filter value {value}. There is no comma before "
                             f"opening quotation mark.")
        if quoted and i + 1 != len(value) and value[i + 1] != ",":
            raise BadRequest(f"Invalid filter value {value}. There is no comma after "
                             f"closing quotation mark.")
        quoted = not quoted
    if quoted:
        raise BadRequest(f"Invalid filter value {value}. The quote is not closed.")
    pattern = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)",?|([^,]+),?|,')
    return [m.group(1) or m.group(2) or "" for m in pattern.finditer(value)]


def _compare(value: Any, op: str, threshold: Any) -> bool:
    match op:
        case "gt":
            return value is not None and value > threshold
        case "gte":
            return value is not None and value >= threshold
        case "lt":
            return value is not None and value < threshold
        case "lte":
            return value is not None and value <= threshold
        case "neq":
            return value != threshold
        case "eq":
            return value == threshold
    raise BadRequest("Unable to filter on a unknown operator.")


# -- the model ----------------------------------------------------------------------------


class Images:
    """Glance's image registry and store. One per cloud; nova calls `get_image` in process."""

    def __init__(self, db: Database, data_dir: Path, ids: IdSource) -> None:
        self.db = db
        self.data_dir = data_dir
        self.ids = ids
        data_dir.mkdir(parents=True, exist_ok=True)

    # -- views

    def view(self, row: ImageRow) -> dict[str, Any]:
        """The image as GET /v2/images/{id} shows it: properties sit beside the attributes."""
        body: dict[str, Any] = {p.name: p.value for p in row.properties}
        body.update(
            name=row.name, disk_format=row.disk_format, container_format=row.container_format,
            visibility=row.visibility, size=row.size, virtual_size=row.virtual_size,
            status=row.status, checksum=row.checksum, protected=row.protected,
            min_ram=row.min_ram, min_disk=row.min_disk, owner=row.owner,
            os_hidden=row.os_hidden, os_hash_algo=row.os_hash_algo,
            os_hash_value=row.os_hash_value, id=row.id,
            created_at=isotime(row.created_at), updated_at=isotime(row.updated_at),
            tags=[t.value for t in row.tags],
            self=f"/v2/images/{row.id}", file=f"/v2/images/{row.id}/file",
            schema="/v2/schemas/image")
        return body

    @staticmethod
    def member_view(row: MemberRow) -> dict[str, Any]:
        return {"member_id": row.member, "image_id": row.image_id, "status": row.status,
                "created_at": isotime(row.created_at), "updated_at": isotime(row.updated_at),
                "schema": "/v2/schemas/member"}

    def data_path(self, image_id: str) -> Path:
        return self.data_dir / image_id

    # -- visibility and policy

    @staticmethod
    def _member_row(row: ImageRow, project_id: str | None) -> MemberRow | None:
        return next((m for m in row.members if m.member == project_id), None)

    def _can_see(self, row: ImageRow, caller: Caller) -> bool:
        """glance's is_image_visible: admin, no owner, public/community, owner, any member."""
        if caller.is_admin or row.owner is None or row.visibility in ("public", "community"):
            return True
        if caller.project_id is None:
            return False
        if row.owner == caller.project_id:
            return True
        return row.visibility == "shared" and self._member_row(row, caller.project_id) is not None

    def _owns(self, row: ImageRow, caller: Caller) -> bool:
        return caller.is_admin or (caller.is_member and caller.project_id is not None
                                   and row.owner == caller.project_id)

    def _visible(self, s: Session, image_id: str, caller: Caller,
                 missing: str | None = None) -> ImageRow:
        row = s.get(ImageRow, image_id)
        if row is None or not self._can_see(row, caller):
            raise NotFound(missing or f"No image found with ID {image_id}")
        return row

    def _mutable(self, s: Session, image_id: str, caller: Caller, action: str) -> ImageRow:
        """An image the caller may change: 404 if it cannot see it, 403 if it is not its own."""
        row = self._visible(s, image_id, caller)
        if not self._owns(row, caller):
            raise Forbidden(f"You are not authorized to complete {action} action.")
        return row

    @staticmethod
    def _check_visibility_policy(visibility: Any, caller: Caller) -> None:
        if visibility == "public" and not caller.is_admin:
            raise Forbidden("You are not authorized to complete publicize_image action.")
        if visibility == "community" and not caller.is_member:
            raise Forbidden("You are not authorized to complete communitize_image action.")

    # -- reading

    def get_image(self, image_id: str, project_id: str | None,
                  is_admin: bool = False) -> dict[str, Any]:
        """The image as the API shows it, for nova in process; NotFound if missing or hidden.

        Besides the API's fields it carries `properties`: the image's own properties alone
        (hw_*, os_*, ...), as nova's ImageMeta wants them.
        """
        caller = Caller(project_id=project_id, is_admin=is_admin)
        with self.db.session() as s:
            row = self._visible(s, image_id, caller)
            image = self.view(row)
            image["properties"] = {p.name: p.value for p in row.properties}
            return image

    def show(self, caller: Caller, image_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return self.view(self._visible(s, image_id, caller))

    def list_images(self, caller: Caller, query: ListQuery) -> tuple[list[dict[str, Any]],
                                                                      str | None]:
        """One page of the images the caller may list, and the marker of the next page.

        The lab holds tens of images, so rows are filtered in Python, where glance's rules
        read plainly, rather than in one long SQL query.
        """
        limit = LIMIT_DEFAULT if query.limit is None else min(query.limit, LIMIT_MAX)
        with self.db.session() as s:
            rows = [r for r in s.scalars(select(ImageRow)) if self._listable(r, caller, query)]
            rows = [r for r in rows if self._matches(r, query)]
            rows = self._sorted(rows, query)
            if query.marker is not None:
                marker = s.get(ImageRow, query.marker)
                if marker is None or not self._can_see(marker, caller):
                    raise BadRequest(f"No image found with ID {query.marker}")
                key = self._sort_key(query)
                position = [r.id for r in rows].index(marker.id) if marker in rows else None
                if position is not None:
                    rows = rows[position + 1:]
                else:  # the marker is filtered out: start after where it would sort
                    rows = [r for r in rows if key(r) > key(marker)]
            page = rows[:limit]
            next_marker = page[-1].id if page and len(page) == limit else None
            return [self.view(r) for r in page], next_marker

    def _listable(self, row: ImageRow, caller: Caller, query: ListQuery) -> bool:
        """glance's list rules: what the caller may see, narrowed by visibility and hidden."""
        owner = caller.project_id
        member = self._member_row(row, owner)
        member_ok = member is not None and (query.member_status == "all"
                                            or member.status == query.member_status)
        if caller.is_admin:
            seen = True
        else:
            seen = (row.visibility in ("public", "community") or (owner and row.owner == owner)
                    or (row.visibility == "shared" and member_ok))
        if not seen:
            return False
        visibility = query.filters.get("visibility")
        if visibility and visibility != "all":
            if row.visibility != visibility:
                return False
        elif row.visibility == "community" and row.owner != owner:
            # community images appear only when asked for (or to their owner)
            return False
        hidden = query.filters.get("os_hidden", "false") == "true"
        return row.os_hidden == hidden if hidden else not row.os_hidden

    def _matches(self, row: ImageRow, query: ListQuery) -> bool:
        props = {p.name: p.value for p in row.properties}
        tags = {t.value for t in row.tags}
        if any(tag not in tags for tag in query.tags):
            return False
        for key, value in query.filters.items():
            if key in ("visibility", "os_hidden"):
                continue
            if key in ("name", "id", "status", "container_format", "disk_format"):
                op, threshold = split_filter_op(value)
                actual = getattr(row, key)
                if op == "in":
                    ok = actual in split_in_values(threshold)
                elif op == "eq":
                    ok = actual == threshold
                else:
                    raise BadRequest(f"Unable to filter by unknown operator '{op}'.")
            elif key in ("size_min", "size_max"):
                try:
                    bound = int(value)
                except ValueError as exc:
                    raise BadRequest("Unable to filter on a range with a non-numeric "
                                     "value.") from exc
                ok = row.size is not None and (row.size >= bound if key == "size_min"
                                               else row.size <= bound)
            elif key in ("created_at", "updated_at"):
                op, when = split_filter_op(value)
                ok = _compare(getattr(row, key).replace(microsecond=0), op, _parse_time(when))
            elif key == "protected":
                ok = row.protected == (value == "true")
            elif key == "owner":
                ok = row.owner == value
            elif key in ("min_ram", "min_disk", "size", "virtual_size"):
                ok = str(getattr(row, key)) == value
            else:  # anything else names an image property
                ok = props.get(key) == value
            if not ok:
                return False
        return True

    @staticmethod
    def _sort_key(query: ListQuery):  # type: ignore[no-untyped-def]
        """A key that sorts rows by the query's keys and directions, with None first."""
        keys = list(query.sort_keys)
        dirs = list(query.sort_dirs)
        if len(dirs) == 1 and len(keys) > 1:
            dirs = dirs * len(keys)
        for extra in ("created_at", "id"):  # glance always adds these as tie-breakers
            if extra not in keys:
                keys.append(extra)
                dirs.append(dirs[0] if dirs else "desc")

        class Key:
            def __init__(self, row: ImageRow) -> None:
                self.values = [getattr(row, k) for k in keys]

            def __lt__(self, other: Key) -> bool:
                for mine, theirs, direction in zip(self.values, other.values, dirs,
                                                   strict=True):
                    if mine == theirs:
                        continue
                    # glance's SQL sorts NULL first
                    smaller = mine is None if mine is None or theirs is None else mine < theirs
                    return smaller if direction == "asc" else not smaller
                return False

            def __gt__(self, other: Key) -> bool:
                return other < self

        return Key

    def _sorted(self, rows: list[ImageRow], query: ListQuery) -> list[ImageRow]:
        return sorted(rows, key=self._sort_key(query))

    # -- creating, changing, deleting

    def create_image(self, caller: Caller, attributes: dict[str, Any],
                     properties: dict[str, str], tags: list[str]) -> dict[str, Any]:
        """POST /v2/images: a queued image with no data yet. Unset visibility means shared."""
        for key in attributes:
            if key in READ_ONLY_ON_CREATE:
                raise Forbidden(f"Attribute '{key}' is read-only.")
        for key in properties:
            if len(key) > 255:
                raise BadRequest("Custom property should not be greater than 255 characters.")
            if key in RESERVED or key.startswith(RESERVED_PREFIX):
                raise Forbidden(f"Attribute '{key}' is reserved.")
        owner = attributes.get("owner") or caller.project_id
        if not caller.is_admin and (not caller.is_member or owner != caller.project_id):
            if owner != caller.project_id:
                raise Forbidden(f"You are not permitted to create images owned by '{owner}'.")
            raise Forbidden("You are not authorized to complete add_image action.")
        visibility = attributes.get("visibility") or "shared"
        self._check_visibility_policy(visibility, caller)
        self._check_limits(len(properties), len(set(tags)))
        for key in ("min_ram", "min_disk"):
            self._check_not_negative(key, attributes.get(key))
        image_id = attributes.get("id") or self.ids.uuid("image")
        now = _now()
        with self.db.session() as s:
            if s.get(ImageRow, image_id) is not None:
                raise Conflict(f"Image ID {image_id} already exists!")
            row = ImageRow(
                id=image_id, name=attributes.get("name"), status="queued",
                visibility=visibility, protected=bool(attributes.get("protected", False)),
                os_hidden=bool(attributes.get("os_hidden", False)), owner=owner,
                disk_format=attributes.get("disk_format"),
                container_format=attributes.get("container_format"),
                min_ram=attributes.get("min_ram") or 0, min_disk=attributes.get("min_disk") or 0,
                created_at=now, updated_at=now,
                properties=[PropertyRow(name=k, value=v) for k, v in properties.items()],
                tags=[TagRow(value=t) for t in sorted(set(tags))])
            s.add(row)
            s.flush()
            return self.view(row)

    @staticmethod
    def _check_limits(properties: int, tags: int) -> None:
        if properties > PROPERTY_QUOTA:
            raise PayloadTooLarge(
                "The limit has been exceeded on the number of allowed image properties. "
                f"Attempted: {properties}, Maximum: {PROPERTY_QUOTA}")
        if tags > TAG_QUOTA:
            raise PayloadTooLarge(
                "The limit has been exceeded on the number of allowed image tags. "
                f"Attempted: {tags}, Maximum: {TAG_QUOTA}")

    @staticmethod
    def _check_not_negative(key: str, value: Any) -> None:
        if value and value < 0:
            raise BadRequest(f"Invalid value '{value}' for parameter '{key}': "
                             "Cannot be a negative value")

    def update_image(self, caller: Caller, image_id: str,
                     changes: list[Change]) -> dict[str, Any]:
        """PATCH /v2/images/{id}: apply every change, or none of them."""
        with self.db.session() as s:
            row = self._visible(s, image_id, caller)
            for change in changes:
                self._apply(row, caller, change)
            self._check_limits(len(row.properties), len(row.tags))
            if changes:
                row.updated_at = _now()
            s.flush()
            return self.view(row)

    def _apply(self, row: ImageRow, caller: Caller, change: Change) -> None:
        key = change.path
        if key == "locations":
            # glance's show_multiple_locations is off: locations are not the API's to change
            verb = "remove" if change.op == "remove" else "update"
            raise Forbidden(f"It's not allowed to {verb} locations if locations are invisible.")
        if key == "visibility" and change.op != "remove":
            self._check_visibility_policy(change.value, caller)
        if not self._owns(row, caller):
            raise Forbidden("You are not authorized to complete modify_image action.")
        props = {p.name: p for p in row.properties}
        if change.op == "remove":
            if key in ATTRIBUTES:
                raise Forbidden(f"Property {key} may not be removed.")
            if key not in props:
                raise Conflict(f"Property {key} does not exist.")
            row.properties.remove(props[key])
            return
        if key == "owner" and change.op == "replace" and not caller.is_admin:
            raise Forbidden("Owner can't be updated by non admin.")
        if change.op == "add" and change.draft == 4 and (key in ATTRIBUTES or key in props):
            raise Conflict(f"Property {key} already present.")
        if key in ATTRIBUTES:
            self._set_attribute(row, key, change.value)
        elif key in props:
            props[key].value = change.value
        elif change.op == "add":
            row.properties.append(PropertyRow(name=key, value=change.value))
        else:
            raise Conflict(f"Property {key} does not exist.")

    def _set_attribute(self, row: ImageRow, key: str, value: Any) -> None:
        if key in ("disk_format", "container_format") and row.status != "queued":
            raise Forbidden(f"Attribute {key} can be only replaced for a queued image.")
        if key in ("min_ram", "min_disk"):
            self._check_not_negative(key, value)
        if key == "tags":
            row.tags = [TagRow(value=t) for t in sorted(set(value))]
        else:
            setattr(row, key, value)

    def delete_image(self, caller: Caller, image_id: str) -> None:
        """DELETE /v2/images/{id}: the row and its data; protected images refuse."""
        with self.db.session() as s:
            row = self._visible(s, image_id, caller,
                                missing=f"Failed to find image {image_id} to delete")
            if not self._owns(row, caller):
                raise Forbidden("You are not authorized to complete delete_image action.")
            if row.protected:
                raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
            s.delete(row)
        self.data_path(image_id).unlink(missing_ok=True)

    def set_status(self, caller: Caller, image_id: str, action: str) -> None:
        """The deactivate and reactivate actions (admin or owner)."""
        target = "deactivated" if action == "deactivate" else "active"
        with self.db.session() as s:
            row = self._mutable(s, image_id, caller, action)
            if row.status == target:
                return
            if row.status not in ("active", "deactivated"):
                raise Forbidden(f"Not allowed to {action} image in status '{row.status}'")
            row.status = target
            row.updated_at = _now()

    # -- tags

    def add_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        if len(tag) > 255:
            raise BadRequest(f"Could not update image: Provided object does not match "
                             f"schema 'image': '{tag}' is too long")
        with self.db.session() as s:
            row = self._tag_target(s, caller, image_id, "update")
            if tag not in {t.value for t in row.tags}:
                self._check_limits(0, len(row.tags) + 1)
                row.tags.append(TagRow(value=tag))
                row.updated_at = _now()

    def delete_tag(self, caller: Caller, image_id: str, tag: str) -> None:
        with self.db.session() as s:
            row = self._tag_target(s, caller, image_id, "delete")
            found = next((t for t in row.tags if t.value == tag), None)
            if found is None:
                raise NotFound()
            row.tags.remove(found)
            row.updated_at = _now()

    def _tag_target(self, s: Session, caller: Caller, image_id: str, verb: str) -> ImageRow:
        row = self._visible(s, image_id, caller, missing=f"Image {image_id} not found.")
        if not self._owns(row, caller):
            raise Forbidden(f"Not allowed to {verb} tags for image {image_id}.")
        return row

    # -- data

    async def upload(self, caller: Caller, image_id: str, chunks: AsyncIterable[bytes],
                     expected_size: int | None = None) -> None:
        """PUT /v2/images/{id}/file: store the bytes, hash them, and make the image active."""
        if expected_size is not None and expected_size > IMAGE_SIZE_CAP:
            raise PayloadTooLarge("The incoming image is too large: The provided image is "
                                  "too large.")
        self._begin_upload(caller, image_id)
        partial = self.data_dir / f".{image_id}.part"
        md5, digest, size = hashlib.md5(usedforsecurity=False), hashlib.new(HASH_ALGO), 0
        try:
            with partial.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > IMAGE_SIZE_CAP:
                        raise PayloadTooLarge("The incoming image is too large: The provided "
                                              "image is too large.")
                    md5.update(chunk)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            self._restore_queued(image_id)
            raise
        self._finish_upload(image_id, partial, size, md5.hexdigest(), digest.hexdigest())

    def store_data(self, caller: Caller, image_id: str, chunks: Iterable[bytes]) -> None:
        """The same as upload, from bytes at hand (the lab's images at startup)."""
        self._begin_upload(caller, image_id)
        partial = self.data_dir / f".{image_id}.part"
        md5, digest, size = hashlib.md5(usedforsecurity=False), hashlib.new(HASH_ALGO), 0
        with partial.open("wb") as out:
            for chunk in chunks:
                size += len(chunk)
                md5.update(chunk)
                digest.update(chunk)
                out.write(chunk)
        self._finish_upload(image_id, partial, size, md5.hexdigest(), digest.hexdigest())

    def _begin_upload(self, caller: Caller, image_id: str) -> None:
        with self.db.session() as s:
            row = self._visible(s, image_id, caller)
            if not self._owns(row, caller):
                raise Forbidden(f"Not allowed to upload image data for image {image_id}")
            if row.status != "queued":
                raise Conflict(f"Image status transition from {row.status} to saving is not "
                               "allowed")
            missing = [k for k in ("disk_format", "container_format") if not getattr(row, k)]
            if missing:
                noun = "Property" if len(missing) == 1 else "Properties"
                raise BadRequest(f"{noun} {', '.join(missing)} must be set prior to saving "
                                 "data.")
            row.status = "saving"
            row.updated_at = _now()

    def _restore_queued(self, image_id: str) -> None:
        with self.db.session() as s:
            row = s.get(ImageRow, image_id)
            if row is not None and row.status == "saving":
                row.status = "queued"
                row.updated_at = _now()

    def _finish_upload(self, image_id: str, partial: Path, size: int, checksum: str,
                       hash_value: str) -> None:
        with self.db.session() as s:
            row = s.get(ImageRow, image_id)
            if row is None or row.status != "saving":
                partial.unlink(missing_ok=True)
                raise Gone(f"Image {image_id} could not be found after upload. The image may "
                           "have been deleted during the upload, cleaning up the chunks "
                           "uploaded.")
            os.replace(partial, self.data_path(image_id))
            row.status, row.size, row.checksum = "active", size, checksum
            row.os_hash_algo, row.os_hash_value = HASH_ALGO, hash_value
            row.updated_at = _now()

    def data(self, caller: Caller, image_id: str) -> tuple[Path | None, dict[str, Any]]:
        """GET /v2/images/{id}/file: the file holding the bytes (None if none yet), the image."""
        with self.db.session() as s:
            row = self._visible(s, image_id, caller)
            if row.status == "deactivated" and not caller.is_admin:
                raise Forbidden("The requested image has been deactivated. Image data "
                                "download is forbidden.")
            image = self.view(row)
        if faults_of(self).image_unreadable(image_id):  # the troubleshooting lab's fault
            raise StoreUnavailable()
        path = self.data_path(image_id)
        return (path if path.exists() else None), image

    # -- members

    def _shared(self, s: Session, caller: Caller, image_id: str) -> ImageRow:
        row = self._visible(s, image_id, caller, missing=f"Image {image_id} not found.")
        if row.visibility != "shared":
            raise Forbidden("Only shared images have members.")
        return row

    def list_members(self, caller: Caller, image_id: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            try:
                row = self._shared(s, caller, image_id)
            except Forbidden as exc:
                raise Forbidden(f"Not allowed to list members for image {image_id}: "
                                f"{exc.message}") from exc
            owner = self._owns(row, caller) or caller.is_admin
            return [self.member_view(m) for m in row.members
                    if owner or m.member == caller.project_id]

    def get_member(self, caller: Caller, image_id: str, member_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            try:
                row = self._shared(s, caller, image_id)
            except Forbidden as exc:  # glance hides what it would refuse here
                raise NotFound(exc.message) from exc
            member = self._member_row(row, member_id)
            allowed = self._owns(row, caller) or member_id == caller.project_id
            if member is None or not allowed:
                raise NotFound(f"{member_id} not found in the member list of the image "
                               f"{image_id}.")
            return self.member_view(member)

    def add_member(self, caller: Caller, image_id: str, member_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._shared_for_change(s, caller, image_id, "create")
            if not self._owns(row, caller):
                raise Forbidden(f"Not allowed to create members for image {image_id}.")
            if self._member_row(row, member_id) is not None:
                raise Conflict(f"Member {member_id} is duplicated for image {image_id}")
            if len(row.members) >= MEMBER_QUOTA:
                raise PayloadTooLarge(f"Image member limit exceeded for image {image_id}: "
                                      f"Maximum: {MEMBER_QUOTA}:")
            now = _now()
            member = MemberRow(image_id=image_id, member=member_id, status="pending",
                               created_at=now, updated_at=now)
            row.members.append(member)
            s.flush()
            return self.member_view(member)

    def update_member(self, caller: Caller, image_id: str, member_id: str,
                      status: Any) -> dict[str, Any]:
        """A member accepts or rejects a shared image; only that member (or an admin) may."""
        with self.db.session() as s:
            row = self._shared_for_change(s, caller, image_id, "update")
            member = self._member_row(row, member_id)
            if member is None or not (self._owns(row, caller)
                                      or member_id == caller.project_id):
                raise NotFound(f"{member_id} not found in the member list of the image "
                               f"{image_id}.")
            if not (caller.is_admin or (caller.is_member and member_id == caller.project_id)):
                raise Forbidden(f"Not allowed to update members for image {image_id}.")
            if status not in MEMBER_STATUSES:
                raise BadRequest('Incorrect request: Status must be "pending", "accepted" or '
                                 '"rejected".')
            member.status = status
            member.updated_at = _now()
            return self.member_view(member)

    def delete_member(self, caller: Caller, image_id: str, member_id: str) -> None:
        with self.db.session() as s:
            row = self._shared_for_change(s, caller, image_id, "delete")
            member = self._member_row(row, member_id)
            if member is None or not (self._owns(row, caller)
                                      or member_id == caller.project_id):
                raise NotFound(f"{member_id} not found in the member list of the image "
                               f"{image_id}.")
            if not self._owns(row, caller):
                raise Forbidden(f"Not allowed to delete members for image {image_id}.")
            row.members.remove(member)

    def _shared_for_change(self, s: Session, caller: Caller, image_id: str,
                           verb: str) -> ImageRow:
        try:
            return self._shared(s, caller, image_id)
        except Forbidden as exc:
            raise Forbidden(f"Not allowed to {verb} members for image {image_id}.") from exc

    # -- the lab's images

    def load_lab(self, lab: Path, owner: str | None) -> list[str]:
        """Create the images data/images.yaml names and that are missing; returns their ids.

        Safe at every start: an image whose id exists is left alone, and one whose upload
        never finished (the cloud stopped half way) gets its data again.
        """
        path = lab / "images.yaml"
        if not path.exists():
            return []
        spec = yaml.safe_load(path.read_text()) or {}
        admin = Caller(project_id=owner, is_admin=True)
        made = []
        for image in spec.get("images", []):
            image_id = image["id"]
            with self.db.session() as s:
                row = s.get(ImageRow, image_id)
                status = row.status if row is not None else None
            if status is None:
                attributes = {k: image[k] for k in (
                    "id", "name", "disk_format", "container_format", "visibility",
                    "min_ram", "min_disk", "protected", "os_hidden") if k in image}
                attributes["owner"] = owner
                properties = {k: str(v) for k, v in (image.get("properties") or {}).items()}
                file = image.get("file") or ""
                if file.startswith("guest:") and _guest_file(file) is None:
                    properties[PLACEHOLDER] = ("the tiny guest is not built: these bytes are "
                                               "a placeholder (`labkit image build`, then "
                                               "`labkit cloud reset`)")
                self.create_image(admin, attributes, properties, image.get("tags") or [])
                status = "queued"
            elif status == "saving":
                self._restore_queued(image_id)
                status = "queued"
            source = lab_image_file(lab, image)
            if status == "queued" and source is not None:
                self.store_data(admin, image_id, _read_chunks(source))
            made.append(image_id)
        return made

    def lab_placeholders(self) -> list[str]:
        """The names of lab images that hold a placeholder instead of the built guest."""
        with self.db.session() as s:
            return sorted(row.name for row in s.scalars(select(ImageRow))
                          if any(p.name == PLACEHOLDER for p in row.properties))

    def forget_partial_uploads(self) -> None:
        """After a restart, uploads that were under way when the cloud stopped are over."""
        for partial in self.data_dir.glob(".*.part"):
            partial.unlink(missing_ok=True)
        with self.db.session() as s:
            s.execute(delete(MemberRow).where(MemberRow.image_id.not_in(
                select(ImageRow.id))))
            for row in s.scalars(select(ImageRow).where(ImageRow.status == "saving")):
                row.status = "queued"


# the property that marks a lab image loaded while the tiny guest was not built
PLACEHOLDER = "labkit_placeholder"


def _guest_file(file: str) -> Path | None:
    """`guest:<part>` (kernel, ramdisk, disk): that file of the built guest, if built."""
    if not file.startswith("guest:"):
        return None
    from labkit.cloud.guest import built_image

    built = built_image()
    return getattr(built, file.removeprefix("guest:")) if built is not None else None


def lab_image_file(lab: Path, image: dict[str, Any]) -> Path | None:
    """Where a lab image's bytes come from: the built guest's part, a file under data/, or
    its placeholder while the guest is not built."""
    file = image.get("file")
    if not file:
        return None
    if file.startswith("guest:"):
        built = _guest_file(file)
        return built if built is not None else lab / image["placeholder"]
    return lab / file


def _read_chunks(path: Path, size: int = 1 << 20) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk
