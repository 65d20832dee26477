"""How nova asks for an instance's ports (nova.network.neutron's role), and what can go wrong.

The API validates a server's `networks` before it writes the instance
(`validate_networks`); the compute manager creates or binds the ports at the
"networking" step (`allocate_for_instance`), refreshes its view of them when
neutron says something changed (`get_instance_nw_info`) and gives them back when
the instance goes (`deallocate_for_instance`). `NoNetwork` is the lab without a
networking service: no ports, empty `addresses`. `NeutronNetworkAPI`
(compute/neutron.py) talks to neutron over HTTP.

The network info a call returns is nova's NetworkInfo as JSON: one VIF per port
(id, address (the MAC), type, details, devname, active, preserve_on_delete, and
network: id, label, mtu, subnets with their ips and each ip's floating_ips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from labkit.cloud.bus import MessageContext
from labkit.cloud.netinfo import subnets

if TYPE_CHECKING:
    from labkit.cloud.compute.instances import Instance


class PortBindingFailed(Exception):
    """Neutron could not bind a port on the host: nova reschedules the build elsewhere."""

    def __init__(self, port_id: str) -> None:
        super().__init__(f"Binding failed for port {port_id}, please check neutron logs for "
                         f"more information.")
        self.port_id = port_id


class NetworkAllocationFailed(Exception):
    """Ports could not be made (no address left, quota): nova aborts, no reschedule."""


@dataclass(frozen=True)
class NetworkRequest:
    """One entry of a server's `networks`: a network (maybe with a fixed IP) or a port."""

    network_id: str | None = None
    port_id: str | None = None
    fixed_ip: str | None = None
    tag: str | None = None


def requests_of(requested: Any) -> list[NetworkRequest] | str | None:
    """A server's stored `networks` as requests: a list, or "auto"/"none", or None (not
    given, before microversion 2.37)."""
    if requested is None or isinstance(requested, str):
        return requested
    return [NetworkRequest(network_id=e.get("uuid") or None, port_id=e.get("port") or None,
                           fixed_ip=e.get("fixed_ip"), tag=e.get("tag"))
            for e in requested]


def requested_port_ids(requested: Any) -> list[str]:
    """The pre-made ports a server asked for: nova unbinds these, it never deletes them."""
    found = requests_of(requested)
    if not isinstance(found, list):
        return []
    return [r.port_id for r in found if r.port_id]


def ip_version(address: str) -> int:
    return 6 if ":" in address else 4


def addresses(network_info: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A server's `addresses` from its network info, as nova's view builds them: per
    network label, its fixed addresses, then its floating ones, each with the port's MAC."""
    shown: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for vif in network_info:
        label = (vif.get("network") or {}).get("label") or ""
        entry = shown.setdefault(label, {"fixed": [], "floating": []})
        for subnet in subnets(vif):
            for ip in subnet.get("ips") or []:
                entry["fixed"].append(_address(ip, "fixed", vif))
                entry["floating"].extend(_address(f, "floating", vif)
                                         for f in ip.get("floating_ips", []))
    return {label: e["fixed"] + e["floating"] for label, e in shown.items()}


def _address(ip: dict[str, Any], kind: str, vif: dict[str, Any]) -> dict[str, Any]:
    return {"version": ip.get("version", ip_version(ip["address"])), "addr": ip["address"],
            "OS-EXT-IPS:type": kind, "OS-EXT-IPS-MAC:mac_addr": vif.get("address")}


class NetworkAPI(Protocol):
    async def validate_networks(self, ctx: MessageContext, requested: Any,
                                security_groups: list[str], max_count: int) -> int:
        """Check `networks` and the security groups as nova's API does (BadRequest,
        Conflict, Forbidden with nova's messages); how many instances the port quota lets
        boot (at most max_count)."""

    async def allocate_for_instance(self, ctx: MessageContext, instance: Instance,
                                    host: str, requested: Any) -> list[dict[str, Any]]:
        """Create or bind the instance's ports on `host`; their network info (also stored
        in the instance's info cache). PortBindingFailed, NetworkAllocationFailed."""

    async def deallocate_for_instance(self, ctx: MessageContext, instance: Instance) -> None:
        """Delete the ports nova created for the instance, unbind the ones it was given,
        and empty its info cache."""

    async def get_instance_nw_info(self, ctx: MessageContext,
                                   instance: Instance) -> list[dict[str, Any]]:
        """The instance's network info as neutron has it now; the info cache is updated."""

    async def migrate_instance_finish(self, ctx: MessageContext, instance: Instance,
                                      host: str) -> None:
        """A move reached `host` (a resize, or its revert): bind the instance's ports
        there (binding:host_id). PortBindingFailed when neutron cannot."""


class NoNetwork:
    """No networking service in this lab: no ports, nothing to wire."""

    async def validate_networks(self, ctx: MessageContext, requested: Any,
                                security_groups: list[str], max_count: int) -> int:
        from labkit.cloud.errors import BadRequest

        found = requests_of(requested)
        for request in found if isinstance(found, list) else []:
            # no networking service: no network or port can exist
            if request.port_id:
                raise BadRequest(f"Port id {request.port_id} could not be found.")
            raise BadRequest(f"Network {request.network_id} could not be found.")
        return max_count

    async def allocate_for_instance(self, ctx: MessageContext, instance: Instance,
                                    host: str, requested: Any) -> list[dict[str, Any]]:
        return []

    async def deallocate_for_instance(self, ctx: MessageContext, instance: Instance) -> None:
        return None

    async def get_instance_nw_info(self, ctx: MessageContext,
                                   instance: Instance) -> list[dict[str, Any]]:
        return []

    async def migrate_instance_finish(self, ctx: MessageContext, instance: Instance,
                                      host: str) -> None:
        return None
