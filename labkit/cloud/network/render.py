"""A host's wiring as the text an operator reads from the real commands.

Each function takes a `HostWiring` (wiring.py) and returns what `ovs-vsctl show`,
`ovs-ofctl dump-flows br-tun`, `brctl show`, `ip netns`, `ip netns exec <ns> ip addr`
or `iptables-save` print on that host, laid out like the real tools. The output is
stable: no durations, counters or dates (they read 0), so a notebook's stored output
and a test can compare it.
"""

from __future__ import annotations

import ipaddress
import re
import uuid

from labkit.cloud.network.wiring import (
    LOCAL_OFPORT,
    OVS_VERSION,
    Bridge,
    HostWiring,
    IptablesTable,
    Namespace,
    NsDevice,
)

IPTABLES_VERSION = "v1.8.7"


def _ovs_value(value: str) -> str:
    """OVSDB quotes a string unless it reads as a bare identifier (patch-tun, flow)."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", value) and value not in ("true", "false"):
        return value
    return f'"{value}"'


def ovs_vsctl_show(wiring: HostWiring) -> str:
    """`ovs-vsctl show`: the database id, the manager, each bridge, its ports and interfaces."""
    lines = [str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{wiring.host}.ovsdb.labkit")),
             '    Manager "ptcp:6640:127.0.0.1"', "        is_connected: true"]
    for bridge in sorted(wiring.bridges, key=lambda b: b.name):
        lines.append(f"    Bridge {bridge.name}")
        if bridge.fail_mode:
            lines.append(f"        fail_mode: {bridge.fail_mode}")
        lines.append(f"        datapath_type: {bridge.datapath_type}")
        for port in sorted(bridge.ports, key=lambda p: p.name):
            lines.append(f"        Port {port.name}")
            if port.tag is not None:
                lines.append(f"            tag: {port.tag}")
            lines.append(f"            Interface {port.name}")
            if port.type:
                lines.append(f"                type: {port.type}")
            if port.options:
                opts = ", ".join(f"{k}={_ovs_value(v)}" for k, v in sorted(port.options.items()))
                lines.append(f"                options: {{{opts}}}")
    lines.append(f'    ovs_version: "{OVS_VERSION}"')
    return "\n".join(lines) + "\n"


def _bridge(wiring: HostWiring, name: str) -> Bridge:
    bridge = wiring.bridge(name)
    if bridge is None:
        raise KeyError(f"ovs-ofctl: {name} is not a bridge or a socket")
    return bridge


def ovs_ofctl_dump_flows(wiring: HostWiring, bridge: str = "br-tun") -> str:
    """`ovs-ofctl dump-flows <bridge>`: one line per flow, by table, highest priority first."""
    lines = []
    for flow in _bridge(wiring, bridge).flows:
        match = f"priority={flow.priority}" + (f",{flow.match}" if flow.match else "")
        lines.append(f" cookie={flow.cookie}, duration=0.000s, table={flow.table}, "
                     f"n_packets=0, n_bytes=0, {match} actions={flow.actions}")
    return "\n".join(lines) + "\n"


def ovs_ofctl_show(wiring: HostWiring, bridge: str = "br-tun") -> str:
    """`ovs-ofctl show <bridge>`: the OpenFlow port numbers the flows' in_port/output use."""
    found = _bridge(wiring, bridge)
    dpid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{wiring.host}.{bridge}").hex[:16]
    lines = [f"OFPT_FEATURES_REPLY (xid=0x2): dpid:{dpid}", "n_tables:254, n_buffers:0",
             "capabilities: FLOW_STATS TABLE_STATS PORT_STATS QUEUE_STATS ARP_MATCH_IP",
             "actions: output enqueue set_vlan_vid set_vlan_pcp strip_vlan mod_dl_src "
             "mod_dl_dst mod_nw_src mod_nw_dst mod_nw_tos mod_tp_src mod_tp_dst"]
    for port in sorted(found.ports, key=lambda p: p.ofport):
        number = "LOCAL" if port.ofport == LOCAL_OFPORT else str(port.ofport)
        mac = ":".join(uuid.uuid5(uuid.NAMESPACE_DNS, f"{wiring.host}.{port.name}").hex[i:i + 2]
                       for i in range(0, 12, 2))
        lines += [f" {number}({port.name}): addr:{mac}", "     config:     0",
                  "     state:      0", "     speed: 0 Mbps now, 0 Mbps max"]
    lines.append("OFPT_GET_CONFIG_REPLY (xid=0x4): frags=normal miss_send_len=0")
    return "\n".join(lines) + "\n"


def brctl_show(wiring: HostWiring) -> str:
    """`brctl show`: the qbr bridges between each VM's tap and its qvb."""
    lines = ["bridge name\tbridge id\t\tSTP enabled\tinterfaces"]
    for bridge in sorted(wiring.linux_bridges, key=lambda b: b.name):
        first, *rest = bridge.interfaces or ("",)
        lines.append(f"{bridge.name}\t\t{bridge.bridge_id}\t{'yes' if bridge.stp else 'no'}"
                     f"\t\t{first}")
        lines += [f"\t\t\t\t\t\t\t{name}" for name in rest]
    return "\n".join(lines) + "\n"


def ip_netns(wiring: HostWiring) -> str:
    """`ip netns`: the namespaces, newest first, each with its id."""
    named = list(enumerate(wiring.namespaces))
    return "".join(f"{ns.name} (id: {i})\n" for i, ns in reversed(named))


def _namespace(wiring: HostWiring, name: str) -> Namespace:
    found = wiring.namespace(name)
    if found is None:
        raise KeyError(f'Cannot open network namespace "{name}": No such file or directory')
    return found


def _link_local(mac: str) -> str:
    """The fe80:: address the kernel derives from a MAC (EUI-64)."""
    octets = [int(b, 16) for b in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    return str(ipaddress.IPv6Address(bytes([0xFE, 0x80] + [0] * 6 + eui))) + "/64"


def _device_lines(index: int, device: NsDevice) -> list[str]:
    lines = [f"{index}: {device.name}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {device.mtu} qdisc "
             "noqueue state UNKNOWN group default qlen 1000",
             f"    link/ether {device.mac_address} brd ff:ff:ff:ff:ff:ff"]
    for address in device.addresses:
        iface = ipaddress.ip_interface(address)
        if iface.version != 4:
            lines.append(f"    inet6 {address} scope global")
        elif iface.network.prefixlen == 32:
            lines.append(f"    inet {address} scope global {device.name}")
        else:
            lines.append(f"    inet {address} brd {iface.network.broadcast_address} "
                         f"scope global {device.name}")
        lines.append("       valid_lft forever preferred_lft forever")
    lines += [f"    inet6 {_link_local(device.mac_address)} scope link",
              "       valid_lft forever preferred_lft forever"]
    return lines


def ip_addr(wiring: HostWiring, namespace: str) -> str:
    """`ip netns exec <namespace> ip addr`: lo, then each device with its addresses."""
    ns = _namespace(wiring, namespace)
    lines = ["1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default "
             "qlen 1000", "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
             "    inet 127.0.0.1/8 scope host lo",
             "       valid_lft forever preferred_lft forever", "    inet6 ::1/128 scope host",
             "       valid_lft forever preferred_lft forever"]
    for index, device in enumerate(ns.devices, start=2):
        lines += _device_lines(index, device)
    return "\n".join(lines) + "\n"


def ip_route(wiring: HostWiring, namespace: str) -> str:
    """`ip netns exec <namespace> ip route`."""
    return "".join(r.line + "\n" for r in _namespace(wiring, namespace).routes)


def _table_text(table: IptablesTable) -> list[str]:
    lines = [f"*{table.name}"]
    lines += [f":{c.name} {c.policy} [0:0]" for c in table.chains]
    lines += [r.line for r in table.rules]
    lines.append("COMMIT")
    return lines


def iptables_save(wiring: HostWiring, namespace: str | None = None) -> str:
    """`iptables-save` on the host, or inside a namespace (`ip netns exec <ns> iptables-save`)."""
    tables = wiring.iptables if namespace is None else _namespace(wiring, namespace).iptables
    lines = []
    for table in tables:
        lines.append(f"# Generated by iptables-save {IPTABLES_VERSION}")
        lines += _table_text(table)
        lines.append("# Completed")
    return "\n".join(lines) + "\n"


def ipset_list(wiring: HostWiring) -> str:
    """`ipset list`: each remote security group's member addresses."""
    blocks = []
    for ipset in wiring.ipsets:
        blocks.append("\n".join([
            f"Name: {ipset.name}", "Type: hash:net", "Revision: 6",
            f"Header: family {ipset.family} hashsize 1024 maxelem 65536",
            f"Size in memory: {504 + 16 * len(ipset.members)}", "References: 1",
            f"Number of entries: {len(ipset.members)}", "Members:", *ipset.members]))
    return "\n".join(blocks) + ("\n" if blocks else "")


def dnsmasq_hosts(wiring: HostWiring, namespace: str) -> str:
    """`cat /var/lib/neutron/dhcp/<network id>/host`: dnsmasq's MAC → name, address entries."""
    return "".join(h.line + "\n" for h in _namespace(wiring, namespace).dhcp_hosts)


def commands(wiring: HostWiring) -> dict[str, str]:
    """Every command above that means something on this host, by its command line."""
    out = {"ovs-vsctl show": ovs_vsctl_show(wiring)}
    if wiring.bridge("br-tun"):
        out["ovs-ofctl show br-tun"] = ovs_ofctl_show(wiring, "br-tun")
        out["ovs-ofctl dump-flows br-tun"] = ovs_ofctl_dump_flows(wiring, "br-tun")
    for bridge in wiring.bridges:
        if bridge.name != "br-tun":
            out[f"ovs-ofctl dump-flows {bridge.name}"] = ovs_ofctl_dump_flows(wiring, bridge.name)
    out["brctl show"] = brctl_show(wiring)
    out["iptables-save"] = iptables_save(wiring)
    out["ipset list"] = ipset_list(wiring)
    out["ip netns"] = ip_netns(wiring)
    for ns in wiring.namespaces:
        prefix = f"ip netns exec {ns.name}"
        out[f"{prefix} ip addr"] = ip_addr(wiring, ns.name)
        out[f"{prefix} ip route"] = ip_route(wiring, ns.name)
        if ns.kind == "router":
            out[f"{prefix} iptables-save"] = iptables_save(wiring, ns.name)
        if ns.kind == "dhcp":
            out[f"cat {ns.hosts_file}"] = dnsmasq_hosts(wiring, ns.name)
    return out
