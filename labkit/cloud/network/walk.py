"""A packet's path through the wiring, hop by hop, computed from the same model.

`packet_walk(topology, source_port_id, destination_ip, ...)` follows the first packet
of a new connection: out of the VM's tap, through the qbr bridge where iptables runs
the port's chains, onto br-int with the local VLAN, through br-tun's flows into a
tunnel to the host that holds the destination, into a router namespace and its NAT
rules when the destination is on another subnet or outside, and finally into the
destination's own ingress chain. Every verdict comes from evaluating the `Rule`s and
`Flow`s that `wire()` produced, so the walk and `iptables-save` can never disagree.

Without a source port (`source_port_id=None`) the packet starts outside the cloud at
`source_ip` and arrives on the external network, as a connection to a floating IP does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from labkit.cloud.network.topology import Port, Topology
from labkit.cloud.network.wiring import (
    FIREWALL_WRAP,
    FLOOD_TO_TUN,
    TUNNEL_TABLE,
    Bridge,
    Flow,
    HostWiring,
    IptablesTable,
    Namespace,
    NsDevice,
    Rule,
    wire,
)

PROTOCOLS = ("icmp", "tcp", "udp")
EPHEMERAL_PORT = 40000   # the source port of the connection's first packet (tcp/udp)
MAX_ROUTER_HOPS = 4      # a guard against a loop between routers


@dataclass(frozen=True)
class Hop:
    """One point on the packet's path, and what happened to it there."""

    host: str | None               # None: outside the cloud
    device: str                    # tap…, qbr…, br-int, vxlan-…, qrouter-…, …
    what: str                      # what happens here, in a sentence
    src: str = ""                  # the addresses the packet carries at this point
    dst: str = ""
    vlan: int | None = None        # the local VLAN tag on this host's br-int
    tunnel_id: int | None = None   # the VXLAN VNI / GRE key on the wire
    nat: str | None = None         # "SNAT 172.16.1.5 -> 203.0.113.101"
    rule: str | None = None        # the iptables line or OpenFlow flow that decided here
    security_group_rule_id: str | None = None
    namespace: str | None = None
    verdict: str = "forward"       # "forward", "accept", "drop" or "deliver"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Packet:
    """What iptables matches on, for one traversal."""

    src: str
    dst: str
    protocol: str
    sport: int | None
    dport: int | None
    icmp_type: int | None
    mac: str | None = None
    in_interface: str | None = None
    out_interface: str | None = None
    physdev_in: str | None = None
    physdev_out: str | None = None
    mark: int = 0
    dnat: bool = False


# -- evaluating iptables ---------------------------------------------------------------------


def _in(address: str, cidr: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)


def _negatable(value: str | None, test: Any) -> bool:
    if value is None:
        return True
    if value.startswith("!"):
        return not test(value[1:])
    return test(value)


def _iface(name: str | None, pattern: str) -> bool:
    if name is None:
        return False
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _port_ok(spec: str | None, value: int | None) -> bool:
    if spec is None:
        return True
    if value is None:
        return False
    low, _, high = spec.partition(":")
    return int(low) <= value <= int(high or low)


def _mark_ok(spec: str, mark: int) -> bool:
    value, _, mask = spec.partition("/")
    return (mark & int(mask or "0xffffffff", 16)) == int(value, 16)


def _matches(rule: Rule, pkt: _Packet, ipsets: dict[str, tuple[str, ...]]) -> bool:
    if not _negatable(rule.source, lambda c: _in(pkt.src, c)):
        return False
    if not _negatable(rule.destination, lambda c: _in(pkt.dst, c)):
        return False
    if not _negatable(rule.in_interface, lambda p: _iface(pkt.in_interface, p)):
        return False
    if not _negatable(rule.out_interface, lambda p: _iface(pkt.out_interface, p)):
        return False
    if rule.protocol and rule.protocol != pkt.protocol:
        return False
    if rule.physdev_in and rule.physdev_in != pkt.physdev_in:
        return False
    if rule.physdev_out and rule.physdev_out != pkt.physdev_out:
        return False
    if rule.mac_source and (pkt.mac or "").upper() != rule.mac_source.upper():
        return False
    if rule.state and "NEW" not in rule.state.split(","):
        return False                   # the walk follows a connection's first packet
    if not _negatable(rule.mark, lambda m: _mark_ok(m, pkt.mark)):
        return False
    if not _negatable(rule.ctstate, lambda s: (s == "DNAT") == pkt.dnat):
        return False
    if not (_port_ok(rule.sport, pkt.sport) and _port_ok(rule.dport, pkt.dport)):
        return False
    if rule.icmp_type is not None:
        wanted, _, code = rule.icmp_type.partition("/")
        if pkt.icmp_type is None or int(wanted) != pkt.icmp_type or (code and int(code) != 0):
            return False
    if rule.match_set:
        address = pkt.src if rule.set_direction == "src" else pkt.dst
        if not any(_in(address, m if "/" in m else f"{m}/32")
                   for m in ipsets.get(rule.match_set, ())):
            return False
    return True


@dataclass
class _Outcome:
    verdict: str                   # ACCEPT, DROP, RETURN (fell off a builtin: its policy)
    matched: list[Rule] = field(default_factory=list)
    nat: Rule | None = None


def _run(table: IptablesTable, chain: str, pkt: _Packet,
         ipsets: dict[str, tuple[str, ...]]) -> _Outcome:
    """Traverse `chain` as the kernel does: jumps into user chains, RETURN back, a
    terminal target ends it; MARK changes the packet and goes on."""
    outcome = _Outcome("RETURN")
    for rule in table.rules_of(chain):
        if not _matches(rule, pkt, ipsets):
            continue
        outcome.matched.append(rule)
        if rule.target == "MARK":
            value, _, mask = rule.target_args.split()[-1].partition("/")
            keep = ~int(mask, 16) & 0xFFFFFFFF
            pkt.mark = (pkt.mark & keep) | int(value, 16)
            continue
        if rule.target in ("ACCEPT", "DROP", "RETURN"):
            outcome.verdict = rule.target
            return outcome
        if rule.target in ("DNAT", "SNAT", "REDIRECT"):
            outcome.verdict, outcome.nat = rule.target, rule
            return outcome
        inner = _run(table, rule.target, pkt, ipsets)
        outcome.matched += inner.matched
        if inner.verdict != "RETURN":
            outcome.verdict, outcome.nat = inner.verdict, inner.nat
            return outcome
    return outcome


# -- the walk --------------------------------------------------------------------------------


class _Walk:
    def __init__(self, topology: Topology, wiring: dict[str, HostWiring], pkt: _Packet) -> None:
        self.t = topology
        self.w = wiring
        self.pkt = pkt
        self.hops: list[Hop] = []
        self.networks = {n.id: n for n in topology.networks}
        self.subnets = {s.id: s for s in topology.subnets}
        self.routers_seen = 0

    # recording

    def hop(self, host: str | None, device: str, what: str, **extra: Any) -> Hop:
        hop = Hop(host=host, device=device, what=what, src=self.pkt.src, dst=self.pkt.dst,
                  **extra)
        self.hops.append(hop)
        return hop

    def drop(self, host: str | None, device: str, what: str, **extra: Any) -> list[Hop]:
        self.hop(host, device, what, verdict="drop", **extra)
        return self.hops

    # who holds an address

    def owner(self, network_id: str, address: str) -> tuple[str, Any, str | None] | None:
        """What answers ARP for `address` on the network: ("vif", Vif, host), ("ns",
        (Namespace, NsDevice), host) for a qdhcp/qrouter device, or None."""
        for host, wiring in self.w.items():
            for vif in wiring.vifs:
                if vif.network_id == network_id and address in vif.fixed_ips:
                    return "vif", vif, host
            for ns in wiring.namespaces:
                for dev in ns.devices:
                    if dev.network_id == network_id and any(
                            a.split("/")[0] == address for a in dev.addresses):
                        return "ns", (ns, dev), host
        # an allowed address pair answers too (a VIP moved between VMs)
        for host, wiring in self.w.items():
            for vif in wiring.vifs:
                port = self.t.port(vif.port_id)
                if vif.network_id == network_id and any(
                        _in(address, ip if "/" in ip else f"{ip}/32")
                        for ip, _ in port.allowed_address_pairs):
                    return "vif", vif, host
        return None

    def on_network(self, network_id: str, address: str) -> bool:
        return any(s.network_id == network_id and _in(address, s.cidr)
                   for s in self.t.subnets)

    # firewall on a VM's qbr

    def firewall(self, host: str, vif: Any, direction: str) -> bool:
        wiring = self.w[host]
        table = wiring.table("filter")
        ipsets = {s.name: s.members for s in wiring.ipsets}
        pkt = replace(self.pkt)
        if direction == "egress":
            pkt.physdev_in, pkt.physdev_out = vif.tap, vif.qvb
        else:
            pkt.physdev_in, pkt.physdev_out, pkt.mac = vif.qvb, vif.tap, None
        outcome = _run(table, "FORWARD", pkt, ipsets)
        if not vif.port_security_enabled:
            rule = outcome.matched[-1] if outcome.matched else None
            self.hop(host, vif.qbr, f"port security is off for {vif.port_id}: iptables "
                     "accepts everything to and from it", vlan=None,
                     rule=rule.line if rule else None, verdict="accept")
            return True
        own = set(vif.chains)
        decisive = [r for r in outcome.matched if r.chain in own
                    or r.chain == f"{FIREWALL_WRAP}-sg-fallback"]
        rule = decisive[-1] if decisive else (outcome.matched[-1] if outcome.matched else None)
        spoof = next((r for r in outcome.matched if r.chain == vif.chains[2]), None)
        side = "leaving" if direction == "egress" else "entering"
        if outcome.verdict == "DROP":
            if rule is not None and rule.chain == vif.chains[2]:
                why = (f"the anti-spoofing chain drops it: source {pkt.src} with MAC "
                       f"{pkt.mac} is not the port's own address or an allowed pair")
            elif rule is not None and rule.chain.endswith("sg-fallback"):
                why = (f"no rule of the port's security groups allows {self._what()} "
                       f"{direction}: the fallback chain drops it")
            else:
                why = "iptables drops it: " + (rule.why if rule else "no rule allowed it")
            self.hop(host, vif.qbr, f"iptables on {vif.qbr} ({side} the VM): {why}",
                     rule=rule.line if rule else None, verdict="drop")
            return False
        accepted = rule.why if rule and rule.why else "accepted"
        note = " (after the anti-spoofing chain checked its source MAC and address)" \
            if spoof is not None else ""
        self.hop(host, vif.qbr, f"iptables on {vif.qbr} ({side} the VM): {accepted}{note}",
                 rule=rule.line if rule else None,
                 security_group_rule_id=rule.security_group_rule_id if rule else None,
                 verdict="accept")
        return True

    def _what(self) -> str:
        pkt = self.pkt
        if pkt.protocol == "icmp":
            return "icmp echo-request"
        return f"{pkt.protocol} port {pkt.dport}"

    # layer 2: from a host's br-int to whatever holds the address on that network

    def switch(self, host: str, network_id: str, address: str) -> list[Hop]:
        network = self.networks[network_id]
        found = self.owner(network_id, address)
        if found is None:
            if network.external:
                return self.leave_to_outside(host, network_id)
            return self.drop(host, "br-int", f"nothing on network {network.name} holds "
                             f"{address}: ARP gets no answer", vlan=self.w[host].local_vlans
                             .get(network_id))
        kind, target, to_host = found
        vlan = self.w[host].local_vlans[network_id]
        if to_host == host:
            device = target.qvo if kind == "vif" else target[1].name
            self.hop(host, "br-int", f"switched within local VLAN {vlan} to {device} on the "
                     "same host: no tunnel", vlan=vlan, rule="priority=1 actions=NORMAL")
        else:
            if not self.tunnel(host, to_host, network_id):
                return self.hops
        return self.arrive(to_host, kind, target)

    def tunnel(self, host: str, to_host: str, network_id: str) -> bool:
        network = self.networks[network_id]
        here, there = self.w[host], self.w[to_host]
        vlan = here.local_vlans[network_id]
        tun: Bridge | None = here.bridge("br-tun")
        self.hop(host, "br-int", f"{network.name} is local VLAN {vlan} here; the "
                 "destination is on another host, so out through patch-tun", vlan=vlan,
                 rule="priority=1 actions=NORMAL")
        flood = next((f for f in tun.flows if f.table == FLOOD_TO_TUN
                      and f.match == f"dl_vlan={vlan}"), None) if tun else None
        port = here.tunnel_port(to_host)
        if flood is None or port is None or network.segmentation_id is None:
            self.drop(host, "br-tun", f"no flow sends local VLAN {vlan} into a tunnel: "
                      f"{network.name} is not a tunnel network", vlan=vlan)
            return False
        tid = network.segmentation_id
        self.hop(host, "br-tun", f"table 0 → 2 (unicast) → 20: no MAC learned yet in this "
                 f"model, so table 22 swaps VLAN {vlan} for tunnel id {tid:#x} and sends it "
                 "down every tunnel; once a reply arrives, table 10's learn action makes a "
                 f"table 20 flow that sends it down {port.name} only",
                 tunnel_id=tid, rule=self._flow_text(flood))
        self.hop(host, port.name, f"{port.type.upper()} encapsulation: outer "
                 f"{port.options.get('local_ip')} → {port.remote_ip}, "
                 f"{'VNI' if port.type == 'vxlan' else 'key'} {tid}", tunnel_id=tid)
        back = there.tunnel_port(host)
        table = TUNNEL_TABLE.get(network.network_type, 4)
        arrive_vlan = there.local_vlans.get(network_id)
        flow = next((f for f in there.bridge("br-tun").flows if f.table == table
                     and f.match == f"tun_id={tid:#x}"), None)
        if flow is None or arrive_vlan is None:
            self.drop(to_host, "br-tun", f"{to_host} has no flow for tunnel id {tid:#x}: "
                      "nothing of this network is wired there", tunnel_id=tid)
            return False
        came_in = f"in {back.name}" if back else "in"
        self.hop(to_host, "br-tun", f"{came_in}: table 0 → {table}: tunnel id {tid:#x} is "
                 f"local VLAN {arrive_vlan} on this host → table 10 learns the sender, "
                 "output to patch-int", vlan=arrive_vlan, tunnel_id=tid,
                 rule=self._flow_text(flow))
        self.hop(to_host, "br-int", f"switched within local VLAN {arrive_vlan}",
                 vlan=arrive_vlan, rule="priority=1 actions=NORMAL")
        return True

    @staticmethod
    def _flow_text(flow: Flow) -> str:
        match = f"priority={flow.priority}" + (f",{flow.match}" if flow.match else "")
        return f"table={flow.table}, {match} actions={flow.actions}"

    def arrive(self, host: str, kind: str, target: Any) -> list[Hop]:
        if kind == "vif":
            vif = target
            self.hop(host, vif.qvo, f"{vif.qvo} → {vif.qvb}: the veth pair into the linux "
                     f"bridge {vif.qbr}; the VLAN tag is stripped", vlan=vif.vlan)
            if not self.firewall(host, vif, "ingress"):
                return self.hops
            self.hop(host, vif.tap, f"{vif.tap} delivers it to the instance (port "
                     f"{vif.port_id}, {vif.mac_address})", verdict="deliver")
            return self.hops
        ns, dev = target
        if ns.kind == "dhcp":
            self.hop(host, dev.name, f"into namespace {ns.name}: dnsmasq holds "
                     f"{self.pkt.dst} (no security group filters the DHCP port)",
                     namespace=ns.name, vlan=dev.vlan, verdict="deliver")
            return self.hops
        return self.route(host, ns, dev)

    # layer 3: a router namespace

    def route(self, host: str, ns: Namespace, came_in: NsDevice) -> list[Hop]:
        self.routers_seen += 1
        if self.routers_seen > MAX_ROUTER_HOPS:
            return self.drop(host, ns.name, "too many routers: a routing loop", namespace=ns.name)
        pkt = self.pkt
        pkt.in_interface, pkt.out_interface, pkt.mark, pkt.dnat = came_in.name, None, 0, False
        mangle, nat, filt = ns.table("mangle"), ns.table("nat"), ns.table("filter")
        original_dst = pkt.dst
        self.hop(host, came_in.name, f"into namespace {ns.name} through {came_in.name} "
                 f"({', '.join(came_in.addresses)})", namespace=ns.name, vlan=came_in.vlan)
        if mangle:
            _run(mangle, "PREROUTING", pkt, {})
        nat_note = rule_line = None
        if nat:
            outcome = _run(nat, "PREROUTING", pkt, {})
            if outcome.verdict == "DNAT" and outcome.nat:
                pkt.dst = outcome.nat.target_args.split()[-1]
                pkt.dnat = True
                nat_note = f"DNAT {original_dst} -> {pkt.dst}"
                rule_line = outcome.nat.line
            elif outcome.verdict == "REDIRECT" and outcome.nat:
                to = outcome.nat.target_args.split()[-1]
                inside = _run(filt, "INPUT", pkt, {}) if filt else _Outcome("ACCEPT")
                if inside.verdict == "DROP":
                    return self.drop(host, ns.name, "redirected, then dropped on INPUT",
                                     namespace=ns.name, rule=inside.matched[-1].line)
                self.hop(host, ns.name, f"{original_dst}:{pkt.dport} is redirected to port "
                         f"{to} in this namespace, where the metadata proxy forwards it to "
                         "nova's metadata service", namespace=ns.name,
                         nat=f"REDIRECT {original_dst}:{pkt.dport} -> {to}",
                         rule=outcome.nat.line, verdict="deliver")
                return self.hops
        if any(a.split("/")[0] == pkt.dst for d in ns.devices for a in d.addresses):
            return self._local(host, ns, filt)
        out = self._route_out(ns)
        if out is None:
            return self.drop(host, ns.name, f"no route to {pkt.dst} (no gateway and no "
                             "interface on its subnet)", namespace=ns.name, nat=nat_note,
                             rule=rule_line)
        pkt.out_interface = out.name
        src_before = pkt.src
        post = _run(nat, "POSTROUTING", pkt, {}) if nat else _Outcome("RETURN")
        if post.verdict == "SNAT" and post.nat:
            pkt.src = post.nat.target_args.split()[-1]
            snat = f"SNAT {src_before} -> {pkt.src}"
            nat_note = f"{nat_note}; {snat}" if nat_note else snat
            rule_line = f"{rule_line}\n{post.nat.line}" if rule_line else post.nat.line
        elif post.verdict == "ACCEPT" and post.matched and not nat_note:
            rule_line = post.matched[-1].line
        where = "the external network" if out.kind == "qg" else f"subnet behind {out.name}"
        why = nat_note or "between the router's own subnets nothing is translated"
        self.hop(host, ns.name, f"routed out {out.name} to {where}; {why}", namespace=ns.name,
                 nat=nat_note, rule=rule_line)
        self.hop(host, out.name, f"out of {ns.name} through {out.name} onto br-int, local "
                 f"VLAN {out.vlan}", namespace=ns.name, vlan=out.vlan)
        pkt.in_interface = pkt.out_interface = None
        return self.switch(host, out.network_id, self._next_hop(ns, out))

    def _local(self, host: str, ns: Namespace, filt: IptablesTable | None) -> list[Hop]:
        outcome = _run(filt, "INPUT", self.pkt, {}) if filt else _Outcome("ACCEPT")
        if outcome.verdict == "DROP":
            return self.drop(host, ns.name, f"{self.pkt.dst} is the router's own address and "
                             "its INPUT chain drops this", namespace=ns.name,
                             rule=outcome.matched[-1].line)
        self.hop(host, ns.name, f"{self.pkt.dst} is the router's own address: the namespace's "
                 "stack answers", namespace=ns.name, verdict="deliver")
        return self.hops

    def _route_out(self, ns: Namespace) -> NsDevice | None:
        best: tuple[int, NsDevice] | None = None
        for route in ns.routes:
            device = ns.device(route.device)
            if device is None:
                continue
            cidr = "0.0.0.0/0" if route.destination == "default" else route.destination
            if _in(self.pkt.dst, cidr):
                length = ipaddress.ip_network(cidr).prefixlen
                if best is None or length > best[0]:
                    best = (length, device)
        return best[1] if best else None

    def _next_hop(self, ns: Namespace, out: NsDevice) -> str:
        """The address whose owner gets the frame: the destination when it is on the
        device's subnet, else the route's gateway."""
        for address in out.addresses:
            iface = ipaddress.ip_interface(address)
            if iface.network.prefixlen < 32 and _in(self.pkt.dst, str(iface.network)):
                return self.pkt.dst
        via = next((r.via for r in ns.routes if r.device == out.name and r.via), None)
        return via or self.pkt.dst

    # the external network's edge

    def leave_to_outside(self, host: str, network_id: str) -> list[Hop]:
        network = self.networks[network_id]
        wiring = self.w[host]
        vlan = wiring.local_vlans.get(network_id)
        bridge_name = next((b.name for b in wiring.bridges
                            if b.name not in ("br-int", "br-tun")), "br-ex")
        flow = next((f for f in (wiring.bridge(bridge_name).flows
                                 if wiring.bridge(bridge_name) else ())
                     if f.match.endswith(f"dl_vlan={vlan}")), None)
        self.hop(host, "br-int", f"local VLAN {vlan} is {network.name}: out through "
                 f"int-{bridge_name}", vlan=vlan, rule="priority=1 actions=NORMAL")
        self.hop(host, bridge_name, f"VLAN {vlan} stripped: {network.name} is flat on the "
                 f"physical network {network.physical_network}",
                 rule=self._flow_text(flow) if flow else None)
        self.hop(None, f"physical network {network.physical_network}",
                 f"on the wire to {self.pkt.dst}, from {self.pkt.src}", verdict="deliver")
        return self.hops

    def enter_from_outside(self) -> list[Hop]:
        pkt = self.pkt
        self.hop(None, "physical network", f"{pkt.src} sends to {pkt.dst} on the external "
                 "network")
        for host, wiring in self.w.items():
            for ns in wiring.namespaces:
                qg = next((d for d in ns.devices if d.kind == "qg" and any(
                    a.split("/")[0] == pkt.dst for a in d.addresses)), None)
                if qg is None:
                    continue
                bridge_name = next((b.name for b in wiring.bridges
                                    if b.name not in ("br-int", "br-tun")), "br-ex")
                int_flow = next((f for f in wiring.bridge("br-int").flows
                                 if f.actions == f"mod_vlan_vid:{qg.vlan},NORMAL"), None)
                self.hop(host, bridge_name, f"arrives on {bridge_name}, the bridge of the "
                         f"physical network; out through phy-{bridge_name}")
                self.hop(host, "br-int", f"from int-{bridge_name}: untagged, so it becomes "
                         f"local VLAN {qg.vlan} and is switched to {qg.name}, which answers "
                         f"ARP for {pkt.dst}", vlan=qg.vlan,
                         rule=self._flow_text(int_flow) if int_flow else None)
                return self.route(host, ns, qg)
        return self.drop(None, "physical network", f"no router's gateway holds {pkt.dst}: "
                         "only floating IPs and router gateways are reachable from outside")


def _icmp_type(protocol: str) -> int | None:
    return 8 if protocol == "icmp" else None   # an echo request


def packet_walk(topology: Topology, source_port_id: str | None, destination_ip: str,
                protocol: str = "icmp", port: int | None = None, source_ip: str | None = None,
                wiring: dict[str, HostWiring] | None = None) -> list[Hop]:
    """The hops of a new connection's first packet, in order; the last one delivers or drops.

    `source_port_id` is a VM's port (its first IPv4 address is the source unless
    `source_ip` says otherwise, which the anti-spoofing chain then judges), or None
    for a packet from `source_ip` outside the cloud. `port` is the destination port
    for tcp/udp. Pass `wiring` when you already have `wire(topology)`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    if protocol != "icmp" and port is None:
        raise ValueError(f"{protocol} needs a destination port")
    ipaddress.ip_address(destination_ip)
    wiring = wiring if wiring is not None else wire(topology)
    dport = port if protocol != "icmp" else None
    sport = EPHEMERAL_PORT if protocol != "icmp" else None
    if source_port_id is None:
        if not source_ip:
            raise ValueError("a packet from outside needs source_ip")
        pkt = _Packet(source_ip, destination_ip, protocol, sport, dport, _icmp_type(protocol))
        return _Walk(topology, wiring, pkt).enter_from_outside()

    src_port: Port | None = next((p for p in topology.ports if p.id == source_port_id), None)
    if src_port is None:
        raise KeyError(f"no port {source_port_id} in the topology")
    v4 = [f.ip_address for f in src_port.fixed_ips
          if ipaddress.ip_address(f.ip_address).version == 4]
    pkt = _Packet(source_ip or (v4[0] if v4 else "0.0.0.0"), destination_ip, protocol, sport,
                  dport, _icmp_type(protocol), mac=src_port.mac_address)
    walk = _Walk(topology, wiring, pkt)
    host = src_port.host
    vif = wiring[host].vif(src_port.id) if host in wiring else None
    if vif is None:
        return walk.drop(host or None, f"port {src_port.id}", "the port is not plugged on "
                         "any host (unbound, or not a VM port): it has no devices to send from")
    walk.hop(host, vif.tap, f"the instance sends from {vif.mac_address} into {vif.tap}, the "
             f"tap device libvirt made for port {vif.port_id}")
    if not walk.firewall(host, vif, "egress"):
        return walk.hops
    walk.hop(host, vif.qvb, f"{vif.qvb} → {vif.qvo}: the veth pair from {vif.qbr} to br-int, "
             f"where the port is tagged with local VLAN {vif.vlan}", vlan=vif.vlan)
    network = vif.network_id
    if walk.on_network(network, destination_ip):
        return walk.switch(host, network, destination_ip)
    # another subnet or the outside: the frame goes to the subnet's gateway, the router
    subnet = next((walk.subnets[f.subnet_id] for f in src_port.fixed_ips
                   if f.ip_address == pkt.src and f.subnet_id in walk.subnets), None)
    subnet = subnet or next((s for s in topology.subnets if s.network_id == network
                             and _in(pkt.src, s.cidr)), None)
    gateway = subnet.gateway_ip if subnet else None
    if not gateway or walk.owner(network, gateway) is None:
        return walk.drop(host, "br-int", f"{destination_ip} is off the subnet and no router "
                         f"holds the gateway {gateway or '(none)'}: nowhere to send it",
                         vlan=vif.vlan)
    return walk.switch(host, network, gateway)


def format_walk(hops: list[Hop]) -> str:
    """The walk as numbered lines, for a terminal or a notebook's text output."""
    lines = []
    for n, hop in enumerate(hops, start=1):
        where = hop.host or "outside"
        tags = []
        if hop.vlan is not None:
            tags.append(f"vlan {hop.vlan}")
        if hop.tunnel_id is not None:
            tags.append(f"tunnel {hop.tunnel_id:#x}")
        tag = f" [{', '.join(tags)}]" if tags else ""
        mark = {"drop": "  ✘ DROP", "deliver": "  ✔ delivered"}.get(hop.verdict, "")
        lines.append(f"{n:2}. {where:<10} {hop.device}{tag}{mark}")
        lines.append(f"    {hop.src} → {hop.dst}: {hop.what}")
        if hop.nat:
            lines.append(f"    NAT: {hop.nat}")
        for rule in (hop.rule or "").splitlines():
            lines.append(f"    rule: {rule}")
    return "\n".join(lines)

