"""Networks and subnets, with ml2's segment allocation and the DHCP port of each network.

A tenant network gets the lab's tunnel type (VXLAN, or GRE) and the lowest free tunnel id
from 65537 (0x10001); only an admin names a provider network (a flat one on a physical
network, or a tunnel with a chosen id). The first subnet with DHCP on a network brings
its DHCP port, bound to the network node where the DHCP agent runs; later DHCP subnets
add an address to that port.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import or_, select

from labkit.cloud.network import ipam, local_vlans, quotas, views
from labkit.cloud.network import ports as port_model
from labkit.cloud.network.common import (
    DHCP,
    MAX_MTU,
    ROUTER_INTERFACE,
    TUNNEL_ID_MAX,
    Tx,
    in_use,
    standard,
    touch,
)
from labkit.cloud.network.exceptions import (
    NeutronConflict,
    NeutronNotFound,
    PolicyNotAuthorized,
    invalid_input,
)
from labkit.cloud.network.tables import IPAllocationRow, NetworkRow, PortRow, SubnetRow
from labkit.cloud.network.wiring import lowest_free_tunnel_id

PROVIDER = ("provider:network_type", "provider:physical_network", "provider:segmentation_id")


# -- lookups ------------------------------------------------------------------------------


def _may_see(tx: Tx, row: NetworkRow) -> bool:
    return tx.owns(row.project_id) or row.shared or row.external


def visible(tx: Tx, network_id: str) -> NetworkRow:
    row = tx.session.scalar(select(NetworkRow).where(NetworkRow.id == network_id))
    if row is None or not _may_see(tx, row):
        raise NeutronNotFound("network", network_id)
    return row


def owned(tx: Tx, network_id: str, action: str) -> NetworkRow:
    """A network the caller may change: visible, and theirs (or the caller is admin)."""
    row = visible(tx, network_id)
    if not tx.owns(row.project_id):
        raise PolicyNotAuthorized(f"{action}_network")
    return row


def _dhcp_networks(tx: Tx) -> set[str]:
    return set(tx.session.scalars(select(PortRow.network_id).where(
        PortRow.device_owner == DHCP)))


def view(tx: Tx, row: NetworkRow) -> dict[str, Any]:
    return views.network(row, row.id in _dhcp_networks(tx))


def listing(tx: Tx) -> list[dict[str, Any]]:
    query = select(NetworkRow).order_by(NetworkRow.seq)
    if not tx.admin:
        query = query.where(or_(NetworkRow.project_id == tx.ctx.project_id,
                                NetworkRow.shared.is_(True), NetworkRow.external.is_(True)))
    served = _dhcp_networks(tx)
    return [views.network(r, r.id in served) for r in tx.session.scalars(query)]


def visible_subnet(tx: Tx, subnet_id: str) -> SubnetRow:
    row = tx.session.scalar(select(SubnetRow).where(SubnetRow.id == subnet_id))
    if row is None:
        raise NeutronNotFound("subnet", subnet_id)
    if not tx.owns(row.project_id):
        network = tx.session.scalar(select(NetworkRow).where(NetworkRow.id == row.network_id))
        if network is None or not (network.shared or network.external
                                   or network.project_id == tx.ctx.project_id):
            raise NeutronNotFound("subnet", subnet_id)
    return row


def subnet_listing(tx: Tx) -> list[dict[str, Any]]:
    query = select(SubnetRow).order_by(SubnetRow.seq)
    if not tx.admin:
        open_networks = select(NetworkRow.id).where(or_(
            NetworkRow.project_id == tx.ctx.project_id, NetworkRow.shared.is_(True),
            NetworkRow.external.is_(True)))
        query = query.where(or_(SubnetRow.project_id == tx.ctx.project_id,
                                SubnetRow.network_id.in_(open_networks)))
    return [views.subnet(r) for r in tx.session.scalars(query)]


# -- networks -----------------------------------------------------------------------------


def create(tx: Tx, body: dict[str, Any]) -> NetworkRow:
    for key in ("shared", "router:external"):
        if body.get(key) and not tx.admin:
            raise PolicyNotAuthorized(f"create_network:{key}")
    for key in PROVIDER:
        if body.get(key) is not None and not tx.admin:
            raise PolicyNotAuthorized(f"create_network:{key}")
    project = tx.project_for(body)
    quotas.check(tx, project, "network")
    network_type, physical_network, segmentation_id = _segment(tx, body)
    row = NetworkRow(
        id=tx.env.ids.uuid("network"), project_id=project, name=body.get("name") or "",
        admin_state_up=body.get("admin_state_up", True), status="ACTIVE",
        shared=bool(body.get("shared")), external=bool(body.get("router:external")),
        network_type=network_type, physical_network=physical_network,
        segmentation_id=segmentation_id, mtu=_mtu(network_type, body.get("mtu")),
        port_security_enabled=body.get("port_security_enabled", True) is not False,
        availability_zone_hints=list(body.get("availability_zone_hints") or []),
        **standard(tx, body))
    tx.session.add(row)
    tx.session.flush()
    tx.trace("ml2", f"network {row.name or row.id}: {network_type} "
             f"{segmentation_id if segmentation_id is not None else physical_network}",
             network_id=row.id)
    return row


def _mtu(network_type: str, asked: int | None) -> int:
    largest = MAX_MTU[network_type]
    if not asked:
        return largest
    if asked > largest:
        raise invalid_input(f"Requested MTU is too big, maximum is {largest}.")
    if asked < 68:
        raise invalid_input(f"Requested MTU {asked} is too small, minimum is 68.")
    return asked


def _segment(tx: Tx, body: dict[str, Any]) -> tuple[str, str | None, int | None]:
    """ml2's type drivers: (network_type, physical_network, segmentation_id)."""
    kind = body.get("provider:network_type")
    physical = body.get("provider:physical_network")
    segment = body.get("provider:segmentation_id")
    if kind is None:
        if physical is not None or segment is not None:
            raise invalid_input("provider:network_type required.")
        kind = tx.env.lab.tunnel_type
        return kind, None, _free_tunnel_id(tx, kind)
    if kind == "flat":
        if segment is not None:
            raise invalid_input("provider:segmentation_id prohibited for flat provider network.")
        if not physical:
            raise invalid_input("physical_network required for flat provider network.")
        if physical not in tx.env.lab.flat_networks:
            raise invalid_input(f"physical_network '{physical}' unknown for flat provider "
                                "network.")
        taken = tx.session.scalar(select(NetworkRow.id).where(
            NetworkRow.network_type == "flat", NetworkRow.physical_network == physical))
        if taken is not None:
            raise in_use("FlatNetworkInUse", "Unable to create the flat network. Physical "
                         f"network {physical} is in use.")
        return kind, physical, None
    if kind in TUNNEL_ID_MAX:
        if physical:
            raise invalid_input(f"provider:physical_network specified for {kind} network.")
        if segment is None:
            return kind, None, _free_tunnel_id(tx, kind)
        if not 1 <= int(segment) <= TUNNEL_ID_MAX[kind]:
            raise invalid_input(f"provider:segmentation_id {segment} out of range "
                                f"(1 through {TUNNEL_ID_MAX[kind]}).")
        if _tunnel_ids(tx, kind) & {int(segment)}:
            raise in_use("TunnelIdInUse", "Unable to create the network. The tunnel ID "
                         f"{segment} is in use.")
        return kind, None, int(segment)
    raise invalid_input(f"network_type value '{kind}' not supported.")


def _tunnel_ids(tx: Tx, kind: str) -> set[int]:
    return {i for i in tx.session.scalars(select(NetworkRow.segmentation_id).where(
        NetworkRow.network_type == kind)) if i is not None}


def _free_tunnel_id(tx: Tx, kind: str) -> int:
    """The lowest free id of the lab's tunnel range (tunnel_id_start upwards)."""
    candidate = lowest_free_tunnel_id(_tunnel_ids(tx, kind), tx.env.lab.tunnel_id_start)
    if candidate > TUNNEL_ID_MAX[kind]:
        raise NeutronConflict("NoNetworkAvailable", "Unable to create the network. No "
                              "project network is available for allocation.")
    return candidate


def update(tx: Tx, row: NetworkRow, body: dict[str, Any]) -> None:
    if not tx.owns(row.project_id):
        raise PolicyNotAuthorized("update_network")
    for key in ("shared", "router:external", *PROVIDER):
        if key in body and not tx.admin:
            raise PolicyNotAuthorized(f"update_network:{key}")
    current = {"provider:network_type": row.network_type,
               "provider:physical_network": row.physical_network,
               "provider:segmentation_id": row.segmentation_id}
    if any(key in body and body[key] != current[key] for key in PROVIDER):
        raise invalid_input("Plugin does not support updating the following provider network "
                            "attributes: " + ", ".join(k for k in PROVIDER if k in body) + ".")
    if body.get("shared") is False and row.shared:
        _check_unshare(tx, row)
    if body.get("router:external") is False and row.external:
        _check_not_external_in_use(tx, row)
    for key in ("name", "description", "admin_state_up", "shared", "port_security_enabled"):
        if key in body and body[key] is not None:
            setattr(row, key, body[key])
    if "router:external" in body and body["router:external"] is not None:
        row.external = bool(body["router:external"])
    if body.get("mtu"):
        row.mtu = _mtu(row.network_type, body["mtu"])
    touch(row, tx)


def _check_unshare(tx: Tx, row: NetworkRow) -> None:
    others = tx.session.scalar(select(PortRow.id).where(
        PortRow.network_id == row.id, PortRow.project_id != row.project_id,
        PortRow.project_id != "", PortRow.device_owner != DHCP))
    if others is not None:
        raise in_use("InvalidSharedSetting", "Unable to reconfigure sharing settings for "
                     f"network {row.id}. Multiple tenants are using it.")


def _check_not_external_in_use(tx: Tx, row: NetworkRow) -> None:
    held = tx.session.scalar(select(PortRow.id).where(
        PortRow.network_id == row.id,
        PortRow.device_owner.in_(("network:router_gateway", "network:floatingip"))))
    if held is not None:
        raise in_use("ExternalNetworkInUse", f"External network {row.id} cannot be updated to "
                     "be made non-external, since it has existing gateway ports.")


def delete(tx: Tx, row: NetworkRow) -> None:
    if not tx.owns(row.project_id):
        raise PolicyNotAuthorized("delete_network")
    on_it = list(tx.session.scalars(select(PortRow).where(PortRow.network_id == row.id)))
    if any(p.device_owner != DHCP for p in on_it):
        raise in_use("NetworkInUse", f"Unable to complete operation on network {row.id}. "
                     "There are one or more ports still in use on the network.")
    for port in on_it:
        port_model.delete(tx, port)
    for subnet in list(row.subnets):
        tx.session.delete(subnet)
    local_vlans.release_network(tx, row.id)
    tx.session.delete(row)


# -- subnets ------------------------------------------------------------------------------


def create_subnet(tx: Tx, body: dict[str, Any]) -> SubnetRow:
    network = visible(tx, body.get("network_id") or "")
    if not tx.owns(network.project_id):
        raise PolicyNotAuthorized("create_subnet")
    project = tx.project_for(body)
    quotas.check(tx, project, "subnet")
    net = ipam.parse_cidr(body.get("cidr") or "", body.get("ip_version"))
    _check_overlap(network, net)
    if "gateway_ip" in body:
        gateway = body["gateway_ip"]
        if gateway is not None:
            ipam.check_gateway(net, gateway)
    else:
        gateway = ipam.default_gateway(net)
    if body.get("allocation_pools"):
        pools = ipam.check_pools(body["allocation_pools"], net, gateway)
    else:
        pools = ipam.default_pools(net, gateway)
    row = SubnetRow(
        id=tx.env.ids.uuid("subnet"), network_id=network.id, project_id=project,
        name=body.get("name") or "", cidr=str(net), ip_version=net.version,
        gateway_ip=gateway, enable_dhcp=body.get("enable_dhcp", True) is not False,
        allocation_pools=pools, dns_nameservers=list(body.get("dns_nameservers") or []),
        host_routes=[dict(r) for r in body.get("host_routes") or []],
        ipv6_ra_mode=body.get("ipv6_ra_mode"), ipv6_address_mode=body.get("ipv6_address_mode"),
        **standard(tx, body))
    tx.session.add(row)
    network.subnets.append(row)
    touch(network, tx)
    tx.session.flush()
    if row.enable_dhcp:
        _serve_dhcp(tx, network, row)
    return row


def _check_overlap(network: NetworkRow, net: ipam.Network) -> None:
    for other in network.subnets:
        existing = ipam.parse_cidr(other.cidr)
        if existing.version == net.version and existing.overlaps(net):
            raise invalid_input(f"Requested subnet with cidr: {net} for network: {network.id} "
                                "overlaps with another subnet.")


def dhcp_device_id(host: str, network_id: str) -> str:
    """neutron's DHCP port device_id: dhcp<uuid5 of the agent's host>-<network id>."""
    return f"dhcp{uuid.uuid5(uuid.NAMESPACE_DNS, host)}-{network_id}"


def dhcp_port(tx: Tx, network_id: str) -> PortRow | None:
    return tx.session.scalar(select(PortRow).where(PortRow.network_id == network_id,
                                                   PortRow.device_owner == DHCP))


def _serve_dhcp(tx: Tx, network: NetworkRow, subnet: SubnetRow) -> None:
    """The DHCP agent's port on the network node gets an address on the subnet."""
    host = tx.env.network_node
    if host is None:
        return
    port = dhcp_port(tx, network.id)
    try:
        if port is None:
            port_model.create_internal(tx, network, network.project_id, DHCP,
                                       dhcp_device_id(host, network.id),
                                       fixed_ips=[{"subnet_id": subnet.id}], host=host)
        elif all(a.subnet_id != subnet.id for a in port.fixed_ips):
            ipam.assign(tx, port, subnet, None)
    except NeutronConflict as error:
        if getattr(error, "neutron_type", "") != "IpAddressGenerationFailure":
            raise  # a full pool leaves the subnet without DHCP, as the agent would


def _stop_dhcp(tx: Tx, subnet: SubnetRow) -> None:
    port = dhcp_port(tx, subnet.network_id)
    if port is None:
        return
    for allocation in [a for a in port.fixed_ips if a.subnet_id == subnet.id]:
        port.fixed_ips.remove(allocation)
    tx.session.flush()
    if not port.fixed_ips:
        port_model.delete(tx, port)


def update_subnet(tx: Tx, row: SubnetRow, body: dict[str, Any]) -> None:
    network = tx.session.scalar(select(NetworkRow).where(NetworkRow.id == row.network_id))
    assert network is not None
    if not (tx.owns(row.project_id) or tx.owns(network.project_id)):
        raise PolicyNotAuthorized("update_subnet")
    net = ipam.parse_cidr(row.cidr)
    gateway = body.get("gateway_ip", row.gateway_ip)
    if "gateway_ip" in body and gateway != row.gateway_ip:
        if gateway is not None:
            ipam.check_gateway(net, gateway)
        _check_gateway_free(tx, row)
    pools = row.allocation_pools
    if body.get("allocation_pools"):
        pools = ipam.check_pools(body["allocation_pools"], net, gateway)
    elif gateway is not None and "gateway_ip" in body:
        ipam.check_pools(pools, net, gateway)
    row.gateway_ip, row.allocation_pools = gateway, pools
    for key in ("name", "description", "dns_nameservers", "host_routes"):
        if key in body and body[key] is not None:
            setattr(row, key, body[key])
    if "enable_dhcp" in body and body["enable_dhcp"] is not None \
            and body["enable_dhcp"] != row.enable_dhcp:
        row.enable_dhcp = body["enable_dhcp"]
        if row.enable_dhcp:
            _serve_dhcp(tx, network, row)
        else:
            _stop_dhcp(tx, row)
    touch(row, tx)


def _check_gateway_free(tx: Tx, row: SubnetRow) -> None:
    if row.gateway_ip is None:
        return
    holder = tx.session.scalar(select(PortRow.id).join(
        IPAllocationRow, IPAllocationRow.port_id == PortRow.id).where(
        IPAllocationRow.subnet_id == row.id, IPAllocationRow.ip_address == row.gateway_ip,
        PortRow.device_owner.like("network:router%")))
    if holder is not None:
        raise in_use("GatewayIpInUse", f"Current gateway ip {row.gateway_ip} already in use by "
                     f"port {holder}. Unable to update.")


def delete_subnet(tx: Tx, row: SubnetRow) -> None:
    network = tx.session.scalar(select(NetworkRow).where(NetworkRow.id == row.network_id))
    assert network is not None
    if not (tx.owns(row.project_id) or tx.owns(network.project_id)):
        raise PolicyNotAuthorized("delete_subnet")
    holders = tx.session.scalars(select(PortRow.device_owner).join(
        IPAllocationRow, IPAllocationRow.port_id == PortRow.id).where(
        IPAllocationRow.subnet_id == row.id)).all()
    if any(owner != DHCP for owner in holders):
        raise in_use("SubnetInUse", f"Unable to complete operation on subnet {row.id}: One or "
                     "more ports have an IP allocation from this subnet.")
    _stop_dhcp(tx, row)
    network.subnets.remove(row)
    tx.session.delete(row)
    touch(network, tx)


def router_interface_subnets(tx: Tx, router_id: str) -> list[str]:
    return list(tx.session.scalars(select(IPAllocationRow.subnet_id).join(
        PortRow, IPAllocationRow.port_id == PortRow.id).where(
        PortRow.device_id == router_id, PortRow.device_owner == ROUTER_INTERFACE)))
