"""Reading nova's network info (nova.network.model's NetworkInfo, kept as JSON).

One VIF per port: id, address (the MAC), devname, and network: id, label, meta (mtu),
subnets, each with cidr, gateway, dns, and ips, each with its floating_ips. nova-api's
`addresses`, the metadata service and the hypervisor driver all read it; the walks live
here once. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def subnets(vif: dict[str, Any]) -> list[dict[str, Any]]:
    """The subnets of the vif's network."""
    return (vif.get("network") or {}).get("subnets") or []


def ips(network_info: list[dict[str, Any]] | None
        ) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(vif, subnet, ip) for every address of every port, in order."""
    for vif in network_info or []:
        for subnet in subnets(vif):
            for ip in subnet.get("ips") or []:
                yield vif, subnet, ip


def floating_ips(network_info: list[dict[str, Any]] | None) -> list[str]:
    """Every floating IP on the instance's ports, in order, each once."""
    found: list[str] = []
    for _vif, _subnet, ip in ips(network_info):
        for fip in ip.get("floating_ips") or []:
            if fip.get("address") and fip["address"] not in found:
                found.append(fip["address"])
    return found


def subnet_gateway(subnet: dict[str, Any]) -> str | None:
    return (subnet.get("gateway") or {}).get("address")


def subnet_dns(subnet: dict[str, Any]) -> list[str]:
    return [d["address"] for d in subnet.get("dns") or [] if d.get("address")]
