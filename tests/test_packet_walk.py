"""The packet walk: hops, tags, tunnels, NAT and security group verdicts, from the wiring model.

Uses the hand-built lab of test_network_wiring (two compute hosts, a network node,
demo-net and db-net behind demo-router, a floating IP on VM1).
"""

from __future__ import annotations

import dataclasses

import pytest
from test_network_wiring import (
    DEFAULT_SG,
    DEMO_NET,
    ROUTER,
    SSH_RULE,
    VM1,
    VM2,
    VM3,
    VM4,
    lab,
)

from labkit.cloud.network.walk import Hop, format_walk, packet_walk
from labkit.cloud.network.wiring import device_name, wire

QROUTER = f"qrouter-{ROUTER}"
QG = "qg-c7d8e9f0-a1"
OUTSIDE = "198.51.100.7"


def devices(hops: list[Hop]) -> list[tuple[str | None, str]]:
    return [(h.host, h.device) for h in hops]


def test_accepted_ssh_from_outside_to_a_floating_ip():
    hops = packet_walk(lab(), None, "203.0.113.102", "tcp", 22, source_ip=OUTSIDE)
    assert devices(hops) == [
        (None, "physical network"), ("network", "br-ex"), ("network", "br-int"),
        ("network", QG), ("network", QROUTER), ("network", "qr-a9b8c7d6-e5"),
        ("network", "br-int"), ("network", "br-tun"), ("network", "vxlan-0a000014"),
        ("compute-1", "br-tun"), ("compute-1", "br-int"), ("compute-1", "qvo6e7d5cb0-01"),
        ("compute-1", "qbr6e7d5cb0-01"), ("compute-1", "tap6e7d5cb0-01")]
    router = hops[4]
    assert router.nat == "DNAT 203.0.113.102 -> 172.16.1.5"
    assert router.rule == ("-A neutron-l3-agent-PREROUTING -d 203.0.113.102/32 -j DNAT "
                           "--to-destination 172.16.1.5")
    assert (router.src, router.dst) == (OUTSIDE, "172.16.1.5")
    firewall = hops[-2]
    assert firewall.verdict == "accept"
    assert firewall.security_group_rule_id == SSH_RULE
    assert firewall.rule == "-A neutron-openvswi-i6e7d5cb0-0 -p tcp -m tcp --dport 22 -j RETURN"
    assert hops[-1].verdict == "deliver"
    # the external network's local VLAN on the network node, demo-net's on each side
    assert hops[2].vlan == 2 and hops[6].vlan == 1 and hops[9].vlan == 1
    assert hops[8].tunnel_id == 0x10001


def test_dropped_ssh_when_no_rule_allows_it():
    topology = lab()
    ports = tuple(dataclasses.replace(p, security_group_ids=(DEFAULT_SG,)) if p.id == VM1
                  else p for p in topology.ports)
    hops = packet_walk(dataclasses.replace(topology, ports=ports), None, "203.0.113.102", "tcp",
                       22, source_ip=OUTSIDE)
    last = hops[-1]
    assert last.verdict == "drop"
    assert (last.host, last.device) == ("compute-1", "qbr6e7d5cb0-01")
    assert last.rule == "-A neutron-openvswi-sg-fallback -j DROP"
    assert "no rule" in last.what and "tcp port 22" in last.what
    assert all(h.device != "tap6e7d5cb0-01" for h in hops[1:])


def test_same_network_other_host_goes_through_the_tunnel_and_changes_local_vlan():
    hops = packet_walk(lab(), VM1, "172.16.1.6")
    assert devices(hops) == [
        ("compute-1", "tap6e7d5cb0-01"), ("compute-1", "qbr6e7d5cb0-01"),
        ("compute-1", "qvb6e7d5cb0-01"), ("compute-1", "br-int"), ("compute-1", "br-tun"),
        ("compute-1", "vxlan-0a000015"), ("compute-2", "br-tun"), ("compute-2", "br-int"),
        ("compute-2", "qvof03a9b1c-2d"), ("compute-2", "qbrf03a9b1c-2d"),
        ("compute-2", "tapf03a9b1c-2d")]
    assert hops[3].vlan == 1                   # demo-net on compute-1
    assert hops[4].tunnel_id == 0x10001 and hops[4].vlan is None
    assert hops[4].rule == ("table=22, priority=1,dl_vlan=1 actions=strip_vlan,"
                            "set_tunnel:0x10001,output:2,output:3")
    assert "10.0.0.20 → 10.0.0.21" in hops[5].what
    assert hops[6].vlan == 2                   # the same network is VLAN 2 on compute-2
    assert hops[6].rule == ("table=4, priority=1,tun_id=0x10001 actions=mod_vlan_vid:2,"
                            "resubmit(,10)")
    # egress by the default group's egress rule, ingress by its remote-group rule (ipset)
    assert hops[1].verdict == "accept"
    assert hops[1].rule == "-A neutron-openvswi-o6e7d5cb0-0 -j RETURN"
    assert "--match-set NIPv4" in hops[9].rule
    assert hops[-1].verdict == "deliver"
    assert all(h.nat is None for h in hops)


def test_same_host_stays_on_br_int():
    hops = packet_walk(lab(), VM1, "172.16.1.7")
    assert [h.device for h in hops] == [
        "tap6e7d5cb0-01", "qbr6e7d5cb0-01", "qvb6e7d5cb0-01", "br-int",
        device_name("qvo", VM4), device_name("qbr", VM4), device_name("tap", VM4)]
    assert {h.host for h in hops} == {"compute-1"}
    assert not any(h.tunnel_id for h in hops)
    assert "same host" in hops[3].what


def test_another_subnet_through_the_router_without_nat():
    hops = packet_walk(lab(), VM1, "172.16.2.6", "tcp", 5432)
    names = [h.device for h in hops]
    at = names.index(QROUTER)
    assert names[at - 1] == "qr-a9b8c7d6-e5" and names[at + 1] == "qr-b1c2d3e4-f5"
    router = hops[at]
    assert router.nat is None
    assert router.rule == ("-A neutron-l3-agent-POSTROUTING ! -o qg-c7d8e9f0-a1 -m conntrack "
                           "! --ctstate DNAT -j ACCEPT")
    # db-net is VLAN 3 on the network node and tunnel 0x10002 to compute-2, VLAN 1 there
    assert hops[at + 2].vlan == 3
    assert any(h.tunnel_id == 0x10002 and h.device == "vxlan-0a000015" for h in hops)
    assert hops[-1].host == "compute-2" and hops[-1].verdict == "deliver"
    assert (hops[-1].src, hops[-1].dst) == ("172.16.1.5", "172.16.2.6")


def test_to_the_outside_through_snat():
    hops = packet_walk(lab(), VM3, "8.8.8.8", "udp", 53)
    router = next(h for h in hops if h.device == QROUTER)
    assert router.nat == "SNAT 172.16.2.5 -> 203.0.113.101"
    assert router.rule == "-A neutron-l3-agent-snat -o qg-c7d8e9f0-a1 -j SNAT --to-source " \
                          "203.0.113.101"
    assert [h.device for h in hops[-4:]] == [QG, "br-int", "br-ex", "physical network external"]
    assert hops[-1].src == "203.0.113.101" and hops[-1].verdict == "deliver"
    assert hops[-2].rule == "table=0, priority=4,in_port=1,dl_vlan=2 actions=strip_vlan,NORMAL"


def test_a_vm_with_a_floating_ip_leaves_as_its_floating_ip():
    hops = packet_walk(lab(), VM1, "8.8.8.8")
    router = next(h for h in hops if h.device == QROUTER)
    assert router.nat == "SNAT 172.16.1.5 -> 203.0.113.102"
    assert router.rule == ("-A neutron-l3-agent-float-snat -s 172.16.1.5/32 -j SNAT "
                           "--to-source 203.0.113.102")


def test_floating_ip_from_inside_is_dnatted_and_snatted_to_the_gateway():
    hops = packet_walk(lab(), VM3, "203.0.113.102")
    router = next(h for h in hops if h.device == QROUTER)
    assert router.nat == "DNAT 203.0.113.102 -> 172.16.1.5; SNAT 172.16.2.5 -> 203.0.113.101"
    assert hops[-1].verdict == "deliver" and hops[-1].device == "tap6e7d5cb0-01"


def test_metadata_request_is_redirected_to_the_proxy():
    hops = packet_walk(lab(), VM2, "169.254.169.254", "tcp", 80)
    last = hops[-1]
    assert last.device == QROUTER and last.verdict == "deliver"
    assert last.nat == "REDIRECT 169.254.169.254:80 -> 9697"
    assert "--to-ports 9697" in last.rule


def test_spoofed_source_is_dropped_by_the_anti_spoofing_chain():
    hops = packet_walk(lab(), VM1, "172.16.1.6", source_ip="172.16.1.99")
    assert len(hops) == 2
    assert hops[-1].verdict == "drop"
    assert hops[-1].rule == "-A neutron-openvswi-s6e7d5cb0-0 -j DROP"


def test_allowed_address_pair_passes_the_anti_spoofing_chain():
    ports = tuple(dataclasses.replace(p, allowed_address_pairs=(("172.16.1.99", None),))
                  if p.id == VM1 else p for p in lab().ports)
    hops = packet_walk(lab(ports=ports), VM1, "172.16.1.6", source_ip="172.16.1.99")
    assert hops[1].verdict == "accept"
    # a pair's address joins the group's ipset, so VM2's remote-group rule admits it too
    assert "--match-set NIPv4" in hops[-2].rule
    assert hops[-1].verdict == "deliver"


def test_from_outside_to_a_tenant_address_is_dropped_at_the_edge():
    hops = packet_walk(lab(), None, "172.16.1.5", source_ip=OUTSIDE)
    assert hops[-1].verdict == "drop" and hops[-1].host is None


def test_ping_to_the_router_gateway_is_answered_by_the_namespace():
    hops = packet_walk(lab(), None, "203.0.113.101", source_ip=OUTSIDE)
    assert hops[-1].device == QROUTER and hops[-1].verdict == "deliver"


def test_dhcp_port_is_reached_on_the_network_node():
    hops = packet_walk(lab(), VM2, "172.16.1.2", "udp", 53)
    assert hops[-1].namespace == f"qdhcp-{DEMO_NET}" and hops[-1].verdict == "deliver"


def test_unbound_source_port_has_nothing_to_send_from():
    ports = tuple(dataclasses.replace(p, host=None) if p.id == VM2 else p for p in lab().ports)
    hops = packet_walk(lab(ports=ports), VM2, "172.16.1.5")
    assert len(hops) == 1 and hops[0].verdict == "drop"


def test_no_such_address_on_the_network_gets_no_arp_answer():
    hops = packet_walk(lab(), VM1, "172.16.1.200")
    assert hops[-1].verdict == "drop" and "ARP" in hops[-1].what


def test_walk_accepts_a_precomputed_wiring_and_formats_as_text():
    topology = lab()
    hops = packet_walk(topology, VM1, "172.16.1.6", wiring=wire(topology))
    assert hops == packet_walk(topology, VM1, "172.16.1.6")
    text = format_walk(hops)
    assert text.splitlines()[0].startswith(" 1. compute-1  tap6e7d5cb0-01")
    assert "✔ delivered" in text
    assert hops[0].to_dict()["device"] == "tap6e7d5cb0-01"


def test_bad_arguments():
    with pytest.raises(ValueError):
        packet_walk(lab(), VM1, "172.16.1.6", protocol="sctp")
    with pytest.raises(ValueError):
        packet_walk(lab(), VM1, "172.16.1.6", protocol="tcp")
    with pytest.raises(ValueError):
        packet_walk(lab(), None, "203.0.113.102")
    with pytest.raises(ValueError):
        packet_walk(lab(), VM1, "not-an-address")
    with pytest.raises(KeyError):
        packet_walk(lab(), "00000000-0000-4000-8000-000000000000", "172.16.1.6")


def test_the_first_rule_that_returns_decides():
    hops = packet_walk(lab(), VM2, "172.16.1.5", "tcp", 22)
    assert hops[-1].verdict == "deliver"
    # VM2 is in the default group, whose remote-group rule comes before the ssh rule
    assert hops[-2].security_group_rule_id == "0b1c2d3e-0003-4f00-8000-000000000003"
