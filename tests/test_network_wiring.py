"""The per-host wiring model and the operator views, from topologies built by hand.

The lab: a network node and two compute hosts (local_ip as in data/hosts.yaml), the
external flat network "public", two tenant VXLAN networks (demo-net 0x10001 and
db-net 0x10002) joined by demo-router, four VM ports and a floating IP.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from conftest import auth_header
from labkit import diagrams
from labkit.cloud.http import RequestInfo
from labkit.cloud.inspection import build_inspection_app
from labkit.cloud.network import render
from labkit.cloud.network.topology import (
    FixedIP,
    FloatingIP,
    Host,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    Topology,
)
from labkit.cloud.network.wiring import (
    HostWiring,
    chain_name,
    device_name,
    ipset_name,
    lowest_free_vlan,
    tunnel_port_name,
    wire,
)
from labkit.inspect import Hidden, inspector

DEMO = "5b0f8c2e6d9a4f7e8a1b3c4d5e6f7a8b"        # the demo project
ADMIN = "0c9e1d2f3a4b4c5d8e6f7a8b9c0d1e2f"

PUBLIC = "4c1f3e2a-8b7d-4f6e-9a1b-2c3d4e5f6a7b"
DEMO_NET = "b2f5c8a1-3d4e-4f60-8a9b-0c1d2e3f4a5b"
DB_NET = "e7a9d3c2-1b0f-4e8d-9c7b-6a5f4e3d2c1b"
PUBLIC_SUBNET = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
DEMO_SUBNET = "3f2e1d0c-9b8a-4766-a554-433221100fed"
DB_SUBNET = "a1b2c3d4-e5f6-4718-9a0b-c1d2e3f4a5b6"

DEFAULT_SG = "8f1e2d3c-4b5a-4697-8877-665544332211"
SSH_SG = "c4d5e6f7-a8b9-4c0d-8e1f-2a3b4c5d6e7f"

ROUTER = "7d1c5a9e-2b3f-4a6d-8c0e-1f2a3b4c5d6e"
FIP = "2e4f6a8c-0b1d-4e3f-9a5b-7c9d1e3f5a7b"

# ports
VM1 = "6e7d5cb0-0171-4c8e-9b2a-3d4f5e6a7b8c"      # compute-1, demo-net, default + ssh, FIP
VM2 = "f03a9b1c-2d4e-4f60-8172-93a4b5c6d7e8"      # compute-2, demo-net, default
VM3 = "1a2b3c4d-5e6f-4708-9a1b-2c3d4e5f6a7b"      # compute-1, db-net, default
VM4 = "9c8b7a6f-5e4d-4c3b-a2a1-0f9e8d7c6b5a"      # compute-1, demo-net, default (same host)
VM5 = "3b4c5d6e-7f80-4a1b-9c2d-3e4f5a6b7c8d"      # compute-2, db-net, default
DHCP_DEMO = "d4c3b2a1-0f9e-4d8c-b7a6-958473625140"
DHCP_DB = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
QR_DEMO = "a9b8c7d6-e5f4-4a3b-9c2d-1e0f9a8b7c6d"
QR_DB = "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e"
QG = "c7d8e9f0-a1b2-4c3d-8e4f-5a6b7c8d9e0f"
FIP_PORT = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b"

MAC = {VM1: "fa:16:3e:3a:1f:2b", VM2: "fa:16:3e:6c:0d:91", VM3: "fa:16:3e:41:7e:c5",
       VM4: "fa:16:3e:9b:22:58", VM5: "fa:16:3e:0e:a4:73", DHCP_DEMO: "fa:16:3e:d1:5c:07",
       DHCP_DB: "fa:16:3e:2f:88:b4", QR_DEMO: "fa:16:3e:77:b3:1a", QR_DB: "fa:16:3e:5e:c2:69",
       QG: "fa:16:3e:a0:19:fd", FIP_PORT: "fa:16:3e:c8:4d:36"}

HOSTS = (Host("controller", "controller", None, "10.0.0.11"),
         Host("network", "network", "10.0.1.21", "10.0.0.21"),
         Host("compute-1", "compute", "10.0.0.20", "10.0.0.31"),
         Host("compute-2", "compute", "10.0.0.21", "10.0.0.32"))


def _rule(rid: str, group: str, direction: str, ethertype: str = "IPv4", protocol=None,
          low=None, high=None, prefix=None, remote_group=None) -> SecurityGroupRule:
    return SecurityGroupRule(rid, group, direction, ethertype, protocol, low, high, prefix,
                             remote_group)


def default_group() -> SecurityGroup:
    """neutron's four default rules: egress anywhere, ingress from the group itself."""
    return SecurityGroup(DEFAULT_SG, "default", DEMO, (
        _rule("0b1c2d3e-0001-4f00-8000-000000000001", DEFAULT_SG, "egress"),
        _rule("0b1c2d3e-0002-4f00-8000-000000000002", DEFAULT_SG, "egress", "IPv6"),
        _rule("0b1c2d3e-0003-4f00-8000-000000000003", DEFAULT_SG, "ingress",
              remote_group=DEFAULT_SG),
        _rule("0b1c2d3e-0004-4f00-8000-000000000004", DEFAULT_SG, "ingress", "IPv6",
              remote_group=DEFAULT_SG)))


SSH_RULE = "5a6b7c8d-0005-4f00-8000-000000000005"
PING_RULE = "5a6b7c8d-0006-4f00-8000-000000000006"


def ssh_group() -> SecurityGroup:
    return SecurityGroup(SSH_SG, "ssh-and-ping", DEMO, (
        _rule(SSH_RULE, SSH_SG, "ingress", protocol="tcp", low=22, high=22,
              prefix="0.0.0.0/0"),
        _rule(PING_RULE, SSH_SG, "ingress", protocol="icmp", prefix="0.0.0.0/0")))


def _port(pid: str, net: str, subnet: str, ip: str, owner: str, device: str, host,
          groups=(), **extra) -> Port:
    return Port(pid, net, MAC[pid], (FixedIP(subnet, ip),), owner, device, host,
                status="ACTIVE", security_group_ids=tuple(groups), **extra)


def lab(**changes) -> Topology:
    """The whole lab; keyword arguments replace Topology fields."""
    networks = (
        Network(PUBLIC, "public", ADMIN, "flat", None, "external", external=True, mtu=1500),
        Network(DEMO_NET, "demo-net", DEMO, "vxlan", 65537, None),
        Network(DB_NET, "db-net", DEMO, "vxlan", 65538, None))
    subnets = (
        Subnet(PUBLIC_SUBNET, PUBLIC, "203.0.113.0/24", "203.0.113.1", enable_dhcp=False),
        Subnet(DEMO_SUBNET, DEMO_NET, "172.16.1.0/24", "172.16.1.1", True, ("8.8.4.4",)),
        Subnet(DB_SUBNET, DB_NET, "172.16.2.0/24", "172.16.2.1"))
    server = "compute:nova"
    ports = (
        _port(DHCP_DEMO, DEMO_NET, DEMO_SUBNET, "172.16.1.2", "network:dhcp",
              "dhcp0a1b2c3d-demo", "network"),
        _port(QR_DEMO, DEMO_NET, DEMO_SUBNET, "172.16.1.1", "network:router_interface", ROUTER,
              "network"),
        _port(QG, PUBLIC, PUBLIC_SUBNET, "203.0.113.101", "network:router_gateway", ROUTER,
              "network"),
        _port(VM1, DEMO_NET, DEMO_SUBNET, "172.16.1.5", server,
              "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0", "compute-1", (DEFAULT_SG, SSH_SG)),
        _port(DHCP_DB, DB_NET, DB_SUBNET, "172.16.2.2", "network:dhcp", "dhcp0a1b2c3d-db",
              "network"),
        _port(QR_DB, DB_NET, DB_SUBNET, "172.16.2.1", "network:router_interface", ROUTER,
              "network"),
        _port(VM5, DB_NET, DB_SUBNET, "172.16.2.6", server,
              "4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d", "compute-2", (DEFAULT_SG,)),
        _port(VM2, DEMO_NET, DEMO_SUBNET, "172.16.1.6", server,
              "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "compute-2", (DEFAULT_SG,)),
        _port(VM3, DB_NET, DB_SUBNET, "172.16.2.5", server,
              "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a", "compute-1", (DEFAULT_SG,)),
        _port(VM4, DEMO_NET, DEMO_SUBNET, "172.16.1.7", server,
              "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", "compute-1", (DEFAULT_SG,)),
        Port(FIP_PORT, PUBLIC, MAC[FIP_PORT], (FixedIP(PUBLIC_SUBNET, "203.0.113.102"),),
             "network:floatingip", FIP, None, "N/A"),
    )
    fields = dict(
        hosts=HOSTS, networks=networks, subnets=subnets, ports=ports,
        security_groups=(default_group(), ssh_group()),
        routers=(Router(ROUTER, "demo-router", DEMO, "network", QG, True, (QR_DEMO, QR_DB)),),
        floating_ips=(FloatingIP(FIP, "203.0.113.102", PUBLIC, VM1, "172.16.1.5", ROUTER,
                                 "ACTIVE"),),
        # as the agents allocated them: db-net's port reached compute-2 first, so there
        # db-net is VLAN 1 and demo-net 2; on compute-1 it is the other way round
        local_vlans={("compute-1", DEMO_NET): 1, ("compute-1", DB_NET): 2,
                     ("compute-2", DB_NET): 1, ("compute-2", DEMO_NET): 2,
                     ("network", DEMO_NET): 1, ("network", PUBLIC): 2, ("network", DB_NET): 3},
        tunnel_type="vxlan")
    fields.update(changes)
    return Topology(**fields)


@pytest.fixture(scope="module")
def wired() -> dict[str, HostWiring]:
    return wire(lab())


# -- names and tags --------------------------------------------------------------------------


def test_every_host_with_an_ovs_agent_is_wired(wired):
    assert sorted(wired) == ["compute-1", "compute-2", "network"]
    assert wired["compute-1"].local_ip == "10.0.0.20"


def test_devices_take_the_port_ids_first_eleven_characters(wired):
    vif = wired["compute-1"].vif(VM1)
    assert (vif.tap, vif.qbr, vif.qvb, vif.qvo) == (
        "tap6e7d5cb0-01", "qbr6e7d5cb0-01", "qvb6e7d5cb0-01", "qvo6e7d5cb0-01")
    assert vif.chains == ("neutron-openvswi-i6e7d5cb0-0", "neutron-openvswi-o6e7d5cb0-0",
                          "neutron-openvswi-s6e7d5cb0-0")
    assert vif.tap_mac == "fe:16:3e:3a:1f:2b"
    assert device_name("qr-", QR_DEMO) == "qr-a9b8c7d6-e5"
    assert chain_name("i", VM2) == "neutron-openvswi-if03a9b1c-2"


def test_linux_bridge_holds_the_tap_and_the_qvb_and_a_veth_joins_it_to_br_int(wired):
    c1 = wired["compute-1"]
    qbr = next(b for b in c1.linux_bridges if b.port_id == VM1)
    assert qbr.name == "qbr6e7d5cb0-01"
    assert set(qbr.interfaces) == {"tap6e7d5cb0-01", "qvb6e7d5cb0-01"}
    assert re.fullmatch(r"8000\.[0-9a-f]{12}", qbr.bridge_id)
    veth = next(v for v in c1.veths if v.port_id == VM1)
    assert (veth.left, veth.right) == ("qvb6e7d5cb0-01", "qvo6e7d5cb0-01")
    qvo = c1.bridge("br-int").port("qvo6e7d5cb0-01")
    assert qvo.tag == 1 and qvo.port_id == VM1 and qvo.type == ""


def test_local_vlans_are_per_host_and_the_tunnel_id_is_global(wired):
    c1, c2 = wired["compute-1"], wired["compute-2"]
    assert c1.local_vlans == {DEMO_NET: 1, DB_NET: 2}
    assert c2.local_vlans == {DB_NET: 1, DEMO_NET: 2}
    assert c1.bridge("br-int").port(device_name("qvo", VM3)).tag == 2
    assert c2.bridge("br-int").port(device_name("qvo", VM2)).tag == 2
    assert c2.bridge("br-int").port(device_name("qvo", VM5)).tag == 1
    # both hosts carry demo-net as tunnel id 0x10001, whatever its local tag
    assert any(f.match == "tun_id=0x10001" and f.actions.startswith("mod_vlan_vid:1,")
               for f in c1.bridge("br-tun").flows)
    assert any(f.match == "tun_id=0x10001" and f.actions.startswith("mod_vlan_vid:2,")
               for f in c2.bridge("br-tun").flows)


def test_missing_local_vlans_get_the_lowest_free_tag_in_port_order():
    wired = wire(lab(local_vlans={("compute-1", DEMO_NET): 1}))
    # compute-1: demo-net keeps 1, db-net (VM3's) takes the lowest free: 2
    assert wired["compute-1"].local_vlans == {DEMO_NET: 1, DB_NET: 2}
    # compute-2 saw db-net's port (VM5) before demo-net's (VM2)
    assert wired["compute-2"].local_vlans == {DB_NET: 1, DEMO_NET: 2}
    assert wired["network"].local_vlans == {DEMO_NET: 1, PUBLIC: 2, DB_NET: 3}


def test_lowest_free_vlan():
    assert lowest_free_vlan(set()) == 1
    assert lowest_free_vlan({1, 2, 4}) == 3
    assert lowest_free_vlan(range(1, 4094)) == 4094
    with pytest.raises(ValueError):
        lowest_free_vlan(range(1, 4095))


# -- br-tun ----------------------------------------------------------------------------------


def test_tunnel_ports_are_named_from_the_peers_local_ip_in_hex(wired):
    assert tunnel_port_name("vxlan", "10.0.0.21") == "vxlan-0a000015"
    assert tunnel_port_name("gre", "10.0.1.21") == "gre-0a000115"
    tun = wired["compute-1"].bridge("br-tun")
    tunnels = {p.name: p for p in tun.ports if p.peer_host}
    assert set(tunnels) == {"vxlan-0a000115", "vxlan-0a000015"}   # network node, compute-2
    port = tunnels["vxlan-0a000015"]
    assert port.peer_host == "compute-2" and port.type == "vxlan"
    assert port.options["local_ip"] == "10.0.0.20" and port.options["remote_ip"] == "10.0.0.21"
    assert port.options["in_key"] == port.options["out_key"] == "flow"
    # the controller runs no OVS agent: no tunnel to it
    assert all(p.remote_ip != "10.0.0.11" for p in tun.ports)


def test_gre_lab_names_tunnel_ports_gre_and_uses_table_3():
    topology = lab(tunnel_type="gre", networks=tuple(
        dataclasses.replace(n, network_type="gre") if n.network_type == "vxlan" else n
        for n in lab().networks))
    tun = wire(topology)["compute-2"].bridge("br-tun")
    names = {p.name for p in tun.ports if p.peer_host}
    assert names == {"gre-0a000115", "gre-0a000014"}
    assert any(f.table == 3 and f.match == "tun_id=0x10001" for f in tun.flows)
    assert all(p.type == "gre" for p in tun.ports if p.peer_host)


def test_br_tun_flows_map_local_vlans_to_tunnel_ids(wired):
    tun = wired["compute-1"].bridge("br-tun")
    flows = {(f.table, f.match): f.actions for f in tun.flows}
    outputs = ",".join(f"output:{p.ofport}" for p in tun.ports if p.peer_host)
    assert flows[(0, "in_port=1")] == "resubmit(,2)"
    assert flows[(0, "")] == "drop"
    for port in (p for p in tun.ports if p.peer_host):
        assert flows[(0, f"in_port={port.ofport}")] == "resubmit(,4)"
    assert flows[(2, "dl_dst=00:00:00:00:00:00/01:00:00:00:00:00")] == "resubmit(,20)"
    assert flows[(2, "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00")] == "resubmit(,22)"
    assert flows[(4, "tun_id=0x10001")] == "mod_vlan_vid:1,resubmit(,10)"
    assert flows[(4, "tun_id=0x10002")] == "mod_vlan_vid:2,resubmit(,10)"
    assert flows[(22, "dl_vlan=1")] == f"strip_vlan,set_tunnel:0x10001,{outputs}"
    assert flows[(22, "dl_vlan=2")] == f"strip_vlan,set_tunnel:0x10002,{outputs}"
    assert flows[(10, "")].startswith("learn(table=20,")
    assert flows[(20, "")] == "resubmit(,22)"
    # on the network node public is VLAN 2: a flat network never enters a tunnel
    node_flows = wired["network"].bridge("br-tun").flows
    assert not any("dl_vlan=2" in f.match for f in node_flows)
    assert any(f.match == "dl_vlan=3" and "set_tunnel:0x10002" in f.actions for f in node_flows)


def test_network_node_maps_the_flat_external_network_through_br_ex(wired):
    node = wired["network"]
    assert [b.name for b in node.bridges] == ["br-ex", "br-int", "br-tun"]
    br_int, br_ex = node.bridge("br-int"), node.bridge("br-ex")
    patch = br_int.port("int-br-ex")
    assert patch.type == "patch" and patch.options == {"peer": "phy-br-ex"}
    assert br_ex.port("phy-br-ex").options == {"peer": "int-br-ex"}
    assert any(f.match == f"in_port={patch.ofport},vlan_tci=0x0000"
               and f.actions == "mod_vlan_vid:2,NORMAL" for f in br_int.flows)
    assert any(f.match == "in_port=1,dl_vlan=2" and f.actions == "strip_vlan,NORMAL"
               for f in br_ex.flows)
    qg = br_int.port(device_name("qg-", QG))
    assert qg.tag == 2 and qg.type == "internal"
    assert br_int.port(device_name("tap", DHCP_DEMO)).tag == 1
    assert br_int.port(device_name("qr-", QR_DB)).tag == 3
    assert not wired["compute-1"].bridge("br-ex")


# -- iptables --------------------------------------------------------------------------------


def _lines(wiring: HostWiring, chain: str) -> list[str]:
    return [r.line for r in wiring.table("filter").rules_of(chain)]


def test_ingress_chain_from_the_security_group_rules(wired):
    c1 = wired["compute-1"]
    chain = "neutron-openvswi-i6e7d5cb0-0"
    assert _lines(c1, chain) == [
        f"-A {chain} -m state --state RELATED,ESTABLISHED -j RETURN",
        f"-A {chain} -d 172.16.1.5/32 -p udp -m udp --sport 67 --dport 68 -j RETURN",
        f"-A {chain} -d 255.255.255.255/32 -p udp -m udp --sport 67 --dport 68 -j RETURN",
        f"-A {chain} -m set --match-set {ipset_name(DEFAULT_SG)} src -j RETURN",
        f"-A {chain} -p tcp -m tcp --dport 22 -j RETURN",
        f"-A {chain} -p icmp -j RETURN",
        f"-A {chain} -m state --state INVALID -j DROP",
        f"-A {chain} -j neutron-openvswi-sg-fallback"]
    ssh = next(r for r in c1.table("filter").rules_of(chain) if r.dport == "22")
    assert ssh.security_group_rule_id == SSH_RULE


def test_egress_chain_and_anti_spoofing_with_allowed_address_pairs():
    topology = lab()
    ports = tuple(dataclasses.replace(p, allowed_address_pairs=(("172.16.1.200", None),
                                                                ("10.9.0.0/24",
                                                                 "fa:16:3e:00:00:01")))
                  if p.id == VM4 else p for p in topology.ports)
    c1 = wire(dataclasses.replace(topology, ports=ports))["compute-1"]
    out, spoof = "neutron-openvswi-o9c8b7a6f-5", "neutron-openvswi-s9c8b7a6f-5"
    assert _lines(c1, out) == [
        f"-A {out} -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 "
        "-j RETURN",
        f"-A {out} -j {spoof}",
        f"-A {out} -p udp -m udp --sport 68 --dport 67 -j RETURN",
        f"-A {out} -p udp -m udp --sport 67 --dport 68 -j DROP",
        f"-A {out} -m state --state RELATED,ESTABLISHED -j RETURN",
        f"-A {out} -j RETURN",
        f"-A {out} -m state --state INVALID -j DROP",
        f"-A {out} -j neutron-openvswi-sg-fallback"]
    assert _lines(c1, spoof) == [
        f"-A {spoof} -s 172.16.1.200/32 -m mac --mac-source FA:16:3E:9B:22:58 -j RETURN",
        f"-A {spoof} -s 10.9.0.0/24 -m mac --mac-source FA:16:3E:00:00:01 -j RETURN",
        f"-A {spoof} -s 172.16.1.7/32 -m mac --mac-source FA:16:3E:9B:22:58 -j RETURN",
        f"-A {spoof} -j DROP"]


def test_hybrid_driver_sends_bridged_traffic_through_the_sg_chain(wired):
    c1 = wired["compute-1"]
    forward = _lines(c1, "neutron-openvswi-FORWARD")
    assert ("-A neutron-openvswi-FORWARD -m physdev --physdev-out tap6e7d5cb0-01 "
            "--physdev-is-bridged -j neutron-openvswi-sg-chain") in forward
    sg_chain = _lines(c1, "neutron-openvswi-sg-chain")
    assert ("-A neutron-openvswi-sg-chain -m physdev --physdev-in tap6e7d5cb0-01 "
            "--physdev-is-bridged -j neutron-openvswi-o6e7d5cb0-0") in sg_chain
    assert sg_chain[-1] == "-A neutron-openvswi-sg-chain -j ACCEPT"
    assert _lines(c1, "neutron-openvswi-sg-fallback") == [
        "-A neutron-openvswi-sg-fallback -j DROP"]
    assert ("-A neutron-openvswi-INPUT -m physdev --physdev-in tap6e7d5cb0-01 "
            "--physdev-is-bridged -j neutron-openvswi-o6e7d5cb0-0") in _lines(
                c1, "neutron-openvswi-INPUT")


def test_remote_group_rules_use_an_ipset_of_the_groups_members(wired):
    ipset = wired["compute-1"].ipset(ipset_name(DEFAULT_SG))
    assert ipset.name == "NIPv4" + DEFAULT_SG[:24]
    assert len(ipset.name) <= 29
    # every port of the group, on any host
    assert ipset.members == ("172.16.1.5", "172.16.1.6", "172.16.1.7", "172.16.2.5",
                             "172.16.2.6")


def test_rules_with_a_cidr_and_port_ranges():
    extra = SecurityGroup(SSH_SG, "web", DEMO, (
        _rule("7e8f9a0b-0007-4f00-8000-000000000007", SSH_SG, "ingress", protocol="tcp",
              low=8000, high=8080, prefix="10.0.0.0/8"),
        _rule("7e8f9a0b-0008-4f00-8000-000000000008", SSH_SG, "egress", protocol="udp",
              low=53, high=53, prefix="8.8.4.4/32"),
        _rule("7e8f9a0b-0009-4f00-8000-000000000009", SSH_SG, "ingress", protocol="icmp",
              low=8, high=0)))
    c1 = wire(lab(security_groups=(default_group(), extra)))["compute-1"]
    assert "-A neutron-openvswi-i6e7d5cb0-0 -s 10.0.0.0/8 -p tcp -m tcp -m multiport " \
           "--dports 8000:8080 -j RETURN" in _lines(c1, "neutron-openvswi-i6e7d5cb0-0")
    assert "-A neutron-openvswi-i6e7d5cb0-0 -p icmp -m icmp --icmp-type 8/0 -j RETURN" in \
        _lines(c1, "neutron-openvswi-i6e7d5cb0-0")
    assert "-A neutron-openvswi-o6e7d5cb0-0 -d 8.8.4.4/32 -p udp -m udp --dport 53 -j RETURN" \
        in _lines(c1, "neutron-openvswi-o6e7d5cb0-0")


def test_a_port_without_port_security_has_no_chains_and_is_accepted():
    ports = tuple(dataclasses.replace(p, port_security_enabled=False, security_group_ids=())
                  if p.id == VM4 else p for p in lab().ports)
    c1 = wire(lab(ports=ports))["compute-1"]
    assert c1.vif(VM4).chains == ()
    table = c1.table("filter")
    assert not table.has_chain("neutron-openvswi-i9c8b7a6f-5")
    assert ("-A neutron-openvswi-FORWARD -m physdev --physdev-out tap9c8b7a6f-5e "
            "--physdev-is-bridged -j ACCEPT") in _lines(c1, "neutron-openvswi-FORWARD")


# -- namespaces ------------------------------------------------------------------------------


def test_dhcp_namespace_has_its_tap_and_dnsmasq_host_entries(wired):
    node = wired["network"]
    ns = node.namespace(f"qdhcp-{DEMO_NET}")
    assert [(d.name, d.addresses, d.vlan) for d in ns.devices] == [
        ("tapd4c3b2a1-0f", ("172.16.1.2/24",), 1)]
    assert [h.line for h in ns.dhcp_hosts] == [
        "fa:16:3e:77:b3:1a,host-172-16-1-1.openstacklocal,172.16.1.1",
        "fa:16:3e:d1:5c:07,host-172-16-1-2.openstacklocal,172.16.1.2",
        "fa:16:3e:3a:1f:2b,host-172-16-1-5.openstacklocal,172.16.1.5",
        "fa:16:3e:6c:0d:91,host-172-16-1-6.openstacklocal,172.16.1.6",
        "fa:16:3e:9b:22:58,host-172-16-1-7.openstacklocal,172.16.1.7"]
    assert ns.hosts_file == f"/var/lib/neutron/dhcp/{DEMO_NET}/host"
    assert not wired["compute-1"].namespaces


def test_router_namespace_has_qr_and_qg_devices_with_the_floating_ip(wired):
    ns = wired["network"].namespace(f"qrouter-{ROUTER}")
    devices = {d.name: d for d in ns.devices}
    assert devices["qr-a9b8c7d6-e5"].addresses == ("172.16.1.1/24",)
    assert devices["qr-b1c2d3e4-f5"].addresses == ("172.16.2.1/24",)
    assert devices["qg-c7d8e9f0-a1"].addresses == ("203.0.113.101/24", "203.0.113.102/32")
    assert [r.line for r in ns.routes][0] == "default via 203.0.113.1 dev qg-c7d8e9f0-a1"


def test_router_nat_rules_snat_floating_ip_pair_and_metadata_redirect(wired):
    ns = wired["network"].namespace(f"qrouter-{ROUTER}")
    nat = [r.line for r in ns.table("nat").rules]
    qg = "qg-c7d8e9f0-a1"
    for line in (
            "-A PREROUTING -j neutron-l3-agent-PREROUTING",
            "-A POSTROUTING -j neutron-postrouting-bottom",
            "-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp "
            "--dport 80 -j REDIRECT --to-ports 9697",
            "-A neutron-l3-agent-PREROUTING -d 203.0.113.102/32 -j DNAT "
            "--to-destination 172.16.1.5",
            "-A neutron-l3-agent-OUTPUT -d 203.0.113.102/32 -j DNAT --to-destination 172.16.1.5",
            "-A neutron-l3-agent-float-snat -s 172.16.1.5/32 -j SNAT --to-source 203.0.113.102",
            "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat",
            f"-A neutron-l3-agent-snat -o {qg} -j SNAT --to-source 203.0.113.101",
            f"-A neutron-l3-agent-POSTROUTING ! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT",
            "-A neutron-l3-agent-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT "
            "-j SNAT --to-source 203.0.113.101",
            "-A neutron-postrouting-bottom -j neutron-l3-agent-snat"):
        assert line in nat
    # floating IPs come before the router's own SNAT in the snat chain
    snat = [r.line for r in ns.table("nat").rules_of("neutron-l3-agent-snat")]
    assert snat[0] == "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat"


def test_disassociated_floating_ip_leaves_no_nat_rule():
    fip = dataclasses.replace(lab().floating_ips[0], port_id=None, fixed_ip_address=None,
                              status="DOWN")
    ns = wire(lab(floating_ips=(fip,)))["network"].namespace(f"qrouter-{ROUTER}")
    text = "\n".join(r.line for r in ns.table("nat").rules)
    assert "203.0.113.102" not in text
    assert ns.device("qg-c7d8e9f0-a1").addresses == ("203.0.113.101/24",)


def test_router_without_snat_keeps_floating_ips_but_no_gateway_snat():
    router = dataclasses.replace(lab().routers[0], enable_snat=False)
    ns = wire(lab(routers=(router,)))["network"].namespace(f"qrouter-{ROUTER}")
    lines = [r.line for r in ns.table("nat").rules]
    assert "-A neutron-l3-agent-snat -o qg-c7d8e9f0-a1 -j SNAT --to-source 203.0.113.101" \
        not in lines
    assert "-A neutron-l3-agent-float-snat -s 172.16.1.5/32 -j SNAT --to-source 203.0.113.102" \
        in lines


def test_unbound_ports_are_not_wired():
    ports = tuple(dataclasses.replace(p, host=None) if p.id == VM2 else p for p in lab().ports)
    c2 = wire(lab(ports=ports))["compute-2"]
    assert c2.vif(VM2) is None and DEMO_NET not in c2.local_vlans


def test_json_round_trip(wired):
    data = wired["network"].to_dict()
    assert data["bridges"][0]["name"] == "br-ex"
    again = HostWiring.from_dict(data)
    assert again == wired["network"]


# -- the operator commands -------------------------------------------------------------------


def test_ovs_vsctl_show_layout(wired):
    text = render.ovs_vsctl_show(wired["compute-1"])
    lines = text.splitlines()
    assert re.fullmatch(r"[0-9a-f-]{36}", lines[0])
    assert lines[1] == '    Manager "ptcp:6640:127.0.0.1"'
    assert "    Bridge br-int\n        fail_mode: secure\n" in text
    assert ("        Port qvo6e7d5cb0-01\n            tag: 1\n"
            "            Interface qvo6e7d5cb0-01\n") in text
    assert ("        Port patch-tun\n            Interface patch-tun\n"
            "                type: patch\n                options: {peer=patch-int}\n") in text
    assert ("        Port vxlan-0a000015\n            Interface vxlan-0a000015\n"
            "                type: vxlan\n                options: {df_default=\"true\", "
            "egress_pkt_mark=\"0\", in_key=flow, local_ip=\"10.0.0.20\", out_key=flow, "
            "remote_ip=\"10.0.0.21\"}\n") in text
    assert lines[-1].startswith('    ovs_version: "')
    assert render.ovs_vsctl_show(wired["compute-1"]) == text       # stable


def test_dump_flows_layout(wired):
    text = render.ovs_ofctl_dump_flows(wired["compute-1"], "br-tun")
    assert (" cookie=0x0, duration=0.000s, table=4, n_packets=0, n_bytes=0, "
            "priority=1,tun_id=0x10001 actions=mod_vlan_vid:1,resubmit(,10)\n") in text
    assert (" cookie=0x0, duration=0.000s, table=22, n_packets=0, n_bytes=0, "
            "priority=1,dl_vlan=1 actions=strip_vlan,set_tunnel:0x10001,output:2,output:3\n"
            ) in text
    assert " table=0, n_packets=0, n_bytes=0, priority=0 actions=drop\n" in text
    tables = [int(m) for m in re.findall(r"table=(\d+),", text)]
    assert tables == sorted(tables)
    show = render.ovs_ofctl_show(wired["compute-1"], "br-tun")
    assert " 1(patch-int): addr:" in show and " 2(vxlan-0a000115): addr:" in show
    assert " LOCAL(br-tun): addr:" in show


def test_brctl_show_layout(wired):
    text = render.brctl_show(wired["compute-1"])
    lines = text.splitlines()
    assert lines[0] == "bridge name\tbridge id\t\tSTP enabled\tinterfaces"
    qbr = next(b for b in wired["compute-1"].linux_bridges if b.port_id == VM1)
    at = lines.index(f"qbr6e7d5cb0-01\t\t{qbr.bridge_id}\tno\t\tqvb6e7d5cb0-01")
    assert lines[at + 1] == "\t\t\t\t\t\t\ttap6e7d5cb0-01"
    assert render.brctl_show(wired["network"]) == lines[0] + "\n"


def test_ip_netns_and_ip_addr_layout(wired):
    node = wired["network"]
    assert render.ip_netns(node).splitlines() == [
        f"qrouter-{ROUTER} (id: 2)", f"qdhcp-{DB_NET} (id: 1)", f"qdhcp-{DEMO_NET} (id: 0)"]
    text = render.ip_addr(node, f"qrouter-{ROUTER}")
    assert text.startswith("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536")
    assert ("2: qr-a9b8c7d6-e5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue "
            "state UNKNOWN group default qlen 1000\n"
            "    link/ether fa:16:3e:77:b3:1a brd ff:ff:ff:ff:ff:ff\n"
            "    inet 172.16.1.1/24 brd 172.16.1.255 scope global qr-a9b8c7d6-e5\n") in text
    assert "    inet 203.0.113.102/32 scope global qg-c7d8e9f0-a1\n" in text
    assert "    inet6 fe80::f816:3eff:fe77:b31a/64 scope link\n" in text
    with pytest.raises(KeyError):
        render.ip_addr(node, "qrouter-nope")


def test_iptables_save_layout(wired):
    text = render.iptables_save(wired["compute-1"])
    lines = text.splitlines()
    assert lines[1] == "*filter"
    assert lines[2:5] == [":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    assert ":neutron-openvswi-i6e7d5cb0-0 - [0:0]" in lines
    assert "-A INPUT -j neutron-openvswi-INPUT" in lines
    assert "COMMIT" in lines
    # builtin chains' rules first, then user chains by name
    chains = [line.split()[1] for line in lines if line.startswith("-A ")]
    user = [c for c in dict.fromkeys(chains) if c not in ("INPUT", "FORWARD", "OUTPUT")]
    assert user == sorted(user)
    router = render.iptables_save(wired["network"], f"qrouter-{ROUTER}")
    assert [line for line in router.splitlines() if line.startswith("*")] == [
        "*mangle", "*nat", "*filter"]
    assert ":neutron-l3-agent-float-snat - [0:0]" in router


def test_commands_cover_every_view(wired):
    node = render.commands(wired["network"])
    for command in ("ovs-vsctl show", "ovs-ofctl dump-flows br-tun", "ovs-ofctl show br-tun",
                    "ovs-ofctl dump-flows br-ex", "brctl show", "iptables-save", "ip netns",
                    f"ip netns exec qrouter-{ROUTER} ip addr",
                    f"ip netns exec qrouter-{ROUTER} iptables-save",
                    f"ip netns exec qdhcp-{DEMO_NET} ip addr",
                    f"cat /var/lib/neutron/dhcp/{DEMO_NET}/host"):
        assert node[command], command
    assert "Members:\n172.16.1.5\n" in render.commands(wired["compute-1"])["ipset list"]


# -- the inspection API, over a hand-built topology ------------------------------------------


def inspection(topology: Topology | None, admin: bool = True) -> TestClient:
    """The inspection app over a stand-in cloud whose neutron returns `topology`, called
    with a token the middleware would have validated (admin or not)."""
    cloud = SimpleNamespace()
    if topology is not None:
        cloud.network = SimpleNamespace(neutron=SimpleNamespace(topology=lambda: topology))
    app = build_inspection_app(cloud)

    async def validated(scope, receive, send):
        if scope["type"] == "http":
            scope["labkit.request"] = RequestInfo("req-test", "labkit-inspector",
                                                  token=SimpleNamespace(is_admin=admin))
        await app(scope, receive, send)

    return TestClient(validated)


def test_inspection_lists_the_hosts_with_their_bridges_and_namespaces():
    body = inspection(lab()).get("/network/hosts").json()
    hosts = {h["host"]: h for h in body["hosts"]}
    assert set(hosts) == {"network", "compute-1", "compute-2"}
    assert hosts["network"]["bridges"] == ["br-ex", "br-int", "br-tun"]
    assert f"qrouter-{ROUTER}" in hosts["network"]["namespaces"]
    assert hosts["compute-1"]["ports"] == [VM1, VM3, VM4]
    assert hosts["compute-2"]["local_vlans"] == {DB_NET: 1, DEMO_NET: 2}


def test_inspection_returns_a_hosts_wiring_as_data_and_as_commands():
    client = inspection(lab())
    data = client.get("/network/hosts/compute-1").json()["wiring"]
    assert HostWiring.from_dict(data) == wire(lab())["compute-1"]
    commands = client.get("/network/hosts/compute-1/commands").json()
    assert commands["host"] == "compute-1"
    assert "Port qvo6e7d5cb0-01\n            tag: 1" in commands["commands"]["ovs-vsctl show"]
    assert "set_tunnel:0x10001" in commands["commands"]["ovs-ofctl dump-flows br-tun"]
    response = client.get("/network/hosts/controller")
    assert response.status_code == 404
    assert "controller" in response.json()["error"]["message"]


def test_inspection_walks_a_packet():
    client = inspection(lab())
    body = client.get("/network/walk", params={
        "destination": "203.0.113.102", "protocol": "tcp", "port": "22",
        "source_ip": "198.51.100.7"}).json()
    assert body["hops"][-1]["verdict"] == "deliver"
    assert body["hops"][4]["nat"] == "DNAT 203.0.113.102 -> 172.16.1.5"
    assert "DNAT 203.0.113.102 -> 172.16.1.5" in body["text"]
    dropped = client.get("/network/walk", params={
        "port_id": VM1, "destination": "172.16.1.6", "source_ip": "10.1.1.1"}).json()
    assert dropped["hops"][-1]["verdict"] == "drop"


@pytest.mark.parametrize("params, status", [
    ({"port_id": VM1}, 400),                                        # no destination
    ({"port_id": VM1, "destination": "172.16.1.6", "protocol": "gre"}, 400),
    ({"port_id": VM1, "destination": "172.16.1.6", "protocol": "tcp", "port": "ssh"}, 400),
    ({"port_id": VM1, "destination": "172.16.1.6", "protocol": "tcp"}, 400),  # tcp, no port
    ({"destination": "172.16.1.6"}, 400),                           # neither port nor source
    ({"port_id": "0f0f0f0f-0000-4000-8000-000000000000", "destination": "172.16.1.6"}, 404),
])
def test_inspection_walk_refuses_bad_queries(params, status):
    assert inspection(lab()).get("/network/walk", params=params).status_code == status


def test_inspection_network_views_are_for_admins_and_need_networking():
    assert inspection(lab(), admin=False).get("/network/hosts").status_code == 403
    response = inspection(None).get("/network/hosts")
    assert response.status_code == 404
    assert "no networking" in response.json()["error"]["message"]


# -- the diagram -----------------------------------------------------------------------------


def test_wiring_diagram_draws_the_chosen_hosts_side_by_side(wired):
    names = {PUBLIC: "public", DEMO_NET: "demo-net", DB_NET: "db-net"}
    graph = diagrams.wiring(wired, hosts=["compute-1", "network"], networks=names)
    source = graph.source
    assert "cluster_compute_1" in source and "cluster_network" in source
    assert "cluster_compute_2" not in source
    for text in ("qbr6e7d5cb0-01", "tap6e7d5cb0-01", "qvo6e7d5cb0-01", "patch-tun",
                 "vxlan-0a000115", "br-ex", f"qrouter-{ROUTER[:8]}", "tag 1",
                 "VXLAN 10.0.0.20 ↔ 10.0.1.21", "DNAT 203.0.113.102/32 → 172.16.1.5"):
        assert text in source, text
    assert b"<svg" in graph.pipe(format="svg")
    # the inspection API's JSON draws the same picture
    again = diagrams.wiring({h: w.to_dict() for h, w in wired.items()},
                            hosts=["compute-1", "network"], networks=names)
    assert again.source == source


# -- the live cloud --------------------------------------------------------------------------


def test_the_cloud_serves_the_wiring_of_its_lab(http, admin_token, demo_token):
    """data/networks.yaml's router and DHCP port are wired on the network node at start."""
    headers = auth_header(admin_token)
    hosts = {h["host"]: h for h in http.get("/labkit/v1/network/hosts",
                                            headers=headers).json()["hosts"]}
    assert {"network", "compute-1", "compute-2"} <= set(hosts)
    node = hosts["network"]
    assert node["bridges"] == ["br-ex", "br-int", "br-tun"]
    assert any(n.startswith("qrouter-") for n in node["namespaces"])
    assert any(n.startswith("qdhcp-") for n in node["namespaces"])
    commands = http.get("/labkit/v1/network/hosts/network/commands",
                        headers=headers).json()["commands"]
    router = next(n for n in node["namespaces"] if n.startswith("qrouter-"))
    nat = commands[f"ip netns exec {router} iptables-save"]
    assert "-j REDIRECT --to-ports 9697" in nat
    assert re.search(r"-A neutron-l3-agent-snat -o qg-\S+ -j SNAT --to-source 203\.0\.113\.",
                     nat)
    gateway = re.search(r"--to-source (203\.0\.113\.\d+)", nat).group(1)
    walk = http.get("/labkit/v1/network/walk", headers=headers, params={
        "destination": gateway, "source_ip": "198.51.100.7"}).json()
    assert walk["hops"][-1]["verdict"] == "deliver"
    assert walk["hops"][-1]["namespace"] == router
    assert http.get("/labkit/v1/network/hosts",
                    headers=auth_header(demo_token)).status_code == 403


def test_inspector_shows_the_wiring_on_the_embedded_cloud_and_hides_it_elsewhere(
        cloud, demo_conn, monkeypatch):
    for name in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE", "LABKIT_FOREIGN", "LABKIT_PORT",
                 "LABKIT_DETERMINISTIC", "LABKIT_LAB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LABKIT_HOME", str(cloud.home))
    insp = inspector(demo_conn)
    assert insp.available
    wirings = insp.wirings()
    node = insp.wiring("network")
    assert isinstance(node, HostWiring) and wirings["network"] == node
    router = next(n for n in node.namespaces if n.kind == "router")
    gateway = next(d for d in router.devices if d.kind == "qg").addresses[0].split("/")[0]
    commands = insp.host_commands("network")
    assert repr(commands).startswith("root@network:~# ovs-vsctl show\n")
    assert commands["ip netns"].startswith(("qrouter-", "qdhcp-"))
    walk = insp.packet_walk(None, gateway, source_ip="198.51.100.7")
    assert walk[-1].verdict == "deliver" and "✔ delivered" in repr(walk)
    assert "<table>" in walk._repr_html_()
    assert "cluster_network" in diagrams.wiring(wirings).source

    monkeypatch.setenv("LABKIT_FOREIGN", "1")
    foreign = inspector(demo_conn)
    hidden = [foreign.wiring("network"), foreign.wirings(), foreign.host_commands("network"),
              foreign.packet_walk(VM1, "172.16.1.6")]
    assert all(isinstance(h, Hidden) for h in hidden)
    assert "ovs-vsctl show" in hidden[0].operator
    assert "tap6e7d5cb0-01" in hidden[3].operator
