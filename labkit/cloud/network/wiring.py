"""The per-host wiring neutron's agents set up, computed from a `Topology` and nothing else.

`wire(topology)` answers, for every host with an Open vSwitch agent, what an operator
would find on it: the hybrid-plug devices of each VM port (tap → qbr linux bridge →
qvb/qvo veth → br-int with the network's local VLAN), br-tun's tunnel ports and the
flows that swap a local VLAN for the network's tunnel id, the iptables chains the
port's security groups become (the hybrid iptables firewall driver, with ipsets for
remote groups), and on the network node the qdhcp- and qrouter- namespaces with
dnsmasq's host entries, the router's qr-/qg- devices and its NAT rules.

The layout follows neutron: the OVS agent in the ofctl style of the tutorial's era for
the flows (tables 0, 2, 3/4, 10, 20, 22), the modern hybrid iptables firewall and L3
agent for the rules. Rules are data (`Rule`), so the packet walk evaluates exactly the
lines `iptables-save` shows. Nothing here reads a database or the clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from labkit.cloud.network.topology import Network, Port, Router, Subnet, Topology

# Linux caps interface names at 15 bytes with the NUL: neutron keeps 14 (prefix + id[:11]).
DEVICE_NAME_LEN = 14
# "neutron-openvswi-" + 11 characters fills iptables' 28-character chain names.
FIREWALL_WRAP = "neutron-openvswi"
L3_WRAP = "neutron-l3-agent"
METADATA_IP = "169.254.169.254"
METADATA_PROXY_PORT = 9697
METADATA_MARK = "0x1/0xffff"      # the L3 agent's mark for redirected metadata requests
EXTERNAL_MARK = "0x2/0xffff"      # ... and for packets that came in through the qg- device
DNS_DOMAIN = "openstacklocal"
OVS_VERSION = "2.17.9"

# br-tun's tables, as neutron's OVS agent numbers them
PATCH_LV_TO_TUN = 2
GRE_TUN_TO_LV = 3
VXLAN_TUN_TO_LV = 4
LEARN_FROM_TUN = 10
UCAST_TO_TUN = 20
FLOOD_TO_TUN = 22
TUNNEL_TABLE = {"gre": GRE_TUN_TO_LV, "vxlan": VXLAN_TUN_TO_LV}
CANARY_TABLE = 23                  # br-int: the agent notices a restarted OVS by its absence
LOCAL_OFPORT = 65534               # a bridge's own internal port ("LOCAL")

MIN_VLAN, MAX_VLAN = 1, 4094


# -- names -----------------------------------------------------------------------------------


def device_name(prefix: str, port_id: str) -> str:
    """tap/qbr/qvb/qvo/qr-/qg- + the port id, cut to 14 characters (tap6e7d5cb0-01)."""
    return (prefix + port_id)[:DEVICE_NAME_LEN]


def chain_name(kind: str, port_id: str) -> str:
    """A port's firewall chain: kind "i" (to the VM), "o" (from it) or "s" (anti-spoofing)."""
    return f"{FIREWALL_WRAP}-{kind}{port_id[:10]}"


def tunnel_port_name(tunnel_type: str, remote_ip: str) -> str:
    """br-tun's port to a peer: the type and the peer's local_ip as 8 hex digits."""
    return f"{tunnel_type}-{int(ipaddress.IPv4Address(remote_ip)):08x}"


def ipset_name(security_group_id: str, ethertype: str = "IPv4") -> str:
    """The ipset holding a remote group's addresses (ipset names stop at 31 bytes, less
    the two neutron keeps for the "-n" of the set it swaps in)."""
    return ("N" + ethertype + security_group_id)[:29]


def lowest_free_vlan(used: Iterable[int]) -> int:
    """The lowest local VLAN tag (1..4094) not in `used`, as the OVS agent picks one."""
    taken = set(used)
    for tag in range(MIN_VLAN, MAX_VLAN + 1):
        if tag not in taken:
            return tag
    raise ValueError("no free local VLAN: all of 1..4094 are in use on this host")


def lowest_free_tunnel_id(used: Iterable[int], start: int) -> int:
    """The lowest tunnel id from `start` up not in `used`, as ml2's vxlan and gre type
    drivers hand out tenant segmentation ids (the caller checks the type's maximum)."""
    taken = set(used)
    candidate = start
    while candidate in taken:
        candidate += 1
    return candidate


def _derived_mac(seed: str) -> str:
    """A stable, locally administered MAC for a device the kernel would give a random one."""
    digest = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in digest)


def _prefixed(ip: str, subnet: Subnet | None) -> str:
    prefix = ipaddress.ip_network(subnet.cidr).prefixlen if subnet else 32
    return f"{ip}/{prefix}"


def _is_v4(address: str) -> bool:
    return ipaddress.ip_network(address, strict=False).version == 4


# -- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """One OpenFlow entry, as `ovs-ofctl dump-flows` prints it."""

    table: int
    priority: int
    match: str                     # "in_port=1", "tun_id=0x10001", "" for none
    actions: str
    why: str = ""                  # what the flow is for, in a sentence
    cookie: str = "0x0"


@dataclass(frozen=True)
class OvsPort:
    name: str
    ofport: int
    type: str = ""                 # "", "internal", "patch", "vxlan", "gre"
    options: dict[str, str] = field(default_factory=dict)
    tag: int | None = None         # the local VLAN on br-int
    port_id: str | None = None     # the neutron port behind it
    network_id: str | None = None
    peer_host: str | None = None   # a tunnel port's far end
    remote_ip: str | None = None


@dataclass(frozen=True)
class Bridge:
    """An Open vSwitch bridge: br-int, br-tun, or a provider bridge such as br-ex."""

    name: str
    ports: tuple[OvsPort, ...]
    flows: tuple[Flow, ...] = ()
    fail_mode: str | None = "secure"
    datapath_type: str = "system"

    def port(self, name: str) -> OvsPort | None:
        return next((p for p in self.ports if p.name == name), None)

    def ofport(self, ofport: int) -> OvsPort | None:
        return next((p for p in self.ports if p.ofport == ofport), None)


@dataclass(frozen=True)
class LinuxBridge:
    """A qbr bridge: where iptables can see a VM's traffic (it cannot on an OVS port)."""

    name: str
    bridge_id: str                 # 8000.<lowest MAC of its ports>
    interfaces: tuple[str, ...]
    port_id: str
    stp: bool = False


@dataclass(frozen=True)
class VethPair:
    """qvb (in the linux bridge) and qvo (on br-int): two ends of one virtual cable."""

    left: str
    right: str
    left_mac: str
    right_mac: str
    port_id: str


@dataclass(frozen=True)
class Vif:
    """One VM port on its host: the devices it became and the chains that filter it."""

    port_id: str
    network_id: str
    mac_address: str
    fixed_ips: tuple[str, ...]
    tap: str
    qbr: str
    qvb: str
    qvo: str
    tap_mac: str                   # libvirt gives the tap the port's MAC with fe: in front
    vlan: int
    network_type: str
    segmentation_id: int | None
    mtu: int
    security_group_ids: tuple[str, ...] = ()
    port_security_enabled: bool = True
    chains: tuple[str, ...] = ()   # i, o, s; none when port security is off


@dataclass(frozen=True)
class Rule:
    """One iptables rule, kept as its parts so the packet walk can evaluate it.

    `line` is the text `iptables-save` prints for it. A leading "!" on source,
    destination, an interface, mark or ctstate negates the match; "qr-+" matches
    every interface whose name starts with "qr-".
    """

    chain: str
    target: str                    # ACCEPT, DROP, RETURN, SNAT, DNAT, REDIRECT, MARK or a chain
    target_args: str = ""
    source: str | None = None
    destination: str | None = None
    in_interface: str | None = None
    out_interface: str | None = None
    protocol: str | None = None
    physdev_in: str | None = None
    physdev_out: str | None = None
    mac_source: str | None = None
    state: str | None = None
    mark: str | None = None
    ctstate: str | None = None
    sport: str | None = None       # "67" or a range "1000:2000"
    dport: str | None = None
    icmp_type: str | None = None
    match_set: str | None = None
    set_direction: str | None = None  # "src" or "dst"
    security_group_rule_id: str | None = None
    why: str = ""

    @property
    def spec(self) -> str:
        """The rule after `-A <chain>`, in the order iptables-save prints its parts."""
        parts: list[str] = []

        def neg(flag: str, value: str | None) -> None:
            if value is not None:
                parts.append(f"! {flag} {value[1:]}" if value.startswith("!")
                             else f"{flag} {value}")

        neg("-s", self.source)
        neg("-d", self.destination)
        neg("-i", self.in_interface)
        neg("-o", self.out_interface)
        if self.protocol:
            parts.append(f"-p {self.protocol}")
        if self.physdev_in or self.physdev_out:
            which = ("--physdev-in", self.physdev_in) if self.physdev_in else \
                ("--physdev-out", self.physdev_out)
            parts.append(f"-m physdev {which[0]} {which[1]} --physdev-is-bridged")
        if self.mac_source:
            parts.append(f"-m mac --mac-source {self.mac_source}")
        if self.state:
            parts.append(f"-m state --state {self.state}")
        if self.mark:
            parts.append("-m mark " + (f"! --mark {self.mark[1:]}" if self.mark.startswith("!")
                                       else f"--mark {self.mark}"))
        if self.ctstate:
            parts.append("-m conntrack " + (f"! --ctstate {self.ctstate[1:]}"
                                            if self.ctstate.startswith("!")
                                            else f"--ctstate {self.ctstate}"))
        if self.protocol and (self.sport or self.dport or self.icmp_type):
            parts.append(f"-m {self.protocol}")
            for flag, value in (("sport", self.sport), ("dport", self.dport)):
                if value is None:
                    continue
                parts.append(f"-m multiport --{flag}s {value}" if ":" in value
                             else f"--{flag} {value}")
            if self.icmp_type:
                parts.append(f"--icmp-type {self.icmp_type}")
        if self.match_set:
            parts.append(f"-m set --match-set {self.match_set} {self.set_direction}")
        parts.append(f"-j {self.target}" + (f" {self.target_args}" if self.target_args else ""))
        return " ".join(parts)

    @property
    def line(self) -> str:
        return f"-A {self.chain} {self.spec}"


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str = "-"              # builtin chains: ACCEPT; user chains: "-"


@dataclass(frozen=True)
class IptablesTable:
    name: str                      # "filter", "nat", "mangle"
    chains: tuple[Chain, ...]
    rules: tuple[Rule, ...]

    def rules_of(self, chain: str) -> list[Rule]:
        return [r for r in self.rules if r.chain == chain]

    def has_chain(self, chain: str) -> bool:
        return any(c.name == chain for c in self.chains)


@dataclass(frozen=True)
class IPSet:
    """A remote security group's member addresses, which `-m set --match-set` tests."""

    name: str
    security_group_id: str
    members: tuple[str, ...]
    family: str = "inet"


@dataclass(frozen=True)
class NsDevice:
    """A device inside a namespace, plugged into br-int as an internal port."""

    name: str
    kind: str                      # "tap" (dhcp), "qr" (router interface), "qg" (router gateway)
    mac_address: str
    mtu: int
    addresses: tuple[str, ...]     # "172.16.1.1/24"; floating IPs on qg- as /32
    port_id: str
    network_id: str
    vlan: int


@dataclass(frozen=True)
class Route:
    destination: str               # "default" or a CIDR
    device: str
    via: str | None = None
    source: str | None = None      # connected routes: the device's own address

    @property
    def line(self) -> str:
        if self.via:
            return f"{self.destination} via {self.via} dev {self.device}"
        return f"{self.destination} dev {self.device} proto kernel scope link src {self.source}"


@dataclass(frozen=True)
class DhcpHost:
    """One line of dnsmasq's hosts file: the MAC it answers, with which name and address."""

    mac_address: str
    hostname: str
    ip_address: str
    port_id: str

    @property
    def line(self) -> str:
        return f"{self.mac_address},{self.hostname}.{DNS_DOMAIN},{self.ip_address}"


@dataclass(frozen=True)
class Namespace:
    name: str                      # qdhcp-<network id> or qrouter-<router id>
    kind: str                      # "dhcp" or "router"
    devices: tuple[NsDevice, ...]
    routes: tuple[Route, ...] = ()
    iptables: tuple[IptablesTable, ...] = ()
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    network_id: str | None = None
    router_id: str | None = None

    def device(self, name: str) -> NsDevice | None:
        return next((d for d in self.devices if d.name == name), None)

    def table(self, name: str) -> IptablesTable | None:
        return next((t for t in self.iptables if t.name == name), None)

    @property
    def hosts_file(self) -> str:
        return f"/var/lib/neutron/dhcp/{self.network_id}/host"


@dataclass(frozen=True)
class HostWiring:
    """Everything neutron's agents set up on one host."""

    host: str
    role: str
    local_ip: str | None
    management_ip: str | None
    tunnel_type: str
    bridges: tuple[Bridge, ...]
    linux_bridges: tuple[LinuxBridge, ...] = ()
    veths: tuple[VethPair, ...] = ()
    vifs: tuple[Vif, ...] = ()
    local_vlans: dict[str, int] = field(default_factory=dict)   # network id -> tag here
    iptables: tuple[IptablesTable, ...] = ()
    ipsets: tuple[IPSet, ...] = ()
    namespaces: tuple[Namespace, ...] = ()

    def bridge(self, name: str) -> Bridge | None:
        return next((b for b in self.bridges if b.name == name), None)

    def namespace(self, name: str) -> Namespace | None:
        return next((n for n in self.namespaces if n.name == name), None)

    def vif(self, port_id: str) -> Vif | None:
        return next((v for v in self.vifs if v.port_id == port_id), None)

    def table(self, name: str) -> IptablesTable | None:
        return next((t for t in self.iptables if t.name == name), None)

    def ipset(self, name: str) -> IPSet | None:
        return next((s for s in self.ipsets if s.name == name), None)

    def tunnel_port(self, peer_host: str) -> OvsPort | None:
        tun = self.bridge("br-tun")
        return next((p for p in tun.ports if p.peer_host == peer_host), None) if tun else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostWiring:
        """The inverse of `to_dict`, e.g. for what the inspection API returns."""
        return _build(cls, data)


def _build(kind: Any, value: Any) -> Any:
    """Rebuild a value of the annotated type `kind` from JSON data."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _build(hints[f.name], value[f.name])
                       for f in dataclasses.fields(kind) if f.name in value})
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return _build(inner[0], value)
    if origin is tuple:
        return tuple(_build(typing.get_args(kind)[0], v) for v in value)
    if origin is dict:
        _, item = typing.get_args(kind)
        return {k: _build(item, v) for k, v in value.items()}
    return value


# -- which port's devices live where ---------------------------------------------------------


class _Plan:
    """The facts every host's wiring needs: where each port's device is, the local VLANs."""

    def __init__(self, topology: Topology) -> None:
        self.t = topology
        self.networks = {n.id: n for n in topology.networks}
        self.subnets = {s.id: s for s in topology.subnets}
        self.ports = {p.id: p for p in topology.ports}
        self.network_node = next((h.name for h in topology.hosts if h.role == "network"), None)
        self.routers = {r.id: r for r in topology.routers}
        self.router_ports: dict[str, tuple[list[Port], Port | None]] = {
            r.id: self._router_ports(r) for r in topology.routers}
        self.where = {p.id: self._place(p) for p in topology.ports}
        self.vlans = {h.name: self._local_vlans(h.name) for h in topology.hosts}

    def router_host(self, router: Router) -> str | None:
        # the lab has one L3 agent, on the network node, so an unscheduled router lands there
        return router.host or self.network_node

    def _router_ports(self, router: Router) -> tuple[list[Port], Port | None]:
        ids = list(router.interface_port_ids)
        ids += [p.id for p in self.t.ports if p.device_owner == "network:router_interface"
                and p.device_id == router.id and p.id not in ids]
        inside = [self.ports[i] for i in ids if i in self.ports]
        gateway = self.ports.get(router.gateway_port_id or "")
        return inside, gateway

    def _place(self, port: Port) -> str | None:
        if port.network_id not in self.networks:
            return None
        owner = port.device_owner
        if owner == "network:floatingip":
            return None                # an address held on the router's qg- device, no device
        if owner in ("network:router_interface", "network:router_gateway"):
            router = self.routers.get(port.device_id)
            return self.router_host(router) if router else None
        if owner == "network:dhcp":
            return port.host or self.network_node
        if owner.startswith("network:"):
            return None                # owners this lab does not wire (DVR, HA, ...)
        return port.host or None

    def ports_on(self, host: str) -> list[Port]:
        return [p for p in self.t.ports if self.where.get(p.id) == host]

    def _local_vlans(self, host: str) -> dict[str, int]:
        """Each network with a device on the host: the agent's tag if the topology carries
        it, else the lowest free one, in the order the networks' ports arrived."""
        order: list[str] = []
        for port in self.ports_on(host):
            if port.network_id not in order:
                order.append(port.network_id)
        tags = {n: self.t.local_vlans[(host, n)] for n in order
                if (host, n) in self.t.local_vlans}
        for net in order:
            if net not in tags:
                tags[net] = lowest_free_vlan(tags.values())
        return {n: tags[n] for n in order}

    def group_members(self, group_id: str) -> tuple[str, ...]:
        """The IPv4 addresses of every port in the group (and their allowed address pairs),
        as neutron's server sends them to the agents for the group's ipset."""
        found: list[str] = []
        for port in self.t.ports:
            if group_id not in port.security_group_ids:
                continue
            addresses = [f.ip_address for f in port.fixed_ips]
            addresses += [ip for ip, _ in port.allowed_address_pairs]
            for address in addresses:
                if _is_v4(address) and address not in found:
                    found.append(address)
        return tuple(sorted(found, key=lambda a: ipaddress.ip_network(a, strict=False)))


def _is_vif(port: Port) -> bool:
    return not port.device_owner.startswith("network:")


# -- iptables tables -------------------------------------------------------------------------


class _Table:
    """Collects chains and rules, then lays them out as iptables-save does: builtin chains
    first in the kernel's order, then user chains by name."""

    BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
               "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
               "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")}

    def __init__(self, name: str) -> None:
        self.name = name
        self.user: list[str] = []
        self.rules: dict[str, list[Rule]] = {c: [] for c in self.BUILTIN[name]}
        self.tops: dict[str, int] = {}

    def chain(self, name: str) -> str:
        if name not in self.rules:
            self.user.append(name)
            self.rules[name] = []
        return name

    def add(self, chain: str, target: str, *, top: bool = False, **parts: Any) -> Rule:
        self.chain(chain)
        rule = Rule(chain=chain, target=target, **parts)
        if top:                        # neutron's "top" rules go before the others, in order
            at = self.tops.get(chain, 0)
            self.rules[chain].insert(at, rule)
            self.tops[chain] = at + 1
        else:
            self.rules[chain].append(rule)
        return rule

    def build(self) -> IptablesTable:
        builtins = self.BUILTIN[self.name]
        order = list(builtins) + sorted(self.user)
        chains = tuple(Chain(c, "ACCEPT" if c in builtins else "-") for c in order)
        return IptablesTable(self.name, chains, tuple(r for c in order for r in self.rules[c]))


_PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "58": "ipv6-icmp", "icmpv6": "ipv6-icmp"}


def _sg_rule_parts(rule: Any, members: dict[str, tuple[str, ...]]) -> dict[str, Any] | None:
    """A security group rule as iptables match parts (None: it matches nothing here)."""
    protocol = rule.protocol
    protocol = _PROTOCOL_NAMES.get(str(protocol), protocol) if protocol not in (None, "any",
                                                                                 "0") else None
    parts: dict[str, Any] = {"protocol": protocol}
    if rule.port_range_min is not None and protocol in ("tcp", "udp", "sctp", "dccp"):
        low, high = rule.port_range_min, rule.port_range_max or rule.port_range_min
        parts["dport"] = str(low) if low == high else f"{low}:{high}"
    elif rule.port_range_min is not None and protocol == "icmp":
        code = f"/{rule.port_range_max}" if rule.port_range_max is not None else ""
        parts["icmp_type"] = f"{rule.port_range_min}{code}"
    if rule.remote_group_id:
        name = ipset_name(rule.remote_group_id, rule.ethertype)
        if not members.get(rule.remote_group_id):
            return None                # neutron creates no ipset for an empty group
        parts["match_set"] = name
        parts["set_direction"] = "src" if rule.direction == "ingress" else "dst"
        return parts
    prefix = rule.remote_ip_prefix
    if prefix and not prefix.endswith("/0"):
        if "/" not in prefix:
            prefix += "/32"
        parts["source" if rule.direction == "ingress" else "destination"] = prefix
    return parts


def _describe_sg_rule(rule: Any) -> str:
    what = rule.protocol or "any protocol"
    if rule.port_range_min is not None:
        ports = (str(rule.port_range_min) if rule.port_range_max in (None, rule.port_range_min)
                 else f"{rule.port_range_min}-{rule.port_range_max}")
        what += f" {'type' if rule.protocol == 'icmp' else 'port'} {ports}"
    peer = (f"members of group {rule.remote_group_id}" if rule.remote_group_id
            else rule.remote_ip_prefix or "anywhere")
    side = "from" if rule.direction == "ingress" else "to"
    return f"security group rule {rule.id}: {rule.direction} {what} {side} {peer}"


def _port_chains(table: _Table, plan: _Plan, port: Port, vif: Vif) -> set[str]:
    """The i, o and s chains of one filtered port, in the order the driver fills them.
    Returns the remote groups whose ipsets the rules refer to."""
    fw = FIREWALL_WRAP
    ingress, egress, spoof = vif.chains
    for name in vif.chains:
        table.chain(name)
    groups = [g for g in plan.t.security_groups if g.id in port.security_group_ids]
    members = {g.id: plan.group_members(g.id) for g in plan.t.security_groups}
    used_sets: set[str] = set()
    v4 = [ip for ip in vif.fixed_ips if _is_v4(ip)]

    def rules_for(direction: str, chain: str) -> None:
        table.add(chain, "RETURN", state="RELATED,ESTABLISHED",
                  why="replies and related packets of connections already allowed")
        if direction == "ingress":
            # the server adds these for every port: DHCP offers to its addresses and broadcast
            for dest in [f"{ip}/32" for ip in v4] + ["255.255.255.255/32"]:
                table.add(chain, "RETURN", destination=dest, protocol="udp", sport="67",
                          dport="68", why="DHCP replies from the DHCP server")
        seen: set[str] = set()
        for group in groups:
            for rule in group.rules:
                if rule.direction != direction or rule.ethertype != "IPv4":
                    continue           # IPv6 rules go to ip6tables, not modelled here
                parts = _sg_rule_parts(rule, members)
                if parts is None:
                    continue
                candidate = Rule(chain=chain, target="RETURN", **parts)
                if candidate.spec in seen:
                    continue           # the same line from two groups is written once
                seen.add(candidate.spec)
                if rule.remote_group_id:
                    used_sets.add(rule.remote_group_id)
                table.add(chain, "RETURN", security_group_rule_id=rule.id,
                          why=_describe_sg_rule(rule), **parts)
        table.add(chain, "DROP", state="INVALID",
                  why="packets conntrack cannot place in any connection")
        table.add(chain, f"{fw}-sg-fallback", why="nothing above allowed it: drop")

    rules_for("ingress", ingress)
    # egress: anti-spoofing and DHCP first, then the group's egress rules
    table.add(egress, "RETURN", source="0.0.0.0/32", destination="255.255.255.255/32",
              protocol="udp", sport="68", dport="67",
              why="DHCP discover/request before the VM has an address")
    pairs = [(mac or port.mac_address, ip) for ip, mac in port.allowed_address_pairs
             if _is_v4(ip)]
    pairs += [(port.mac_address, ip) for ip in v4]
    for mac, ip in pairs:
        table.add(spoof, "RETURN", source=ip if "/" in ip else f"{ip}/32",
                  mac_source=mac.upper(), why="the port's own MAC and address (or a pair "
                                              "allowed on it)")
    if not v4:
        table.add(spoof, "RETURN", mac_source=port.mac_address.upper(),
                  why="a port without addresses: its MAC only")
    table.add(spoof, "DROP", why="any other source MAC or address: spoofed")
    table.add(egress, spoof, why="check the source MAC and address")
    table.add(egress, "RETURN", protocol="udp", sport="68", dport="67",
              why="DHCP renewals from the VM's own address")
    table.add(egress, "DROP", protocol="udp", sport="67", dport="68",
              why="a VM may not act as a DHCP server")
    rules_for("egress", egress)
    return used_sets


def _host_filter(plan: _Plan, vifs: list[Vif]) -> tuple[IptablesTable, list[IPSet]]:
    """The hybrid iptables firewall driver's filter table for the host's VM ports."""
    fw = FIREWALL_WRAP
    table = _Table("filter")
    for builtin, jumps in (("INPUT", ["INPUT"]), ("FORWARD", ["filter-top", "FORWARD"]),
                           ("OUTPUT", ["filter-top", "OUTPUT"])):
        for jump in jumps:
            name = "neutron-filter-top" if jump == "filter-top" else f"{fw}-{jump}"
            table.add(builtin, table.chain(name), why="neutron's wrapper chain")
    table.add("neutron-filter-top", table.chain(f"{fw}-local"), why="neutron's wrapper chain")
    sg_chain, fallback = table.chain(f"{fw}-sg-chain"), table.chain(f"{fw}-sg-fallback")
    used: set[str] = set()
    filtered = sorted((v for v in vifs if v.port_security_enabled), key=lambda v: v.port_id)
    for vif in filtered:
        port = plan.ports[vif.port_id]
        ingress, egress, _ = vif.chains
        for key in ("physdev_out", "physdev_in"):
            table.add(f"{fw}-FORWARD", sg_chain, top=True, **{key: vif.tap},
                      why="traffic bridged to or from the VM goes to the security group chain")
        used |= _port_chains(table, plan, port, vif)
        for key, chain in (("physdev_out", ingress), ("physdev_in", egress)):
            table.add(sg_chain, chain, **{key: vif.tap},
                      why=f"{'to' if key == 'physdev_out' else 'from'} {vif.tap}: its chain")
        table.add(f"{fw}-INPUT", egress, physdev_in=vif.tap,
                  why="from the VM to this host itself: the VM's egress chain")
    table.add(sg_chain, "ACCEPT", why="a packet every port chain returned is accepted")
    table.add(fallback, "DROP", why="the default for traffic no rule allowed")
    for vif in sorted((v for v in vifs if not v.port_security_enabled), key=lambda v: v.port_id):
        for key in ("physdev_out", "physdev_in"):
            table.add(f"{fw}-FORWARD", "ACCEPT", **{key: vif.tap},
                      why="port security is off for this port: everything passes")
        table.add(f"{fw}-INPUT", "ACCEPT", physdev_in=vif.tap,
                  why="port security is off for this port: everything passes")
    ipsets = [IPSet(ipset_name(g), g, plan.group_members(g)) for g in sorted(used)]
    return table.build(), ipsets


def _router_tables(router: Router, gateway: NsDevice | None, gateway_ip: str | None,
                   floating: list[tuple[str, str]]) -> tuple[IptablesTable, ...]:
    """The L3 agent's mangle, nat and filter tables in a router's namespace."""
    wrap = L3_WRAP
    meta = {"destination": f"{METADATA_IP}/32", "in_interface": "qr-+", "protocol": "tcp",
            "dport": "80"}
    mangle = _Table("mangle")
    mangle.add("PREROUTING", mangle.chain(f"{wrap}-PREROUTING"), why="neutron's wrapper chain")
    mangle.add(f"{wrap}-PREROUTING", mangle.chain(f"{wrap}-mark"), why="mark by ingress device")
    mangle.add(f"{wrap}-PREROUTING", "MARK", target_args=f"--set-xmark {METADATA_MARK}",
               why="mark metadata requests so INPUT lets the redirected packet in", **meta)
    if gateway:
        mangle.add(f"{wrap}-mark", "MARK", in_interface=gateway.name,
                   target_args=f"--set-xmark {EXTERNAL_MARK}",
                   why="remember which packets came in from the external network")

    nat = _Table("nat")
    for builtin in ("PREROUTING", "OUTPUT", "POSTROUTING"):
        nat.add(builtin, nat.chain(f"{wrap}-{builtin}"), why="neutron's wrapper chain")
    nat.add("POSTROUTING", nat.chain("neutron-postrouting-bottom"), why="neutron's wrapper chain")
    snat = nat.chain(f"{wrap}-snat")
    float_snat = nat.chain(f"{wrap}-float-snat")
    nat.add("neutron-postrouting-bottom", snat, why="source NAT, after everything else")
    nat.add(snat, float_snat, why="floating IPs first: a VM with one leaves as it")
    nat.add(f"{wrap}-PREROUTING", "REDIRECT", target_args=f"--to-ports {METADATA_PROXY_PORT}",
            why="instances' metadata requests go to the metadata proxy in this namespace",
            **meta)
    for fip, fixed in floating:
        for chain in ("PREROUTING", "OUTPUT"):
            nat.add(f"{wrap}-{chain}", "DNAT", destination=f"{fip}/32",
                    target_args=f"--to-destination {fixed}",
                    why=f"floating IP {fip} is the instance at {fixed}")
        nat.add(float_snat, "SNAT", source=f"{fixed}/32", target_args=f"--to-source {fip}",
                why=f"the instance at {fixed} goes out as its floating IP {fip}")
    if gateway and gateway_ip:
        if router.enable_snat:
            nat.add(snat, "SNAT", out_interface=gateway.name,
                    target_args=f"--to-source {gateway_ip}",
                    why="everything else leaving to the external network takes the "
                        "router's gateway address")
        nat.add(f"{wrap}-POSTROUTING", "ACCEPT", out_interface=f"!{gateway.name}",
                ctstate="!DNAT", why="between the router's own subnets: no NAT")
        nat.add(snat, "SNAT", mark=f"!{EXTERNAL_MARK}", ctstate="DNAT",
                target_args=f"--to-source {gateway_ip}",
                why="an instance reaching a floating IP from inside: replies come back "
                    "through the router")

    filt = _Table("filter")
    for builtin, jumps in (("INPUT", ["INPUT"]), ("FORWARD", ["filter-top", "FORWARD"]),
                           ("OUTPUT", ["filter-top", "OUTPUT"])):
        for jump in jumps:
            name = "neutron-filter-top" if jump == "filter-top" else f"{wrap}-{jump}"
            filt.add(builtin, filt.chain(name), why="neutron's wrapper chain")
    filt.add("neutron-filter-top", filt.chain(f"{wrap}-local"), why="neutron's wrapper chain")
    filt.add(f"{wrap}-INPUT", "ACCEPT", mark=METADATA_MARK,
             why="metadata requests redirected to the proxy")
    filt.add(f"{wrap}-INPUT", "DROP", protocol="tcp", dport=str(METADATA_PROXY_PORT),
             why="nobody reaches the metadata proxy's port directly")
    return mangle.build(), nat.build(), filt.build()


# -- one host --------------------------------------------------------------------------------


def _physnet_bridge(physnet: str | None) -> str:
    return "br-ex" if physnet in (None, "external") else f"br-{physnet}"


def _vif(plan: _Plan, port: Port, network: Network, vlan: int) -> Vif:
    secured = port.port_security_enabled
    return Vif(
        port_id=port.id, network_id=port.network_id, mac_address=port.mac_address,
        fixed_ips=tuple(f.ip_address for f in port.fixed_ips),
        tap=device_name("tap", port.id), qbr=device_name("qbr", port.id),
        qvb=device_name("qvb", port.id), qvo=device_name("qvo", port.id),
        tap_mac="fe" + port.mac_address[2:], vlan=vlan, network_type=network.network_type,
        segmentation_id=network.segmentation_id, mtu=network.mtu,
        security_group_ids=port.security_group_ids, port_security_enabled=secured,
        chains=tuple(chain_name(k, port.id) for k in "ios") if secured else ())


def _ns_device(plan: _Plan, kind: str, port: Port, vlan: int,
               extra: tuple[str, ...] = ()) -> NsDevice:
    network = plan.networks[port.network_id]
    addresses = tuple(_prefixed(f.ip_address, plan.subnets.get(f.subnet_id))
                      for f in port.fixed_ips) + extra
    return NsDevice(name=device_name(f"{kind}-" if kind != "tap" else "tap", port.id),
                    kind=kind, mac_address=port.mac_address, mtu=network.mtu,
                    addresses=addresses, port_id=port.id, network_id=port.network_id, vlan=vlan)


def _connected(devices: Iterable[NsDevice]) -> list[Route]:
    routes = []
    for device in devices:
        for address in device.addresses:
            iface = ipaddress.ip_interface(address)
            if iface.version == 4 and iface.network.prefixlen < 32:
                routes.append(Route(str(iface.network), device.name, source=str(iface.ip)))
    return routes


def _dhcp_namespace(plan: _Plan, network_id: str, dhcp_ports: list[Port],
                    vlans: dict[str, int]) -> Namespace:
    devices = tuple(_ns_device(plan, "tap", p, vlans[network_id]) for p in dhcp_ports)
    dhcp_subnets = {s.id for s in plan.t.subnets if s.network_id == network_id and s.enable_dhcp}
    hosts = []
    for port in plan.t.ports:
        if port.network_id != network_id:
            continue
        for fixed in port.fixed_ips:
            if fixed.subnet_id in dhcp_subnets and _is_v4(fixed.ip_address):
                name = "host-" + fixed.ip_address.replace(".", "-")
                hosts.append(DhcpHost(port.mac_address, name, fixed.ip_address, port.id))
    hosts.sort(key=lambda h: ipaddress.ip_address(h.ip_address))
    return Namespace(name=f"qdhcp-{network_id}", kind="dhcp", devices=devices,
                     routes=tuple(_connected(devices)), dhcp_hosts=tuple(hosts),
                     network_id=network_id)


def _router_namespace(plan: _Plan, router: Router, vlans: dict[str, int]) -> Namespace:
    inside, gateway_port = plan.router_ports[router.id]
    inside = [p for p in inside if p.network_id in vlans]
    if gateway_port is not None and gateway_port.network_id not in vlans:
        gateway_port = None
    devices = [_ns_device(plan, "qr", p, vlans[p.network_id]) for p in inside]
    floating = sorted(((f.floating_ip_address, f.fixed_ip_address) for f in plan.t.floating_ips
                       if f.router_id == router.id and f.port_id and f.fixed_ip_address),
                      key=lambda pair: ipaddress.ip_address(pair[0]))
    gateway = gateway_ip = None
    default: list[Route] = []
    if gateway_port is not None:
        gateway = _ns_device(plan, "qg", gateway_port, vlans[gateway_port.network_id],
                             tuple(f"{fip}/32" for fip, _ in floating))
        devices.append(gateway)
        v4 = [f for f in gateway_port.fixed_ips if _is_v4(f.ip_address)]
        if v4:
            gateway_ip = v4[0].ip_address
            subnet = plan.subnets.get(v4[0].subnet_id)
            if subnet and subnet.gateway_ip:
                default.append(Route("default", gateway.name, via=subnet.gateway_ip))
    return Namespace(name=f"qrouter-{router.id}", kind="router", devices=tuple(devices),
                     routes=tuple(default + _connected(devices)),
                     iptables=_router_tables(router, gateway, gateway_ip, floating),
                     router_id=router.id)


def _br_tun(plan: _Plan, host: str, local_ip: str, vlans: dict[str, int]) -> Bridge:
    tunnel_type = plan.t.tunnel_type
    # The OVS agent without l2population: a tunnel to every other host whose agent reports
    # a tunnel address, made when the agents start, whether or not the peer has ports yet.
    # This is what the issue and the tutorial describe (one port per peer host).
    peers = [h for h in plan.t.hosts if h.local_ip and h.name != host]
    ports = [OvsPort("br-tun", LOCAL_OFPORT, "internal"),
             OvsPort("patch-int", 1, "patch", {"peer": "patch-tun"})]
    for i, peer in enumerate(peers, start=2):
        options = {"df_default": "true", "egress_pkt_mark": "0", "in_key": "flow",
                   "local_ip": local_ip, "out_key": "flow", "remote_ip": peer.local_ip or ""}
        ports.append(OvsPort(tunnel_port_name(tunnel_type, peer.local_ip or ""), i, tunnel_type,
                             options, peer_host=peer.name, remote_ip=peer.local_ip))
    tunnels = [p for p in ports if p.peer_host]
    flows = [Flow(0, 1, "in_port=1", f"resubmit(,{PATCH_LV_TO_TUN})",
                  "from br-int: to the unicast/flood split"),
             Flow(0, 0, "", "drop", "from anywhere else: drop")]
    flows += [Flow(0, 1, f"in_port={p.ofport}", f"resubmit(,{TUNNEL_TABLE[p.type]})",
                   f"from the tunnel to {p.peer_host}: to the tunnel id table") for p in tunnels]
    flows += [
        Flow(PATCH_LV_TO_TUN, 0, "dl_dst=00:00:00:00:00:00/01:00:00:00:00:00",
             f"resubmit(,{UCAST_TO_TUN})", "unicast: to the learned MAC table"),
        Flow(PATCH_LV_TO_TUN, 0, "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
             f"resubmit(,{FLOOD_TO_TUN})", "broadcast and multicast: to the flood table"),
        Flow(GRE_TUN_TO_LV, 0, "", "drop", "a GRE tunnel id with no network here"),
        Flow(VXLAN_TUN_TO_LV, 0, "", "drop", "a VXLAN id with no network here"),
        Flow(LEARN_FROM_TUN, 1, "",
             "learn(table=20,hard_timeout=300,priority=1,NXM_OF_VLAN_TCI[0..11],"
             "NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:0->NXM_OF_VLAN_TCI[],"
             "load:NXM_NX_TUN_ID[]->NXM_NX_TUN_ID[],output:NXM_OF_IN_PORT[]),output:1",
             "learn where the sender's MAC lives (a table 20 flow back to this tunnel), "
             "then hand the frame to br-int"),
        Flow(UCAST_TO_TUN, 0, "", f"resubmit(,{FLOOD_TO_TUN})",
             "a MAC not learned yet: flood it"),
        Flow(FLOOD_TO_TUN, 0, "", "drop", "a local VLAN with no tunnel network"),
    ]
    for net_id, tag in vlans.items():
        network = plan.networks[net_id]
        table = TUNNEL_TABLE.get(network.network_type)
        if table is None or network.segmentation_id is None:
            continue
        tun = f"{network.segmentation_id:#x}"
        flows.append(Flow(table, 1, f"tun_id={tun}", f"mod_vlan_vid:{tag},resubmit(,10)",
                          f"tunnel id {tun} is network {net_id}: local VLAN {tag} here"))
        outputs = ",".join(f"output:{p.ofport}" for p in tunnels
                           if p.type == network.network_type)
        if outputs:
            flows.append(Flow(FLOOD_TO_TUN, 1, f"dl_vlan={tag}",
                              f"strip_vlan,set_tunnel:{tun},{outputs}",
                              f"local VLAN {tag} leaves as tunnel id {tun} to every peer"))
    flows.sort(key=lambda f: (f.table, -f.priority))
    return Bridge("br-tun", tuple(ports), tuple(flows))


def _wire_host(plan: _Plan, host: Any) -> HostWiring:
    name = host.name
    vlans = plan.vlans[name]
    ports = plan.ports_on(name)
    vifs = [_vif(plan, p, plan.networks[p.network_id], vlans[p.network_id])
            for p in ports if _is_vif(p)]

    # provider bridges for flat networks with a device here (br-ex on the network node)
    physnets: dict[str, list[str]] = {}
    for net_id in vlans:
        network = plan.networks[net_id]
        if network.network_type in ("flat", "vlan"):
            physnets.setdefault(_physnet_bridge(network.physical_network), []).append(net_id)

    int_ports: list[OvsPort] = [OvsPort("br-int", LOCAL_OFPORT, "internal")]
    ofport = 1
    provider: list[Bridge] = []
    int_flows = [Flow(0, 1, "", "NORMAL", "switch by MAC within each local VLAN"),
                 Flow(CANARY_TABLE, 0, "", "drop", "the agent's canary: gone after an OVS "
                                                    "restart")]
    for bridge_name, nets in sorted(physnets.items()):
        int_patch, phy_patch = f"int-{bridge_name}", f"phy-{bridge_name}"
        int_ports.append(OvsPort(int_patch, ofport, "patch", {"peer": phy_patch}))
        int_flows.append(Flow(0, 2, f"in_port={ofport}", "drop",
                              f"from {bridge_name}: only the mapped networks"))
        bridge_flows = [Flow(0, 1, "", "NORMAL", "the physical network side"),
                        Flow(0, 2, "in_port=1", "drop", "from br-int: only mapped VLANs")]
        for net_id in nets:
            tag = vlans[net_id]
            int_flows.append(Flow(0, 3, f"in_port={ofport},vlan_tci=0x0000",
                                  f"mod_vlan_vid:{tag},NORMAL",
                                  f"untagged from {bridge_name} is network {net_id}: "
                                  f"local VLAN {tag}"))
            bridge_flows.append(Flow(0, 4, f"in_port=1,dl_vlan={tag}", "strip_vlan,NORMAL",
                                     f"local VLAN {tag} leaves untagged (flat network)"))
        bridge_flows.sort(key=lambda f: (f.table, -f.priority))
        provider.append(Bridge(bridge_name, (
            OvsPort(bridge_name, LOCAL_OFPORT, "internal"),
            OvsPort(phy_patch, 1, "patch", {"peer": int_patch})), tuple(bridge_flows),
            fail_mode=None))
        ofport += 1
    int_ports.append(OvsPort("patch-tun", ofport, "patch", {"peer": "patch-int"}))
    ofport += 1

    namespaces: list[Namespace] = []
    dhcp_by_net: dict[str, list[Port]] = {}
    for port in ports:
        tag = vlans[port.network_id]
        if _is_vif(port):
            int_ports.append(OvsPort(device_name("qvo", port.id), ofport, tag=tag,
                                     port_id=port.id, network_id=port.network_id))
        else:
            prefix = {"network:dhcp": "tap", "network:router_interface": "qr-",
                      "network:router_gateway": "qg-"}[port.device_owner]
            int_ports.append(OvsPort(device_name(prefix, port.id), ofport, "internal", tag=tag,
                                     port_id=port.id, network_id=port.network_id))
            if port.device_owner == "network:dhcp":
                dhcp_by_net.setdefault(port.network_id, []).append(port)
        ofport += 1
    for net_id, dhcp_ports in dhcp_by_net.items():
        namespaces.append(_dhcp_namespace(plan, net_id, dhcp_ports, vlans))
    for router in plan.t.routers:
        if plan.router_host(router) == name:
            namespaces.append(_router_namespace(plan, router, vlans))
    int_flows.sort(key=lambda f: (f.table, -f.priority))

    bridges = [*provider, Bridge("br-int", tuple(int_ports), tuple(int_flows))]
    if host.local_ip:
        bridges.append(_br_tun(plan, name, host.local_ip, vlans))
    bridges.sort(key=lambda b: b.name)

    filter_table, ipsets = _host_filter(plan, vifs)
    linux_bridges, veths = [], []
    for vif in vifs:
        qvb_mac, qvo_mac = _derived_mac(vif.qvb), _derived_mac(vif.qvo)
        lowest = min(qvb_mac, vif.tap_mac)
        linux_bridges.append(LinuxBridge(vif.qbr, "8000." + lowest.replace(":", ""),
                                         tuple(sorted((vif.qvb, vif.tap))), vif.port_id))
        veths.append(VethPair(vif.qvb, vif.qvo, qvb_mac, qvo_mac, vif.port_id))
    return HostWiring(
        host=name, role=host.role, local_ip=host.local_ip, management_ip=host.management_ip,
        tunnel_type=plan.t.tunnel_type, bridges=tuple(bridges),
        linux_bridges=tuple(linux_bridges), veths=tuple(veths), vifs=tuple(vifs),
        local_vlans=dict(vlans), iptables=(filter_table,), ipsets=tuple(ipsets),
        namespaces=tuple(namespaces))


def wire(topology: Topology) -> dict[str, HostWiring]:
    """The wiring of every host with an Open vSwitch agent (those with a local_ip), by name."""
    plan = _Plan(topology)
    return {h.name: _wire_host(plan, h) for h in topology.hosts if h.local_ip}
