"""nova.network.neutron in the embedded cloud: nova's ports, made through neutron's HTTP API.

Nova talks to neutron as any client does, with its service user's token (nova is
admin in project service), so every call shows in the trace inside the request that
caused it. What nova's own API checks (the `networks` of a server create) and what
the compute host does (create the ports, bind them to the host, read them back as
network info) follow nova.network.neutron.API:

- a network entry makes a port: POST /v2.0/ports (device_id, network_id,
  tenant_id, fixed_ips, security_groups), then PUT with device_owner
  "compute:<zone>" and binding:host_id; a port entry is bound with the PUT only;
- binding:vif_type "binding_failed" is PortBindingFailed: the build is rescheduled;
- the network info (nova's NetworkInfo) is cached in nova's database, and the ports
  a user brought are marked preserve_on_delete: a delete unbinds them and deletes
  only the ports nova made.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.network import (
    NetworkAllocationFailed,
    NetworkRequest,
    PortBindingFailed,
    ip_version,
    requested_port_ids,
    requests_of,
)
from labkit.cloud.compute.vif import device_names
from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound
from labkit.cloud.service_client import ServiceClient

if TYPE_CHECKING:
    from labkit.cloud.compute.instances import Instance
    from labkit.cloud.compute.service import ComputeService

log = logging.getLogger(__name__)
NEUTRON = "/networking/v2.0"
BINDING_FAILED = "binding_failed"
AMBIGUOUS = "Multiple possible networks found, use a Network ID to be more specific."


class NeutronError(Exception):
    """Neutron refused a call nova made: its status, exception name and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message


def _error(status: int, body: Any) -> NeutronError:
    error = body.get("NeutronError") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return NeutronError(status, str(error.get("type", "")), str(error.get("message", "")))
    return NeutronError(status, "", str(body))


class NeutronNetworkAPI:
    """nova's network API over HTTP to /networking/v2.0, as nova's service user."""

    def __init__(self, nova: ComputeService, client: ServiceClient) -> None:
        self.nova = nova
        self.client = client

    # -- HTTP

    async def _call(self, ctx: MessageContext, method: str, path: str, *,
                    json: Any = None, params: Any = None) -> dict[str, Any]:
        r = await self.client.send(method, NEUTRON + path, request_id=ctx.request_id,
                                   json=json, params=params, component=ctx.source)
        try:
            body = r.json() if r.content else {}
        except ValueError:
            body = r.text
        if r.status_code >= 400:
            raise _error(r.status_code, body)
        return body if isinstance(body, dict) else {}

    async def _list(self, ctx: MessageContext, collection: str,
                    params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return list((await self._call(ctx, "GET", f"/{collection}", params=params))
                    .get(collection, []))

    async def _show_port(self, ctx: MessageContext, port_id: str,
                         project_id: str | None, is_admin: bool) -> dict[str, Any]:
        """The port, or NotFound as nova says it when the caller may not see it."""
        try:
            port = (await self._call(ctx, "GET", f"/ports/{port_id}"))["port"]
        except NeutronError as exc:
            if exc.status == 404:
                raise NotFound(f"Port id {port_id} could not be found.") from exc
            raise
        if not is_admin and port.get("project_id") != project_id:
            # nova asks with the user's token, which does not see other projects' ports
            raise NotFound(f"Port id {port_id} could not be found.")
        return port

    @staticmethod
    def _usable(network: dict[str, Any], project_id: str | None, is_admin: bool) -> bool:
        """What the user's own token would list: its project's, shared and external ones."""
        return (is_admin or network.get("project_id") == project_id
                or bool(network.get("shared")) or bool(network.get("router:external")))

    async def _available_networks(self, ctx: MessageContext, project_id: str | None,
                                  is_admin: bool,
                                  net_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """nova's _get_available_networks: the asked-for networks the project may use, in
        the order asked; with none asked, its own non-shared ones and the shared ones."""
        if net_ids:
            found = await self._list(ctx, "networks", [("id", n) for n in dict.fromkeys(net_ids)])
            usable = {n["id"]: n for n in found if self._usable(n, project_id, is_admin)}
            return [usable[n] for n in dict.fromkeys(net_ids) if n in usable]
        own = await self._list(ctx, "networks", [("tenant_id", project_id or ""),
                                                  ("shared", "False")])
        shared = await self._list(ctx, "networks", [("shared", "True")])
        return own + [n for n in shared if n["id"] not in {o["id"] for o in own}]

    async def _security_group_ids(self, ctx: MessageContext, project_id: str | None,
                                  names: list[str]) -> list[str]:
        """The requested groups by name or id; [] for just "default", which neutron
        applies itself (nova's _clean_security_groups and _process_security_groups)."""
        wanted = [n for n in names if n]
        if not wanted or wanted == ["default"]:
            return []
        groups = await self._list(ctx, "security-groups", [("tenant_id", project_id or ""),
                                                            ("fields", "id"),
                                                            ("fields", "name")])
        by_id = {g["id"] for g in groups}
        ids: list[str] = []
        for name in wanted:
            if name in by_id:
                ids.append(name)
                continue
            matches = [g["id"] for g in groups if g.get("name") == name]
            if len(matches) > 1:
                raise Conflict(f"Multiple security_group matches found for name '{name}', "
                               f"use an ID to be more specific.")
            if not matches:
                raise BadRequest(f"Unable to find security_group with name or id '{name}'")
            ids.append(matches[0])
        return ids

    # -- nova-api: the checks before an instance is written

    async def validate_networks(self, ctx: MessageContext, requested: Any,
                                security_groups: list[str], max_count: int) -> int:
        found = requests_of(requested)
        if found == "none":
            return max_count
        project, admin = ctx.project_id, ctx.is_admin
        # nova-api's _check_requested_secgroups ("default" is never looked up)
        await self._security_group_ids(ctx, project,
                                       [g for g in security_groups if g != "default"])
        ports_needed = 0
        if not isinstance(found, list) or not found:
            nets = await self._available_networks(ctx, project, admin)
            if len(nets) > 1:
                raise Conflict(AMBIGUOUS)
            if not nets and found == "auto":
                # neutron here has no auto-allocated-topology to make one
                raise BadRequest(f"Unable to automatically allocate a network for project "
                                 f"{project}")
            ports_needed = 1
        else:
            net_ids = []
            for request in found:
                if request.port_id:
                    try:
                        port = await self._show_port(ctx, request.port_id, project, admin)
                    except NotFound as exc:
                        raise BadRequest(exc.message) from exc  # nova's API: a 400
                    if port.get("device_id"):
                        raise Conflict(f"Port {request.port_id} is still in use.")
                    if not port.get("fixed_ips"):
                        raise BadRequest(f"Port {request.port_id} requires a FixedIP in order "
                                         f"to be used.")
                    continue
                ports_needed += 1
                net_ids.append(request.network_id or "")
                if request.fixed_ip:
                    await self._check_fixed_ip_free(ctx, request)
            if net_ids:
                nets = await self._available_networks(ctx, project, admin, net_ids)
                for net in nets:
                    if not net.get("subnets"):
                        raise BadRequest(f"Network {net['id']} requires a subnet in order to "
                                         f"boot instances on.")
                lost = [n for n in dict.fromkeys(net_ids) if n not in {x["id"] for x in nets}]
                if lost:
                    raise BadRequest(f"Network {', '.join(lost)} could not be found.")
        return await self._fit_port_quota(ctx, project, ports_needed, max_count)

    async def _check_fixed_ip_free(self, ctx: MessageContext, request: NetworkRequest) -> None:
        used = await self._list(ctx, "ports", [
            ("network_id", request.network_id or ""),
            ("fixed_ips", f"ip_address={request.fixed_ip}"), ("fields", "device_id")])
        if used:
            raise BadRequest(f"Fixed IP address {request.fixed_ip} is already in use on "
                             f"instance {used[0].get('device_id', '')}.")

    async def _fit_port_quota(self, ctx: MessageContext, project: str | None,
                              ports_needed: int, max_count: int) -> int:
        """How many instances the project's free ports allow (nova's validate_networks)."""
        if not ports_needed or not project:
            return max_count
        try:
            quota = (await self._call(ctx, "GET", f"/quotas/{project}"))["quota"]
        except (NeutronError, KeyError):
            return max_count  # no quota to read: nothing limits the ports
        limit = int(quota.get("port", -1))
        if limit < 0:
            return max_count
        used = len(await self._list(ctx, "ports", [("tenant_id", project), ("fields", "id")]))
        free = limit - used
        if free < 0:
            raise Forbidden(f"The number of defined ports: {used} is over the limit: {limit}")
        return min(max_count, free // ports_needed)

    # -- nova-compute: the ports of a build

    async def allocate_for_instance(self, ctx: MessageContext, instance: Instance,
                                    host: str, requested: Any) -> list[dict[str, Any]]:
        found = requests_of(requested)
        uuid, project = instance.uuid, instance.project_id
        if found == "none":
            self.nova.instances.set_network_info(uuid, [])
            return []
        # (network id, requested port or None, fixed ip) in the order asked
        ordered: list[tuple[str, str | None, str | None]] = []
        premade: dict[str, dict[str, Any]] = {}
        for request in found if isinstance(found, list) else []:
            if request.port_id:
                port = await self._premade_port(ctx, instance, request.port_id)
                premade[port["id"]] = port
                ordered.append((port["network_id"], port["id"], None))
            else:
                ordered.append((request.network_id or "", None, request.fixed_ip))
        nets = await self._available_networks(ctx, project, ctx.is_admin,
                                              [n for n, _, _ in ordered] or None)
        if not nets:
            if found == "auto":
                raise NetworkAllocationFailed(
                    f"Unable to automatically allocate a network for project {project}")
            missing = [n for n, p, _ in ordered if not p]
            if missing:
                raise NetworkAllocationFailed(f"Network {missing[0]} could not be found.")
            self.nova.instances.set_network_info(uuid, [])
            return []
        if not ordered:
            if len(nets) > 1:
                raise NetworkAllocationFailed(AMBIGUOUS)
            ordered = [(nets[0]["id"], None, None)]
        by_id = {n["id"]: n for n in nets}
        for net in nets:
            if net.get("router:external") and not net.get("shared") and not ctx.is_admin:
                raise NetworkAllocationFailed(f"It is not allowed to create an interface on "
                                              f"external network {net['id']}")
        groups = await self._security_group_ids(ctx, project, list(instance.security_groups))
        created: list[str] = []
        bound_premade: list[str] = []
        port_ids: list[str] = []
        try:
            for net_id, port_id, fixed_ip in ordered:
                if net_id not in by_id:
                    continue
                if port_id is None:
                    port_id = await self._create_port(ctx, instance, net_id, fixed_ip, groups)
                    created.append(port_id)
                else:
                    bound_premade.append(port_id)
                port_ids.append(port_id)
            for port_id in port_ids:
                await self._bind_port(ctx, instance, port_id, host)
        except Exception:
            # nova leaves nothing half made: unbind what was given, delete what it made
            await self._unbind_ports(ctx, bound_premade)
            await self._delete_ports(ctx, created)
            raise
        info = await self._network_info(ctx, instance, port_ids, set(premade))
        self.nova.instances.set_network_info(uuid, info)
        return info

    async def _premade_port(self, ctx: MessageContext, instance: Instance,
                            port_id: str) -> dict[str, Any]:
        """nova's _validate_requested_port_ids: the user's own port, free, bindable."""
        try:
            port = await self._show_port(ctx, port_id, instance.project_id, True)
        except NotFound as exc:
            raise NetworkAllocationFailed(exc.message) from exc
        if port.get("project_id") != instance.project_id:
            raise NetworkAllocationFailed(f"Port {port_id} not usable for instance "
                                          f"{instance.uuid}.")
        if port.get("device_id") and port["device_id"] != instance.uuid:
            raise NetworkAllocationFailed(f"Port {port_id} is still in use.")
        if port.get("binding:vif_type") == BINDING_FAILED:
            raise PortBindingFailed(port_id)
        return port

    async def _create_port(self, ctx: MessageContext, instance: Instance, network_id: str,
                           fixed_ip: str | None, groups: list[str]) -> str:
        """nova's _create_port_minimal: the port, for the instance's project, not bound yet."""
        body: dict[str, Any] = {"device_id": instance.uuid, "network_id": network_id,
                                "admin_state_up": True, "tenant_id": instance.project_id}
        if fixed_ip:
            body["fixed_ips"] = [{"ip_address": fixed_ip}]
        if groups:
            body["security_groups"] = groups
        try:
            port = (await self._call(ctx, "POST", "/ports", json={"port": body}))["port"]
        except NeutronError as exc:
            if exc.kind in ("IpAddressInUse", "IpAddressAlreadyAllocated"):
                raise NetworkAllocationFailed(f"Fixed IP {fixed_ip} is already in use.") \
                    from exc
            if exc.kind == "OverQuota":
                raise NetworkAllocationFailed("Maximum number of ports exceeded") from exc
            if exc.kind == "IpAddressGenerationFailure":
                raise NetworkAllocationFailed(f"No fixed IP addresses available for network: "
                                              f"{network_id}") from exc
            if exc.kind == "InvalidIpForNetwork" or (fixed_ip and exc.status == 400):
                raise NetworkAllocationFailed(f"Fixed IP {fixed_ip} is not a valid ip address "
                                              f"for network {network_id}.") from exc
            raise
        return str(port["id"])

    async def _bind_port(self, ctx: MessageContext, instance: Instance, port_id: str,
                         host: str) -> None:
        """nova's _update_port: the port is the instance's, on its zone, bound to `host`."""
        body = {"device_id": instance.uuid,
                "device_owner": f"compute:{instance.availability_zone or 'nova'}",
                "binding:host_id": host}
        port = (await self._call(ctx, "PUT", f"/ports/{port_id}", json={"port": body}))["port"]
        if port.get("binding:vif_type") == BINDING_FAILED:
            raise PortBindingFailed(port_id)

    async def _unbind_ports(self, ctx: MessageContext, port_ids: Iterable[str]) -> None:
        """nova's _unbind_ports: no host, no device; the port stays for its owner."""
        for port_id in port_ids:
            try:
                await self._call(ctx, "PUT", f"/ports/{port_id}", json={"port": {
                    "binding:host_id": None, "binding:profile": {}, "device_id": "",
                    "device_owner": ""}})
            except NeutronError as exc:
                if exc.status != 404:
                    log.warning("unbinding port %s failed: %s", port_id, exc)

    async def _delete_ports(self, ctx: MessageContext, port_ids: Iterable[str]) -> None:
        for port_id in port_ids:
            try:
                await self._call(ctx, "DELETE", f"/ports/{port_id}")
            except NeutronError as exc:
                if exc.status != 404:
                    raise

    async def deallocate_for_instance(self, ctx: MessageContext, instance: Instance) -> None:
        ports = await self._list(ctx, "ports", [("device_id", instance.uuid), ("fields", "id")])
        with self.nova.database.session() as s:
            cached = self.nova.instances.network_info(s, instance.uuid)
        keep = set(requested_port_ids(instance.requested_networks)) | {
            vif["id"] for vif in cached if vif.get("preserve_on_delete")}
        await self._unbind_ports(ctx, sorted(keep))
        await self._delete_ports(ctx, [p["id"] for p in ports if p["id"] not in keep])
        self.nova.instances.set_network_info(instance.uuid, [])

    async def get_instance_nw_info(self, ctx: MessageContext,
                                   instance: Instance) -> list[dict[str, Any]]:
        with self.nova.database.session() as s:
            cached = self.nova.instances.network_info(s, instance.uuid)
        ports = await self._list(ctx, "ports", [("device_id", instance.uuid), ("fields", "id")])
        present = {p["id"] for p in ports}
        # the cache's order first (the guest's NIC order), then ports attached since
        order = [v["id"] for v in cached if v["id"] in present]
        order += sorted(present - set(order))
        keep = set(requested_port_ids(instance.requested_networks)) | {
            v["id"] for v in cached if v.get("preserve_on_delete")}
        info = await self._network_info(ctx, instance, order, keep)
        self.nova.instances.set_network_info(instance.uuid, info)
        return info

    async def migrate_instance_finish(self, ctx: MessageContext, instance: Instance,
                                      host: str) -> None:
        """nova's _update_port_binding_for_instance: each port of the instance is bound
        to the host the instance now runs on."""
        ports = await self._list(ctx, "ports", [("device_id", instance.uuid)])
        for port in ports:
            if port.get("binding:host_id") == host:
                continue
            await self._bind_port(ctx, instance, port["id"], host)

    # -- the network info model

    async def _network_info(self, ctx: MessageContext, instance: Instance,
                            port_ids: list[str], preexisting: set[str]) -> list[dict[str, Any]]:
        """nova's _build_network_info_model: one VIF per port, in `port_ids` order."""
        if not port_ids:
            return []
        ports = {p["id"]: p for p in await self._list(
            ctx, "ports", [("device_id", instance.uuid)])}
        wanted = [ports[p] for p in port_ids if p in ports]
        net_ids = sorted({p["network_id"] for p in wanted})
        subnet_ids = sorted({ip["subnet_id"] for p in wanted for ip in p.get("fixed_ips", [])})
        networks = {n["id"]: n for n in await self._list(
            ctx, "networks", [("id", n) for n in net_ids])} if net_ids else {}
        subnets = {s["id"]: s for s in await self._list(
            ctx, "subnets", [("id", s) for s in subnet_ids])} if subnet_ids else {}
        floating = await self._list(ctx, "floatingips",
                                    [("port_id", p["id"]) for p in wanted]) if wanted else []
        return [self._vif(port, networks.get(port["network_id"], {}), subnets, floating,
                          port["id"] in preexisting) for port in wanted]

    @staticmethod
    def _vif(port: dict[str, Any], network: dict[str, Any], subnets: dict[str, dict[str, Any]],
             floating: list[dict[str, Any]], preserve: bool) -> dict[str, Any]:
        by_subnet: dict[str, list[dict[str, Any]]] = {}
        for fixed in port.get("fixed_ips", []):
            address = fixed["ip_address"]
            floats = [{"address": f["floating_ip_address"], "type": "floating",
                       "version": ip_version(f["floating_ip_address"]), "meta": {}}
                      for f in floating
                      if f.get("port_id") == port["id"] and f.get("fixed_ip_address") == address]
            by_subnet.setdefault(fixed["subnet_id"], []).append(
                {"address": address, "type": "fixed", "version": ip_version(address),
                 "meta": {}, "floating_ips": floats})
        shown_subnets = []
        for subnet_id, ips in by_subnet.items():
            subnet = subnets.get(subnet_id, {})
            version = int(subnet.get("ip_version", ip_version(ips[0]["address"])))
            gateway = subnet.get("gateway_ip")
            shown_subnets.append({
                "cidr": subnet.get("cidr"), "version": version, "ips": ips,
                "gateway": ({"address": gateway, "type": "gateway", "version": version,
                             "meta": {}} if gateway else {"address": None, "meta": {}}),
                "dns": [{"address": d, "type": "dns", "version": ip_version(d), "meta": {}}
                        for d in subnet.get("dns_nameservers", [])],
                "routes": [{"cidr": r.get("destination"), "gateway": {
                    "address": r.get("nexthop"), "type": "gateway"}}
                    for r in subnet.get("host_routes", [])],
                "meta": {"dhcp_server": None} if not subnet.get("enable_dhcp", True) else {}})
        details = port.get("binding:vif_details") or {}
        vif_type = port.get("binding:vif_type")
        active = port.get("admin_state_up") is False or port.get("status") == "ACTIVE"
        return {
            "id": port["id"], "address": port.get("mac_address"), "type": vif_type,
            "details": details, "devname": device_names(port["id"])["tap"],
            "ovs_interfaceid": port["id"] if vif_type == "ovs" else None,
            "vnic_type": port.get("binding:vnic_type", "normal"),
            "profile": port.get("binding:profile") or {}, "active": active,
            "preserve_on_delete": preserve, "qbh_params": None, "qbg_params": None,
            "meta": {},
            "network": {
                "id": port["network_id"], "label": network.get("name"),
                "bridge": details.get("bridge_name", "br-int") if vif_type == "ovs" else None,
                "tenant_id": network.get("project_id", port.get("project_id")),
                "subnets": shown_subnets,
                "meta": {"injected": False, "tenant_id": network.get("project_id"),
                         "mtu": network.get("mtu"),
                         "physical_network": network.get("provider:physical_network"),
                         "tunneled": network.get("provider:network_type") in ("vxlan", "gre")},
            },
        }
