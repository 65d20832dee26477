"""What nova-api does with a server request once the body is valid (nova.compute.api).

Create checks the flavor, image, key pair, zone, group and quotas, writes the
instances (vm_state building, task_state scheduling) and casts to the conductor.
Actions check the instance's state, set the task state and cast to its host.
Volume attach and detach follow nova's attachments flow (see `attach_volume`).
Nothing here sees HTTP; errors are labkit.cloud.errors with nova's messages.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.block_devices import BlockDeviceMapping, match_device
from labkit.cloud.compute.cinder import InvalidInput, InvalidVolume, VolumeNotFound
from labkit.cloud.compute.instances import NOSTATE, Instance
from labkit.cloud.compute.migrations import Migration
from labkit.cloud.compute.states import set_state
from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound
from labkit.cloud.virt.driver import GuestNotFound

if TYPE_CHECKING:
    from labkit.cloud.compute.service import ComputeService

# Image fields that are not properties (what the scheduler's ImagePropertiesFilter reads)
IMAGE_CORE = {"id", "name", "status", "visibility", "owner", "size", "virtual_size",
              "checksum", "os_hash_algo", "os_hash_value", "disk_format", "container_format",
              "min_ram", "min_disk", "protected", "tags", "created_at", "updated_at", "file",
              "self", "schema", "properties", "direct_url", "locations", "os_hidden", "stores"}
SCHEDULER_IMAGE_KEYS = {"architecture", "hypervisor_type", "vm_mode"}
# task states a hard reboot may interrupt (nova's task_states.ALLOW_REBOOT)
ALLOW_HARD_REBOOT = (None, "rebooting", "reboot_pending", "reboot_started", "resuming",
                     "rebooting_hard", "unpausing", "pausing", "suspending")
# vm_states an attach or a detach may start from (shelving is not in this lab)
VOLUME_VM_STATES = ("active", "paused", "stopped", "resized", "soft-delete")
MAX_USER_DATA = 65535  # bytes once decoded, nova's limit
HOSTNAME_CHARS = re.compile(r"[^\w.-]+")


@dataclass
class CreateRequest:
    """A server create, after the schema check."""

    name: str
    flavor_ref: str
    image_ref: str
    key_name: str | None = None
    availability_zone: str | None = None
    networks: Any = None  # "auto", "none", a list, or None before 2.37
    security_groups: list[str] = field(default_factory=lambda: ["default"])
    block_device_mapping: list[dict[str, Any]] = field(default_factory=list)
    min_count: int = 1
    max_count: int = 1
    scheduler_hints: dict[str, Any] = field(default_factory=dict)
    user_data: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    access_ip_v4: str = ""
    access_ip_v6: str = ""
    config_drive: bool = False


def scheduling_properties(image: dict[str, Any]) -> dict[str, Any]:
    """The image properties the scheduler reads (hw_*, img_* and the old bare names)."""
    return {k: v for k, v in image.items() if k not in IMAGE_CORE
            and (k.startswith(("hw_", "img_")) or k in SCHEDULER_IMAGE_KEYS)}


def is_uuid_like(value: Any) -> bool:
    """oslo's is_uuid_like: a UUID, with or without dashes, in either case."""
    try:
        return uuidlib.UUID(str(value)).hex == str(value).lower().replace("-", "")
    except ValueError:
        return False


def hostname_for(name: str, uuid: str) -> str:
    """Nova's sanitised hostname: cut to 63 characters, spaces, underscores and dots made
    dashes, anything else odd dropped, lower case; "Server-<uuid>" when nothing is left."""
    cleaned = HOSTNAME_CHARS.sub("", re.sub(r"[ _.]", "-", name[:63])).lower().strip(".-")
    return cleaned or f"Server-{uuid}"[:63]


def kept_flavor(flavor: dict[str, Any]) -> dict[str, Any]:
    """The copy of a flavor nova keeps with an instance (and a migration keeps two of)."""
    return {k: flavor[k] for k in ("flavorid", "name", "vcpus", "memory_mb", "root_gb",
                                   "ephemeral_gb", "swap", "extra_specs", "rxtx_factor")}


class ServersAPI:
    def __init__(self, nova: ComputeService) -> None:
        self.nova = nova

    # -- create

    def _flavor(self, ctx: MessageContext, flavor_ref: str) -> dict[str, Any]:
        # clients may send a flavor's URL; nova takes its last segment
        flavor_id = str(flavor_ref).rstrip("/").rsplit("/", 1)[-1]
        try:
            flavor = self.nova.flavors.find_for_project(flavor_id, ctx.project_id, ctx.is_admin)
        except NotFound as exc:
            raise BadRequest("Invalid flavorRef provided.") from exc
        if flavor.get("disabled"):  # nova treats a disabled flavor as one not found
            raise BadRequest("Invalid flavorRef provided.")
        return flavor

    def _image(self, ctx: MessageContext, request: CreateRequest) -> dict[str, Any]:
        image_id = request.image_ref.rstrip("/").rsplit("/", 1)[-1] if request.image_ref else ""
        for bdm in request.block_device_mapping:
            source = bdm.get("source_type")
            if source in ("volume", "snapshot", "blank") or bdm.get(
                    "destination_type") == "volume":
                raise BadRequest("Block Device Mapping is Invalid: this lab boots servers "
                                 "from images onto a local disk only; attach volumes to a "
                                 "server once it runs.")
            if source == "image" and str(bdm.get("boot_index")) == "0" and not image_id:
                image_id = bdm.get("uuid") or ""
        if not image_id:
            raise BadRequest("Missing imageRef attribute")
        try:
            image = self.nova.images.get_image(image_id, ctx.project_id, ctx.is_admin)
        except NotFound as exc:
            raise BadRequest("Can not find requested image") from exc
        if image.get("status") != "active":
            raise BadRequest(f"Image {image_id} is not active.")
        return image

    def _check_fits(self, ctx: MessageContext, flavor: dict[str, Any],
                    image: dict[str, Any]) -> None:
        """nova's checks, in its order: RAM, then (for a disk of its own) image size and
        the image's min_disk."""
        if (image.get("min_ram") or 0) > flavor["memory_mb"]:
            raise BadRequest("Flavor's memory is too small for requested image.")
        disk = flavor["root_gb"] * 1024 ** 3
        if not disk:
            if not ctx.is_admin:
                raise Forbidden("Only volume-backed servers are allowed for flavors with "
                                "zero disk.")
            return
        size = image.get("size") or 0
        if size > disk:
            raise BadRequest(f"Flavor's disk is too small for requested image. Flavor disk "
                             f"is {disk} bytes, image is {size} bytes.")
        min_disk = (image.get("min_disk") or 0) * 1024 ** 3
        if min_disk > disk:
            raise BadRequest(f"Flavor's disk is smaller than the minimum size specified in "
                             f"image metadata. Flavor disk is {disk} bytes, minimum size is "
                             f"{min_disk} bytes.")

    def _zone(self, ctx: MessageContext, asked: str | None) -> tuple[str | None, str | None]:
        """(zone, forced host). "zone:host" pins a host, which only admins may do."""
        if not asked:
            return None, None
        zone, _, host = asked.partition(":")
        if host and not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:servers:create:forced_host "
                             "to be performed.")
        zones = {n.availability_zone for n in self.nova.hosts.nodes()}
        if zone and zone not in zones:
            raise BadRequest("The requested availability zone is not available")
        if host and host not in self.nova.computes:
            raise BadRequest(f"Compute host {host} could not be found.")
        return zone or None, host or None

    def _group(self, ctx: MessageContext, hints: dict[str, Any]) -> dict[str, Any] | None:
        group_id = hints.get("group")
        if not group_id:
            return None
        try:
            return self.nova.server_groups.get(str(group_id), ctx.project_id, ctx.is_admin)
        except (NotFound, Forbidden) as exc:
            raise BadRequest(f"Instance group {group_id} could not be found.") from exc

    def _networks(self, networks: Any, max_count: int) -> Any:
        """The checks nova's API makes of `networks` before it asks neutron anything."""
        if not isinstance(networks, list):
            return networks
        ports: list[str] = []
        for entry in networks:
            port, fixed_ip = entry.get("port"), entry.get("fixed_ip")
            if port:
                if port in ports:
                    raise BadRequest(f"Port ID '{port}' was specified twice: you cannot "
                                     f"attach a port multiple times.")
                if fixed_ip is not None:
                    raise BadRequest(f"Specified Fixed IP '{fixed_ip}' cannot be used with "
                                     f"port '{port}': the two cannot be specified together.")
                ports.append(port)
                continue
            if "uuid" not in entry:
                raise BadRequest("Bad network format: missing 'uuid'")
            if not is_uuid_like(entry["uuid"]):
                raise BadRequest(f"Bad networks format: network uuid is not in proper format "
                                 f"({entry['uuid']})")
        if max_count > 1:
            if ports:
                raise BadRequest("Failed to launch instances: Unable to launch multiple "
                                 "instances with a single configured port ID. Please launch "
                                 "your instance one by one with different ports.")
            if any(e.get("fixed_ip") for e in networks):
                raise BadRequest("Failed to launch instances: max_count cannot be greater "
                                 "than 1 if an fixed_ip is specified.")
        return networks

    def _user_data(self, user_data: str | None) -> str | None:
        if user_data is None:
            return None
        try:
            base64.b64decode(user_data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("User data needs to be valid base 64.") from exc
        if len(user_data) > MAX_USER_DATA:
            raise BadRequest(f"User data too large. User data must be no larger than "
                             f"{MAX_USER_DATA} bytes once base64 encoded. Your data is "
                             f"{len(user_data)} bytes")
        return user_data

    def create(self, ctx: MessageContext, request: CreateRequest) -> tuple[str, list[str]]:
        """Write the instances and cast to the conductor: (reservation id, instance uuids).

        In-process callers use this one; it does not ask neutron about `networks` (the
        build does). The API's handler calls `create_checked`, which does."""
        return self._launch(ctx, request, self._prepare(ctx, request), request.max_count)

    async def create_checked(self, ctx: MessageContext,
                             request: CreateRequest) -> tuple[str, list[str]]:
        """`create`, with nova's checks of `networks` and security groups against neutron
        in between (unknown network 400, port in use 409, ...); the port quota may lower
        the count as nova's does."""
        prepared = self._prepare(ctx, request)
        fit = await self.nova.network.validate_networks(
            ctx, prepared["networks"], list(request.security_groups), request.max_count)
        if fit < request.min_count:
            raise Forbidden("Maximum number of ports exceeded")
        return self._launch(ctx, request, prepared, min(fit, request.max_count))

    def _prepare(self, ctx: MessageContext, request: CreateRequest) -> dict[str, Any]:
        """Every check of the request that needs no other service but glance."""
        nova = self.nova
        flavor = self._flavor(ctx, request.flavor_ref)
        image = self._image(ctx, request)
        self._check_fits(ctx, flavor, image)
        key_data = None
        if request.key_name:
            try:
                key_data = nova.keypairs.get(ctx.user_id, request.key_name)["public_key"]
            except NotFound as exc:
                raise BadRequest("Invalid key_name provided.") from exc
        zone, forced_host = self._zone(ctx, request.availability_zone)
        group = self._group(ctx, request.scheduler_hints)
        networks = self._networks(request.networks, request.max_count)
        user_data = self._user_data(request.user_data)
        if request.min_count > request.max_count:
            raise BadRequest("min_count must be <= max_count")
        return {"flavor": flavor, "image": image, "key_data": key_data, "zone": zone,
                "forced_host": forced_host, "group": group, "networks": networks,
                "user_data": user_data}

    def _launch(self, ctx: MessageContext, request: CreateRequest, prepared: dict[str, Any],
                max_count: int) -> tuple[str, list[str]]:
        nova = self.nova
        flavor, image, key_data = prepared["flavor"], prepared["image"], prepared["key_data"]
        zone, forced_host, group = prepared["zone"], prepared["forced_host"], prepared["group"]
        networks, user_data = prepared["networks"], prepared["user_data"]
        count = nova.quotas.how_many_fit(ctx.project_id or "", flavor, request.min_count,
                                         max_count)
        kept = kept_flavor(flavor)
        reservation_id = "r-" + nova.ids.hex_id("reservation")[:8]
        now = time.time()
        uuids = [nova.ids.uuid("instance") for _ in range(count)]
        with nova.database.session() as s:
            for index, uuid in enumerate(uuids):
                name = request.name if count == 1 else f"{request.name}-{index + 1}"
                s.add(Instance(
                    uuid=uuid, display_name=name, description=request.description,
                    project_id=ctx.project_id, user_id=ctx.user_id, image_ref=image["id"],
                    flavor=kept, key_name=request.key_name, key_data=key_data,
                    vm_state="building", task_state="scheduling", power_state=NOSTATE,
                    requested_availability_zone=zone, reservation_id=reservation_id,
                    launch_index=index, hostname=hostname_for(name, uuid), user_data=user_data,
                    config_drive="True" if request.config_drive else "",
                    metadata_=dict(request.metadata), tags=list(request.tags),
                    security_groups=list(request.security_groups),
                    requested_networks=networks,
                    block_device_mapping=list(request.block_device_mapping),
                    scheduler_hints=dict(request.scheduler_hints),
                    group_id=group["id"] if group else None,
                    access_ip_v4=request.access_ip_v4, access_ip_v6=request.access_ip_v6,
                    created_at=now, updated_at=now))
                nova.instances.start_action(s, uuid, "create", ctx.request_id or "",
                                            ctx.user_id or "", ctx.project_id or "")
        for uuid in uuids:
            if group:
                nova.server_groups.add_member(group["id"], uuid)
            set_state(nova.trace, nova.instances, ctx, uuid)
        request_spec = {
            "flavor": kept,
            "image": {"id": image["id"], "name": image.get("name"),
                      "properties": scheduling_properties(image)},
            "availability_zone": zone, "project_id": ctx.project_id,
            "scheduler_hints": dict(request.scheduler_hints), "num_instances": count,
            "requested_networks": networks,
            "group": ({"uuid": group["id"], "name": group.get("name", ""),
                       "policy": group["policy"], "rules": group.get("rules") or {},
                       "members": [*group.get("members", []), *uuids]} if group else None),
            "ignore_hosts": [],
        }
        if forced_host:
            # a forced host skips the filters in nova; here: every other host is ignored
            request_spec["ignore_hosts"] = [h for h in nova.computes if h != forced_host]
        nova.bus.cast(ctx, "conductor", "schedule_and_build_instances",
                      request_spec=request_spec, instance_uuids=uuids)
        return reservation_id, uuids

    # -- life-cycle actions

    def instance(self, ctx: MessageContext, uuid: str) -> Instance:
        """The instance as this caller may see it: NotFound for another project's."""
        with self.nova.database.session() as s:
            return self.nova.instances.get(s, uuid, None if ctx.is_admin else ctx.project_id)

    @staticmethod
    def _refuse(action: str, instance: Instance, attr: str) -> Conflict:
        return Conflict(f"Cannot '{action}' instance {instance.uuid} while it is in "
                        f"{attr} {getattr(instance, attr)}")

    def _check(self, ctx: MessageContext, action: str, instance: Instance,
               vm_states: tuple[str, ...], task_states: tuple[str | None, ...] = (None,)
               ) -> None:
        """nova's order: the lock, the host, then the states."""
        if instance.locked and not ctx.is_admin:
            raise Conflict(f"Instance {instance.uuid} is locked")
        self._require_host(instance)
        if instance.vm_state not in vm_states:
            raise self._refuse(action, instance, "vm_state")
        if instance.task_state not in task_states:
            raise self._refuse(action, instance, "task_state")

    def _require_host(self, instance: Instance) -> None:
        """nova's check_instance_host: an action for a host needs a host that listens."""
        if instance.host is None or not self.nova.bus_has(f"compute.{instance.host}"):
            raise Conflict(f"Instance {instance.uuid} is not ready")

    def _act(self, ctx: MessageContext, instance: Instance, action: str, task_state: str,
             method: str, **kwargs: Any) -> None:
        with self.nova.database.session() as s:
            self.nova.instances.start_action(s, instance.uuid, action, ctx.request_id or "",
                                             ctx.user_id or "", ctx.project_id or "")
        set_state(self.nova.trace, self.nova.instances, ctx, instance.uuid,
                  task_state=task_state)
        self.nova.bus.cast(ctx, f"compute.{instance.host}", method,
                           instance_uuid=instance.uuid, **kwargs)

    def stop(self, ctx: MessageContext, uuid: str) -> None:
        instance = self.instance(ctx, uuid)
        self._check(ctx, "stop", instance, ("active", "error"))
        self._act(ctx, instance, "stop", "powering-off", "stop_instance")

    def start(self, ctx: MessageContext, uuid: str) -> None:
        instance = self.instance(ctx, uuid)
        self._check(ctx, "start", instance, ("stopped",))
        self._act(ctx, instance, "start", "powering-on", "start_instance")

    def reboot(self, ctx: MessageContext, uuid: str, reboot_type: str) -> None:
        instance = self.instance(ctx, uuid)
        if reboot_type == "HARD":
            self._check(ctx, "reboot", instance, ("active", "stopped", "error"),
                        ALLOW_HARD_REBOOT)
        else:
            self._check(ctx, "reboot", instance, ("active",))
        task = "rebooting_hard" if reboot_type == "HARD" else "rebooting"
        self._act(ctx, instance, "reboot", task, "reboot_instance", reboot_type=reboot_type)

    async def console_output(self, ctx: MessageContext, uuid: str, length: int | None) -> str:
        """The guest's console log, asked of its compute host (an RPC call, as nova's)."""
        instance = self.instance(ctx, uuid)
        self._require_host(instance)
        try:
            return await self.nova.bus.call(ctx, f"compute.{instance.host}",
                                            "get_console_output", instance_uuid=uuid,
                                            tail_length=length)
        except GuestNotFound as exc:
            raise NotFound("Guest does not have a console available.") from exc

    def delete(self, ctx: MessageContext, uuid: str) -> None:
        nova = self.nova
        instance = self.instance(ctx, uuid)
        if instance.locked and not ctx.is_admin:
            raise Conflict(f"Instance {instance.uuid} is locked")
        if instance.task_state == "deleting":
            return
        with nova.database.session() as s:
            nova.instances.start_action(s, uuid, "delete", ctx.request_id or "",
                                        ctx.user_id or "", ctx.project_id or "")
        if instance.vm_state == "resized":
            # nova's _confirm_resize_on_deleting: the source's copy and the migration's
            # allocation there go too
            migration = nova.migrations.for_instance(uuid, status="finished")
            if migration:
                self.start_confirm(ctx, instance, migration[-1])
        if instance.host is None or instance.host not in nova.computes:
            # never reached a host: nova deletes it in the API ("local delete")
            nova.release_allocation(ctx, uuid, ctx.source)
            nova.finish_delete(ctx, uuid)
            return
        set_state(nova.trace, nova.instances, ctx, uuid, task_state="deleting")
        nova.bus.cast(ctx, f"compute.{instance.host}", "terminate_instance",
                      instance_uuid=uuid)

    def update(self, ctx: MessageContext, uuid: str, values: dict[str, Any]) -> None:
        instance = self.instance(ctx, uuid)
        # a rename keeps the hostname: nova changes it only when asked (2.90's "hostname")
        self.nova.instances.update(instance.uuid, **values)

    # -- resize (nova.compute.api's resize, confirm_resize, revert_resize)

    def resize(self, ctx: MessageContext, uuid: str, flavor_ref: str) -> None:
        """Check as nova's API does, then RESIZE (task resize_prep) and cast the
        conductor's migrate_server; the rest happens on the hosts (compute/resize.py)."""
        nova = self.nova
        instance = self.instance(ctx, uuid)
        self._check(ctx, "resize", instance, ("active", "stopped"))
        flavor_id = str(flavor_ref).rstrip("/").rsplit("/", 1)[-1]
        try:
            flavor = nova.flavors.find_for_project(flavor_id, ctx.project_id, ctx.is_admin)
        except NotFound as exc:
            raise BadRequest(f"Flavor {flavor_id} could not be found.") from exc
        if flavor.get("disabled"):
            raise BadRequest(f"Flavor {flavor_id} could not be found.")
        old = instance.flavor
        if str(flavor["flavorid"]) == str(old.get("flavorid")):
            raise BadRequest("When resizing, instances must change flavor!")
        if flavor["root_gb"] == 0 and old.get("root_gb", 0) != 0:
            raise BadRequest("Server disk was unable to be resized because: Resize to zero "
                             "disk flavor is not allowed.")
        if flavor["root_gb"] < old.get("root_gb", 0):
            # nova finds this on the source host (the libvirt driver refuses); the lab's
            # API says it before anything moves
            raise BadRequest("Resize error: Unable to resize disk down.")
        nova.quotas.check_upsize(instance.project_id, old, flavor)
        new = kept_flavor(flavor)
        with nova.database.session() as s:
            nova.instances.start_action(s, uuid, "resize", ctx.request_id or "",
                                        ctx.user_id or "", ctx.project_id or "")
        set_state(nova.trace, nova.instances, ctx, uuid, task_state="resize_prep", progress=0)
        nova.bus.cast(ctx, "conductor", "migrate_server", instance_uuid=uuid, flavor=new,
                      request_spec=self._move_spec(instance, new))

    def _move_spec(self, instance: Instance, flavor: dict[str, Any]) -> dict[str, Any]:
        """The instance's request spec again, with the new flavor (nova keeps the boot's
        request spec; the lab rebuilds it from the instance)."""
        try:
            image = self.nova.images.get_image(instance.image_ref, instance.project_id,
                                               is_admin=True)
        except NotFound:
            image = {"id": instance.image_ref}
        group = None
        if instance.group_id:
            try:
                found = self.nova.server_groups.get(instance.group_id, None, True)
                group = {"uuid": found["id"], "name": found.get("name", ""),
                         "policy": found["policy"], "rules": found.get("rules") or {},
                         "members": list(found.get("members", []))}
            except (NotFound, Forbidden):
                group = None
        return {"flavor": flavor,
                "image": {"id": image["id"], "name": image.get("name"),
                          "properties": scheduling_properties(image)},
                "availability_zone": instance.requested_availability_zone,
                "project_id": instance.project_id,
                "scheduler_hints": dict(instance.scheduler_hints or {}), "num_instances": 1,
                "requested_networks": instance.requested_networks, "group": group,
                "ignore_hosts": []}

    def _finished_migration(self, uuid: str) -> Migration:
        """The resize waiting for a confirm or a revert (nova's
        get_by_instance_and_status(..., "finished"))."""
        found = self.nova.migrations.for_instance(uuid, status="finished")
        if not found:
            raise BadRequest("Instance has not been resized.")
        return found[-1]

    def confirm_resize(self, ctx: MessageContext, uuid: str) -> None:
        instance = self.instance(ctx, uuid)
        self._check(ctx, "confirmResize", instance, ("resized",))
        migration = self._finished_migration(uuid)
        self.start_confirm(ctx, instance, migration)

    def start_confirm(self, ctx: MessageContext, instance: Instance,
                      migration: Migration) -> None:
        """The confirm once checked: the API's and the periodic auto-confirm's."""
        nova = self.nova
        nova.migrations.update(migration.id, status="confirming")
        with nova.database.session() as s:
            nova.instances.start_action(s, instance.uuid, "confirmResize",
                                        ctx.request_id or "", ctx.user_id or "",
                                        ctx.project_id or "")
        nova.bus.cast(ctx, f"compute.{migration.source_compute}", "confirm_resize",
                      instance_uuid=instance.uuid, migration_id=migration.id)

    def revert_resize(self, ctx: MessageContext, uuid: str) -> None:
        nova = self.nova
        instance = self.instance(ctx, uuid)
        self._check(ctx, "revertResize", instance, ("resized",))
        migration = self._finished_migration(uuid)
        # going back to the old flavor is an upsize too when it was bigger
        nova.quotas.check_upsize(instance.project_id, migration.new_flavor,
                                 migration.old_flavor)
        nova.migrations.update(migration.id, status="reverting")
        with nova.database.session() as s:
            nova.instances.start_action(s, uuid, "revertResize", ctx.request_id or "",
                                        ctx.user_id or "", ctx.project_id or "")
        set_state(nova.trace, nova.instances, ctx, uuid, task_state="resize_reverting")
        nova.bus.cast(ctx, f"compute.{migration.dest_compute}", "revert_resize",
                      instance_uuid=uuid, migration_id=migration.id)

    # -- volumes (nova.compute.api's attach_volume and detach_volume)

    async def _volume(self, ctx: MessageContext, volume_id: str) -> dict[str, Any]:
        """The volume, as the caller's own token would get it from cinder: another
        project's volume is not found."""
        volume = await self.nova.volume.get(ctx, volume_id)
        owner = volume.get("os-vol-tenant-attr:tenant_id")
        if not ctx.is_admin and owner is not None and owner != ctx.project_id:
            raise VolumeNotFound(volume_id)
        return volume

    def _check_volume_state(self, ctx: MessageContext, action: str,
                            instance: Instance) -> None:
        """nova's check_instance_lock and check_instance_state, before anything else."""
        if instance.locked and not ctx.is_admin:
            raise Conflict(f"Instance {instance.uuid} is locked")
        if instance.vm_state not in VOLUME_VM_STATES:
            raise self._refuse(action, instance, "vm_state")
        if instance.task_state is not None:
            raise self._refuse(action, instance, "task_state")

    def _check_not_attached(self, volume: dict[str, Any], instance: Instance) -> None:
        """nova's _check_volume_already_attached: since cinder 3.44 would let the same
        volume be attached twice, nova refuses from its own mappings."""
        bdms = self.nova.block_devices.for_volume(volume["id"])
        if not bdms:
            return
        if not volume.get("multiattach"):
            uuids = " ".join(b.instance_uuid for b in bdms)
            raise InvalidVolume(f"volume {volume['id']} is already attached to instances: "
                                f"{uuids}")
        if any(b.instance_uuid == instance.uuid for b in bdms):
            raise InvalidVolume(f"volume {volume['id']} already attached")

    async def attach_volume(self, ctx: MessageContext, uuid: str, volume_id: str,
                            device: str | None = None, tag: str | None = None,
                            delete_on_termination: bool = False) -> BlockDeviceMapping:
        """Reserve a device on the compute host (an RPC call), reserve the volume in
        cinder (an attachment with no connector), then cast the attach to the host.

        A `device` asked for is checked for its form and then ignored: the libvirt
        driver picks the next free name itself, as nova's has since Liberty. Nova from
        2.101 makes the reserve in the conductor and answers 202; below that (all this
        lab advertises) nova-api makes it and answers with the device."""
        instance = self.instance(ctx, uuid)
        self._check_volume_state(ctx, "attach_volume", instance)
        if device and match_device(device) is None:
            raise BadRequest(f"The supplied device path ({device}) is invalid.")
        volume = await self._volume(ctx, volume_id)
        self._check_not_attached(volume, instance)
        self._require_host(instance)
        nova = self.nova
        reserved = await nova.bus.call(
            ctx, f"compute.{instance.host}", "reserve_block_device_name",
            instance_uuid=uuid, volume_id=volume_id, tag=tag,
            delete_on_termination=delete_on_termination)
        try:
            attachment = await nova.volume.attachment_create(ctx, volume_id, uuid)
            bdm = nova.block_devices.update(reserved["uuid"], attachment_id=attachment["id"])
        except Exception:
            # nothing of the attach stays: the device name is free again
            nova.block_devices.destroy(reserved["uuid"])
            raise
        with nova.database.session() as s:
            nova.instances.start_action(s, uuid, "attach_volume", ctx.request_id or "",
                                        ctx.user_id or "", ctx.project_id or "")
        nova.bus.cast(ctx, f"compute.{instance.host}", "attach_volume", instance_uuid=uuid,
                      bdm_uuid=bdm.uuid)
        return bdm

    async def detach_volume(self, ctx: MessageContext, uuid: str, volume_id: str) -> None:
        """Check the attachment, mark the volume detaching in cinder, cast the detach."""
        instance = self.instance(ctx, uuid)
        await self._volume(ctx, volume_id)
        try:
            bdm = self.nova.block_devices.get(volume_id, uuid)
        except NotFound as exc:
            raise NotFound(f"Instance {uuid} is not attached to volume {volume_id}") from exc
        self._check_volume_state(ctx, "detach_volume", instance)
        self._require_host(instance)
        try:
            await self.nova.volume.begin_detaching(ctx, volume_id)
        except InvalidInput as exc:
            raise InvalidVolume(exc.message) from exc
        with self.nova.database.session() as s:
            self.nova.instances.start_action(s, uuid, "detach_volume", ctx.request_id or "",
                                             ctx.user_id or "", ctx.project_id or "")
        self.nova.bus.cast(ctx, f"compute.{instance.host}", "detach_volume",
                           instance_uuid=uuid, volume_id=volume_id,
                           attachment_id=bdm.attachment_id)
