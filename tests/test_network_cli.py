"""Neutron through the real `openstack` CLI: what a reader types in a JupyterLab terminal.

Each call is a fresh CLI process (discovery, a token, the calls) against the module's
fresh embedded cloud, as the demo member (cloud `labkit`) or the admin (`labkit-admin`).
The tests follow the tutorial's path: a network and subnet, a port, a security group rule,
a router with an interface and an external gateway, a floating IP set on the port and
unset again; then what an operator reads (agents, quotas) and what a mistake looks like.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]
ADMIN = "labkit-admin"
NET = "cli-net"
SUBNET = "cli-subnet"
CIDR = "10.70.0.0/24"
PORT = "cli-port"
PORT_IP = "10.70.0.50"
ROUTER = "cli-router"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def fails(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"{result.args} succeeded:\n{result.stdout}"
    return result.stderr


@pytest.fixture(scope="module")
def network(openstack_cli: Run) -> Iterator[dict[str, Any]]:
    """cli-net with cli-subnet, made through the CLI and removed with what is left on it."""
    net = as_json(openstack_cli("network", "create", NET, "-f", "json"))
    subnet = as_json(openstack_cli("subnet", "create", "--network", NET, "--subnet-range",
                                   CIDR, SUBNET, "-f", "json"))
    yield {"network": net, "subnet": subnet}
    for fip in as_json(openstack_cli("floating", "ip", "list", "-f", "json")):
        if fip["Fixed IP Address"] and fip["Fixed IP Address"].startswith("10.70."):
            openstack_cli("floating", "ip", "delete", fip["ID"])
    openstack_cli("router", "remove", "subnet", ROUTER, SUBNET)
    openstack_cli("router", "delete", ROUTER)
    for port in as_json(openstack_cli("port", "list", "--network", NET, "-f", "json")):
        openstack_cli("port", "delete", port["ID"])
    ok(openstack_cli("network", "delete", NET))


@pytest.fixture(scope="module")
def port(openstack_cli: Run, network: dict[str, Any]) -> dict[str, Any]:
    return as_json(openstack_cli("port", "create", "--network", NET, "--fixed-ip",
                                 f"subnet={SUBNET},ip-address={PORT_IP}", PORT, "-f", "json"))


def test_network_create_and_show(openstack_cli: Run, network: dict[str, Any]) -> None:
    net = network["network"]
    assert net["name"] == NET and net["status"] == "ACTIVE"
    assert net["mtu"] == 1450 and net["admin_state_up"] is True
    shown = as_json(openstack_cli("network", "show", NET, "-f", "json"))
    assert shown["id"] == net["id"]
    assert shown["subnets"] == [network["subnet"]["id"]]
    # a member does not see the provider attributes
    assert shown.get("provider:network_type") is None
    admin = as_json(openstack_cli("network", "show", net["id"], "-f", "json",
                                  cloud_name=ADMIN))
    assert admin["provider:network_type"] == "vxlan"
    assert admin["provider:segmentation_id"] >= 65537


def test_subnet_create_and_list(openstack_cli: Run, network: dict[str, Any]) -> None:
    subnet = network["subnet"]
    assert subnet["cidr"] == CIDR and subnet["gateway_ip"] == "10.70.0.1"
    assert subnet["allocation_pools"] == [{"start": "10.70.0.2", "end": "10.70.0.254"}]
    assert subnet["enable_dhcp"] is True and subnet["ip_version"] == 4
    rows = as_json(openstack_cli("subnet", "list", "--network", NET, "-f", "json"))
    assert [(r["Name"], r["Subnet"]) for r in rows] == [(SUBNET, CIDR)]
    table = ok(openstack_cli("subnet", "list"))
    assert SUBNET in table and CIDR in table


def test_port_create_and_show(openstack_cli: Run, network: dict[str, Any],
                              port: dict[str, Any]) -> None:
    assert port["fixed_ips"] == [{"subnet_id": network["subnet"]["id"],
                                  "ip_address": PORT_IP}]
    assert port["mac_address"].startswith("fa:16:3e:")
    shown = as_json(openstack_cli("port", "show", PORT, "-f", "json"))
    assert shown["id"] == port["id"] and shown["status"] == "DOWN"
    assert shown["network_id"] == network["network"]["id"]
    default = as_json(openstack_cli("security", "group", "show", "default", "-f", "json"))
    assert shown["security_group_ids"] == [default["id"]]
    listed = as_json(openstack_cli("port", "list", "--fixed-ip", f"ip-address={PORT_IP}",
                                   "-f", "json"))
    assert [r["ID"] for r in listed] == [port["id"]]


def test_port_create_with_a_taken_address_says_so(openstack_cli: Run,
                                                  port: dict[str, Any]) -> None:
    stderr = fails(openstack_cli("port", "create", "--network", NET, "--fixed-ip",
                                 f"subnet={SUBNET},ip-address={PORT_IP}", "cli-port-dup"))
    assert PORT_IP in stderr and "already allocated" in stderr


def test_security_group_rule_create(openstack_cli: Run) -> None:
    rule = as_json(openstack_cli("security", "group", "rule", "create", "--protocol", "tcp",
                                 "--dst-port", "22", "--remote-ip", "0.0.0.0/0", "default",
                                 "-f", "json"))
    try:
        assert (rule["protocol"], rule["port_range_min"], rule["port_range_max"]) == \
            ("tcp", 22, 22)
        assert rule["direction"] == "ingress" and rule["ether_type"] == "IPv4"
        again = fails(openstack_cli("security", "group", "rule", "create", "--protocol",
                                    "tcp", "--dst-port", "22", "--remote-ip", "0.0.0.0/0",
                                    "default"))
        assert "Security group rule already exists" in again
    finally:
        ok(openstack_cli("security", "group", "rule", "delete", rule["id"]))


def test_router_create_add_subnet_and_external_gateway(openstack_cli: Run,
                                                       network: dict[str, Any]) -> None:
    router = as_json(openstack_cli("router", "create", ROUTER, "-f", "json"))
    assert router["status"] == "ACTIVE" and router["external_gateway_info"] is None
    ok(openstack_cli("router", "add", "subnet", ROUTER, SUBNET))
    interfaces = as_json(openstack_cli("port", "list", "--router", ROUTER, "-f", "json"))
    assert [r["Fixed IP Addresses"][0]["ip_address"] for r in interfaces] == ["10.70.0.1"]
    ok(openstack_cli("router", "set", "--external-gateway", "public", ROUTER))
    shown = as_json(openstack_cli("router", "show", ROUTER, "-f", "json"))
    public = as_json(openstack_cli("network", "show", "public", "-f", "json"))
    gateway = shown["external_gateway_info"]
    assert gateway["network_id"] == public["id"] and gateway["enable_snat"] is True
    address = gateway["external_fixed_ips"][0]["ip_address"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network("203.0.113.0/24")
    assert [i["ip_address"] for i in shown["interfaces_info"]] == ["10.70.0.1"]


def test_floating_ip_create_set_and_unset_port(openstack_cli: Run, port: dict[str, Any],
                                               network: dict[str, Any]) -> None:
    shown = as_json(openstack_cli("router", "show", ROUTER, "-f", "json"))
    if not shown["external_gateway_info"]:
        ok(openstack_cli("router", "add", "subnet", ROUTER, SUBNET))
        ok(openstack_cli("router", "set", "--external-gateway", "public", ROUTER))
    fip = as_json(openstack_cli("floating", "ip", "create", "public", "-f", "json"))
    address = fip["floating_ip_address"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network("203.0.113.0/24")
    assert fip["port_id"] is None and fip["status"] == "DOWN"
    ok(openstack_cli("floating", "ip", "set", "--port", PORT, address))
    bound = as_json(openstack_cli("floating", "ip", "show", address, "-f", "json"))
    assert bound["port_id"] == port["id"] and bound["fixed_ip_address"] == PORT_IP
    assert bound["status"] == "ACTIVE"
    assert bound["router_id"] == shown["id"]
    listed = as_json(openstack_cli("floating", "ip", "list", "--port", PORT, "-f", "json"))
    assert [r["Floating IP Address"] for r in listed] == [address]
    ok(openstack_cli("floating", "ip", "unset", "--port", address))
    freed = as_json(openstack_cli("floating", "ip", "show", address, "-f", "json"))
    assert freed["port_id"] is None and freed["fixed_ip_address"] is None
    assert freed["status"] == "DOWN"
    ok(openstack_cli("floating", "ip", "delete", address))


def test_network_agent_list(openstack_cli: Run) -> None:
    rows = as_json(openstack_cli("network", "agent", "list", "-f", "json", cloud_name=ADMIN))
    kinds = {(r["Agent Type"], r["Host"]) for r in rows}
    assert {("Open vSwitch agent", "compute-1"), ("Open vSwitch agent", "compute-2"),
            ("Open vSwitch agent", "network"), ("DHCP agent", "network"),
            ("L3 agent", "network"), ("Metadata agent", "network")} <= kinds
    assert all(r["Alive"] for r in rows)
    assert {r["Binary"] for r in rows} >= {"neutron-openvswitch-agent", "neutron-dhcp-agent",
                                           "neutron-l3-agent", "neutron-metadata-agent"}
    table = ok(openstack_cli("network", "agent", "list", cloud_name=ADMIN))
    assert "neutron-l3-agent" in table and ":-)" in table


def test_quota_show_network(openstack_cli: Run, network: dict[str, Any]) -> None:
    rows = as_json(openstack_cli("quota", "show", "--network", "-f", "json"))
    limits = {r["Resource"]: r["Limit"] for r in rows}
    assert (limits["networks"], limits["ports"], limits["floating_ips"]) == (100, 500, 50)
    assert (limits["security_group_rules"], limits["routers"]) == (100, 10)
    usage = as_json(openstack_cli("quota", "show", "--network", "--usage", "-f", "json"))
    in_use = {r["Resource"]: r["In Use"] for r in usage}
    # the lab's demo-net and this module's cli-net at least
    assert in_use["networks"] >= 2 and in_use["subnets"] >= 2


def test_unknown_names_and_bad_input_read_well(openstack_cli: Run,
                                               network: dict[str, Any]) -> None:
    assert "No Network found for nope" in fails(openstack_cli("network", "show", "nope"))
    overlap = fails(openstack_cli("subnet", "create", "--network", NET, "--subnet-range",
                                  "10.70.0.0/25", "cli-overlap"))
    assert "10.70.0.0/25" in overlap or "overlap" in overlap.lower()
    bad = fails(openstack_cli("subnet", "create", "--network", NET, "--subnet-range",
                              "10.70.0.300/24", "cli-bad"))
    assert "10.70.0.300/24" in bad


NOVA_NETWORKING = importlib.util.find_spec("labkit.cloud.compute.neutron") is not None


@pytest.mark.skipif(not NOVA_NETWORKING,
                    reason="nova makes no neutron ports yet: labkit.cloud.compute.neutron "
                           "(helper NOVA's NeutronNetworkAPI) is not there")
def test_port_list_by_server(openstack_cli: Run) -> None:
    server = as_json(openstack_cli("server", "create", "--flavor", "m1.nano", "--image",
                                   "labkit-tiny", "--network", "demo-net", "--wait",
                                   "cli-port-vm", "-f", "json"))
    try:
        rows = as_json(openstack_cli("port", "list", "--server", "cli-port-vm", "-f", "json"))
        assert len(rows) == 1
        port = as_json(openstack_cli("port", "show", rows[0]["ID"], "-f", "json"))
        assert port["device_id"] == server["id"] and port["device_owner"] == "compute:nova"
        address = port["fixed_ips"][0]["ip_address"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network("172.16.1.0/24")
    finally:
        ok(openstack_cli("server", "delete", "--wait", server["id"]))
