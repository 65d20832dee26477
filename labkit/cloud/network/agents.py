"""Neutron's agents as components of the embedded cloud, and neutron-server's side of their RPC.

Every host with a tunnel address runs `neutron-openvswitch-agent@<host>`; the network
node also runs `neutron-dhcp-agent@network`, `neutron-l3-agent@network` and
`neutron-metadata-agent@network`. Each reports its state every report interval (a
heartbeat: `Neutron.report_state`); an agent stopped here (`stop_agent`) stops
reporting and handles nothing, as a dead process would, and neutron marks it dead
once its last heartbeat is older than agent_down_time.

The OVS agent's part of a boot, as the trace shows it: os-vif adds qvo<port> to
br-int, ovsdb tells the agent (`port_added`), the agent asks neutron-server for the
port (`get_devices_details_list` on topic "q-plugin"), tags it with the network's
local VLAN on this host (`Neutron.local_vlan`), and reports it up
(`update_device_up` → `Neutron.device_up`): the port goes ACTIVE, and neutron's nova
notifier tells nova (network-vif-plugged). Ports of the network node's own devices
(the DHCP namespace's tap, a router's qr-/qg-) are plugged by their agent the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from labkit.cloud.bus import MessageBus, MessageContext
from labkit.cloud.compute.vif import device_names, ovs_agent_topic
from labkit.cloud.errors import NotFound
from labkit.cloud.middleware import current_request_id
from labkit.cloud.network.common import NetContext
from labkit.cloud.network.nova_notifier import NovaNotifier
from labkit.cloud.trace import Trace, TraceEvent

log = logging.getLogger(__name__)
REPORT_INTERVAL = 30.0  # neutron's [agent] report_interval
SERVER = "neutron-server"
PLUGIN_TOPIC = "q-plugin"
OVS = "neutron-openvswitch-agent"
DHCP = "neutron-dhcp-agent"
L3 = "neutron-l3-agent"
METADATA = "neutron-metadata-agent"
ADMIN = NetContext(project_id=None, is_admin=True)
# the network node's agent that plugs each kind of neutron-owned port, and its device prefix
OWNERS = {"network:dhcp": (DHCP, "tap"), "network:router_interface": (L3, "qr-"),
          "network:router_gateway": (L3, "qg-")}


def _ctx(request_id: str | None = None) -> NetContext:
    return NetContext(project_id=None, is_admin=True, request_id=request_id)


class Agent:
    """One agent process: its name on the bus, its heartbeat, whether it runs."""

    def __init__(self, runtime: AgentRuntime, binary: str, host: str, topic: str) -> None:
        self.runtime = runtime
        self.binary = binary
        self.host = host
        self.topic = topic
        self.component = f"{binary}@{host}"
        self.running = True
        self._heartbeat: asyncio.Task[None] | None = None

    def _record(self, ctx: MessageContext, target: str, summary: str, **detail: Any) -> None:
        self.runtime.trace.record(TraceEvent(kind="call", source=self.component, target=target,
                                             summary=summary, request_id=ctx.request_id,
                                             detail=detail))

    async def _beat(self) -> None:
        while True:
            try:
                self.runtime.neutron.report_state(self.host, self.binary)
            except Exception:
                log.exception("%s could not report its state", self.component)
            await asyncio.sleep(self.runtime.report_interval)

    def start(self) -> None:
        self.running = True
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        self.running = False
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None


class OvsAgent(Agent):
    """neutron-openvswitch-agent: wires the ports that appear on its host's br-int."""

    def __init__(self, runtime: AgentRuntime, host: str) -> None:
        super().__init__(runtime, OVS, host, ovs_agent_topic(host))

    async def port_added(self, ctx: MessageContext, device: str, port_id: str,
                         mac: str | None = None, instance_uuid: str | None = None) -> None:
        """ovsdb says `device` appeared on br-int (os-vif or a network node agent plugged
        it): fetch the port, give it the network's local VLAN, report it up."""
        if not self.running:
            return  # a dead agent notices nothing
        bus = self.runtime.bus
        details = await bus.call(ctx, PLUGIN_TOPIC, "get_devices_details_list",
                                 devices=[port_id], agent_id=f"ovs-agent-{self.host}",
                                 host=self.host)
        for detail in details:
            if "network_id" not in detail:
                continue  # gone meanwhile: nothing to wire
            tag = self.runtime.neutron.local_vlan(self.host, detail["network_id"])
            segment = (f"{detail['network_type']} {detail['segmentation_id']}"
                       if detail.get("segmentation_id") is not None
                       else detail.get("network_type"))
            self._record(ctx, f"br-int@{self.host}",
                         f"{device}: local VLAN {tag} (network {detail['network_id'][:8]}… "
                         f"is {segment} on the wire)", device=device, port_id=port_id,
                         tag=tag, network_id=detail["network_id"],
                         network_type=detail.get("network_type"),
                         segmentation_id=detail.get("segmentation_id"))
            await bus.call(ctx, PLUGIN_TOPIC, "update_device_up", device=port_id,
                           agent_id=f"ovs-agent-{self.host}", host=self.host)

    async def port_deleted(self, ctx: MessageContext, device: str, port_id: str,
                           instance_uuid: str | None = None) -> None:
        """The device left br-int: report it down."""
        if not self.running:
            return
        await self.runtime.bus.call(ctx, PLUGIN_TOPIC, "update_device_down", device=port_id,
                                    agent_id=f"ovs-agent-{self.host}", host=self.host)


class NetworkNodeAgent(Agent):
    """The DHCP and L3 agents: they plug their own ports' devices on the network node and
    follow what neutron-server tells them (dnsmasq's hosts, a router's namespace)."""

    def _plug(self, ctx: MessageContext, port: dict[str, Any], prefix: str) -> None:
        device = (prefix + port["id"])[:14]
        self._record(ctx, f"br-int@{self.host}", f"plug {device} on br-int",
                     port_id=port["id"], device=device, device_owner=port.get("device_owner"))
        # no OVS agent on the network node: the port stays DOWN
        with contextlib.suppress(LookupError):
            self.runtime.bus.cast(ctx.sent_by(f"ovsdb-server@{self.host}"),
                                  ovs_agent_topic(self.host), "port_added", device=device,
                                  port_id=port["id"], mac=port.get("mac_address"))

    async def port_bound(self, ctx: MessageContext, port: dict[str, Any]) -> None:
        if not self.running:
            return
        owner = OWNERS.get(port.get("device_owner", ""))
        if owner and owner[0] == self.binary:
            self._plug(ctx, port, owner[1])
        elif self.binary == DHCP:
            self._record(ctx, f"dnsmasq@{self.host}",
                         f"port_update_end: host entry for {port.get('mac_address')} in "
                         f"qdhcp-{port['network_id'][:8]}…", port_id=port["id"],
                         fixed_ips=port.get("fixed_ips", []))

    async def port_delete_end(self, ctx: MessageContext, port: dict[str, Any]) -> None:
        if self.running:
            self._record(ctx, f"dnsmasq@{self.host}",
                         f"port_delete_end: host entry of {port.get('mac_address')} removed",
                         port_id=port["id"])

    async def routers_updated(self, ctx: MessageContext, routers: list[str]) -> None:
        if self.running:
            self._record(ctx, f"qrouter@{self.host}",
                         f"routers_updated: sync {', '.join(r[:8] + '…' for r in routers)}",
                         routers=routers)


class PluginRpc:
    """neutron-server's RPC endpoint for the agents (topic "q-plugin")."""

    component = SERVER
    topic = PLUGIN_TOPIC

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def get_devices_details_list(self, ctx: MessageContext, devices: list[str],
                                       agent_id: str, host: str) -> list[dict[str, Any]]:
        neutron = self.runtime.neutron
        found = []
        for device in devices:
            try:
                port = neutron.get(_ctx(ctx.request_id), "port", device)
                network = neutron.get(_ctx(ctx.request_id), "network", port["network_id"])
            except NotFound:
                found.append({"device": device})
                continue
            found.append({
                "device": device, "port_id": port["id"], "network_id": port["network_id"],
                "mac_address": port.get("mac_address"),
                "admin_state_up": port.get("admin_state_up", True),
                "network_type": network.get("provider:network_type"),
                "segmentation_id": network.get("provider:segmentation_id"),
                "physical_network": network.get("provider:physical_network"),
                "fixed_ips": port.get("fixed_ips", []),
                "device_owner": port.get("device_owner", ""),
                "security_groups": port.get("security_groups", []),
                "port_security_enabled": port.get("port_security_enabled", True),
                "mtu": network.get("mtu")})
        return found

    async def update_device_up(self, ctx: MessageContext, device: str, agent_id: str,
                               host: str) -> None:
        with _request(ctx):
            self.runtime.neutron.device_up(device, host)

    async def update_device_down(self, ctx: MessageContext, device: str, agent_id: str,
                                 host: str) -> dict[str, Any]:
        with _request(ctx):
            port = self.runtime.neutron.device_down(device, host)
        return {"device": device, "exists": port is not None}


@contextlib.contextmanager
def _request(ctx: MessageContext):  # type: ignore[no-untyped-def]
    """Model calls made for this message belong to its request (the nova notifier reads it)."""
    token = current_request_id.set(ctx.request_id)
    try:
        yield
    finally:
        current_request_id.reset(token)


class AgentRuntime:
    """The OVS agent on every host and the DHCP, L3 and metadata agents on the network node.

    Made by the networking service with the cloud; the agents register on the bus at
    once and start reporting (and resync what is bound to their host) at `start`.
    """

    def __init__(self, cloud: Any, service: Any) -> None:
        self.cloud = cloud
        self.service = service
        self.neutron = service.neutron
        self.bus: MessageBus = cloud.bus
        self.trace: Trace = cloud.trace
        # the lab's report_interval, shared with nova's services (neutron's is 30 s)
        self.report_interval: float = getattr(cloud.settings, "report_interval",
                                              REPORT_INTERVAL)
        self.agents: dict[tuple[str, str], Agent] = {}
        for host in self.service.hosts:
            if host.get("local_ip"):
                self._add(OvsAgent(self, host["name"]))
            if host.get("role") == "network":
                for binary, topic in ((DHCP, "dhcp_agent"), (L3, "l3_agent"),
                                      (METADATA, "metadata_agent")):
                    self._add(NetworkNodeAgent(self, binary, host["name"],
                                               f"{topic}.{host['name']}"))
        self.plugin = PluginRpc(self)
        self.bus.register(self.plugin.topic, self.plugin.component, self.plugin)
        self.notifier = NovaNotifier(cloud, self.neutron, self.spawn)
        self.neutron.listeners.append(self.notifier.listener)
        self.neutron.listeners.append(self._notify_agents)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # each floating IP's router as last seen, to tell it when the address leaves
        self._fip_routers: dict[str, str | None] = {
            f["id"]: f.get("router_id") for f in self.neutron.list(ADMIN, "floatingip")}

    def _add(self, agent: Agent) -> None:
        self.agents[(agent.host, agent.binary)] = agent
        self.bus.register(agent.topic, agent.component, agent)

    def agent(self, host: str, binary: str) -> Agent:
        return self.agents[(host, binary)]

    # -- life cycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for agent in self.agents.values():
            agent.start()
        self._resync()

    async def stop(self) -> None:
        for agent in self.agents.values():
            await agent.stop()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        for task in pending:
            task.cancel()
        await self.notifier.aclose()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until the notifications sent so far (to agents, to nova) are handled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            pending = [t for t in self._tasks if not t.done()]
            if not pending:
                return
            await asyncio.wait(pending, timeout=deadline - loop.time())

    async def stop_agent(self, host: str, binary: str) -> None:
        """The agent dies: no more heartbeats, no more work (neutron sees it dead once its
        last heartbeat is older than agent_down_time)."""
        await self.agent(host, binary).stop()

    def start_agent(self, host: str, binary: str) -> None:
        self.agent(host, binary).start()

    def _resync(self) -> None:
        """As agents do when they start: wire what is already bound to their host (the
        devices are there from before)."""
        ctx = MessageContext(request_id=None, source=SERVER)
        for port in self.neutron.list(ADMIN, "port"):
            host = port.get("binding:host_id")
            if port.get("binding:vif_type") != "ovs" or port.get("status") == "ACTIVE":
                continue
            agent = self.agents.get((host, OVS))
            if agent is None or not agent.running:
                continue
            owner = OWNERS.get(port.get("device_owner", ""), (None, "qvo"))
            device = (owner[1] + port["id"])[:14] if owner[0] else device_names(
                port["id"])["qvo"]
            self.bus.cast(ctx.sent_by(f"ovsdb-server@{host}"), agent.topic, "port_added",
                          device=device, port_id=port["id"], mac=port.get("mac_address"))

    # -- neutron-server's notifications to the agents

    def spawn(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run `make()` on the cloud's loop, from the loop or from a worker thread."""
        def go() -> None:
            task = asyncio.get_running_loop().create_task(make())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(go)
            return
        go()

    def _notify_agents(self, event: str, payload: dict[str, Any]) -> None:
        """A model listener: what neutron-server's agent notifiers cast to the agents."""
        request_id = current_request_id.get()

        def cast(topic: str, method: str, **kwargs: Any) -> None:
            async def send() -> None:
                self.bus.cast(MessageContext(request_id=request_id, source=SERVER), topic,
                              method, **kwargs)
            self.spawn(send)

        network_node = [a for (_h, b), a in self.agents.items() if b in (DHCP, L3)]
        if event == "port.bound":
            for agent in network_node:
                owner = OWNERS.get(payload.get("device_owner", ""))
                if agent.binary == DHCP or (owner and owner[0] == agent.binary):
                    cast(agent.topic, "port_bound", port=payload)
        elif event == "port.deleted":
            for agent in network_node:
                if agent.binary == DHCP:
                    cast(agent.topic, "port_delete_end", port=payload)
        elif event in ("router.changed", "floatingip.changed"):
            if event == "router.changed":
                routers = [payload["id"]]
            else:
                # a released floating IP names no router: the one that had it must hear too
                before = self._fip_routers.get(payload["id"])
                self._fip_routers[payload["id"]] = payload.get("router_id")
                routers = [r for r in dict.fromkeys((before, payload.get("router_id"))) if r]
            if routers:
                for agent in network_node:
                    if agent.binary == L3:
                        cast(agent.topic, "routers_updated", routers=routers)
