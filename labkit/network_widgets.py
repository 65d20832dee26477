"""ipywidgets for the port-wiring chapters: the local VLAN playground and the packet walk stepper.

As in labkit.widgets, each widget has a static twin for the stored output
(`networking.vlan_table`, the `Walk` table), so a notebook reads the same on GitHub.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as w

from labkit import networking
from labkit.cloud.network.topology import Topology

VERDICT_COLORS = {"drop": "#b22222", "deliver": "#1a7f37", "accept": "#1a7f37"}
NEW_NETWORK = "(a new network)"


class VlanPlayground(w.VBox):
    """The local VLAN playground; `topology` is the what-if as it stands now."""

    topology: Topology

    def __repr__(self) -> str:
        return "Local VLAN playground (live while the kernel runs; the table shows the start)"


def vlan_playground(topology: Topology) -> VlanPlayground:
    """Boot what-if servers on networks and hosts of your choice and watch the tags.

    Each click adds a port to a copy of `topology` with `networking.add_server` (and a
    network with `networking.add_network`), the rules the OVS agents and ml2 apply in the
    embedded cloud, and redraws the table of tunnel ids and local VLANs per host.
    """
    hosts = [h.name for h in topology.hosts if h.role == "compute" and h.local_ip]
    network_choice = w.Dropdown(description="network", style={"description_width": "70px"})
    host_choice = w.Dropdown(options=hosts, description="on host",
                             style={"description_width": "70px"})
    boot = w.Button(description="boot a server here", button_style="primary")
    restart = w.Button(description="start over")
    table = w.HTML()
    log = w.HTML()
    box = VlanPlayground([w.HBox([network_choice, host_choice, boot, restart]), table, log])
    story: list[str] = []

    def networks_of(current: Topology) -> list[tuple[str, str]]:
        return [(n.name, n.id) for n in networking.tenant_networks(current)] + [
            (NEW_NETWORK, NEW_NETWORK)]

    def show(current: Topology) -> None:
        box.topology = current
        chosen = network_choice.value
        options = networks_of(current)
        network_choice.options = options
        # ipywidgets 8 selects nothing when an empty dropdown gets options: pick one
        values = [value for _, value in options]
        network_choice.value = chosen if chosen in values else values[0]
        table.value = networking.vlan_table(current)._repr_html_()
        log.value = "".join(f"<div>{line}</div>" for line in story[-6:])

    def on_boot(_: Any) -> None:
        current, network_id = box.topology, network_choice.value
        if network_id == NEW_NETWORK:
            count = sum(1 for n in current.networks if n.name.startswith("what-if-net"))
            current, network = networking.add_network(current, f"what-if-net-{count + 1}")
            network_id = network.id
            story.append(f"new network <b>{html.escape(network.name)}</b> gets tunnel id "
                         f"{network.segmentation_id} ({network.segmentation_id:#x})")
        host = host_choice.value
        had = current.local_vlans.get((host, network_id))
        name = f"what-if-{len(current.ports)}"
        current, _ = networking.add_server(current, network_id, host, name)
        tag = current.local_vlans[(host, network_id)]
        network_name = next(n.name for n in current.networks if n.id == network_id)
        if had is None:
            story.append(f"{html.escape(network_name)}'s first port on {host}: "
                         f"the agent takes the lowest free tag there, <b>VLAN {tag}</b>")
        else:
            story.append(f"another port of {html.escape(network_name)} on {host}: it shares "
                         f"<b>VLAN {tag}</b>")
        show(current)

    def on_restart(_: Any) -> None:
        story.clear()
        show(topology)

    boot.on_click(on_boot)
    restart.on_click(on_restart)
    show(topology)
    return box


class WalkStepper(w.VBox):
    """The packet walk stepper; `position` is the hop shown (0-based)."""

    def __repr__(self) -> str:
        return "Packet walk stepper (live while the kernel runs; the table shows every hop)"


def _hop_html(hops: Sequence[Any], position: int) -> str:
    hop = hops[position]
    color = VERDICT_COLORS.get(hop.verdict, "inherit")
    tags = [f"local VLAN {hop.vlan}" if hop.vlan is not None else "",
            f"tunnel id {hop.tunnel_id} ({hop.tunnel_id:#x})" if hop.tunnel_id is not None else ""]
    facts = [f"<b>{html.escape(hop.host or 'outside the cloud')}</b> · "
             f"<code>{html.escape(hop.device)}</code>"
             + (f" in <code>{html.escape(hop.namespace)}</code>" if hop.namespace else ""),
             f"packet {html.escape(hop.src)} → {html.escape(hop.dst)}"
             + "".join(f" · {t}" for t in tags if t),
             html.escape(hop.what)]
    if hop.nat:
        facts.append(f"<b>NAT</b> {html.escape(hop.nat)}")
    if hop.rule:
        facts.append("".join(f"<code>{html.escape(line)}</code><br/>"
                             for line in hop.rule.splitlines()))
    facts.append(f"<span style='color:{color}'><b>{hop.verdict}</b></span>")
    path = " → ".join(
        (f"<b style='color:{VERDICT_COLORS.get(h.verdict, '#1f6feb')}'>"
         f"{html.escape(h.device)}</b>" if i == position else html.escape(h.device))
        for i, h in enumerate(hops[: position + 1]))
    return (f"<div style='font-size:90%;color:#555'>{path}</div>"
            + "".join(f"<div style='margin:4px 0'>{f}</div>" for f in facts))


def walk_stepper(hops: Sequence[Any]) -> WalkStepper:
    """Step through a packet walk (`Inspector.packet_walk` or `walk.packet_walk`) one hop
    at a time: where the packet is, its tags, the NAT and the rule that decided."""
    if not hops:
        return WalkStepper([w.HTML("No hops to show.")])
    step = w.IntSlider(value=1, min=1, max=len(hops), description="hop",
                       continuous_update=True)
    back = w.Button(description="◀ back")
    forward = w.Button(description="next ▶")
    shown = w.HTML()
    box = WalkStepper([w.HBox([back, step, forward]), shown])

    def show(_: Any = None) -> None:
        shown.value = _hop_html(hops, step.value - 1)

    def move(by: int) -> None:
        step.value = min(max(step.value + by, 1), len(hops))

    back.on_click(lambda _: move(-1))
    forward.on_click(lambda _: move(1))
    step.observe(show, names="value")
    show()
    return box
