"""The admin-only inspection API under /labkit/v1/: what the public APIs cannot show.

The trace, a token's insides, the database rows and each host's port wiring, read
from the same objects the cloud runs on. `labkit.inspect` is its client.
"""

from __future__ import annotations

import base64
import struct
from typing import TYPE_CHECKING

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.instances import InstanceAction
from labkit.cloud.errors import BadRequest, Forbidden, NotFound
from labkit.cloud.http import context, read_json
from labkit.cloud.identity.exceptions import TokenNotFound, exception_handlers
from labkit.cloud.network import render as network_render
from labkit.cloud.network.topology import Topology, topology_to_dict
from labkit.cloud.network.walk import PROTOCOLS, format_walk, packet_walk
from labkit.cloud.network.wiring import HostWiring, wire
from labkit.cloud.virt.driver import GuestNotFound

if TYPE_CHECKING:
    from labkit.cloud.app import Cloud


def _float(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a number of seconds since the epoch") from exc


def build_inspection_app(cloud: Cloud) -> Starlette:
    def admin(request: Request) -> None:
        if not context(request).is_admin:
            raise Forbidden("The inspection API is for admins: use the labkit-admin cloud.")

    async def index(request: Request) -> Response:
        admin(request)
        s = cloud.settings
        return JSONResponse({"labkit": {
            "version": "v1", "pace": s.pace, "deterministic": s.deterministic,
            "bcrypt_rounds": s.bcrypt_rounds, "token_ttl": s.token_ttl,
            "service_down_time": s.service_down_time, "report_interval": s.report_interval,
            "agent_down_time": cloud.network.neutron.env.agent_down_time,
            "resize_confirm_window": s.resize_confirm_window,
            "allow_resize_to_same_host": s.allow_resize_to_same_host,
            "boot": cloud.ids.boot,
            "compute_driver": sorted({m.driver.name for m in cloud.compute.computes.values()}),
            "started_at": cloud.started_at,
            "services": sorted(cloud.services),
            "tables": {name: sorted(base.metadata.tables)
                       for name, (_, base) in cloud.databases().items()},
        }})

    async def trace(request: Request) -> Response:
        admin(request)
        q = request.query_params
        try:
            limit = int(q.get("limit", "1000"))
        except ValueError as exc:
            raise BadRequest("limit must be a whole number") from exc
        events = cloud.trace.query(request_id=q.get("request_id"), since=_float(request, "since"),
                                   until=_float(request, "until"), kind=q.get("kind"),
                                   limit=limit)
        return JSONResponse({"events": [e.to_dict() for e in events]})

    async def decode_token(request: Request) -> Response:
        """A Fernet token taken apart: its envelope, and the payload only the cloud can read."""
        admin(request)
        token = (await read_json(request)).get("token")
        if not isinstance(token, str):
            raise BadRequest("Expecting a JSON object with the token as a string in 'token'.")
        try:
            payload = cloud.identity.tokens.read(token)
        except Exception as exc:
            raise TokenNotFound("the token is malformed or was not issued here") from exc
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        envelope = {
            "version": raw[0],
            "timestamp": struct.unpack(">Q", raw[1:9])[0],
            "iv": raw[9:25].hex(),
            "ciphertext_bytes": len(raw) - 25 - 32,
            "hmac": raw[-32:].hex(),
            "token_chars": len(token),
        }
        return JSONResponse({"envelope": envelope, "payload": {
            "user_id": payload.user_id, "methods": list(payload.methods),
            "project_id": payload.project_id, "domain_id": payload.domain_id,
            "expires_at": payload.expires_at, "audit_ids": list(payload.audit_ids)}})

    async def table_rows(request: Request) -> Response:
        admin(request)
        service, table = request.path_params["service"], request.path_params["table"]
        db, base = cloud.databases().get(service, (None, None))
        if db is None or table not in base.metadata.tables:
            raise NotFound(f"No table {table!r} in service {service!r}.")
        columns = base.metadata.tables[table]
        query = select(columns)
        # ?column=value keeps the rows where that column has that value
        for name, value in request.query_params.items():
            if name not in columns.c:
                raise BadRequest(f"Table {table!r} has no column {name!r}.")
            query = query.where(columns.c[name] == value)
        with db.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        names = [c["name"] for c in sa_inspect(db.engine).get_columns(table)]
        return JSONResponse({"service": service, "table": table, "columns": names,
                             "rows": rows}, media_type="application/json")

    async def scheduling(request: Request) -> Response:
        """Every scheduling decision for a server: candidates, filters, weights, choice."""
        admin(request)
        uuid = request.path_params["server_id"]
        with cloud.compute.database.session() as s:
            cloud.compute.instances.get(s, uuid, include_deleted=True)
        return JSONResponse({"server_id": uuid,
                             "decisions": cloud.compute.instances.decisions(uuid)})

    async def server_trace(request: Request) -> Response:
        """Every event of every request that acted on a server, in time order."""
        admin(request)
        uuid = request.path_params["server_id"]
        with cloud.compute.database.session() as s:
            cloud.compute.instances.get(s, uuid, include_deleted=True)
            request_ids = s.scalars(select(InstanceAction.request_id).where(
                InstanceAction.instance_uuid == uuid).order_by(InstanceAction.id)).all()
        events = [e for rid in request_ids for e in cloud.trace.query(request_id=rid)]
        events.sort(key=lambda e: (e.time, e.seq or 0))
        return JSONResponse({"server_id": uuid, "request_ids": list(request_ids),
                             "events": [e.to_dict() for e in events]})

    async def guest(request: Request) -> Response:
        """What the server's hypervisor holds: the driver, and on qemu the domain XML, the
        qemu command line, the console log's path, the loopback forwards of its floating
        IPs and the image cache's answers."""
        admin(request)
        uuid = request.path_params["server_id"]
        with cloud.compute.database.session() as s:
            instance = cloud.compute.instances.get(s, uuid, include_deleted=True)
            host = instance.host
        manager = cloud.compute.computes.get(host or "")
        if manager is None:
            raise NotFound(f"Server {uuid} is on no compute host")
        try:
            described = manager.driver.describe(uuid)
        except GuestNotFound as exc:
            raise NotFound(f"The hypervisor on {host} has no guest for server {uuid}") from exc
        return JSONResponse({"server_id": uuid, "host": host,
                             "instance_name": instance.name,
                             "driver": manager.driver.name, **described})

    async def scheduler_hosts(request: Request) -> Response:
        """The hosts as the scheduler sees them now, and how it is configured."""
        admin(request)
        scheduler = cloud.compute.scheduler
        return JSONResponse({"hosts": [h.to_dict() for h in scheduler.host_states()],
                             "config": scheduler.config.to_dict()})

    # -- the port wiring, computed from neutron's model (labkit.cloud.network.wiring)

    def topology() -> Topology:
        network = getattr(cloud, "network", None)
        if network is None:
            raise NotFound("This cloud runs no networking service.")
        return network.neutron.topology()

    def host_wiring(request: Request) -> HostWiring:
        name = request.path_params["host"]
        found = wire(topology()).get(name)
        if found is None:
            raise NotFound(f"No host {name!r} with an Open vSwitch agent.")
        return found

    async def network_hosts(request: Request) -> Response:
        """The hosts with an OVS agent, and what each holds."""
        admin(request)
        return JSONResponse({"hosts": [{
            "host": w.host, "role": w.role, "local_ip": w.local_ip,
            "management_ip": w.management_ip, "bridges": [b.name for b in w.bridges],
            "namespaces": [n.name for n in w.namespaces],
            "ports": [v.port_id for v in w.vifs], "local_vlans": w.local_vlans,
        } for w in wire(topology()).values()]})

    async def network_topology(request: Request) -> Response:
        """What the agents compute the wiring from: neutron's state as one snapshot."""
        admin(request)
        return JSONResponse({"topology": topology_to_dict(topology())})

    async def network_host(request: Request) -> Response:
        """One host's wiring as data: bridges, ports, flows, devices, rules, namespaces."""
        admin(request)
        return JSONResponse({"wiring": host_wiring(request).to_dict()})

    async def network_host_commands(request: Request) -> Response:
        """The same wiring as the text of the operator's commands on that host."""
        admin(request)
        found = host_wiring(request)
        return JSONResponse({"host": found.host, "commands": network_render.commands(found)})

    async def network_walk(request: Request) -> Response:
        """A packet's hops from a port (or from outside, with source_ip) to an address."""
        admin(request)
        q = request.query_params
        destination, protocol = q.get("destination"), q.get("protocol", "icmp")
        if not destination:
            raise BadRequest("destination is required: the address the packet is sent to.")
        if protocol not in PROTOCOLS:
            raise BadRequest(f"protocol must be one of {', '.join(PROTOCOLS)}.")
        try:
            port = int(q["port"]) if q.get("port") else None
        except ValueError as exc:
            raise BadRequest("port must be a whole number") from exc
        port_id, source_ip = q.get("port_id") or None, q.get("source_ip") or None
        if port_id is None and source_ip is None:
            raise BadRequest("Give port_id (a VM's port) or source_ip (a sender outside).")
        snapshot = topology()
        if port_id is not None and all(p.id != port_id for p in snapshot.ports):
            raise NotFound(f"Port {port_id} could not be found.")
        try:
            hops = packet_walk(snapshot, port_id, destination, protocol, port, source_ip)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        return JSONResponse({"hops": [h.to_dict() for h in hops], "text": format_walk(hops)})

    async def volume_targets(request: Request) -> Response:
        """The volume node's iSCSI targets, as data and as `tgtadm --op show` prints them."""
        admin(request)
        targets = cloud.volume.targets
        return JSONResponse({"targets": targets.describe(), "text": targets.show()})

    # -- the troubleshooting lab's faults (labkit.cloud.faults)

    async def faults(request: Request) -> Response:
        """The active faults, and every kind with its parameters and symptom."""
        admin(request)
        return JSONResponse({"faults": cloud.faults.listing(), "kinds": cloud.faults.kinds()})

    async def inject_fault(request: Request) -> Response:
        admin(request)
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
            raise BadRequest("Expecting a JSON object with the fault's kind in 'kind' and its "
                             "parameters beside it.")
        params = {k: v for k, v in body.items() if k != "kind"}
        fault = await cloud.faults.inject(body["kind"], params)
        return JSONResponse({"fault": fault.to_dict()}, status_code=201)

    async def clear_fault(request: Request) -> Response:
        admin(request)
        await cloud.faults.clear(request.path_params["fault_id"])
        return Response(status_code=204)

    async def clear_faults(request: Request) -> Response:
        admin(request)
        await cloud.faults.clear_all()
        return Response(status_code=204)

    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/faults", faults, methods=["GET"]),
        Route("/faults", inject_fault, methods=["POST"]),
        Route("/faults", clear_faults, methods=["DELETE"]),
        Route("/faults/{fault_id}", clear_fault, methods=["DELETE"]),
        Route("/network/hosts", network_hosts, methods=["GET"]),
        Route("/network/topology", network_topology, methods=["GET"]),
        Route("/network/hosts/{host}", network_host, methods=["GET"]),
        Route("/network/hosts/{host}/commands", network_host_commands, methods=["GET"]),
        Route("/network/walk", network_walk, methods=["GET"]),
        Route("/servers/{server_id}/scheduling", scheduling, methods=["GET"]),
        Route("/servers/{server_id}/trace", server_trace, methods=["GET"]),
        Route("/scheduler/hosts", scheduler_hosts, methods=["GET"]),
        Route("/guests/{server_id}", guest, methods=["GET"]),
        Route("/volume/targets", volume_targets, methods=["GET"]),
        Route("/trace", trace, methods=["GET"]),
        Route("/tokens/decode", decode_token, methods=["POST"]),
        Route("/db/{service}/{table}", table_rows, methods=["GET"]),
    ], exception_handlers=exception_handlers())


def never_anonymous(method: str, path: str) -> bool:
    return False


