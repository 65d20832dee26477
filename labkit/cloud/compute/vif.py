"""os-vif's part of a build: plug each port's devices on the host, so its OVS agent sees them.

With neutron's hybrid iptables firewall (the port's binding:vif_details say
ovs_hybrid_plug), os-vif makes a Linux bridge qbr<id> and a veth pair qvb<id>/qvo<id>,
and adds qvo<id> to br-int with the port's id and MAC in its external_ids; libvirt
later puts the guest's tap<id> on qbr<id>. The OVS agent on that host notices the new
br-int port through ovsdb and wires it. Here the devices are records: the plug is a
trace event, and "ovsdb tells the agent" is a cast to the host's OVS agent.
"""

from __future__ import annotations

from typing import Any

from labkit.cloud.bus import MessageBus, MessageContext, NoSuchTopic
from labkit.cloud.trace import Trace, TraceEvent

NIC_NAME_LEN = 14  # nova's network_model.NIC_NAME_LEN: Linux's limit, less one


def device_names(port_id: str) -> dict[str, str]:
    """The port's devices on the host: each prefix and the port id, cut to 14 characters."""
    return {kind: (kind + port_id)[:NIC_NAME_LEN] for kind in ("tap", "qbr", "qvb", "qvo")}


def ovs_agent_topic(host: str) -> str:
    """Where the OVS agent of `host` listens (labkit.cloud.network.agents registers it)."""
    return f"q-agent-notifier.{host}"


def _record(trace: Trace, ctx: MessageContext, host: str, summary: str,
            **detail: Any) -> None:
    trace.record(TraceEvent(kind="call", source=ctx.source, target=f"os-vif@{host}",
                            summary=summary, request_id=ctx.request_id, detail=detail))


def _tell_agent(bus: MessageBus, trace: Trace, ctx: MessageContext, host: str, method: str,
                **kwargs: Any) -> None:
    ovsdb = ctx.sent_by(f"ovsdb-server@{host}")
    try:
        bus.cast(ovsdb, ovs_agent_topic(host), method, **kwargs)
    except NoSuchTopic:
        # no agent runs there: the device stays unwired, and nobody tells nova it is
        trace.record(TraceEvent(kind="call", source=ovsdb.source, target="nobody",
                                summary=f"{method}: no OVS agent listens on {host}",
                                request_id=ctx.request_id, detail=kwargs))


def plug(bus: MessageBus, trace: Trace, ctx: MessageContext, host: str, instance_uuid: str,
         vif: dict[str, Any]) -> None:
    """Plug one VIF (an OVS port of the network info) on `host`."""
    names = device_names(vif["id"])
    hybrid = bool((vif.get("details") or {}).get("ovs_hybrid_plug", True))
    bridge = (vif.get("network") or {}).get("bridge") or "br-int"
    made = [names["qbr"], names["qvb"], names["qvo"]] if hybrid else [names["tap"]]
    _record(trace, ctx, host, f"plug vif {vif['id'][:8]}…: {' '.join(made)} on {bridge}",
            port_id=vif["id"], mac=vif.get("address"), instance_uuid=instance_uuid,
            devices=names, hybrid_plug=hybrid, bridge=bridge)
    _tell_agent(bus, trace, ctx, host, "port_added",
                device=names["qvo"] if hybrid else names["tap"], port_id=vif["id"],
                mac=vif.get("address"), instance_uuid=instance_uuid)


def unplug(bus: MessageBus, trace: Trace, ctx: MessageContext, host: str, instance_uuid: str,
           vif: dict[str, Any]) -> None:
    """Remove one VIF's devices from `host`; the OVS agent sees its br-int port go."""
    names = device_names(vif["id"])
    hybrid = bool((vif.get("details") or {}).get("ovs_hybrid_plug", True))
    _record(trace, ctx, host, f"unplug vif {vif['id'][:8]}…", port_id=vif["id"],
            instance_uuid=instance_uuid, devices=names)
    _tell_agent(bus, trace, ctx, host, "port_deleted",
                device=names["qvo"] if hybrid else names["tap"], port_id=vif["id"],
                instance_uuid=instance_uuid)
