"""Address allocation: subnets' pools, and the fixed IPs a port gets from them.

Neutron's internal IPAM, simplified to one rule a reader can predict: an address nobody
asked for is the lowest free one of the subnet's allocation pools. An asked-for address
must lie in the subnet and be free. The (subnet, address) pair is unique in the
database, and every allocation happens inside the request's one transaction, so two
ports can never hold one address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from labkit.cloud.network.common import ROUTER_GATEWAY, ROUTER_INTERFACE, Tx, in_use, invalid
from labkit.cloud.network.exceptions import NeutronBadRequest, NeutronNotFound, invalid_input
from labkit.cloud.network.tables import IPAllocationRow, PortRow, SubnetRow

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ROUTER_OWNERS = (ROUTER_INTERFACE, ROUTER_GATEWAY, "network:router_interface_distributed",
                 "network:ha_router_replicated_interface")

# -- address arithmetic -------------------------------------------------------------------


def parse_cidr(cidr: str, ip_version: int | None = None) -> Network:
    """The subnet's network; host bits set or a /0 are refused as neutron refuses them."""
    try:
        interface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise NeutronBadRequest(f"Invalid input for cidr. Reason: '{cidr}' is not a valid "
                                "IP subnet.") from None
    net = interface.network
    if interface.ip != net.network_address:
        raise NeutronBadRequest(f"Invalid input for cidr. Reason: '{cidr}' isn't a "
                                f"recommended CIDR, it should be '{net}'.")
    if net.prefixlen == 0:
        raise invalid_input("0 is not allowed as CIDR prefix length.")
    if ip_version is not None and net.version != ip_version:
        raise invalid_input(f"Cannot use IPv{net.version} cidr {cidr} for an IPv{ip_version} "
                            "subnet.")
    return net


def address(value: str) -> Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise NeutronBadRequest(f"Invalid input for ip_address. Reason: '{value}' is not a "
                                "valid IP address.") from None


def default_gateway(net: Network) -> str:
    """The subnet's first address, neutron's default gateway."""
    return str(net[1]) if net.num_addresses > 1 else str(net[0])


def usable_range(net: Network) -> tuple[int, int]:
    """First and last address a host may take: not the network address, nor IPv4 broadcast."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.num_addresses == 1:
        return first, last
    if net.version == 4:
        return (first + 1, last - 1) if net.prefixlen <= 30 else (first, last)
    return first + 1, last


def default_pools(net: Network, gateway: str | None) -> list[dict[str, str]]:
    """The usable range, less the gateway: one pool, or two around it."""
    first, last = usable_range(net)
    ranges = [(first, last)]
    if gateway is not None:
        gw = int(address(gateway))
        ranges = [(a, b) for a, b in ((first, gw - 1), (gw + 1, last)) if a <= b] \
            if first <= gw <= last else ranges
    return [_pool(net.version, a, b) for a, b in ranges]


def _pool(version: int, start: int, end: int) -> dict[str, str]:
    return {"start": str(ipaddress.ip_address(start) if version == 4
                         else ipaddress.IPv6Address(start)),
            "end": str(ipaddress.ip_address(end) if version == 4
                       else ipaddress.IPv6Address(end))}


def check_gateway(net: Network, gateway: str) -> None:
    """A gateway inside the subnet may not be its network or (IPv4) broadcast address."""
    gw = address(gateway)
    if gw.version != net.version:
        raise invalid_input("Gateway is not valid on subnet.")
    if gw in net and net.version == 4 and net.num_addresses > 2 and gw in (
            net.network_address, net.broadcast_address):
        raise invalid_input("Gateway is not valid on subnet.")


def check_pools(pools: Iterable[dict[str, str]], net: Network,
                gateway: str | None) -> list[dict[str, str]]:
    """Validate asked-for pools as neutron does: inside the subnet, apart, gateway outside."""
    ranges: list[tuple[int, int, dict[str, str]]] = []
    first, last = int(net.network_address), int(net.broadcast_address)
    for pool in pools:
        text = f"{pool.get('start')}-{pool.get('end')}"
        try:
            start, end = ipaddress.ip_address(pool["start"]), ipaddress.ip_address(pool["end"])
        except (KeyError, ValueError):
            raise invalid("InvalidAllocationPool",
                          f"The allocation pool {text} is not valid.") from None
        if start.version != net.version or end.version != net.version or start > end:
            raise invalid("InvalidAllocationPool", f"The allocation pool {text} is not valid.")
        low, high = int(start), int(end)
        if not (first <= low and high <= last) or (net.version == 4 and net.prefixlen <= 30 and (
                low == first or high == last)):
            raise invalid("OutOfBoundsAllocationPool", f"The allocation pool {text} spans "
                          f"beyond the subnet cidr {net}.")
        ranges.append((low, high, {"start": str(start), "end": str(end)}))
    ranges.sort(key=lambda r: r[0])
    for (_a_low, a_high, a), (b_low, _b_high, b) in zip(ranges, ranges[1:], strict=False):
        if b_low <= a_high:
            raise in_use("OverlappingAllocationPools", "Found overlapping allocation pools: "
                         f"{a['start']}-{a['end']} {b['start']}-{b['end']} for subnet "
                         f"cidr {net}.")
    if gateway is not None:
        gw = int(address(gateway))
        for low, high, pool in ranges:
            if low <= gw <= high:
                raise in_use("GatewayConflictWithAllocationPools",
                             f"Gateway ip {gateway} conflicts with allocation pool "
                             f"{pool['start']}-{pool['end']}.")
    return [pool for _low, _high, pool in ranges]


def valid_for_subnet(cidr: str, ip: str, device_owner: str = "") -> bool:
    """May a port hold `ip` on this subnet (neutron's check_subnet_ip)."""
    net = ipaddress.ip_network(cidr)
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version != net.version or addr not in net:
        return False
    if net.version == 4:
        return net.num_addresses <= 2 or addr not in (net.network_address,
                                                      net.broadcast_address)
    return device_owner in (*ROUTER_OWNERS, "") or addr != net.network_address


def lowest_free(pools: list[dict[str, str]], used: set[int]) -> str | None:
    """The lowest pool address not in `used`, pools taken in order of their start."""
    for pool in sorted(pools, key=lambda p: int(ipaddress.ip_address(p["start"]))):
        start, end = ipaddress.ip_address(pool["start"]), ipaddress.ip_address(pool["end"])
        candidate = int(start)
        while candidate <= int(end):
            if candidate not in used:
                return str(ipaddress.ip_address(candidate) if start.version == 4
                           else ipaddress.IPv6Address(candidate))
            candidate += 1
    return None


# -- allocation against the database -----------------------------------------------------


def used_addresses(tx: Tx, subnet_id: str) -> set[int]:
    """Every address held on the subnet, the session's unflushed ones included."""
    rows = tx.session.scalars(select(IPAllocationRow.ip_address).where(
        IPAllocationRow.subnet_id == subnet_id))
    return {int(ipaddress.ip_address(ip)) for ip in rows}


def allocate(tx: Tx, port: PortRow, subnets: list[SubnetRow],
             requests: list[dict[str, Any]] | None) -> None:
    """Give `port` its fixed IPs on its network's `subnets`.

    `requests` None: one address from the first IPv4 subnet with room (and the first
    IPv6 one), as neutron does for a port that asks for nothing. A list: what each
    entry names ({"subnet_id"}, {"ip_address"} or both), in order.
    """
    if requests is None:
        _allocate_any(tx, port, subnets)
        return
    for request in requests:
        subnet = _subnet_for(tx, port, subnets, request)
        assign(tx, port, subnet, request.get("ip_address"))


def _allocate_any(tx: Tx, port: PortRow, subnets: list[SubnetRow]) -> None:
    for version in (4, 6):
        candidates = [s for s in subnets if s.ip_version == version]
        if not candidates:
            continue
        for subnet in candidates:
            ip = lowest_free(subnet.allocation_pools, used_addresses(tx, subnet.id))
            if ip is not None:
                _hold(tx, port, subnet, ip)
                break
        else:
            raise exhausted(port.network_id)


def _subnet_for(tx: Tx, port: PortRow, subnets: list[SubnetRow],
                request: dict[str, Any]) -> SubnetRow:
    """The subnet a fixed_ips entry names, checked as neutron's _get_subnet_for_fixed_ip."""
    if not subnets:
        raise invalid_input("IP allocation requires subnets for network.")
    ip = request.get("ip_address")
    if request.get("subnet_id"):
        subnet = next((s for s in subnets if s.id == request["subnet_id"]), None)
        if subnet is None:
            if tx.session.scalar(select(SubnetRow.id).where(
                    SubnetRow.id == request["subnet_id"])) is None:
                raise NeutronNotFound("subnet", request["subnet_id"])
            raise invalid_input(f"Failed to create port on network {port.network_id}, because "
                                f"fixed_ips included invalid subnet {request['subnet_id']}.")
        if ip is not None and not valid_for_subnet(subnet.cidr, ip, port.device_owner):
            raise invalid("InvalidIpForSubnet",
                          f"IP address {ip} is not a valid IP for the specified subnet.")
        return subnet
    if ip is None:
        raise invalid_input("IP allocation requires subnet_id or ip_address.")
    for subnet in subnets:
        if valid_for_subnet(subnet.cidr, ip, port.device_owner):
            return subnet
    raise invalid("InvalidIpForNetwork", f"IP address {ip} is not a valid IP for any of the "
                  "subnets on the specified network.")


def assign(tx: Tx, port: PortRow, subnet: SubnetRow, ip: str | None) -> str:
    """Hold `ip` (or the lowest free address) on `subnet` for `port`."""
    used = used_addresses(tx, subnet.id)
    if ip is None:
        ip = lowest_free(subnet.allocation_pools, used)
        if ip is None:
            raise exhausted(port.network_id)
    else:
        ip = str(address(ip))
        if int(ipaddress.ip_address(ip)) in used:
            raise in_use("IpAddressAlreadyAllocated",
                         f"IP address {ip} already allocated in subnet {subnet.id}")
    _hold(tx, port, subnet, ip)
    return ip


def _hold(tx: Tx, port: PortRow, subnet: SubnetRow, ip: str) -> None:
    port.fixed_ips.append(IPAllocationRow(subnet_id=subnet.id, network_id=subnet.network_id,
                                          ip_address=ip))
    tx.session.flush()
    tx.trace("ipam", f"allocate {ip} on {subnet.name or subnet.id}", port_id=port.id,
             subnet_id=subnet.id, ip_address=ip)


def exhausted(network_id: str) -> Exception:
    return in_use("IpAddressGenerationFailure",
                  f"No more IP addresses available on network {network_id}.")
