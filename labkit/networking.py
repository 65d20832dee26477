"""What if: add a network or a server to a snapshot of the cloud, and see the tags change.

The notebooks' VLAN widget asks "if a server on this network landed on that host, which
local VLAN would it get, and which tunnel id would carry it?". The answer comes from the
same rules the embedded cloud runs: the OVS agent's lowest free tag per host
(`wiring.lowest_free_vlan`) and ml2's lowest free tunnel id from the lab's start
(`wiring.lowest_free_tunnel_id`), applied to a `Topology` from `Inspector.topology()`.
"""

from __future__ import annotations

import html
import uuid
from dataclasses import dataclass, replace

from labkit.cloud.network.topology import Network, Port, Topology
from labkit.cloud.network.wiring import lowest_free_tunnel_id, lowest_free_vlan, wire

TUNNEL_ID_START = 65537  # data/networks.yaml's tunnel_id_start (0x10001)


def _what_if_id(kind: str, name: str) -> str:
    """A stable id for something that exists only in the what-if (same name, same id)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"labkit-what-if/{kind}/{name}"))


def tenant_networks(topology: Topology) -> list[Network]:
    """The networks that get a local VLAN on compute hosts: everything but external ones."""
    return [n for n in topology.networks if not n.external]


def add_network(topology: Topology, name: str, project_id: str = "",
                start: int = TUNNEL_ID_START) -> tuple[Topology, Network]:
    """A new tenant network of the lab's tunnel type, with the next free tunnel id."""
    taken = {n.segmentation_id for n in topology.networks
             if n.network_type == topology.tunnel_type and n.segmentation_id is not None}
    network = Network(id=_what_if_id("network", name), name=name, project_id=project_id,
                      network_type=topology.tunnel_type,
                      segmentation_id=lowest_free_tunnel_id(taken, start),
                      physical_network=None,
                      mtu=1450 if topology.tunnel_type == "vxlan" else 1458)
    return replace(topology, networks=(*topology.networks, network)), network


def add_server(topology: Topology, network_id: str, host: str,
               name: str) -> tuple[Topology, Port]:
    """A server's port on `network_id`, bound on `host`, as the OVS agent would see it: the
    network keeps its tag on the host, or gets the lowest free one there."""
    port = Port(id=_what_if_id("port", name), network_id=network_id,
                mac_address="fa:16:3e:00:00:00", fixed_ips=(), device_owner="compute:nova",
                device_id=_what_if_id("server", name), host=host, status="ACTIVE")
    vlans = dict(topology.local_vlans)
    if (host, network_id) not in vlans:
        used = {tag for (on, _), tag in vlans.items() if on == host}
        vlans[(host, network_id)] = lowest_free_vlan(used)
    return replace(topology, ports=(*topology.ports, port), local_vlans=vlans), port


@dataclass(frozen=True)
class VlanTable:
    """For each network: its tunnel id on the wire, and its local VLAN on each host."""

    hosts: tuple[str, ...]
    rows: tuple[tuple[str, int | None, tuple[int | None, ...]], ...]  # name, tunnel id, tags

    def __repr__(self) -> str:
        head = f"{'network':<16} {'tunnel id':<16}" + "".join(f"{h:<12}" for h in self.hosts)
        lines = [head]
        for name, tunnel, tags in self.rows:
            tunnel_text = f"{tunnel} ({tunnel:#x})" if tunnel is not None else "flat"
            lines.append(f"{name:<16} {tunnel_text:<16}" + "".join(
                f"{'VLAN ' + str(t) if t is not None else '-':<12}" for t in tags))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.hosts)
        body = []
        for name, tunnel, tags in self.rows:
            tunnel_text = f"{tunnel} (<code>{tunnel:#x}</code>)" if tunnel is not None else "flat"
            cells = "".join(f"<td>VLAN {t}</td>" if t is not None else "<td>–</td>" for t in tags)
            body.append(f"<tr><td>{html.escape(name)}</td><td>{tunnel_text}</td>{cells}</tr>")
        return (f"<table><thead><tr><th>network</th><th>tunnel id (on the wire)</th>{head}"
                f"</tr></thead><tbody>{''.join(body)}</tbody></table>")


def vlan_table(topology: Topology) -> VlanTable:
    """The local VLAN of each network on each host with an OVS agent, from `wire()`."""
    wirings = wire(topology)
    hosts = tuple(sorted(wirings, key=lambda h: (wirings[h].role != "compute", h)))
    rows = []
    for network in tenant_networks(topology):
        tags = tuple(wirings[h].local_vlans.get(network.id) for h in hosts)
        rows.append((network.name, network.segmentation_id, tags))
    return VlanTable(hosts=hosts, rows=tuple(rows))
