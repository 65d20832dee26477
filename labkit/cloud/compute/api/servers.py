"""/v2.1/servers: create, list, show, update, delete, and the actions stop, start, reboot,
resize, confirmResize, revertResize and os-getConsoleOutput.

The body a server shows depends on the microversion (2.3 extended attributes,
2.9 locked, 2.16 host_status, 2.19 description, 2.26 tags, 2.47 the flavor
embedded, 2.63 trusted certificates, 2.71 server groups, 2.73 locked_reason). The
volumes attached come from nova's block device mappings.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.api.errors import NAME, as_bool, validate
from labkit.cloud.compute.api.microversion import APIVersion, version
from labkit.cloud.compute.api.versions import next_links, page, resource_links
from labkit.cloud.compute.flavors import Flavors
from labkit.cloud.compute.instances import STATUSES, Instance
from labkit.cloud.compute.network import addresses
from labkit.cloud.compute.servers import CreateRequest, ServersAPI
from labkit.cloud.errors import BadRequest
from labkit.cloud.http import context, read_json, request_info

PROGRESS_SHOWN = ("ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE", "MIGRATING")
METADATA: dict[str, Any] = {
    "type": "object", "maxProperties": 128,
    "patternProperties": {"^[a-zA-Z0-9-_:. ]{1,255}$": {"type": "string", "maxLength": 255}},
    "additionalProperties": False}
NETWORKS: dict[str, Any] = {"oneOf": [
    {"type": "array", "items": {"type": "object", "properties": {
        "uuid": {"type": "string"}, "port": {"type": ["string", "null"]},
        "fixed_ip": {"type": "string"}, "tag": {"type": "string"}},
        "additionalProperties": False}},
    {"type": "string", "enum": ["none", "auto"]}]}
BDM: dict[str, Any] = {"type": "array", "items": {"type": "object", "properties": {
    "source_type": {"type": "string", "enum": ["volume", "image", "snapshot", "blank"]},
    "destination_type": {"type": "string", "enum": ["local", "volume"]},
    "uuid": {"type": "string"}, "boot_index": {"type": ["integer", "string", "null"]},
    "volume_size": {"type": ["integer", "string", "null"]},
    "delete_on_termination": {"type": ["boolean", "string"]},
    "device_name": {"type": ["string", "null"]}, "guest_format": {"type": "string"},
    "disk_bus": {"type": "string"}, "device_type": {"type": "string"},
    "tag": {"type": "string"}, "volume_type": {"type": ["string", "null"]},
    "no_device": {}}, "additionalProperties": False}}
COUNT: dict[str, Any] = {"type": ["integer", "string"], "pattern": "^[0-9]*$", "minimum": 1,
                         "minLength": 1}


def create_schema(v: APIVersion) -> dict[str, Any]:
    server: dict[str, Any] = {
        "type": "object",
        "properties": {
            "name": NAME, "imageRef": {"type": "string"},
            "flavorRef": {"type": ["string", "integer"], "minLength": 1},
            "adminPass": {"type": "string"}, "metadata": METADATA,
            "networks": NETWORKS, "key_name": {"type": "string", "minLength": 1},
            "availability_zone": {"type": "string", "minLength": 1, "maxLength": 255},
            "security_groups": {"type": "array", "items": {
                "type": "object", "properties": {"name": {"type": "string"}},
                "additionalProperties": False}},
            "block_device_mapping_v2": BDM, "min_count": COUNT, "max_count": COUNT,
            "return_reservation_id": {"type": ["boolean", "string"]},
            "user_data": {"type": "string"}, "config_drive": {"type": ["boolean", "string"]},
            "accessIPv4": {"type": "string"}, "accessIPv6": {"type": "string"},
            "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]},
            "description": {"type": ["string", "null"], "maxLength": 255},
            "tags": {"type": "array", "maxItems": 50,
                     "items": {"type": "string", "minLength": 1, "maxLength": 60}},
        },
        "required": ["name", "flavorRef"] + (["networks"] if v.at_least("2.37") else []),
        "additionalProperties": False,
    }
    if not v.at_least("2.19"):
        del server["properties"]["description"]
    if not v.at_least("2.52"):
        del server["properties"]["tags"]
    return {"type": "object", "properties": {
        "server": server,
        "os:scheduler_hints": {"type": "object"},
        "OS-SCH-HNT:scheduler_hints": {"type": "object"}},
        "required": ["server"], "additionalProperties": False}


CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f]")
# nova's console_output schema: length as a number or a string of digits, -1 for all
CONSOLE_OUTPUT = {"type": "object", "properties": {"os-getConsoleOutput": {
    "type": "object", "properties": {"length": {
        "type": ["integer", "string", "null"], "pattern": "^-?[0-9]+$", "minimum": -1}},
    "additionalProperties": False}}}

RESIZE = {"type": "object", "properties": {"resize": {
    "type": "object", "properties": {
        "flavorRef": {"type": ["string", "integer"], "minLength": 1},
        "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]}},
    "required": ["flavorRef"], "additionalProperties": False}}}


def _ctx(request: Request) -> MessageContext:
    token = context(request)
    return MessageContext(request_id=request_info(request).request_id, source="nova-api",
                          user_id=token.user_id, project_id=token.project_id,
                          is_admin=token.is_admin)


def iso(moment: float | None) -> str | None:
    """Nova's timestamps: seconds and a Z."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micro(moment: float | None) -> str | None:
    """launched_at and terminated_at, as nova shows them: microseconds, no zone."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def host_id(project_id: str, host: str | None) -> str:
    """Nova's hostId: the same host looks different to different projects."""
    if not host:
        return ""
    return hashlib.sha224((project_id + host).encode()).hexdigest()


class ServerView:
    """Nova's view builder: one instance as a given caller at a given version sees it."""

    def __init__(self, request: Request, nova: Any) -> None:
        self.request = request
        self.nova = nova
        self.v = version(request)
        self.admin = context(request).is_admin

    def brief(self, instance: Instance) -> dict[str, Any]:
        return {"id": instance.uuid, "name": instance.display_name,
                "links": resource_links(self.request, "servers", instance.uuid)}

    def full(self, instance: Instance, show: bool = True) -> dict[str, Any]:
        v, status = self.v, instance.status
        flavor: dict[str, Any]
        if v.at_least("2.47"):
            flavor = Flavors.embedded({**instance.flavor,
                                       "ephemeral_gb": instance.flavor.get("ephemeral_gb", 0)})
        else:
            flavor = {"id": instance.flavor["flavorid"],
                      "links": [resource_links(self.request, "flavors",
                                               instance.flavor["flavorid"])[1]]}
        server: dict[str, Any] = {
            "id": instance.uuid, "name": instance.display_name, "status": status,
            "tenant_id": instance.project_id, "user_id": instance.user_id,
            "metadata": dict(instance.metadata_ or {}),
            "hostId": host_id(instance.project_id, instance.host),
            "image": {"id": instance.image_ref,
                      "links": [resource_links(self.request, "images",
                                               instance.image_ref)[1]]},
            "flavor": flavor,
            "created": iso(instance.created_at), "updated": iso(instance.updated_at),
            "addresses": self._addresses(instance), "accessIPv4": instance.access_ip_v4,
            "accessIPv6": instance.access_ip_v6,
            "links": resource_links(self.request, "servers", instance.uuid),
            "OS-DCF:diskConfig": "MANUAL",
            # the zone asked for until a host is chosen, then the host's
            "OS-EXT-AZ:availability_zone": (instance.availability_zone
                                            or instance.requested_availability_zone or ""),
            "config_drive": instance.config_drive, "key_name": instance.key_name,
            "OS-SRV-USG:launched_at": iso_micro(instance.launched_at),
            "OS-SRV-USG:terminated_at": iso_micro(instance.terminated_at),
            "OS-EXT-STS:task_state": instance.task_state,
            "OS-EXT-STS:vm_state": instance.vm_state,
            "OS-EXT-STS:power_state": instance.power_state,
            "os-extended-volumes:volumes_attached": self._volumes(instance),
            "security_groups": [{"name": n} for n in instance.security_groups],
        }
        if status in PROGRESS_SHOWN:
            # nova shows the stored progress (0 after a plain boot), not a percentage of ACTIVE
            server["progress"] = instance.progress or 0
        if self.admin:
            server["OS-EXT-SRV-ATTR:host"] = instance.host
            server["OS-EXT-SRV-ATTR:hypervisor_hostname"] = instance.node
            server["OS-EXT-SRV-ATTR:instance_name"] = instance.name
            if v.at_least("2.3"):
                server.update({
                    "OS-EXT-SRV-ATTR:reservation_id": instance.reservation_id,
                    "OS-EXT-SRV-ATTR:launch_index": instance.launch_index,
                    "OS-EXT-SRV-ATTR:hostname": instance.hostname,
                    "OS-EXT-SRV-ATTR:kernel_id": "", "OS-EXT-SRV-ATTR:ramdisk_id": "",
                    "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda" if instance.host else None,
                    "OS-EXT-SRV-ATTR:user_data": instance.user_data})
        if v.at_least("2.9"):
            server["locked"] = instance.locked
        if v.at_least("2.16") and self.admin:
            server["host_status"] = self._host_status(instance.host)
        if v.at_least("2.19"):
            server["description"] = instance.description
        if v.at_least("2.26"):
            server["tags"] = list(instance.tags or [])
        if v.at_least("2.63"):
            server["trusted_image_certificates"] = None
        if v.at_least("2.71") and show:
            server["server_groups"] = [instance.group_id] if instance.group_id else []
        if v.at_least("2.73"):
            server["locked_reason"] = instance.locked_reason
        if status in ("ERROR", "DELETED"):
            self._fault(server, instance)
        return server

    def _volumes(self, instance: Instance) -> list[dict[str, Any]]:
        """The instance's volumes, from its block device mappings (delete_on_termination
        from 2.3), as nova's extended volumes do."""
        shown = []
        for bdm in self.nova.block_devices.for_instance(instance.uuid):
            if not bdm.volume_id:
                continue
            volume: dict[str, Any] = {"id": bdm.volume_id}
            if self.v.at_least("2.3"):
                volume["delete_on_termination"] = bdm.delete_on_termination
            shown.append(volume)
        return shown

    def _addresses(self, instance: Instance) -> dict[str, list[dict[str, Any]]]:
        """From nova's network info cache, never from neutron (as nova's view does)."""
        with self.nova.database.session() as s:
            return addresses(self.nova.instances.network_info(s, instance.uuid))

    def _host_status(self, host: str | None) -> str:
        """nova's host_status: the compute service as the API sees it."""
        if not host:
            return ""
        service = self.nova.hosts.compute_service(host)
        if service is None:
            return "UNKNOWN"
        if self.nova.service_is_up(service):
            return "MAINTENANCE" if service.disabled else "UP"
        # nova: forced down is known to be DOWN; a service that stopped reporting is UNKNOWN
        return "DOWN" if service.forced_down else "UNKNOWN"

    def _fault(self, server: dict[str, Any], instance: Instance) -> None:
        with self.nova.database.session() as s:
            fault = self.nova.instances.latest_fault(s, instance.uuid)
        if fault is None:
            return
        shown: dict[str, Any] = {"code": fault.code, "created": iso(fault.created_at),
                                 "message": fault.message}
        # nova hides a 500 fault's details from non-admins
        if fault.details and (self.admin or fault.code != 500):
            shown["details"] = fault.details
        server["fault"] = shown


# -- listing


def _filters(request: Request, admin: bool) -> dict[str, str]:
    q = request.query_params
    allowed = {"name", "status", "image", "flavor", "reservation_id", "changes-since",
               "changes-before", "availability_zone", "key_name", "locked", "tags",
               "tags-any", "not-tags", "not-tags-any", "ip", "ip6", "description"}
    if admin:
        allowed |= {"host", "node", "all_tenants", "project_id", "tenant_id", "deleted",
                    "user_id", "uuid", "vm_state", "task_state", "power_state"}
    return {k: v for k, v in q.items() if k in allowed}


def query_time(value: str, name: str) -> float:
    """A date-time query parameter (changes-since, ...) as a timestamp; a time without a
    zone is UTC, as nova reads it; 400 in nova's schema words."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"Invalid input for query parameters {name}. Value: {value}. "
                         f"'{value}' is not a 'date-time'") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _ip_matches(network_info: list[dict[str, Any]], filters: dict[str, str]) -> bool:
    """nova's _ip_filter: `ip` (`ip6`) is a regex matched at the start of a fixed IPv4
    (IPv6) address of the instance."""
    patterns = {}
    for key, family in (("ip", 4), ("ip6", 6)):
        if key in filters:
            try:
                patterns[family] = re.compile(filters[key])
            except re.error:
                continue
    for vif in network_info:
        for subnet in (vif.get("network") or {}).get("subnets", []):
            for ip in subnet.get("ips", []):
                pattern = patterns.get(ip.get("version", 4))
                if pattern and pattern.match(ip["address"]):
                    return True
    return False


def _matches(instance: Instance, filters: dict[str, str]) -> bool:
    f = filters
    if "name" in f:
        try:
            if not re.search(f["name"], instance.display_name):
                return False
        except re.error:
            return False
    if "status" in f and instance.status.upper() not in (
            s.strip().upper() for s in f["status"].split(",")):
        return False
    checks = {"image": instance.image_ref, "flavor": instance.flavor["flavorid"],
              "reservation_id": instance.reservation_id, "host": instance.host,
              "node": instance.node, "availability_zone": instance.availability_zone,
              "key_name": instance.key_name, "user_id": instance.user_id,
              "uuid": instance.uuid, "vm_state": instance.vm_state,
              "task_state": instance.task_state, "description": instance.description}
    for key, value in checks.items():
        if key in f and f[key] != (value or ""):
            return False
    if "power_state" in f and str(instance.power_state) != f["power_state"]:
        return False
    if "locked" in f and instance.locked != as_bool(f["locked"]):
        return False
    tags = set(instance.tags or [])
    if "tags" in f and not set(f["tags"].split(",")) <= tags:
        return False
    if "tags-any" in f and not set(f["tags-any"].split(",")) & tags:
        return False
    if "not-tags" in f and set(f["not-tags"].split(",")) <= tags:
        return False
    return not ("not-tags-any" in f and set(f["not-tags-any"].split(",")) & tags)


def _listed(request: Request, nova: Any) -> list[Instance]:
    token = context(request)
    filters = _filters(request, token.is_admin)
    asked = {s.strip().upper() for s in filters.get("status", "").split(",") if s.strip()}
    if asked and not asked & STATUSES:
        return []
    query = select(Instance)
    all_projects = token.is_admin and as_bool(filters.get("all_tenants", "false") or "true")
    project = filters.get("project_id") or filters.get("tenant_id")
    if project and token.is_admin:
        query = query.where(Instance.project_id == project)
    elif not all_projects:
        query = query.where(Instance.project_id == token.project_id)
    since = filters.get("changes-since")
    if since:
        query = query.where(Instance.updated_at >= query_time(since, "changes-since"))
    else:
        deleted = token.is_admin and as_bool(filters.get("deleted", "false") or "false")
        query = query.where(Instance.deleted.is_(deleted))
    before = filters.get("changes-before")
    if before:
        query = query.where(Instance.updated_at <= query_time(before, "changes-before"))
    sort_keys = request.query_params.getlist("sort_key") or ["created_at"]
    sort_dirs = request.query_params.getlist("sort_dir") or ["desc"]
    columns = {"created_at": Instance.created_at, "updated_at": Instance.updated_at,
               "display_name": Instance.display_name, "uuid": Instance.uuid,
               "host": Instance.host, "vm_state": Instance.vm_state,
               "launched_at": Instance.launched_at, "hostname": Instance.hostname}
    for i, key in enumerate(sort_keys):
        if key not in columns:
            raise BadRequest(f"Invalid input for query parameters sort_key. Value: {key}. "
                             f"'{key}' is not one of {sorted(columns)}")
        direction = sort_dirs[i] if i < len(sort_dirs) else sort_dirs[-1]
        if direction not in ("asc", "desc"):
            raise BadRequest(f"Invalid input for query parameters sort_dir. Value: "
                             f"{direction}. '{direction}' is not one of ['asc', 'desc']")
        query = query.order_by(getattr(columns[key], direction)())
    query = query.order_by(Instance.id.desc())
    with nova.database.session() as s:
        found = [i for i in s.scalars(query) if _matches(i, filters)]
        if "ip" in filters or "ip6" in filters:
            infos = nova.instances.network_infos(s, [i.uuid for i in found])
            found = [i for i in found if _ip_matches(infos.get(i.uuid, []), filters)]
    return page(request, found, lambda i: i.uuid)


def routes(nova: Any) -> list[Route]:
    servers = ServersAPI(nova)

    async def index(request: Request) -> Response:
        view = ServerView(request, nova)
        shown = [view.brief(i) for i in _listed(request, nova)]
        body: dict[str, Any] = {"servers": shown}
        links = next_links(request, shown, "servers")
        if links:
            body["servers_links"] = links
        return JSONResponse(body)

    async def detail(request: Request) -> Response:
        view = ServerView(request, nova)
        shown = [view.full(i, show=False) for i in _listed(request, nova)]
        body: dict[str, Any] = {"servers": shown}
        links = next_links(request, shown, "servers/detail")
        if links:
            body["servers_links"] = links
        return JSONResponse(body)

    async def create(request: Request) -> Response:
        v = version(request)
        body = await read_json(request)
        validate(body, create_schema(v))
        s = body["server"]
        hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
        count = {k: int(s.get(k, 1)) for k in ("min_count", "max_count")}
        if "max_count" not in s:
            count["max_count"] = count["min_count"]
        ask = CreateRequest(
            name=s["name"], flavor_ref=str(s["flavorRef"]), image_ref=s.get("imageRef", ""),
            key_name=s.get("key_name"), availability_zone=s.get("availability_zone"),
            networks=s.get("networks"),
            security_groups=[g.get("name", "default") for g in s.get("security_groups",
                                                                     [{"name": "default"}])],
            block_device_mapping=s.get("block_device_mapping_v2", []),
            min_count=count["min_count"], max_count=count["max_count"],
            scheduler_hints=hints, user_data=s.get("user_data"),
            metadata=s.get("metadata", {}), description=s.get("description"),
            tags=s.get("tags", []), access_ip_v4=s.get("accessIPv4", ""),
            access_ip_v6=s.get("accessIPv6", ""),
            config_drive=as_bool(s.get("config_drive", False)))
        reservation_id, uuids = await servers.create_checked(_ctx(request), ask)
        if as_bool(s.get("return_reservation_id", False)):
            return JSONResponse({"reservation_id": reservation_id}, status_code=202)
        first = uuids[0]
        shown = {"id": first, "links": resource_links(request, "servers", first),
                 "OS-DCF:diskConfig": "MANUAL",
                 "security_groups": [{"name": n} for n in ask.security_groups],
                 "adminPass": nova.ids.hex_id("admin-pass")[:12]}
        return JSONResponse({"server": shown}, status_code=202,
                            headers={"Location": shown["links"][0]["href"]})

    def _one(request: Request) -> Instance:
        return servers.instance(_ctx(request), request.path_params["server_id"])

    async def show(request: Request) -> Response:
        return JSONResponse({"server": ServerView(request, nova).full(_one(request))})

    async def update(request: Request) -> Response:
        v = version(request)
        body = await read_json(request)
        props: dict[str, Any] = {"name": NAME, "accessIPv4": {"type": "string"},
                                 "accessIPv6": {"type": "string"},
                                 "OS-DCF:diskConfig": {"type": "string"}}
        if v.at_least("2.19"):
            props["description"] = {"type": ["string", "null"], "maxLength": 255}
        validate(body, {"type": "object", "properties": {"server": {
            "type": "object", "properties": props, "additionalProperties": False}},
            "required": ["server"], "additionalProperties": False})
        fields = {"name": "display_name", "description": "description",
                  "accessIPv4": "access_ip_v4", "accessIPv6": "access_ip_v6"}
        values = {fields[k]: val for k, val in body["server"].items() if k in fields}
        servers.update(_ctx(request), request.path_params["server_id"], values)
        return JSONResponse({"server": ServerView(request, nova).full(_one(request))})

    async def delete(request: Request) -> Response:
        servers.delete(_ctx(request), request.path_params["server_id"])
        return Response(status_code=204)

    async def action(request: Request) -> Response:
        body = await read_json(request)
        if len(body) != 1:
            # nova reads the action's name from the body's only key
            raise BadRequest("Malformed message body: too many body keys")
        name, args = next(iter(body.items()))
        ctx, uuid = _ctx(request), request.path_params["server_id"]
        if name == "os-stop":
            servers.stop(ctx, uuid)
        elif name == "os-start":
            servers.start(ctx, uuid)
        elif name == "reboot":
            validate(body, {"type": "object", "properties": {"reboot": {
                "type": "object", "properties": {"type": {
                    "type": "string", "enum": ["HARD", "Hard", "hard", "SOFT", "Soft", "soft"]}},
                "required": ["type"], "additionalProperties": False}}})
            servers.reboot(ctx, uuid, args["type"].upper())
        elif name == "resize":
            validate(body, RESIZE)
            servers.resize(ctx, uuid, str(args["flavorRef"]))
        elif name == "confirmResize":
            validate(body, {"type": "object", "properties": {"confirmResize": {"type": "null"}}})
            servers.confirm_resize(ctx, uuid)
            return Response(status_code=204)
        elif name == "revertResize":
            validate(body, {"type": "object", "properties": {"revertResize": {"type": "null"}}})
            servers.revert_resize(ctx, uuid)
        elif name == "os-getConsoleOutput":
            validate(body, CONSOLE_OUTPUT)
            length = (args or {}).get("length")
            if length is not None and int(length) < -1:  # a string slips past "minimum"
                raise BadRequest(f"Invalid input for field/attribute length. Value: {length}. "
                                 f"{length} is less than the minimum of -1")
            # -1 (or none) means the whole log
            tail = None if length is None or int(length) == -1 else int(length)
            output = await servers.console_output(ctx, uuid, tail)
            # nova's API drops control characters but newline and tab (a serial console
            # sends \r\n and escape sequences)
            return JSONResponse({"output": CONTROL_CHARACTERS.sub("", output)})
        else:
            raise BadRequest(f"There is no such action: {name}")
        return Response(status_code=202)

    return [
        Route("/v2.1/servers", index, methods=["GET"]),
        Route("/v2.1/servers", create, methods=["POST"]),
        Route("/v2.1/servers/detail", detail, methods=["GET"]),
        Route("/v2.1/servers/{server_id}", show, methods=["GET"]),
        Route("/v2.1/servers/{server_id}", update, methods=["PUT"]),
        Route("/v2.1/servers/{server_id}", delete, methods=["DELETE"]),
        Route("/v2.1/servers/{server_id}/action", action, methods=["POST"]),
    ]
