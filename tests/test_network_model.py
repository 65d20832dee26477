"""Neutron's model on its own: a temp SQLite file, the lab's hosts, no HTTP."""

from __future__ import annotations

import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from labkit.cloud.db import Database
from labkit.cloud.errors import ServiceError
from labkit.cloud.ids import IdSource
from labkit.cloud.labfiles import lab_hosts
from labkit.cloud.network.exceptions import neutron_type
from labkit.cloud.network.models import NetContext, NetworkBase, Neutron
from labkit.cloud.trace import Trace

DATA = Path(__file__).resolve().parents[1] / "data"
ADMIN = NetContext(project_id="p-admin", is_admin=True, roles=("admin",))
DEMO = NetContext(project_id="p-demo", roles=("member",))
ALT = NetContext(project_id="p-alt", roles=("member",))
PROJECTS = {"admin": "p-admin", "demo": "p-demo", "alt_demo": "p-alt"}
BARE_LAB = "tunnel_type: {kind}\ntunnel_id_start: 65537\nflat_networks: [external]\n"


def make_lab(tmp_path: Path, kind: str = "vxlan", networks: bool = False) -> Path:
    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    shutil.copy(DATA / "hosts.yaml", lab / "hosts.yaml")
    if networks:
        shutil.copy(DATA / "networks.yaml", lab / "networks.yaml")
    else:
        (lab / "networks.yaml").write_text(BARE_LAB.format(kind=kind))
    return lab


def open_neutron(home: Path, lab: Path, boot: int = 0) -> Neutron:
    database = Database(home / "neutron.sqlite", NetworkBase)
    return Neutron(database, IdSource(True, 2013, boot), Trace(home / "trace.sqlite"), lab,
                   lab_hosts(lab))


@pytest.fixture
def neutron(tmp_path: Path) -> Neutron:
    return open_neutron(tmp_path, make_lab(tmp_path))


def refusal(call: Any) -> tuple[int, str, str]:
    """Run `call`; return the status, neutron type and message it was refused with."""
    with pytest.raises(ServiceError) as caught:
        call()
    return caught.value.status, neutron_type(caught.value), caught.value.message


def network(neutron: Neutron, ctx: NetContext = DEMO, cidr: str = "10.0.0.0/24",
            **subnet: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    net = neutron.create(ctx, "network", {"name": f"net-{cidr}"})
    sub = neutron.create(ctx, "subnet", {"network_id": net["id"], "cidr": cidr,
                                         "ip_version": 4, "enable_dhcp": False, **subnet})
    return net, sub


def port(neutron: Neutron, net: dict[str, Any], ctx: NetContext = DEMO,
         **body: Any) -> dict[str, Any]:
    return neutron.create(ctx, "port", {"network_id": net["id"], **body})


def ips(record: dict[str, Any]) -> list[str]:
    return [f["ip_address"] for f in record["fixed_ips"]]


def external(neutron: Neutron) -> tuple[dict[str, Any], dict[str, Any]]:
    net = neutron.create(ADMIN, "network", {
        "name": "public", "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": "external"})
    sub = neutron.create(ADMIN, "subnet", {
        "network_id": net["id"], "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1",
        "allocation_pools": [{"start": "203.0.113.101", "end": "203.0.113.200"}],
        "enable_dhcp": False})
    return net, sub


# -- IPAM ---------------------------------------------------------------------------------


def test_ports_get_the_lowest_free_address_and_a_freed_one_comes_back(neutron: Neutron) -> None:
    net, sub = network(neutron)
    assert sub["gateway_ip"] == "10.0.0.1"
    assert sub["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]
    first, second, third = (port(neutron, net) for _ in range(3))
    assert [ips(p) for p in (first, second, third)] == [["10.0.0.2"], ["10.0.0.3"],
                                                        ["10.0.0.4"]]
    neutron.delete(DEMO, "port", second["id"])
    assert ips(port(neutron, net)) == ["10.0.0.3"]


def test_the_dhcp_port_takes_the_first_address_on_the_network_node(neutron: Neutron) -> None:
    net, sub = network(neutron, enable_dhcp=True)
    dhcp = [p for p in neutron.list(ADMIN, "port") if p["device_owner"] == "network:dhcp"]
    assert len(dhcp) == 1
    assert ips(dhcp[0]) == ["10.0.0.2"]
    assert dhcp[0]["binding:host_id"] == "network"
    assert dhcp[0]["device_id"].startswith("dhcp") and dhcp[0]["device_id"].endswith(net["id"])
    assert ips(port(neutron, net)) == ["10.0.0.3"]


def test_an_asked_for_address_is_given_and_one_in_use_is_a_409(neutron: Neutron) -> None:
    net, sub = network(neutron)
    wanted = port(neutron, net, fixed_ips=[{"ip_address": "10.0.0.50"}])
    assert wanted["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.0.0.50"}]
    by_subnet = port(neutron, net, fixed_ips=[{"subnet_id": sub["id"],
                                               "ip_address": "10.0.0.51"}])
    assert ips(by_subnet) == ["10.0.0.51"]
    before = len(neutron.list(DEMO, "port"))
    status, kind, message = refusal(lambda: port(
        neutron, net, fixed_ips=[{"ip_address": "10.0.0.50"}]))
    assert (status, kind) == (409, "IpAddressAlreadyAllocated")
    assert "10.0.0.50" in message
    assert len(neutron.list(DEMO, "port")) == before
    status, kind, _ = refusal(lambda: port(neutron, net,
                                           fixed_ips=[{"ip_address": "10.9.9.9"}]))
    assert (status, kind) == (400, "InvalidIpForNetwork")


def test_an_exhausted_pool_is_a_clean_409(neutron: Neutron) -> None:
    net, _ = network(neutron, cidr="10.0.5.0/29",
                     allocation_pools=[{"start": "10.0.5.2", "end": "10.0.5.4"}])
    made = [port(neutron, net) for _ in range(3)]
    assert sorted(ip for p in made for ip in ips(p)) == ["10.0.5.2", "10.0.5.3", "10.0.5.4"]
    status, kind, message = refusal(lambda: port(neutron, net))
    assert (status, kind) == (409, "IpAddressGenerationFailure")
    assert message == f"No more IP addresses available on network {net['id']}."
    assert len(neutron.list(DEMO, "port")) == 3


def test_concurrent_port_creates_never_share_an_address(neutron: Neutron) -> None:
    net, _ = network(neutron, cidr="10.0.6.0/26")  # 61 addresses in the pool
    outcomes: list[Any] = []

    def create() -> None:
        try:
            outcomes.append(port(neutron, net))
        except ServiceError as error:
            outcomes.append(error)

    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(70):
            pool.submit(create)
    made = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if not isinstance(o, dict)]
    addresses = [ip for p in made for ip in ips(p)]
    assert len(made) == 61 and len(set(addresses)) == 61
    assert {neutron_type(e) for e in refused} == {"IpAddressGenerationFailure"}


# -- MACs ---------------------------------------------------------------------------------


def test_macs_are_neutrons_format_unique_and_an_asked_one_in_use_is_a_409(
        neutron: Neutron) -> None:
    net, _ = network(neutron, cidr="10.0.7.0/24")
    macs = [port(neutron, net)["mac_address"] for _ in range(40)]
    assert all(re.fullmatch(r"fa:16:3e(:[0-9a-f]{2}){3}", m) for m in macs)
    assert len(set(macs)) == len(macs)
    status, kind, _ = refusal(lambda: port(neutron, net, mac_address=macs[0]))
    assert (status, kind) == (409, "MacAddressInUse")
    # a member may not choose a MAC on a network that is not theirs
    shared = neutron.create(ADMIN, "network", {"name": "shared", "shared": True})
    assert refusal(lambda: port(neutron, shared, mac_address="fa:16:3e:00:00:01"))[:2] == (
        403, "PolicyNotAuthorized")


def test_deterministic_ids_and_macs_repeat_from_the_same_seed(tmp_path: Path) -> None:
    made = []
    for name in ("one", "two"):
        home = tmp_path / name
        home.mkdir()
        neutron = open_neutron(home, make_lab(home))
        net, _ = network(neutron)
        made.append((net["id"], port(neutron, net)["mac_address"]))
    assert made[0] == made[1]


# -- networks and subnets ------------------------------------------------------------------


def test_an_overlapping_cidr_on_the_same_network_is_refused(neutron: Neutron) -> None:
    net, _ = network(neutron)
    status, kind, message = refusal(lambda: neutron.create(DEMO, "subnet", {
        "network_id": net["id"], "cidr": "10.0.0.128/25", "ip_version": 4}))
    assert (status, kind) == (400, "InvalidInput")
    assert "overlaps with another subnet" in message
    other, again = network(neutron)  # the same range on another network is fine
    assert neutron.get(DEMO, "network", other["id"])["subnets"] == [again["id"]]
    assert refusal(lambda: neutron.create(DEMO, "subnet", {
        "network_id": net["id"], "cidr": "10.1.0.5/24", "ip_version": 4}))[0] == 400


def test_tenant_networks_get_tunnel_ids_from_65537_and_vxlan_mtu(neutron: Neutron) -> None:
    first = neutron.create(DEMO, "network", {"name": "a"})
    second = neutron.create(ALT, "network", {"name": "b"})
    assert [n["provider:segmentation_id"] for n in (first, second)] == [65537, 65538]
    assert first["provider:network_type"] == "vxlan" and first["mtu"] == 1450
    assert first["status"] == "ACTIVE" and first["subnets"] == []
    assert refusal(lambda: neutron.create(DEMO, "network", {
        "provider:network_type": "vxlan"}))[:2] == (403, "PolicyNotAuthorized")


def test_a_gre_lab_makes_gre_networks(tmp_path: Path) -> None:
    neutron = open_neutron(tmp_path, make_lab(tmp_path, kind="gre"))
    net = neutron.create(DEMO, "network", {"name": "g"})
    assert (net["provider:network_type"], net["provider:segmentation_id"], net["mtu"]) == (
        "gre", 65537, 1458)
    assert neutron.topology().tunnel_type == "gre"


def test_another_projects_network_is_not_found_but_an_external_one_is_seen(
        neutron: Neutron) -> None:
    private, _ = network(neutron, ALT)
    public, _ = external(neutron)
    assert refusal(lambda: neutron.get(DEMO, "network", private["id"]))[:2] == (
        404, "NetworkNotFound")
    seen = {n["id"] for n in neutron.list(DEMO, "network")}
    assert public["id"] in seen and private["id"] not in seen
    assert refusal(lambda: port(neutron, private))[:2] == (404, "NetworkNotFound")


def test_a_network_with_ports_cannot_be_deleted(neutron: Neutron) -> None:
    net, sub = network(neutron, enable_dhcp=True)
    made = port(neutron, net)
    assert refusal(lambda: neutron.delete(DEMO, "network", net["id"]))[:2] == (
        409, "NetworkInUse")
    assert refusal(lambda: neutron.delete(DEMO, "subnet", sub["id"]))[:2] == (
        409, "SubnetInUse")
    neutron.delete(DEMO, "port", made["id"])
    neutron.delete(DEMO, "network", net["id"])  # the DHCP port goes with it
    assert neutron.list(ADMIN, "port") == []


# -- security groups ----------------------------------------------------------------------


def test_each_project_gets_a_default_group_with_neutrons_four_rules(neutron: Neutron) -> None:
    groups = neutron.list(DEMO, "security_group")
    assert [g["name"] for g in groups] == ["default"]
    group = groups[0]
    rules = {(r["direction"], r["ethertype"], r["remote_group_id"], r["remote_ip_prefix"],
              r["protocol"]) for r in group["security_group_rules"]}
    assert rules == {("egress", "IPv4", None, None, None), ("egress", "IPv6", None, None, None),
                     ("ingress", "IPv4", group["id"], None, None),
                     ("ingress", "IPv6", group["id"], None, None)}
    alt = neutron.list(ALT, "security_group")
    assert len(alt) == 1 and alt[0]["id"] != group["id"]
    net, _ = network(neutron)
    assert port(neutron, net)["security_groups"] == [group["id"]]


def test_rules_are_checked_and_a_duplicate_is_a_409(neutron: Neutron) -> None:
    group = neutron.create(DEMO, "security_group", {"name": "web"})
    assert len(group["security_group_rules"]) == 2  # the two egress rules
    ssh = {"security_group_id": group["id"], "direction": "ingress", "ethertype": "IPv4",
           "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
           "remote_ip_prefix": "0.0.0.0/0"}
    made = neutron.create(DEMO, "security_group_rule", ssh)
    assert made["protocol"] == "tcp" and made["remote_ip_prefix"] == "0.0.0.0/0"
    status, kind, message = refusal(lambda: neutron.create(DEMO, "security_group_rule", {
        **ssh, "protocol": "6"}))
    assert (status, kind) == (409, "SecurityGroupRuleExists")
    assert made["id"] in message
    assert refusal(lambda: neutron.create(DEMO, "security_group_rule", {
        **ssh, "port_range_min": 80, "port_range_max": 22}))[:2] == (
        400, "SecurityGroupInvalidPortRange")
    assert refusal(lambda: neutron.create(DEMO, "security_group_rule", {
        **ssh, "remote_ip_prefix": "::/0"}))[:2] == (400, "SecurityGroupRuleParameterConflict")
    host = neutron.create(DEMO, "security_group_rule", {
        **ssh, "port_range_min": 80, "port_range_max": 80, "remote_ip_prefix": "10.1.2.3"})
    assert host["remote_ip_prefix"] == "10.1.2.3/32"


# -- routers and floating IPs -------------------------------------------------------------


def test_a_router_gets_a_gateway_port_and_an_interface_port(neutron: Neutron) -> None:
    public, public_subnet = external(neutron)
    net, sub = network(neutron)
    router = neutron.create(DEMO, "router", {"name": "r",
                                             "external_gateway_info": {"network_id": public["id"]}})
    gateway = router["external_gateway_info"]
    assert gateway["network_id"] == public["id"] and gateway["enable_snat"] is True
    assert gateway["external_fixed_ips"] == [{"subnet_id": public_subnet["id"],
                                              "ip_address": "203.0.113.101"}]
    info = neutron.add_router_interface(DEMO, router["id"], {"subnet_id": sub["id"]})
    assert set(info) == {"id", "tenant_id", "project_id", "port_id", "subnet_id", "subnet_ids",
                         "network_id"}
    assert (info["subnet_ids"], info["network_id"]) == ([sub["id"]], net["id"])
    interface = neutron.get(DEMO, "port", info["port_id"])
    assert interface["device_owner"] == "network:router_interface"
    assert interface["device_id"] == router["id"] and ips(interface) == ["10.0.0.1"]
    assert interface["binding:host_id"] == "network"
    assert refusal(lambda: neutron.add_router_interface(
        DEMO, router["id"], {"subnet_id": sub["id"]}))[:2] == (400, "BadRequest")
    assert refusal(lambda: neutron.delete(DEMO, "port", info["port_id"]))[:2] == (
        409, "ServicePortInUse")
    assert refusal(lambda: neutron.delete(DEMO, "router", router["id"]))[:2] == (
        409, "RouterInUse")
    neutron.remove_router_interface(DEMO, router["id"], {"subnet_id": sub["id"]})
    neutron.delete(DEMO, "router", router["id"])
    assert [p for p in neutron.list(ADMIN, "port")
            if p["device_owner"].startswith("network:router")] == []


def test_a_floating_ip_associates_only_through_a_router(neutron: Neutron) -> None:
    public, _ = external(neutron)
    net, sub = network(neutron)
    server = port(neutron, net, device_owner="compute:nova", device_id="vm-1")
    fip = neutron.create(DEMO, "floatingip", {"floating_network_id": public["id"]})
    assert (fip["floating_ip_address"], fip["status"], fip["port_id"]) == (
        "203.0.113.101", "DOWN", None)
    status, kind, message = refusal(lambda: neutron.update(
        DEMO, "floatingip", fip["id"], {"port_id": server["id"]}))
    assert (status, kind) == (404, "ExternalGatewayForFloatingIPNotFound")
    assert sub["id"] in message
    router = neutron.create(DEMO, "router", {"external_gateway_info": {
        "network_id": public["id"]}})
    neutron.add_router_interface(DEMO, router["id"], {"subnet_id": sub["id"]})
    bound = neutron.update(DEMO, "floatingip", fip["id"], {"port_id": server["id"]})
    assert (bound["status"], bound["router_id"], bound["fixed_ip_address"]) == (
        "ACTIVE", router["id"], ips(server)[0])
    assert bound["port_details"]["device_id"] == "vm-1"
    assert refusal(lambda: neutron.remove_router_interface(
        DEMO, router["id"], {"subnet_id": sub["id"]}))[:2] == (
        409, "RouterInterfaceInUseByFloatingIP")
    assert refusal(lambda: neutron.update(DEMO, "router", router["id"], {
        "external_gateway_info": {}}))[:2] == (409, "RouterExternalGatewayInUseByFloatingIp")
    loose = neutron.update(DEMO, "floatingip", fip["id"], {"port_id": None})
    assert (loose["status"], loose["router_id"], loose["port_id"]) == ("DOWN", None, None)


def test_deleting_a_port_lets_its_floating_ip_go(neutron: Neutron) -> None:
    public, _ = external(neutron)
    net, sub = network(neutron)
    router = neutron.create(DEMO, "router", {"external_gateway_info": {
        "network_id": public["id"]}})
    neutron.add_router_interface(DEMO, router["id"], {"subnet_id": sub["id"]})
    server = port(neutron, net)
    fip = neutron.create(DEMO, "floatingip", {"floating_network_id": public["id"],
                                              "port_id": server["id"]})
    assert fip["status"] == "ACTIVE"
    neutron.delete(DEMO, "port", server["id"])
    assert neutron.get(DEMO, "floatingip", fip["id"])["port_id"] is None


# -- quotas -------------------------------------------------------------------------------


def test_a_project_over_its_port_quota_is_refused(neutron: Neutron) -> None:
    net, _ = network(neutron)
    assert neutron.get_quota(DEMO, "p-demo")["port"] == 500
    assert refusal(lambda: neutron.update_quota(DEMO, "p-demo", {"port": 1}))[:2] == (
        403, "PolicyNotAuthorized")
    assert neutron.update_quota(ADMIN, "p-demo", {"port": 2})["port"] == 2
    port(neutron, net)
    port(neutron, net)
    status, kind, message = refusal(lambda: port(neutron, net))
    assert (status, kind, message) == (409, "OverQuota",
                                       "Quota exceeded for resources: ['port'].")
    details = neutron.quota_details(DEMO, "p-demo")
    assert details["port"] == {"used": 2, "limit": 2, "reserved": 0}
    assert details["security_group"]["used"] == 1  # the default group
    assert [q["project_id"] for q in neutron.list_quotas(ADMIN)] == ["p-demo"]
    assert refusal(lambda: neutron.get_quota(DEMO, "p-alt"))[0] == 403
    neutron.delete_quota(ADMIN, "p-demo")
    assert neutron.get_quota(DEMO, "p-demo")["port"] == 500


# -- binding, local VLANs, agents ----------------------------------------------------------


def test_binding_is_ovs_where_the_ovs_agent_lives_and_failed_where_it_is_dead(
        neutron: Neutron) -> None:
    net, _ = network(neutron)
    unbound = port(neutron, net)
    assert (unbound["binding:vif_type"], unbound["status"]) == ("unbound", "DOWN")
    bound = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-1",
                                             "project_id": "p-demo"})
    assert bound["binding:vif_type"] == "ovs"
    assert bound["binding:vif_details"] == {
        "port_filter": True, "ovs_hybrid_plug": True, "datapath_type": "system",
        "bridge_name": "br-int", "connectivity": "l2"}
    no_agent = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "controller"})
    assert no_agent["binding:vif_type"] == "binding_failed"
    # time passes; only compute-2's agent keeps reporting
    later = time.time() + 120
    neutron.clock = lambda: later
    neutron.report_state("compute-2", "neutron-openvswitch-agent")
    agents = {(a["host"], a["binary"]): a["alive"] for a in neutron.list(ADMIN, "agent")}
    assert agents[("compute-1", "neutron-openvswitch-agent")] is False
    assert agents[("compute-2", "neutron-openvswitch-agent")] is True
    dead = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-1"})
    assert dead["binding:vif_type"] == "binding_failed"
    alive = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-2"})
    assert alive["binding:vif_type"] == "ovs"
    assert refusal(lambda: port(neutron, net, **{"binding:host_id": "compute-2"}))[:2] == (
        403, "PolicyNotAuthorized")


def test_the_lab_has_an_ovs_agent_per_tunnel_host_and_the_network_nodes_agents(
        neutron: Neutron) -> None:
    agents = neutron.list(ADMIN, "agent")
    found = sorted((a["host"], a["agent_type"]) for a in agents)
    assert found == [("compute-1", "Open vSwitch agent"), ("compute-2", "Open vSwitch agent"),
                     ("network", "DHCP agent"), ("network", "L3 agent"),
                     ("network", "Metadata agent"), ("network", "Open vSwitch agent")]
    assert all(a["alive"] for a in agents)
    ovs = next(a for a in agents if a["host"] == "compute-1")
    assert ovs["configurations"]["tunneling_ip"] == "10.0.0.20"
    assert ovs["configurations"]["tunnel_types"] == ["vxlan"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", ovs["heartbeat_timestamp"])
    assert neutron.list(DEMO, "agent") == []
    assert refusal(lambda: neutron.get(DEMO, "agent", ovs["id"]))[:2] == (404, "AgentNotFound")


def test_local_vlans_are_the_lowest_free_tag_per_host_and_come_back_when_freed(
        neutron: Neutron) -> None:
    a, b, c = ("net-a", "net-b", "net-c")
    assert neutron.local_vlan("compute-1", a) == 1
    assert neutron.local_vlan("compute-1", b) == 2
    assert neutron.local_vlan("compute-2", b) == 1  # tags are per host
    assert neutron.local_vlan("compute-1", a) == 1  # kept
    neutron.release_local_vlan("compute-1", a)
    assert neutron.local_vlan("compute-1", c) == 1
    assert neutron.topology().local_vlans == {("compute-1", b): 2, ("compute-2", b): 1,
                                              ("compute-1", c): 1}


def test_a_hosts_tag_is_freed_when_the_networks_last_port_leaves(neutron: Neutron) -> None:
    net, _ = network(neutron)
    first = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-1"})
    second = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-1"})
    assert neutron.local_vlan("compute-1", net["id"]) == 1
    neutron.delete(ADMIN, "port", first["id"])
    assert neutron.topology().local_vlans == {("compute-1", net["id"]): 1}
    neutron.update(ADMIN, "port", second["id"], {"binding:host_id": ""})
    assert neutron.topology().local_vlans == {}


# -- bulk, restart, events, topology -------------------------------------------------------


def test_a_bulk_create_is_all_or_nothing(neutron: Neutron) -> None:
    net, _ = network(neutron)
    taken = port(neutron, net, fixed_ips=[{"ip_address": "10.0.0.9"}])
    bodies = [{"network_id": net["id"]}, {"network_id": net["id"]},
              {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.0.0.9"}]}]
    assert refusal(lambda: neutron.create_bulk(DEMO, "port", bodies))[1] == (
        "IpAddressAlreadyAllocated")
    assert [p["id"] for p in neutron.list(DEMO, "port")] == [taken["id"]]
    made = neutron.create_bulk(DEMO, "port", bodies[:2])
    assert [ips(p) for p in made] == [["10.0.0.2"], ["10.0.0.3"]]


def test_a_restarted_model_keeps_everything(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    neutron = open_neutron(tmp_path, lab)
    net, sub = network(neutron, enable_dhcp=True)
    made = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-1"})
    tag = neutron.local_vlan("compute-1", net["id"])
    neutron.database.close()
    again = open_neutron(tmp_path, lab, boot=1)
    assert again.get(DEMO, "network", net["id"])["subnets"] == [sub["id"]]
    assert again.get(ADMIN, "port", made["id"])["fixed_ips"] == made["fixed_ips"]
    assert again.local_vlan("compute-1", net["id"]) == tag
    assert len(again.list(ADMIN, "agent")) == 6
    assert all(a["alive"] for a in again.list(ADMIN, "agent"))
    assert len(again.list(DEMO, "security_group")) == 1
    assert ips(port(again, net)) == ["10.0.0.4"]  # .2 DHCP, .3 the port before the restart


def test_listeners_hear_of_bindings_status_deletes_and_l3_changes(neutron: Neutron) -> None:
    heard: list[tuple[str, dict[str, Any]]] = []

    def broken(event: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("a listener's own trouble")

    neutron.listeners.extend([broken, lambda e, p: heard.append((e, p))])
    public, _ = external(neutron)
    net, sub = network(neutron)
    made = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-1",
                                            "project_id": "p-demo"})
    assert [(e, p["id"]) for e, p in heard] == [("port.bound", made["id"])]
    heard.clear()
    assert neutron.device_up(made["id"], "compute-1")["status"] == "ACTIVE"
    assert heard[0][0] == "port.status"
    assert heard[0][1]["previous"] == "DOWN" and heard[0][1]["port"]["status"] == "ACTIVE"
    heard.clear()
    router = neutron.create(DEMO, "router", {"external_gateway_info": {
        "network_id": public["id"]}})
    neutron.add_router_interface(DEMO, router["id"], {"subnet_id": sub["id"]})
    assert [e for e, _ in heard].count("router.changed") == 2
    heard.clear()
    fip = neutron.create(DEMO, "floatingip", {"floating_network_id": public["id"],
                                              "port_id": made["id"]})
    assert ("floatingip.changed", fip["id"]) in [(e, p["id"]) for e, p in heard]
    heard.clear()
    neutron.delete(ADMIN, "port", made["id"])
    events = [e for e, _ in heard]
    assert events.index("port.unbound") < events.index("port.deleted")
    assert "floatingip.changed" in events


def test_topology_is_the_snapshot_the_wiring_reads(tmp_path: Path) -> None:
    neutron = open_neutron(tmp_path, make_lab(tmp_path, networks=True))
    neutron.load_lab(PROJECTS)
    neutron.load_lab(PROJECTS)  # a second start creates nothing new
    net = next(n for n in neutron.list(DEMO, "network") if n["name"] == "demo-net")
    server = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "compute-1",
                                              "project_id": "p-demo"})
    failed = port(neutron, net, ctx=ADMIN, **{"binding:host_id": "controller"})
    neutron.local_vlan("compute-1", net["id"])
    topo = neutron.topology()
    assert {h.name: h.local_ip for h in topo.hosts}["compute-2"] == "10.0.0.21"
    assert sorted((n.name, n.network_type, n.segmentation_id, n.external)
                  for n in topo.networks) == [("demo-net", "vxlan", 65537, False),
                                              ("public", "flat", None, True)]
    (router,) = topo.routers
    assert router.name == "demo-router" and router.host == "network"
    gateway = topo.port(router.gateway_port_id)
    assert [f.ip_address for f in gateway.fixed_ips] == ["203.0.113.101"]
    (interface,) = router.interface_port_ids
    assert [f.ip_address for f in topo.port(interface).fixed_ips] == ["172.16.1.1"]
    dhcp = next(p for p in topo.ports if p.device_owner == "network:dhcp")
    assert [f.ip_address for f in dhcp.fixed_ips] == ["172.16.1.2"] and dhcp.host == "network"
    mine = topo.port(server["id"])
    assert mine.host == "compute-1" and mine.security_group_ids
    assert topo.port(failed["id"]).host is None  # a failed binding wires nothing
    assert topo.subnet(mine.fixed_ips[0].subnet_id).dns_nameservers == ("8.8.4.4",)
    assert topo.local_vlans == {("compute-1", net["id"]): 1}
    assert topo.tunnel_type == "vxlan"
    default = next(g for g in topo.security_groups if g.id == mine.security_group_ids[0])
    assert len(default.rules) == 4 and default.project_id == "p-demo"
    assert len(neutron.list(ADMIN, "network")) == 2 and len(neutron.list(ADMIN, "router")) == 1
