"""The VLAN what-if (labkit.networking) and the chapter 4-5 widgets, against hand-built
topologies and against what the embedded cloud really does."""

from __future__ import annotations

from test_network_wiring import lab

from conftest import auth_header, wait_for
from labkit import network_widgets, networking
from labkit.cloud.network.topology import topology_from_dict, topology_to_dict
from labkit.cloud.network.walk import packet_walk


def test_a_topology_survives_its_json_round_trip():
    topology = lab()
    assert topology_from_dict(topology_to_dict(topology)) == topology


def test_a_new_network_takes_the_lowest_free_tunnel_id():
    topology = lab()
    taken = {n.segmentation_id for n in topology.networks}
    grown, network = networking.add_network(topology, "extra")
    assert network.segmentation_id not in taken
    assert network.segmentation_id == min(set(range(65537, 65537 + 10)) - taken)
    _, again = networking.add_network(grown, "more")
    assert again.segmentation_id == min(set(range(65537, 65547)) - taken
                                        - {network.segmentation_id})


def test_the_first_port_of_a_network_on_a_host_takes_the_lowest_free_tag_there():
    topology, network = networking.add_network(lab(), "extra")
    used = {tag for (host, _), tag in topology.local_vlans.items() if host == "compute-1"}
    first, _ = networking.add_server(topology, network.id, "compute-1", "a")
    tag = first.local_vlans[("compute-1", network.id)]
    assert tag == min(set(range(1, 10)) - used)
    second, _ = networking.add_server(first, network.id, "compute-1", "b")
    assert second.local_vlans[("compute-1", network.id)] == tag  # shared, not a new tag
    elsewhere, _ = networking.add_server(second, network.id, "compute-2", "c")
    used_2 = {t for (h, _), t in second.local_vlans.items() if h == "compute-2"}
    assert elsewhere.local_vlans[("compute-2", network.id)] == min(set(range(1, 10)) - used_2)


def test_the_vlan_table_reads_the_wiring():
    topology, network = networking.add_network(lab(), "extra")
    topology, _ = networking.add_server(topology, network.id, "compute-2", "a")
    table = networking.vlan_table(topology)
    row = next(r for r in table.rows if r[0] == "extra")
    tags = dict(zip(table.hosts, row[2], strict=True))
    assert tags["compute-2"] == topology.local_vlans[("compute-2", network.id)]
    assert tags["compute-1"] is None
    assert f"{network.segmentation_id:#x}" in repr(table) and "<table>" in table._repr_html_()


def test_the_playground_boots_what_if_servers_and_redraws():
    box = network_widgets.vlan_playground(lab())
    controls = box.children[0].children
    network, host, boot = controls[0], controls[1], controls[2]
    assert network.value is not None and host.value is not None  # a choice from the start
    network.value = network_widgets.NEW_NETWORK
    host.value = "compute-2"
    boot.click()
    assert any(n.name == "what-if-net-1" for n in box.topology.networks)
    assert "what-if-net-1" in box.children[1].value
    assert "lowest free tag" in box.children[2].value
    controls[3].click()  # start over
    assert box.topology == lab()


def test_the_walk_stepper_moves_hop_by_hop():
    topology = lab()
    source = next(p for p in topology.ports if p.device_owner.startswith("compute"))
    hops = packet_walk(topology, source.id, "8.8.8.8")
    stepper = network_widgets.walk_stepper(hops)
    back, slider, forward = stepper.children[0].children
    assert hops[0].device in stepper.children[1].value
    forward.click()
    assert slider.value == 2 and hops[1].device in stepper.children[1].value
    slider.value = len(hops)
    assert hops[-1].verdict in stepper.children[1].value


def test_the_what_if_predicts_what_the_cloud_does(http, admin_token, demo_conn):
    """A new network and a server on it: the tunnel id and the local VLAN the what-if gives
    for the host the scheduler chose are the ones the cloud's agents allocated."""
    headers = auth_header(admin_token)

    def topology():
        return topology_from_dict(http.get("/labkit/v1/network/topology",
                                           headers=headers).json()["topology"])

    before = topology()
    network = demo_conn.network.create_network(name="what-if-check")
    demo_conn.network.create_subnet(network_id=network.id, ip_version=4, cidr="10.77.0.0/24")
    image = demo_conn.image.find_image("labkit-tiny")
    flavor = demo_conn.compute.find_flavor("m1.nano")
    server = demo_conn.compute.create_server(name="what-if-check", image_id=image.id,
                                             flavor_id=flavor.id,
                                             networks=[{"uuid": network.id}])
    try:
        demo_conn.compute.wait_for_server(server, interval=0.2, wait=30)
        port = next(demo_conn.network.ports(device_id=server.id))
        after = wait_for(topology, lambda t: any(p.id == port.id and p.host
                                                 for p in t.ports))
        host = next(p.host for p in after.ports if p.id == port.id)
        what_if, predicted = networking.add_network(before, "what-if-check")
        what_if, _ = networking.add_server(what_if, predicted.id, host, "what-if-check")
        real = next(n for n in after.networks if n.id == network.id)
        assert predicted.segmentation_id == real.segmentation_id
        assert what_if.local_vlans[(host, predicted.id)] == after.local_vlans[(host, network.id)]
    finally:
        demo_conn.compute.delete_server(server)
        demo_conn.compute.wait_for_delete(server, interval=0.2, wait=30)
        demo_conn.network.delete_network(network)
