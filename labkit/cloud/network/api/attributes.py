"""Neutron's attribute maps: what each resource takes on POST and PUT, and what it shows.

One `Attr` per attribute, as neutron-lib's RESOURCE_ATTRIBUTE_MAP entries (core resources
plus the extensions listed in extensions.py): allow_post / allow_put, a default (or
REQUIRED, or OMIT: "left to the plugin"), convert, validate, whether it is shown, filtered
on, sorted on, and whether neutron's policy shows it to admins only (get_port:binding:*,
get_network:provider:*). `prepare_request` checks a request body as neutron's
`prepare_request_body` does, with neutron's messages; `shown` cuts a record down to what
the caller may see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labkit.cloud.network.api import validators as v
from labkit.cloud.network.exceptions import NeutronBadRequest


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("REQUIRED")   # no default: a POST must name it
OMIT = _Marker("OMIT")           # neutron's ATTR_NOT_SPECIFIED: the plugin picks the value

NAME_LEN = 255
DESCRIPTION_LEN = 255
PROJECT_ID_LEN = 255
DEVICE_ID_LEN = 255
DEVICE_OWNER_LEN = 255
INT_MAX = 2 ** 31 - 1


@dataclass(frozen=True)
class Attr:
    allow_post: bool = False
    allow_put: bool = False
    default: Any = REQUIRED
    convert: Callable[[Any], Any] | None = None
    convert_list: Callable[[list[str]], Any] | None = None   # for filters (fixed_ips=k=v)
    validate: tuple[v.Validator, ...] = ()
    visible: bool = True
    filter: bool = False
    sort: bool = False
    admin_only: bool = False       # neutron's policy shows it to admins only

    def __post_init__(self) -> None:
        # a read-only attribute is never required on POST
        if not self.allow_post and self.default is REQUIRED:
            object.__setattr__(self, "default", OMIT)


def _id() -> Attr:
    return Attr(validate=(v.uuid_,), filter=True, sort=True)


def _name() -> Attr:
    return Attr(True, True, "", validate=(v.name_string(NAME_LEN),), filter=True, sort=True)


def _project() -> Attr:
    return Attr(True, False, validate=(v.string(PROJECT_ID_LEN),), filter=True, sort=True)


def _admin_state() -> Attr:
    return Attr(True, True, True, convert=v.to_boolean, filter=True, sort=True)


def _read_only(filter: bool = False, sort: bool = False) -> Attr:
    return Attr(filter=filter, sort=sort)


def _standard(tags: bool = True) -> dict[str, Attr]:
    """standard-attr-description, -timestamp and -revisions (and the read-only tags)."""
    attrs = {
        "description": Attr(True, True, "", validate=(v.string(DESCRIPTION_LEN),),
                            filter=True),
        "created_at": _read_only(),
        "updated_at": _read_only(),
        "revision_number": _read_only(filter=True),
    }
    if tags:
        attrs.update({
            "tags": _read_only(filter=True),
            "tags-any": Attr(visible=False, filter=True),
            "not-tags": Attr(visible=False, filter=True),
            "not-tags-any": Attr(visible=False, filter=True),
        })
    return attrs


def _owned(attrs: dict[str, Attr], tags: bool = True) -> dict[str, Attr]:
    """Add the owner (tenant_id and project_id, one attribute twice) and the standard attrs."""
    return {**attrs, "tenant_id": _project(), "project_id": _project(), **_standard(tags)}


NETWORK = _owned({
    "id": _id(),
    "name": _name(),
    "subnets": Attr(default=[]),
    "admin_state_up": _admin_state(),
    "status": _read_only(filter=True, sort=True),
    "shared": Attr(True, True, False, convert=v.to_boolean, filter=True),
    # net-mtu
    "mtu": _read_only(filter=True, sort=True),
    # external-net
    "router:external": Attr(True, True, False, convert=v.to_boolean, filter=True),
    # provider: readable by admins only
    "provider:network_type": Attr(True, True, OMIT, validate=(v.string(32),), filter=True,
                                  admin_only=True),
    "provider:physical_network": Attr(True, True, OMIT, validate=(v.string(64),),
                                      filter=True, admin_only=True),
    "provider:segmentation_id": Attr(True, True, OMIT, convert=v.to_int, filter=True,
                                     admin_only=True),
    # port-security
    "port_security_enabled": Attr(True, True, True, convert=v.to_boolean),
    # shown as neutron shows them, not taken: their extensions are not listed
    "availability_zone_hints": _read_only(),
    "availability_zones": _read_only(),
    "ipv4_address_scope": _read_only(),
    "ipv6_address_scope": _read_only(),
    "l2_adjacency": _read_only(),
    "is_default": _read_only(),
})

SUBNET = _owned({
    "id": _id(),
    "name": _name(),
    "ip_version": Attr(True, False, convert=v.to_int, validate=(v.values([4, 6]),),
                       filter=True, sort=True),
    "network_id": Attr(True, False, validate=(v.uuid_,), filter=True, sort=True),
    "subnetpool_id": Attr(True, False, OMIT, validate=(v.uuid_or_none,), filter=True,
                          sort=True),
    "prefixlen": Attr(True, False, OMIT, convert=v.to_int, validate=(v.non_negative,),
                      visible=False),
    "cidr": Attr(True, False, OMIT, convert=v.cidr_to_canonical,
                 validate=(v.subnet_or_none,), filter=True, sort=True),
    "gateway_ip": Attr(True, True, OMIT, convert=v.ip_to_canonical,
                       validate=(v.ip_address_or_none,), filter=True, sort=True),
    "allocation_pools": Attr(True, True, OMIT, convert=v.pools_to_canonical,
                             validate=(v.ip_pools,)),
    "dns_nameservers": Attr(True, True, OMIT, convert=v.none_to_empty_list,
                            validate=(v.nameservers,)),
    "host_routes": Attr(True, True, OMIT, convert=v.none_to_empty_list,
                        validate=(v.hostroutes,)),
    "enable_dhcp": Attr(True, True, True, convert=v.to_boolean, filter=True, sort=True),
    "ipv6_ra_mode": Attr(True, False, OMIT,
                         validate=(v.values(["dhcpv6-stateful", "dhcpv6-stateless", "slaac"]),),
                         filter=True, sort=True),
    "ipv6_address_mode": Attr(True, False, OMIT, validate=(
        v.values(["dhcpv6-stateful", "dhcpv6-stateless", "slaac"]),), filter=True, sort=True),
    "shared": Attr(convert=v.to_boolean, visible=False, filter=True),
    "segment_id": Attr(admin_only=True),
    "service_types": _read_only(),
})

PORT = _owned({
    "id": _id(),
    "name": _name(),
    "network_id": Attr(True, False, validate=(v.uuid_,), filter=True, sort=True),
    "admin_state_up": _admin_state(),
    "mac_address": Attr(True, True, OMIT, convert=v.sanitized_mac, validate=(v.mac_address,),
                        filter=True, sort=True),
    "fixed_ips": Attr(True, True, OMIT, convert_list=v.kvp_list_to_dict,
                      validate=(v.fixed_ips,), filter=True),
    "device_id": Attr(True, True, "", validate=(v.string(DEVICE_ID_LEN),), filter=True,
                      sort=True),
    "device_owner": Attr(True, True, "", validate=(v.string(DEVICE_OWNER_LEN),), filter=True,
                         sort=True),
    "status": _read_only(filter=True, sort=True),
    # binding: what nova and the agents read; neutron's policy shows most of it to admins
    "binding:vif_type": Attr(admin_only=True),
    "binding:vif_details": Attr(admin_only=True),
    "binding:vnic_type": Attr(True, True, "normal", validate=(v.values([
        "normal", "direct", "macvtap", "baremetal", "direct-physical", "virtio-forwarder",
        "smart-nic", "vdpa", "accelerator-direct", "accelerator-direct-physical",
        "remote-managed"]),)),
    "binding:host_id": Attr(True, True, OMIT, filter=True, admin_only=True),
    "binding:profile": Attr(True, True, OMIT, validate=(v.dict_or_none,), admin_only=True),
    # security-group
    "security_groups": Attr(True, True, OMIT, convert=v.none_to_empty_list,
                            validate=(v.uuid_list,), filter=True),
    # allowed-address-pairs
    "allowed_address_pairs": Attr(True, True, OMIT, convert=v.none_to_empty_list,
                                  convert_list=v.kvp_list_to_dict,
                                  validate=(v.allowed_address_pairs,)),
    # port-security
    "port_security_enabled": Attr(True, True, OMIT, convert=v.to_boolean),
    "extra_dhcp_opts": _read_only(),
    "ip_allocation": _read_only(),
})

SECURITY_GROUP = _owned({
    "id": _id(),
    "name": Attr(True, True, "", validate=(v.string(NAME_LEN),), filter=True, sort=True),
    "security_group_rules": Attr(),
    # stateful-security-group
    "stateful": Attr(True, True, True, convert=v.to_boolean, filter=True),
    "shared": _read_only(),
})

SECURITY_GROUP_RULE = _owned({
    "id": _id(),
    "security_group_id": Attr(True, False, validate=(v.string(36),), filter=True, sort=True),
    "remote_group_id": Attr(True, False, None, filter=True, sort=True),
    "direction": Attr(True, False, validate=(v.values(["ingress", "egress"]),), filter=True,
                      sort=True),
    "protocol": Attr(True, False, None, convert=v.sg_protocol, filter=True, sort=True),
    "port_range_min": Attr(True, False, None, convert=v.sg_port, filter=True, sort=True),
    "port_range_max": Attr(True, False, None, convert=v.sg_port, filter=True, sort=True),
    "ethertype": Attr(True, False, "IPv4", convert=v.sg_ethertype,
                      validate=(v.values(v.ETHERTYPES),), filter=True, sort=True),
    "remote_ip_prefix": Attr(True, False, None, convert=v.sg_ip_prefix, filter=True,
                             sort=True),
    # security-groups-normalized-cidr, security-groups-rules-belongs-to-default-sg
    "normalized_cidr": _read_only(filter=True, sort=True),
    "belongs_to_default_sg": Attr(convert=v.to_boolean, filter=True),
    "remote_address_group_id": _read_only(),
}, tags=False)

ENABLE_SNAT = (False, v.to_boolean, v.boolean)
ROUTER = _owned({
    "id": _id(),
    "name": _name(),
    "admin_state_up": _admin_state(),
    "status": _read_only(sort=True),
    # router + ext-gw-mode (enable_snat)
    "external_gateway_info": Attr(True, True, None, validate=(v.dict_or_nodata({
        "network_id": (True, None, v.uuid_),
        "external_fixed_ips": (False, None, v.fixed_ips),
        "enable_snat": ENABLE_SNAT,
    }),)),
    "routes": _read_only(),
    "distributed": Attr(admin_only=True),
    "ha": Attr(admin_only=True),
    "flavor_id": _read_only(),
    "availability_zone_hints": _read_only(),
    "availability_zones": _read_only(),
})

FLOATINGIP = _owned({
    "id": _id(),
    "floating_ip_address": Attr(True, False, None, validate=(v.ip_address_or_none,),
                                filter=True, sort=True),
    "subnet_id": Attr(True, False, None, validate=(v.uuid_or_none,), visible=False),
    "floating_network_id": Attr(True, False, validate=(v.uuid_,), filter=True, sort=True),
    "router_id": Attr(filter=True, sort=True),
    "port_id": Attr(True, True, None, validate=(v.uuid_or_none,), filter=True),
    "fixed_ip_address": Attr(True, True, None, validate=(v.ip_address_or_none,), filter=True,
                             sort=True),
    "status": _read_only(filter=True, sort=True),
    # fip-port-details
    "port_details": Attr(),
    "port_forwardings": _read_only(),
    "qos_policy_id": _read_only(),
})

AGENT: dict[str, Attr] = {
    "id": Attr(validate=(v.uuid_,), filter=True),
    "agent_type": _read_only(filter=True),
    "binary": _read_only(filter=True),
    "topic": _read_only(filter=True),
    "host": _read_only(filter=True),
    "admin_state_up": Attr(False, True, convert=v.to_boolean, filter=True),
    "created_at": _read_only(),
    "started_at": _read_only(),
    "heartbeat_timestamp": _read_only(),
    "alive": Attr(convert=v.to_boolean, filter=True),
    "configurations": _read_only(),
    "availability_zone": _read_only(filter=True),
    "description": Attr(False, True, validate=(v.string_or_none(DESCRIPTION_LEN),),
                        filter=True),
    "resources_synced": _read_only(),
}


@dataclass(frozen=True)
class Resource:
    """One collection of neutron's v2.0 API and the model's name for it."""

    name: str                  # the model's and the body's key: "security_group"
    collection: str            # the body's list key: "security_groups"
    path: str                  # the URL's collection: "security-groups"
    attrs: dict[str, Attr]
    bulk: bool = True          # POST of {"<collection>": [...]}
    creatable: bool = True
    primary_key: str = "id"


RESOURCES: dict[str, Resource] = {r.name: r for r in (
    Resource("network", "networks", "networks", NETWORK),
    Resource("subnet", "subnets", "subnets", SUBNET),
    Resource("port", "ports", "ports", PORT),
    Resource("security_group", "security_groups", "security-groups", SECURITY_GROUP),
    Resource("security_group_rule", "security_group_rules", "security-group-rules",
             SECURITY_GROUP_RULE),
    Resource("router", "routers", "routers", ROUTER),
    Resource("floatingip", "floatingips", "floatingips", FLOATINGIP),
    Resource("agent", "agents", "agents", AGENT, bulk=False, creatable=False),
)}


def quota_attrs(resources: list[str]) -> dict[str, Attr]:
    """PUT /v2.0/quotas/{project}: one integer limit per quota resource, -1 for unlimited."""
    return {name: Attr(False, True, convert=v.to_int, validate=(v.int_range(-1, INT_MAX),))
            for name in resources}


# -- request bodies ---------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    """What body checks need to know of the caller."""

    project_id: str | None
    is_admin: bool


def prepare_request(body: Any, resource: str, attrs: dict[str, Attr], caller: Caller,
                    create: bool, allow_bulk: bool = False,
                    ) -> tuple[list[dict[str, Any]], bool]:
    """A POST or PUT body checked, converted and (POST) defaulted: one dict per resource,
    and whether the request was a bulk one.

    `{"port": {...}}` gives one; `{"ports": [...]}` (bulk, POST only) gives each in order,
    and wins over a `"port"` key beside it, as in neutron. Raises NeutronBadRequest with
    neutron's message for anything neutron refuses here.
    """
    collection = resource + "s"
    if not body:
        raise NeutronBadRequest("Resource body required")
    if not isinstance(body, dict):
        raise NeutronBadRequest("Body contains invalid data")
    if collection in body:
        if not allow_bulk:
            raise NeutronBadRequest("Bulk operation not supported")
        items = body[collection]
        if not items:
            raise NeutronBadRequest("Resources required")
        if not isinstance(items, list):
            raise NeutronBadRequest("Body contains invalid data")
        return [_prepare_one(item.get(resource, item) if isinstance(item, dict) else item,
                             resource, attrs, caller, create)
                for item in items], True
    if resource not in body:
        raise NeutronBadRequest(f"Unable to find '{resource}' in request body")
    return [_prepare_one(body[resource], resource, attrs, caller, create)], False


def _prepare_one(item: Any, resource: str, attrs: dict[str, Attr], caller: Caller,
                 create: bool) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise NeutronBadRequest(f"Object '{resource}' contains invalid data")
    item = dict(item)
    owned = "tenant_id" in attrs
    if owned:
        _populate_project(item, caller, create)
    unknown = [k for k in item if k not in attrs]
    if unknown:
        raise NeutronBadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    if create:
        _fill_defaults(item, attrs)
    else:
        for name in item:
            if not attrs[name].allow_put:
                raise NeutronBadRequest(f"Cannot update read-only attribute {name}")
    _convert(item, attrs)
    return item


def _populate_project(item: dict[str, Any], caller: Caller, create: bool) -> None:
    """tenant_id and project_id: either names both; the caller's project when neither."""
    if "tenant_id" in item and "project_id" not in item:
        item["project_id"] = item["tenant_id"]
    elif "project_id" in item and "tenant_id" not in item:
        item["tenant_id"] = item["project_id"]
    if item.get("project_id") != item.get("tenant_id"):
        raise NeutronBadRequest("'project_id' and 'tenant_id' do not match")
    if "project_id" in item and item["project_id"] != caller.project_id and not caller.is_admin:
        raise NeutronBadRequest("Specifying 'project_id' other than the authenticated project "
                                "in request is not allowed for the current user.")
    if create and "project_id" not in item:
        if not caller.project_id:
            raise NeutronBadRequest("Running without keystone AuthN requires that project_id "
                                    "is specified")
        item["project_id"] = item["tenant_id"] = caller.project_id


def _fill_defaults(item: dict[str, Any], attrs: dict[str, Attr]) -> None:
    for name, attr in attrs.items():
        if not attr.allow_post:
            if name in item:
                raise NeutronBadRequest(f"Attribute '{name}' not allowed in POST")
            continue
        if name in item:
            continue
        if attr.default is REQUIRED:
            raise NeutronBadRequest(
                f"Failed to parse request. Required attribute '{name}' not specified")
        if attr.default is not OMIT:
            default = attr.default
            item[name] = list(default) if isinstance(default, list) else default


def _convert(item: dict[str, Any], attrs: dict[str, Attr]) -> None:
    for name, attr in attrs.items():
        if name not in item:
            continue
        if attr.convert is not None:
            item[name] = attr.convert(item[name])
        for validate in attr.validate:
            reason = validate(item[name])
            if reason:
                raise NeutronBadRequest(f"Invalid input for {name}. Reason: {reason}.")


# -- responses ----------------------------------------------------------------------------

def shown(record: dict[str, Any], attrs: dict[str, Attr], is_admin: bool,
          fields: list[str] | None = None) -> dict[str, Any]:
    """The record as the caller sees it: visible attributes the policy lets them read,
    cut to `fields` when given (neutron shows only its attribute map's attributes)."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        attr = attrs.get(name)
        if attr is None or not attr.visible or (attr.admin_only and not is_admin):
            continue
        if fields and name not in fields:
            continue
        out[name] = value
    owner = record.get("project_id", record.get("tenant_id"))
    if "tenant_id" in attrs and ("project_id" in record or "tenant_id" in record):
        # the model may keep one of the two; neutron always shows both
        for key in ("tenant_id", "project_id"):
            if not fields or key in fields:
                out.setdefault(key, owner)
    return out
