"""What the agents know of the cloud's networks: a plain snapshot the wiring is computed from.

The neutron model fills a `Topology` from its tables (`Neutron.topology()`); the wiring
model (wiring.py), the operator views (render.py) and the packet walk (walk.py) read
only this. Nothing here touches a database, so the same code answers for the cloud,
for a notebook's "what if" and for unit tests built by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Host:
    name: str
    role: str                      # "controller", "network" or "compute"
    local_ip: str | None = None    # tunnel endpoint; None for hosts without an OVS agent
    management_ip: str | None = None


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    project_id: str
    network_type: str              # "vxlan", "gre" or "flat"
    segmentation_id: int | None    # tunnel id (vxlan/gre); None for flat
    physical_network: str | None   # "external" for the flat external network
    external: bool = False         # router:external
    mtu: int = 1450


@dataclass(frozen=True)
class Subnet:
    id: str
    network_id: str
    cidr: str
    gateway_ip: str | None
    enable_dhcp: bool = True
    dns_nameservers: tuple[str, ...] = ()


@dataclass(frozen=True)
class FixedIP:
    subnet_id: str
    ip_address: str


@dataclass(frozen=True)
class Port:
    id: str
    network_id: str
    mac_address: str
    fixed_ips: tuple[FixedIP, ...]
    device_owner: str              # "compute:nova", "network:dhcp", "network:router_interface",
                                   # "network:router_gateway", "network:floatingip", ""
    device_id: str
    host: str | None               # binding:host_id ("" or None when unbound)
    status: str = "DOWN"
    admin_state_up: bool = True
    security_group_ids: tuple[str, ...] = ()
    port_security_enabled: bool = True
    allowed_address_pairs: tuple[tuple[str, str | None], ...] = ()  # (ip or cidr, mac)


@dataclass(frozen=True)
class SecurityGroupRule:
    id: str
    security_group_id: str
    direction: str                 # "ingress" or "egress"
    ethertype: str                 # "IPv4" or "IPv6"
    protocol: str | None           # "tcp", "udp", "icmp", a number, or None for any
    port_range_min: int | None
    port_range_max: int | None
    remote_ip_prefix: str | None
    remote_group_id: str | None


@dataclass(frozen=True)
class SecurityGroup:
    id: str
    name: str
    project_id: str
    rules: tuple[SecurityGroupRule, ...] = ()


@dataclass(frozen=True)
class Router:
    id: str
    name: str
    project_id: str
    host: str | None               # the L3 agent's host that holds its namespace
    gateway_port_id: str | None    # its qg- port on the external network
    enable_snat: bool = True
    interface_port_ids: tuple[str, ...] = ()  # its qr- ports


@dataclass(frozen=True)
class FloatingIP:
    id: str
    floating_ip_address: str
    floating_network_id: str
    port_id: str | None            # the associated fixed port
    fixed_ip_address: str | None
    router_id: str | None
    status: str = "DOWN"


@dataclass(frozen=True)
class Topology:
    """Everything the wiring depends on, for every host at once."""

    hosts: tuple[Host, ...]
    networks: tuple[Network, ...] = ()
    subnets: tuple[Subnet, ...] = ()
    ports: tuple[Port, ...] = ()
    security_groups: tuple[SecurityGroup, ...] = ()
    routers: tuple[Router, ...] = ()
    floating_ips: tuple[FloatingIP, ...] = ()
    # (host, network id) -> local VLAN tag on that host's br-int, as the OVS agent
    # allocated it (lowest free tag when the network's first port came to the host)
    local_vlans: dict[tuple[str, str], int] = field(default_factory=dict)
    tunnel_type: str = "vxlan"     # "vxlan" or "gre": the lab's tenant network type

    def network(self, network_id: str) -> Network:
        return next(n for n in self.networks if n.id == network_id)

    def subnet(self, subnet_id: str) -> Subnet:
        return next(s for s in self.subnets if s.id == subnet_id)

    def port(self, port_id: str) -> Port:
        return next(p for p in self.ports if p.id == port_id)


def topology_to_dict(topology: Topology) -> dict[str, Any]:
    """The snapshot as JSON-ready data (local VLANs as [host, network id, tag] rows)."""
    data = asdict(topology)
    data["local_vlans"] = [[host, network, tag]
                           for (host, network), tag in sorted(topology.local_vlans.items())]
    return data


def topology_from_dict(data: dict[str, Any]) -> Topology:
    """The inverse of `topology_to_dict`: what the inspection API sends back to a notebook."""
    def ports(items: list[dict[str, Any]]) -> tuple[Port, ...]:
        return tuple(Port(**{**p, "fixed_ips": tuple(FixedIP(**f) for f in p["fixed_ips"]),
                             "security_group_ids": tuple(p["security_group_ids"]),
                             "allowed_address_pairs": tuple(tuple(pair) for pair in
                                                            p["allowed_address_pairs"])})
                     for p in items)

    return Topology(
        hosts=tuple(Host(**h) for h in data["hosts"]),
        networks=tuple(Network(**n) for n in data["networks"]),
        subnets=tuple(Subnet(**{**s, "dns_nameservers": tuple(s["dns_nameservers"])})
                      for s in data["subnets"]),
        ports=ports(data["ports"]),
        security_groups=tuple(
            SecurityGroup(**{**g, "rules": tuple(SecurityGroupRule(**r) for r in g["rules"])})
            for g in data["security_groups"]),
        routers=tuple(Router(**{**r, "interface_port_ids": tuple(r["interface_port_ids"])})
                      for r in data["routers"]),
        floating_ips=tuple(FloatingIP(**f) for f in data["floating_ips"]),
        local_vlans={(host, network): tag for host, network, tag in data["local_vlans"]},
        tunnel_type=data["tunnel_type"])
