"""Routers and floating IPs: neutron's l3 extension.

A router lives on the network node's L3 agent (its qrouter- namespace). Its external
gateway is a network:router_gateway port on an external network (the qg- device,
with SNAT unless disabled); each interface is a network:router_interface port holding
a subnet's gateway address (a qr- device). A floating IP is an address of the external
network held by a network:floatingip port; associating it with a port needs a router
that has both a gateway on that external network and an interface on the port's subnet.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select

from labkit.cloud.network import agents_db, ipam, networks, quotas, views
from labkit.cloud.network import ports as port_model
from labkit.cloud.network.common import (
    FLOATINGIP,
    ROUTER_GATEWAY,
    ROUTER_INTERFACE,
    Tx,
    bad_request,
    in_use,
    invalid,
    standard,
    touch,
)
from labkit.cloud.network.exceptions import (
    NeutronNamedNotFound,
    NeutronNotFound,
    PolicyNotAuthorized,
)
from labkit.cloud.network.tables import (
    FloatingIPRow,
    IPAllocationRow,
    NetworkRow,
    PortRow,
    RouterRow,
    SubnetRow,
)

# -- routers ------------------------------------------------------------------------------


def visible(tx: Tx, router_id: str) -> RouterRow:
    row = tx.session.scalar(select(RouterRow).where(RouterRow.id == router_id))
    if row is None or not tx.owns(row.project_id):
        raise NeutronNotFound("router", router_id)
    return row


def listing(tx: Tx) -> list[dict[str, Any]]:
    query = select(RouterRow).order_by(RouterRow.seq)
    if not tx.admin:
        query = query.where(RouterRow.project_id == tx.ctx.project_id)
    return [views.router(r) for r in tx.session.scalars(query)]


def _changed(tx: Tx, row: RouterRow) -> None:
    touch(row, tx)
    tx.emit_later("router.changed", lambda: views.router(row))


def create(tx: Tx, body: dict[str, Any]) -> RouterRow:
    for key in ("distributed", "ha"):
        if body.get(key):
            if not tx.admin:
                raise PolicyNotAuthorized(f"create_router:{key}")
            raise bad_request("router", f"{key} routers are not supported in this lab")
    project = tx.project_for(body)
    quotas.check(tx, project, "router")
    row = RouterRow(id=tx.env.ids.uuid("router"), project_id=project,
                    name=body.get("name") or "", admin_state_up=body.get("admin_state_up", True),
                    status="ACTIVE", host=agents_db.l3_host(tx), enable_snat=True,
                    routes=[], availability_zone_hints=list(
                        body.get("availability_zone_hints") or []),
                    **standard(tx, body))
    tx.session.add(row)
    tx.session.flush()
    tx.trace("l3-scheduler", f"router {row.name or row.id} scheduled to the L3 agent on "
             f"{row.host}", router_id=row.id, host=row.host)
    if body.get("external_gateway_info"):
        _set_gateway(tx, row, body["external_gateway_info"], "create")
    return row


def update(tx: Tx, row: RouterRow, body: dict[str, Any]) -> None:
    for key in ("name", "description", "admin_state_up"):
        if key in body and body[key] is not None:
            setattr(row, key, body[key])
    if "routes" in body:
        row.routes = _routes(tx, row, body["routes"] or [])
    if "external_gateway_info" in body:
        info = body["external_gateway_info"] or {}
        if info.get("network_id"):
            _set_gateway(tx, row, info, "update")
        elif row.gw_port is not None:
            _clear_gateway(tx, row)
    touch(row, tx)


def _routes(tx: Tx, row: RouterRow, routes: list[dict[str, str]]) -> list[dict[str, str]]:
    """Extra routes: each next hop must sit on one of the router's interface subnets."""
    cidrs = [ipaddress.ip_network(c) for c in tx.session.scalars(select(SubnetRow.cidr).where(
        SubnetRow.id.in_(networks.router_interface_subnets(tx, row.id))))]
    for route in routes:
        nexthop = ipaddress.ip_address(route["nexthop"])
        if not any(nexthop in cidr for cidr in cidrs):
            raise in_use("InvalidRoutes", f"Invalid format for routes: {routes}, the nexthop "
                         "is not connected with router.")
    return [{"destination": r["destination"], "nexthop": r["nexthop"]} for r in routes]


def _set_gateway(tx: Tx, row: RouterRow, info: dict[str, Any], action: str) -> None:
    for key in ("enable_snat", "external_fixed_ips"):
        if key in info and info[key] is not None and not tx.admin:
            raise PolicyNotAuthorized(f"{action}_router:external_gateway_info:{key}")
    network = networks.visible(tx, info["network_id"])
    if not network.external:
        raise bad_request("router", f"Network {network.id} is not an external network")
    asked_ips = info.get("external_fixed_ips")
    if row.gw_port is not None and row.gw_port.network_id == network.id:
        if asked_ips is not None:
            port_model._change_fixed_ips(tx, row.gw_port, list(network.subnets), asked_ips)
    else:
        if row.gw_port is not None:
            _clear_gateway(tx, row)
        port = port_model.create_internal(tx, network, "", ROUTER_GATEWAY, row.id,
                                          fixed_ips=asked_ips or None, host=row.host)
        row.gw_port_id, row.gw_port = port.id, port
    if info.get("enable_snat") is not None:
        row.enable_snat = bool(info["enable_snat"])
    elif action == "create" or row.gw_port is None:
        row.enable_snat = True
    tx.session.flush()
    tx.trace("l3", f"gateway of router {row.name or row.id} on {network.name or network.id}",
             router_id=row.id, network_id=network.id)
    _changed(tx, row)


def _clear_gateway(tx: Tx, row: RouterRow) -> None:
    port = row.gw_port
    if port is None:
        return
    used = tx.session.scalar(select(FloatingIPRow.id).where(
        FloatingIPRow.router_id == row.id, FloatingIPRow.floating_network_id == port.network_id))
    if used is not None:
        raise in_use("RouterExternalGatewayInUseByFloatingIp",
                     f"Gateway cannot be updated for router {row.id}, since a gateway to "
                     f"external network {port.network_id} is required by one or more "
                     "floating IPs.")
    row.gw_port_id, row.gw_port = None, None
    tx.session.flush()
    port_model.delete(tx, port)
    _changed(tx, row)


def _interfaces(tx: Tx, router_id: str) -> list[PortRow]:
    return list(tx.session.scalars(select(PortRow).where(
        PortRow.device_id == router_id, PortRow.device_owner == ROUTER_INTERFACE).order_by(
        PortRow.seq)))


def delete(tx: Tx, row: RouterRow) -> None:
    attached = _interfaces(tx, row.id)
    if attached:
        raise in_use("RouterInUse", f"Router {row.id} has ports still attached: "
                     + ", ".join(p.id for p in attached))
    before = views.router(row)
    _clear_gateway(tx, row)
    tx.session.delete(row)
    tx.emit("router.deleted", before)


# -- interfaces ---------------------------------------------------------------------------


def _interface_info(row: RouterRow, port: PortRow, subnet_ids: list[str]) -> dict[str, Any]:
    """What add/remove_router_interface answer, as neutron shapes it."""
    return {"id": row.id, "tenant_id": row.project_id, "project_id": row.project_id,
            "port_id": port.id, "subnet_id": subnet_ids[0] if subnet_ids else None,
            "subnet_ids": subnet_ids, "network_id": port.network_id}


def _check_new_subnets(tx: Tx, row: RouterRow, subnets: list[SubnetRow]) -> None:
    attached = set(networks.router_interface_subnets(tx, row.id))
    for subnet in subnets:
        if subnet.id in attached:
            raise bad_request("router", f"Router already has a port on subnet {subnet.id}")
    others = list(tx.session.scalars(select(SubnetRow).where(SubnetRow.id.in_(attached))))
    for subnet in subnets:
        new = ipaddress.ip_network(subnet.cidr)
        for other in others:
            existing = ipaddress.ip_network(other.cidr)
            if existing.version == new.version and existing.overlaps(new):
                raise bad_request("router", f"Cidr {subnet.cidr} of subnet {subnet.id} "
                                  f"overlaps with cidr {other.cidr} of subnet {other.id}")


def add_interface(tx: Tx, router_id: str, body: dict[str, Any]) -> dict[str, Any]:
    row = visible(tx, router_id)
    subnet_id, port_id = body.get("subnet_id"), body.get("port_id")
    if not subnet_id and not port_id:
        raise bad_request("router", "Either subnet_id or port_id must be specified")
    if subnet_id and port_id:
        raise bad_request("router", "Cannot specify both subnet-id and port-id")
    if port_id:
        port = port_model.visible(tx, port_id)
        if port.device_id:
            raise in_use("PortInUse", f"Unable to complete operation on port {port.id} for "
                         f"network {port.network_id}. Port already has an attached device "
                         f"{port.device_id}.")
        if not port.fixed_ips:
            raise bad_request("router", "Router port must have at least one fixed IP")
        subnets = [networks.visible_subnet(tx, a.subnet_id) for a in port.fixed_ips]
        _check_new_subnets(tx, row, subnets)
        port.device_owner, port.device_id = ROUTER_INTERFACE, row.id
        port_model.rebind(tx, port, row.host or "")
        touch(port, tx)
    else:
        subnet = networks.visible_subnet(tx, subnet_id)
        if not subnet.gateway_ip:
            raise bad_request("router", "Subnet for router interface must have a gateway IP")
        _check_new_subnets(tx, row, [subnet])
        network = tx.session.scalar(select(NetworkRow).where(NetworkRow.id == subnet.network_id))
        assert network is not None
        port = port_model.create_internal(
            tx, network, subnet.project_id, ROUTER_INTERFACE, row.id,
            fixed_ips=[{"subnet_id": subnet.id, "ip_address": subnet.gateway_ip}],
            host=row.host)
        subnets = [subnet]
    tx.session.flush()
    tx.trace("l3", f"interface {port.fixed_ips[0].ip_address} of router {row.name or row.id}",
             router_id=row.id, port_id=port.id)
    _changed(tx, row)
    return _interface_info(row, port, [s.id for s in subnets])


def remove_interface(tx: Tx, router_id: str, body: dict[str, Any]) -> dict[str, Any]:
    row = visible(tx, router_id)
    subnet_id, port_id = body.get("subnet_id"), body.get("port_id")
    if not subnet_id and not port_id:
        raise bad_request("router", "Either subnet_id or port_id must be specified")
    interfaces = _interfaces(tx, row.id)
    if port_id:
        port = next((p for p in interfaces if p.id == port_id), None)
        if port is None:
            raise NeutronNamedNotFound("RouterInterfaceNotFound", f"Router {row.id} does not "
                                       f"have an interface with id {port_id}")
        if subnet_id and all(a.subnet_id != subnet_id for a in port.fixed_ips):
            raise bad_request_mismatch(port_id, subnet_id)
        subnet_ids = [a.subnet_id for a in port.fixed_ips]
    else:
        port = next((p for p in interfaces
                     if any(a.subnet_id == subnet_id for a in p.fixed_ips)), None)
        if port is None:
            raise NeutronNamedNotFound("RouterInterfaceNotFoundForSubnet", f"Router {row.id} "
                                       f"has no interface on subnet {subnet_id}")
        subnet_ids = [subnet_id]
    for sid in subnet_ids:
        _check_not_used_by_floatingips(tx, row, sid)
    info = _interface_info(row, port, subnet_ids)
    remaining = [a for a in port.fixed_ips if a.subnet_id not in subnet_ids]
    if remaining:
        for allocation in [a for a in port.fixed_ips if a.subnet_id in subnet_ids]:
            port.fixed_ips.remove(allocation)
        touch(port, tx)
    else:
        port_model.delete(tx, port)
    _changed(tx, row)
    return info


def bad_request_mismatch(port_id: str, subnet_id: str) -> Exception:
    return invalid("SubnetMismatchForPort", f"Subnet on port {port_id} does not match the "
                   f"requested subnet {subnet_id}.")


def _check_not_used_by_floatingips(tx: Tx, row: RouterRow, subnet_id: str) -> None:
    subnet = tx.session.scalar(select(SubnetRow).where(SubnetRow.id == subnet_id))
    if subnet is None:
        return
    cidr = ipaddress.ip_network(subnet.cidr)
    for fip in tx.session.scalars(select(FloatingIPRow).where(FloatingIPRow.router_id == row.id)):
        if fip.fixed_ip_address and ipaddress.ip_address(fip.fixed_ip_address) in cidr:
            raise in_use("RouterInterfaceInUseByFloatingIP", f"Router interface for subnet "
                         f"{subnet_id} on router {row.id} cannot be deleted, as it is required "
                         "by one or more floating IPs.")


# -- floating IPs -------------------------------------------------------------------------


def visible_fip(tx: Tx, fip_id: str) -> FloatingIPRow:
    row = tx.session.scalar(select(FloatingIPRow).where(FloatingIPRow.id == fip_id))
    if row is None or not tx.owns(row.project_id):
        raise NeutronNotFound("floatingip", fip_id)
    return row


def fip_listing(tx: Tx) -> list[dict[str, Any]]:
    query = select(FloatingIPRow).order_by(FloatingIPRow.seq)
    if not tx.admin:
        query = query.where(FloatingIPRow.project_id == tx.ctx.project_id)
    return [views.floatingip(r) for r in tx.session.scalars(query)]


def create_fip(tx: Tx, body: dict[str, Any]) -> FloatingIPRow:
    if body.get("floating_ip_address") and not tx.admin:
        raise PolicyNotAuthorized("create_floatingip:floating_ip_address")
    project = tx.project_for(body)
    network = networks.visible(tx, body.get("floating_network_id") or "")
    if not network.external:
        raise bad_request("floatingip", f"Network {network.id} is not a valid external network")
    if not any(s.ip_version == 4 for s in network.subnets):
        raise bad_request("floatingip", f"Network {network.id} does not contain any IPv4 subnet")
    if body.get("fixed_ip_address") and not body.get("port_id"):
        raise bad_request("floatingip", "fixed_ip_address cannot be specified without a port_id")
    quotas.check(tx, project, "floatingip")
    fip_id = tx.env.ids.uuid("floatingip")
    asked = {k: body[k] for k in ("subnet_id",) if body.get(k)}
    if body.get("floating_ip_address"):
        asked["ip_address"] = body["floating_ip_address"]
    port = port_model.create_internal(tx, network, "", FLOATINGIP, fip_id,
                                      fixed_ips=[asked or {"subnet_id": _roomy(tx, network)}],
                                      status="N/A")
    address = next(a.ip_address for a in port.fixed_ips
                   if ipaddress.ip_address(a.ip_address).version == 4)
    row = FloatingIPRow(id=fip_id, project_id=project, floating_ip_address=address,
                        floating_network_id=network.id, floating_port_id=port.id,
                        status="DOWN", **standard(tx, body))
    tx.session.add(row)
    tx.session.flush()
    if body.get("port_id"):
        _associate(tx, row, body["port_id"], body.get("fixed_ip_address"))
    return row


def _roomy(tx: Tx, network: NetworkRow) -> str:
    """The first IPv4 subnet of the external network with a free address."""
    for subnet in network.subnets:
        if subnet.ip_version == 4 and ipam.lowest_free(
                subnet.allocation_pools, ipam.used_addresses(tx, subnet.id)) is not None:
            return subnet.id
    raise ipam.exhausted(network.id)


def update_fip(tx: Tx, row: FloatingIPRow, body: dict[str, Any]) -> None:
    if "description" in body:
        row.description = body["description"] or ""
    if "port_id" in body:
        if body["port_id"]:
            _associate(tx, row, body["port_id"], body.get("fixed_ip_address"))
        else:
            if body.get("fixed_ip_address"):
                raise bad_request("floatingip", "fixed_ip_address cannot be specified without "
                                  "a port_id")
            _disassociate(tx, row)
    elif body.get("fixed_ip_address"):
        if not row.fixed_port_id:
            raise bad_request("floatingip", "fixed_ip_address cannot be specified without a "
                              "port_id")
        _associate(tx, row, row.fixed_port_id, body["fixed_ip_address"])
    touch(row, tx)


def delete_fip(tx: Tx, row: FloatingIPRow) -> None:
    port = tx.session.scalar(select(PortRow).where(PortRow.id == row.floating_port_id))
    before = views.floatingip(row)
    before["status"] = "DOWN"
    tx.session.delete(row)
    tx.session.flush()
    if port is not None:
        port_model.delete(tx, port)
    tx.emit("floatingip.changed", before)


def _associate(tx: Tx, row: FloatingIPRow, port_id: str, fixed_ip: str | None) -> None:
    port = port_model.visible(tx, port_id)
    if port.project_id != row.project_id and not tx.admin:
        raise bad_request("floatingip", f"Cannot process floating IP association with Port "
                          f"{port.id}, since that port is owned by a different project")
    if port.device_owner.startswith("network:"):
        raise bad_request("floatingip", f"Port {port.id} is unable to be assigned a floating IP")
    ip, subnet_id = _fixed_ip_of(port, fixed_ip)
    if port.id == row.fixed_port_id and ip == row.fixed_ip_address:
        return
    taken = tx.session.scalar(select(FloatingIPRow).where(
        FloatingIPRow.fixed_port_id == port.id, FloatingIPRow.fixed_ip_address == ip,
        FloatingIPRow.floating_network_id == row.floating_network_id,
        FloatingIPRow.id != row.id))
    if taken is not None:
        raise in_use("FloatingIPPortAlreadyAssociated",
                     f"Cannot associate floating IP {row.floating_ip_address} ({row.id}) with "
                     f"port {port.id} using fixed IP {ip}, as that fixed IP already has a "
                     f"floating IP on external network {row.floating_network_id}.")
    router_id = _router_for(tx, port, subnet_id, row.floating_network_id)
    row.fixed_port_id, row.fixed_port = port.id, port
    row.fixed_ip_address, row.router_id, row.status = ip, router_id, "ACTIVE"
    tx.trace("l3", f"floating IP {row.floating_ip_address} -> {ip} via router {router_id}",
             floatingip_id=row.id, port_id=port.id, router_id=router_id)
    tx.emit_later("floatingip.changed", lambda: views.floatingip(row))


def _disassociate(tx: Tx, row: FloatingIPRow) -> None:
    if row.fixed_port_id is None:
        return
    row.fixed_port_id, row.fixed_port = None, None
    row.fixed_ip_address, row.router_id, row.status = None, None, "DOWN"
    tx.emit_later("floatingip.changed", lambda: views.floatingip(row))


def _fixed_ip_of(port: PortRow, asked: str | None) -> tuple[str, str]:
    """The port's address the floating IP maps to, chosen as neutron chooses it."""
    if asked:
        if ipaddress.ip_address(asked).version != 4:
            raise bad_request("floatingip", f"Cannot process floating IP association with "
                              f"{asked}, since that is not an IPv4 address")
        found = next((a for a in port.fixed_ips if a.ip_address == asked), None)
        if found is None:
            raise bad_request("floatingip", f"Port {port.id} does not have fixed ip {asked}")
        return found.ip_address, found.subnet_id
    v4 = [a for a in port.fixed_ips if ipaddress.ip_address(a.ip_address).version == 4]
    if not v4:
        raise bad_request("floatingip", f"Cannot add floating IP to port {port.id} that has no "
                          "fixed IPv4 addresses")
    if len(v4) > 1:
        raise bad_request("floatingip", f"Port {port.id} has multiple fixed IPv4 addresses.  "
                          "Must provide a specific IPv4 address when assigning a floating IP")
    return v4[0].ip_address, v4[0].subnet_id


def _router_for(tx: Tx, port: PortRow, subnet_id: str, external_network_id: str) -> str:
    """A router with an interface on the subnet and its gateway on the floating network."""
    subnet = tx.session.scalar(select(SubnetRow).where(SubnetRow.id == subnet_id))
    candidates = tx.session.execute(select(PortRow.device_id, IPAllocationRow.ip_address).join(
        IPAllocationRow, IPAllocationRow.port_id == PortRow.id).where(
        PortRow.device_owner == ROUTER_INTERFACE, PortRow.network_id == port.network_id,
        IPAllocationRow.subnet_id == subnet_id).order_by(PortRow.seq)).all()
    first = None
    for router_id, interface_ip in candidates:
        gateway = tx.session.scalar(select(PortRow.id).where(
            PortRow.device_id == router_id, PortRow.device_owner == ROUTER_GATEWAY,
            PortRow.network_id == external_network_id))
        if gateway is None:
            continue
        if subnet is not None and interface_ip == subnet.gateway_ip:
            return router_id
        first = first or router_id
    if first is not None:
        return first
    raise NeutronNamedNotFound(
        "ExternalGatewayForFloatingIPNotFound",
        f"External network {external_network_id} is not reachable from subnet {subnet_id}.  "
        f"Therefore, cannot associate Port {port.id} with a Floating IP.")

