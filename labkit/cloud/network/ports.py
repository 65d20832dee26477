"""Ports: addresses from IPAM, a MAC, security groups, and the binding to a host.

A port is DOWN when made. Setting binding:host_id binds it: vif_type "ovs" (with the
hybrid-plug details nova needs) when that host's Open vSwitch agent is up and alive,
"binding_failed" otherwise; the agent then wires it and reports the device up, and
the port turns ACTIVE. Ports that neutron makes for itself (DHCP, router and floating
IP ports) come from `create_internal` and may not be deleted through the port API.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import or_, select

from labkit.cloud.faults import faults_of
from labkit.cloud.network import agents_db, ipam, local_vlans, quotas, views
from labkit.cloud.network import security_groups as groups
from labkit.cloud.network.common import (
    FLOATINGIP,
    SERVICE_OWNERS,
    Tx,
    in_use,
    invalid,
    standard,
    touch,
)
from labkit.cloud.network.exceptions import NeutronNotFound, PolicyNotAuthorized, invalid_input
from labkit.cloud.network.tables import (
    FloatingIPRow,
    NetworkRow,
    PortRow,
    PortSecurityGroupRow,
    RouterRow,
)

VIF_DETAILS = {"port_filter": True, "ovs_hybrid_plug": True, "datapath_type": "system",
               "bridge_name": "br-int", "connectivity": "l2"}
MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
MAX_ADDRESS_PAIRS = 10  # neutron's max_allowed_address_pair


# -- lookups ------------------------------------------------------------------------------


def network_of(tx: Tx, network_id: str) -> NetworkRow:
    """The network a port is made on: it must be visible to the caller."""
    row = tx.session.scalar(select(NetworkRow).where(NetworkRow.id == network_id))
    if row is None or not (tx.owns(row.project_id) or row.shared or row.external):
        raise NeutronNotFound("network", network_id)
    return row


def visible(tx: Tx, port_id: str) -> PortRow:
    """A port its project, its network's owner or an admin may see; else "not found"."""
    row = tx.session.scalar(select(PortRow).where(PortRow.id == port_id))
    if row is None or not _may_see(tx, row):
        raise NeutronNotFound("port", port_id)
    return row


def _may_see(tx: Tx, row: PortRow) -> bool:
    if tx.owns(row.project_id):
        return True
    owner = tx.session.scalar(select(NetworkRow.project_id).where(
        NetworkRow.id == row.network_id))
    return owner is not None and owner == tx.ctx.project_id


def listing(tx: Tx) -> list[dict[str, Any]]:
    query = select(PortRow).order_by(PortRow.seq)
    if not tx.admin:
        own_networks = select(NetworkRow.id).where(NetworkRow.project_id == tx.ctx.project_id)
        query = query.where(or_(PortRow.project_id == tx.ctx.project_id,
                                PortRow.network_id.in_(own_networks)))
    return [views.port(r) for r in tx.session.scalars(query)]


def _network_owner(tx: Tx, network: NetworkRow) -> bool:
    return tx.admin or network.project_id == tx.ctx.project_id


# -- MACs ---------------------------------------------------------------------------------


def new_mac(tx: Tx, network_id: str) -> str:
    """fa:16:3e plus three random bytes, unique across the cloud (neutron's base_mac)."""
    for _ in range(16):
        mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in tx.env.ids.random_bytes("mac", 3))
        if tx.session.scalar(select(PortRow.id).where(PortRow.mac_address == mac)) is None:
            return mac
    raise in_use("MacAddressGenerationFailure",
                 f"Unable to generate unique mac on network {network_id}.")


def _asked_mac(tx: Tx, network_id: str, mac: str, port_id: str | None = None) -> str:
    mac = mac.lower()
    if not MAC.match(mac):
        raise invalid_input(f"'{mac}' is not a valid MAC address.")
    holder = tx.session.scalar(select(PortRow.id).where(PortRow.network_id == network_id,
                                                        PortRow.mac_address == mac))
    if holder is not None and holder != port_id:
        raise in_use("MacAddressInUse", f"Unable to complete operation for network "
                     f"{network_id}. The mac address {mac} is in use.")
    return mac


# -- creation -----------------------------------------------------------------------------


def create(tx: Tx, body: dict[str, Any]) -> PortRow:
    """POST /v2.0/ports: the caller's checks, then the port."""
    network = network_of(tx, body.get("network_id") or "")
    _check_create_policy(tx, network, body)
    project = tx.project_for(body)
    quotas.check(tx, project, "port")
    return _build(tx, network, project, body)


def _check_create_policy(tx: Tx, network: NetworkRow, body: dict[str, Any]) -> None:
    owner = _network_owner(tx, network)
    fixed = body.get("fixed_ips")
    rules = [
        ("binding:host_id", tx.admin, "create_port:binding:host_id"),
        ("binding:profile", tx.admin, "create_port:binding:profile"),
        ("mac_address", owner, "create_port:mac_address"),
        ("port_security_enabled", owner, "create_port:port_security_enabled"),
        ("allowed_address_pairs", owner, "create_port:allowed_address_pairs"),
    ]
    for key, allowed, rule in rules:
        if body.get(key) not in (None, {}, []) and not allowed:
            raise PolicyNotAuthorized(rule)
    if fixed:
        if not (owner or network.shared):
            raise PolicyNotAuthorized("create_port:fixed_ips")
        if any("ip_address" in f for f in fixed) and not owner:
            raise PolicyNotAuthorized("create_port:fixed_ips:ip_address")
    if (body.get("device_owner") or "").startswith("network:") and not owner:
        raise PolicyNotAuthorized("create_port:device_owner")


def create_internal(tx: Tx, network: NetworkRow, project_id: str, device_owner: str,
                    device_id: str, fixed_ips: list[dict[str, Any]] | None = None,
                    host: str | None = None, status: str = "DOWN") -> PortRow:
    """A port neutron makes for itself (DHCP, router, floating IP): no policy, no quota."""
    body = {"network_id": network.id, "device_owner": device_owner, "device_id": device_id,
            "fixed_ips": fixed_ips, "binding:host_id": host or ""}
    row = _build(tx, network, project_id, body)
    row.status = status
    return row


def _build(tx: Tx, network: NetworkRow, project: str, body: dict[str, Any]) -> PortRow:
    owner = body.get("device_owner") or ""
    mac = (_asked_mac(tx, network.id, body["mac_address"]) if body.get("mac_address")
           else new_mac(tx, network.id))
    row = PortRow(id=tx.env.ids.uuid("port"), network_id=network.id, project_id=project,
                  name=body.get("name") or "", mac_address=mac,
                  admin_state_up=body.get("admin_state_up", True), status="DOWN",
                  device_id=body.get("device_id") or "", device_owner=owner,
                  vnic_type=body.get("binding:vnic_type") or "normal",
                  profile=dict(body.get("binding:profile") or {}),
                  **standard(tx, body))
    security = body.get("port_security_enabled")
    row.port_security_enabled = network.port_security_enabled if security is None else security
    tx.session.add(row)
    tx.session.flush()
    ipam.allocate(tx, row, list(network.subnets), body.get("fixed_ips"))
    _set_groups(tx, row, body.get("security_groups"), creating=True)
    row.allowed_address_pairs = _address_pairs(row, body.get("allowed_address_pairs") or [])
    host = body.get("binding:host_id") or ""
    if host:
        _bind(tx, row, host)
    tx.session.flush()
    return row


def _set_groups(tx: Tx, row: PortRow, asked: list[str] | None, creating: bool) -> None:
    trusted = row.device_owner.startswith("network:")
    if not row.port_security_enabled:
        if asked:
            raise invalid("PortSecurityAndIPRequiredForSecurityGroups",
                          "Port security must be enabled and port must have an IP address "
                          "in order to use security groups.")
        wanted: list[str] = []
    elif asked is None:
        if not creating:
            return
        wanted = [] if trusted else [groups.ensure_default(tx, row.project_id)]
    else:
        wanted = groups.check_for_port(tx, row.project_id, list(asked))
    row.security_group_bindings = [PortSecurityGroupRow(security_group_id=g) for g in wanted]


def _address_pairs(row: PortRow, pairs: list[dict[str, Any]]) -> list[dict[str, str]]:
    if pairs and not row.port_security_enabled:
        raise in_use("AddressPairAndPortSecurityRequired", "Port Security must be enabled in "
                     "order to have allowed address pairs on a port.")
    if len(pairs) > MAX_ADDRESS_PAIRS:
        raise invalid("AllowedAddressPairExhausted", "The number of allowed address pair "
                      f"exceeds the maximum {MAX_ADDRESS_PAIRS}.")
    seen: set[tuple[str, str]] = set()
    found: list[dict[str, str]] = []
    for pair in pairs:
        ip = pair.get("ip_address")
        if not ip:
            raise invalid("AllowedAddressPairsMissingIP", "AllowedAddressPair must contain "
                          "ip_address")
        mac = (pair.get("mac_address") or row.mac_address).lower()
        if (ip, mac) in seen:
            raise invalid("DuplicateAddressPairInRequest", "Request contains duplicate address "
                          f"pair: mac_address {mac} ip_address {ip}.")
        seen.add((ip, mac))
        found.append({"ip_address": ip, "mac_address": mac})
    return found


# -- binding ------------------------------------------------------------------------------


def _bind(tx: Tx, row: PortRow, host: str) -> None:
    """Bind to `host` through its OVS agent, or fail the binding; tell listeners."""
    row.host = host
    # the troubleshooting lab's port-binding fault: no mechanism driver binds on `host`
    refused = faults_of(getattr(tx.env, "cloud", None)).binding_fails(host)
    if row.vnic_type == "normal" and agents_db.can_bind(tx, host) and not refused:
        row.vif_type, row.vif_details = "ovs", dict(VIF_DETAILS)
        tx.emit_later("port.bound", lambda: views.port(row))
    else:
        row.vif_type, row.vif_details = "binding_failed", {}
    tx.trace("ml2", f"bind port {row.id} on {host}: {row.vif_type}", port_id=row.id,
             host=host, vif_type=row.vif_type)


def _unbind(tx: Tx, row: PortRow) -> None:
    old_host = row.host
    if row.vif_type == "ovs":
        tx.emit("port.unbound", views.port(row))
    row.host, row.vif_type, row.vif_details = "", "unbound", {}
    row.status = "DOWN"
    local_vlans.release_if_unused(tx, old_host, row.network_id)


def rebind(tx: Tx, row: PortRow, host: str) -> None:
    """Move (or re-try) the port's binding to `host`; "" unbinds it."""
    if row.host:
        _unbind(tx, row)
    if host:
        _bind(tx, row, host)


# -- update -------------------------------------------------------------------------------


def update(tx: Tx, row: PortRow, body: dict[str, Any]) -> None:
    network = tx.session.scalar(select(NetworkRow).where(NetworkRow.id == row.network_id))
    assert network is not None
    owner = _network_owner(tx, network)
    _check_update_policy(tx, row, body, owner)
    for key in ("name", "description", "admin_state_up", "device_id", "device_owner"):
        if key in body:
            setattr(row, key, body[key] if body[key] is not None else "")
    if body.get("mac_address") and body["mac_address"].lower() != row.mac_address:
        if row.vif_type not in ("unbound", "binding_failed"):
            raise in_use("PortBound", f"Unable to complete operation on port {row.id}, port "
                         f"is already bound, port type: {row.vif_type}, old_mac "
                         f"{row.mac_address}, new_mac {body['mac_address']}.")
        row.mac_address = _asked_mac(tx, row.network_id, body["mac_address"], row.id)
    if "fixed_ips" in body:
        _change_fixed_ips(tx, row, list(network.subnets), body["fixed_ips"] or [])
    if "port_security_enabled" in body and body["port_security_enabled"] is not None:
        turning_off = row.port_security_enabled and not body["port_security_enabled"]
        keeps_groups = body.get("security_groups", row.security_group_ids)
        if turning_off and keeps_groups:
            raise in_use("PortSecurityPortHasSecurityGroup", "Port has security group "
                         "associated. Cannot disable port security or ip address until "
                         "security group is removed")
        if turning_off and (body.get("allowed_address_pairs", row.allowed_address_pairs)):
            raise in_use("AddressPairAndPortSecurityRequired", "Port Security must be enabled "
                         "in order to have allowed address pairs on a port.")
        row.port_security_enabled = body["port_security_enabled"]
    if "security_groups" in body:
        _set_groups(tx, row, list(body["security_groups"] or []), creating=False)
    if "allowed_address_pairs" in body:
        row.allowed_address_pairs = _address_pairs(row, body["allowed_address_pairs"] or [])
    for key, column in (("binding:vnic_type", "vnic_type"), ("binding:profile", "profile")):
        if key in body:
            setattr(row, column, body[key] if body[key] is not None else
                    ("normal" if column == "vnic_type" else {}))
    if "binding:host_id" in body:
        host = body["binding:host_id"] or ""
        if host != row.host or row.vif_type == "binding_failed":
            rebind(tx, row, host)
    touch(row, tx)
    tx.session.flush()


def _check_update_policy(tx: Tx, row: PortRow, body: dict[str, Any], owner: bool) -> None:
    rules = [("binding:host_id", tx.admin), ("binding:profile", tx.admin),
             ("mac_address", owner), ("port_security_enabled", owner),
             ("allowed_address_pairs", owner)]
    for key, allowed in rules:
        if key in body and not allowed:
            raise PolicyNotAuthorized(f"update_port:{key}")
    if "fixed_ips" in body and any("ip_address" in f for f in body["fixed_ips"] or []) \
            and not owner:
        raise PolicyNotAuthorized("update_port:fixed_ips:ip_address")
    if (body.get("device_owner") or "").startswith("network:") and not owner:
        raise PolicyNotAuthorized("update_port:device_owner")


def _change_fixed_ips(tx: Tx, row: PortRow, subnets: list[Any],
                      wanted: list[dict[str, Any]]) -> None:
    """Keep the addresses asked for again, free the rest, allocate the new ones."""
    original = list(row.fixed_ips)
    kept: list[Any] = []
    new: list[dict[str, Any]] = []
    for request in wanted:
        ip = request.get("ip_address")
        match = next((a for a in original if a not in kept and (
            a.ip_address == ip if ip else a.subnet_id == request.get("subnet_id"))), None)
        if match is not None:
            kept.append(match)
        else:
            new.append(request)
    for allocation in original:
        if allocation not in kept:
            row.fixed_ips.remove(allocation)
    tx.session.flush()
    if new:
        ipam.allocate(tx, row, subnets, new)


# -- status from the agents ----------------------------------------------------------------


def set_status(tx: Tx, row: PortRow, status: str) -> None:
    previous = row.status
    if previous == status:
        return
    row.status = status
    touch(row, tx)
    tx.emit_later("port.status", lambda: {"port": views.port(row), "previous": previous})


# -- deletion -----------------------------------------------------------------------------


def check_deletable(tx: Tx, row: PortRow) -> None:
    """Ports neutron owns go with what they serve, never through DELETE /ports."""
    if row.device_owner not in SERVICE_OWNERS:
        return
    if row.device_owner == FLOATINGIP:
        exists = tx.session.scalar(select(FloatingIPRow.id).where(
            FloatingIPRow.id == row.device_id))
    elif row.device_owner.startswith("network:router"):
        exists = tx.session.scalar(select(RouterRow.id).where(RouterRow.id == row.device_id))
    else:
        exists = True
    if exists:
        raise in_use("ServicePortInUse", f"Port {row.id} cannot be deleted directly via the "
                     f"port API: has device owner {row.device_owner}.")


def delete(tx: Tx, row: PortRow) -> None:
    """Remove the port: floating IPs on it let go, listeners told, its VLAN freed if last."""
    disassociate_floatingips(tx, row.id)
    before = views.port(row)
    if row.vif_type == "ovs":
        tx.emit("port.unbound", before)
    host = row.host
    tx.session.delete(row)
    tx.session.flush()
    local_vlans.release_if_unused(tx, host, row.network_id)
    tx.emit("port.deleted", before)


def disassociate_floatingips(tx: Tx, port_id: str) -> None:
    for fip in tx.session.scalars(select(FloatingIPRow).where(
            FloatingIPRow.fixed_port_id == port_id)):
        fip.fixed_port_id = None
        fip.fixed_port = None
        fip.fixed_ip_address = None
        fip.router_id = None
        fip.status = "DOWN"
        touch(fip, tx)
        tx.emit_later("floatingip.changed", _fip_view(fip))


def _fip_view(fip: FloatingIPRow) -> Any:
    return lambda: views.floatingip(fip)


def device_state(tx: Tx, port_id: str, host: str, status: str) -> dict[str, Any] | None:
    """An agent's report that a device is up or down on `host`."""
    row = tx.session.scalar(select(PortRow).where(PortRow.id == port_id))
    if row is None:
        return None
    if host and row.host != host:
        return None  # a stale report from a host the port is not (or no longer) bound to
    set_status(tx, row, status)
    return views.port(row)
