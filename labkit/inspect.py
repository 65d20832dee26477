"""What the public API cannot show: the trace, a token's insides, the database rows.

On the embedded cloud an `Inspector` reads the admin-only inspection API
(`/labkit/v1/`). On any other cloud, or with `LABKIT_FOREIGN=1`, every method
returns a `Hidden` that says what cannot be seen and what an operator would
run on the host instead, so the same notebook cell works on both.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from openstack.connection import Connection

from labkit.cloud.settings import env_flag
from labkit.connect import connect, is_embedded

if TYPE_CHECKING:
    from labkit.cloud.network.topology import Topology
    from labkit.cloud.network.wiring import HostWiring

OPERATOR_VIEWS = ("ovs-vsctl show", "ovs-ofctl dump-flows br-tun", "brctl show", "ip netns",
                  "iptables-save")


class Hidden:
    """Something this cloud does not show. Falsy and empty, and it explains itself in a notebook."""

    def __init__(self, what: str, why: str, operator: str | None = None) -> None:
        self.what = what
        self.why = why
        self.operator = operator

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __repr__(self) -> str:
        text = f"Not visible on this cloud: {self.what}. {self.why}"
        if self.operator:
            text += f" An operator would run: {self.operator}"
        return text

    def _repr_markdown_(self) -> str:
        text = f"**Not visible on this cloud:** {self.what}. {self.why}"
        if self.operator:
            text += f"\n\nOn the host, an operator would run:\n\n```\n{self.operator}\n```"
        return text


class TraceEvents(list):
    """Trace events, shown as a table: time since the first, kind, who talked to whom, what."""

    def _rows(self) -> list[tuple[str, str, str, str]]:
        start = self[0]["time"] if self else 0.0
        return [(f"{(e['time'] - start) * 1000:.1f} ms", e["kind"],
                 f"{e['source']} -> {e['target']}", e["summary"]) for e in self]

    def __repr__(self) -> str:
        if not self:
            return "No trace events."
        rows = self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}"
                         for r in rows)

    def _repr_html_(self) -> str:
        if not self:
            return "<p><em>No trace events.</em></p>"
        rows = "".join(
            f"<tr><td>{at}</td><td>{html.escape(kind)}</td>"
            f"<td>{html.escape(who).replace('-&gt;', '&rarr;')}</td>"
            f"<td style='text-align:left'>{html.escape(what)}</td></tr>"
            for at, kind, who, what in self._rows()
        )
        return ("<table><thead><tr><th>at</th><th>kind</th><th>from &rarr; to</th>"
                f"<th style='text-align:left'>what</th></tr></thead><tbody>{rows}</tbody></table>")


class Rows(list):
    """Database rows, shown as a table."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
        super().__init__(rows)
        self.columns = columns
        self.title = title

    def __repr__(self) -> str:
        rows = [self.columns, *([str(r.get(c)) for c in self.columns] for r in self)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        return "\n".join([self.title, *lines])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        # values in <code>: a bcrypt hash's "$2b$...$" would otherwise be typeset as math
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'><code>{html.escape(str(r.get(c)))}"
                             "</code></td>" for c in self.columns)
            + "</tr>" for r in self)
        return (f"<p><code>{html.escape(self.title)}</code></p><table><thead><tr>{head}</tr>"
                f"</thead><tbody>{body}</tbody></table>")


class Commands(dict):
    """Operator commands and what they print on one host, shown like a terminal session."""

    def __init__(self, host: str, outputs: dict[str, str]) -> None:
        super().__init__(outputs)
        self.host = host

    def __repr__(self) -> str:
        return "\n".join(f"root@{self.host}:~# {command}\n{output}"
                         for command, output in self.items())

    def _repr_html_(self) -> str:
        return "".join(f"<p><code>root@{html.escape(self.host)}:~# {html.escape(command)}"
                       f"</code></p><pre>{html.escape(output)}</pre>"
                       for command, output in self.items())


class Code(str):
    """A file or command line as the host has it (libvirt XML, qemu's arguments), shown
    verbatim."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"


def command_line(argv: list[str]) -> str:
    """qemu's argument list as a shell command, one option and its value per line."""
    lines, current = [], [shlex.quote(argv[0])] if argv else []
    for arg in argv[1:]:
        if arg.startswith("-") and current:
            lines.append(" ".join(current))
            current = []
        current.append(shlex.quote(arg))
    lines.append(" ".join(current))
    return " \\\n    ".join(lines)


class Walk(list):
    """A packet walk's hops, shown as numbered steps with the rule that decided each."""

    def __repr__(self) -> str:
        from labkit.cloud.network.walk import format_walk

        return format_walk(list(self)) if self else "No hops."

    def _repr_html_(self) -> str:
        rows = []
        for n, hop in enumerate(self, start=1):
            tags = ", ".join(t for t in (f"VLAN {hop.vlan}" if hop.vlan is not None else "",
                                         f"tunnel {hop.tunnel_id:#x}"
                                         if hop.tunnel_id is not None else "") if t)
            color = {"drop": "#b22222", "deliver": "#1a7f37"}.get(hop.verdict, "inherit")
            detail = html.escape(hop.what)
            if hop.nat:
                detail += f"<br/><b>NAT</b> {html.escape(hop.nat)}"
            if hop.rule:
                detail += "".join(f"<br/><code>{html.escape(line)}</code>"
                                  for line in hop.rule.splitlines())
            rows.append(f"<tr><td>{n}</td><td>{html.escape(hop.host or 'outside')}</td>"
                        f"<td><code>{html.escape(hop.device)}</code></td><td>{tags}</td>"
                        f"<td>{html.escape(hop.src)} &rarr; {html.escape(hop.dst)}</td>"
                        f"<td style='color:{color}'>{hop.verdict}</td>"
                        f"<td style='text-align:left'>{detail}</td></tr>")
        return ("<table><thead><tr><th>#</th><th>host</th><th>device</th><th>tag</th>"
                "<th>packet</th><th>verdict</th><th style='text-align:left'>what happens</th>"
                f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


class Inspector:
    """The internals of the cloud behind `conn`, as far as that cloud lets us see them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._admin: Connection | None = None
        if env_flag("LABKIT_FOREIGN"):
            self.reason = ("LABKIT_FOREIGN is set, so labkit treats this cloud as a real one "
                           "that hides its internals.")
        elif not is_embedded(conn):
            self.reason = "This is not labkit's embedded cloud, and real clouds keep these to " \
                          "their operators."
        else:
            self.reason = ""
            self._admin = connect("labkit-admin")
            self._base = self._admin.config.get_auth_args()["auth_url"].rsplit("/identity", 1)[0]

    @property
    def available(self) -> bool:
        return self._admin is not None

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        assert self._admin is not None
        query = {k: v for k, v in params.items() if v is not None}
        return self._admin.session.get(self._base + "/labkit/v1" + path, params=query).json()

    def settings(self) -> dict[str, Any] | Hidden:
        """The embedded cloud's settings: pace, deterministic mode, bcrypt cost, token lifetime."""
        if not self.available:
            return Hidden("the cloud's settings", self.reason,
                          "grep -v '^#' /etc/keystone/keystone.conf | grep -A3 '\\[token\\]'")
        return self._get("/")["labkit"]

    def trace(self, request_id: str | None = None, since: float | None = None,
              until: float | None = None, kind: str | None = None) -> TraceEvents | Hidden:
        """Every API request and internal step, by request id or time window."""
        if not self.available:
            return Hidden("the trace of requests inside the cloud", self.reason,
                          f"grep {request_id or 'req-...'} /var/log/keystone/*.log "
                          "/var/log/nova/*.log")
        events = self._get("/trace", request_id=request_id, since=since, until=until,
                           kind=kind)["events"]
        return TraceEvents(events)

    def token(self, token: str) -> dict[str, Any] | Hidden:
        """A Fernet token taken apart: an envelope anyone can read, a payload only keystone can."""
        if not self.available:
            return Hidden("what is inside a token", "Fernet tokens are encrypted with keys only "
                          "keystone holds (/etc/keystone/fernet-keys/); ask keystone with "
                          "GET /v3/auth/tokens instead. " + self.reason)
        assert self._admin is not None
        url = self._base + "/labkit/v1/tokens/decode"
        return self._admin.session.post(url, json={"token": token}).json()

    def rows(self, service: str, table: str, columns: list[str] | None = None,
             **where: Any) -> Rows | Hidden:
        """A service's database table as the cloud stores it; `columns` picks some and
        `where` keeps rows by value (``uuid=server.id``)."""
        wanted = ", ".join(columns) if columns else "*"
        if not self.available:
            condition = " AND ".join(f"{k}='{v}'" for k, v in where.items())
            return Hidden(f"the {service} database's {table} table", self.reason,
                          f"mysql {service} -e \"SELECT {wanted} FROM {table}"
                          + (f" WHERE {condition}" if condition else "") + '"')
        data = self._get(f"/db/{service}/{table}", **where)
        title = f"{service}.{table}" + "".join(f" {k}={v}" for k, v in where.items())
        return Rows(data["rows"], columns or data["columns"], title)

    def scheduling(self, server_id: str) -> list[dict[str, Any]] | Hidden:
        """Each scheduling decision for the server: what placement offered, each filter's
        verdict per host, each weigher's weights, the chosen host and the alternates."""
        if not self.available:
            return Hidden("why the scheduler chose this host", "The API shows only the result "
                          "(hostId; the host itself to admins). " + self.reason,
                          f"grep {server_id} /var/log/nova/nova-scheduler.log "
                          "# with [filter_scheduler] debug logging on")
        return self._get(f"/servers/{server_id}/scheduling")["decisions"]

    def server_trace(self, server_id: str) -> TraceEvents | Hidden:
        """Every API request, message and state change of every request that acted on it."""
        if not self.available:
            return Hidden("the messages between nova's services", self.reason,
                          f"grep {server_id} /var/log/nova/*.log")
        return TraceEvents(self._get(f"/servers/{server_id}/trace")["events"])

    def scheduler_hosts(self) -> dict[str, Any] | Hidden:
        """The compute hosts as the scheduler sees them now, and its configuration."""
        if not self.available:
            return Hidden("the scheduler's view of each host", "Admins can list hypervisors, "
                          "but not the scheduler's own state. " + self.reason,
                          "openstack resource provider list; openstack resource provider "
                          "usage show <uuid>")
        return self._get("/scheduler/hosts")

    def wiring(self, host: str) -> HostWiring | Hidden:
        """What neutron's agents set up on `host`: bridges and ports with their VLAN tags,
        br-tun's flows, the qbr bridges, iptables chains, namespaces."""
        if not self.available:
            return Hidden(f"the port wiring on {host}", "Neutron's API shows ports and their "
                          "binding, not the devices the agents made. " + self.reason,
                          "; ".join(OPERATOR_VIEWS))
        from labkit.cloud.network.wiring import HostWiring

        return HostWiring.from_dict(self._get(f"/network/hosts/{host}")["wiring"])

    def topology(self) -> Topology | Hidden:
        """Neutron's state as the agents see it (networks, ports and their hosts, routers,
        floating IPs, local VLANs): what `labkit.networking` computes "what if" from."""
        if not self.available:
            return Hidden("the agents' view of the networks", self.reason,
                          "openstack port list --long; openstack network agent list")
        from labkit.cloud.network.topology import topology_from_dict

        return topology_from_dict(self._get("/network/topology")["topology"])

    def wirings(self) -> dict[str, HostWiring] | Hidden:
        """`wiring()` of every host with an Open vSwitch agent, by host name (what
        `labkit.diagrams.wiring` draws)."""
        if not self.available:
            return Hidden("the port wiring of the hosts", self.reason,
                          "openstack network agent list --agent-type open-vswitch; then on "
                          "each host: " + "; ".join(OPERATOR_VIEWS))
        from labkit.cloud.network.wiring import wire

        # one snapshot, wired here by the agents' own code: not a request (and a full
        # wiring of the cloud on the server) per host
        topology = self.topology()
        return wire(topology) if topology else topology

    def host_commands(self, host: str) -> Commands | Hidden:
        """What `ovs-vsctl show`, `ovs-ofctl dump-flows br-tun`, `brctl show`, `ip netns`,
        `ip netns exec … ip addr` and `iptables-save` print on `host`."""
        if not self.available:
            return Hidden(f"the operator's view of {host}", self.reason,
                          f"ssh {host}, then: " + "; ".join(OPERATOR_VIEWS))
        data = self._get(f"/network/hosts/{host}/commands")
        return Commands(data["host"], data["commands"])

    def packet_walk(self, port_id: str | None, destination: str, protocol: str = "icmp",
                    port: int | None = None, source_ip: str | None = None) -> Walk | Hidden:
        """The hops of a packet from a port (or from `source_ip` outside the cloud, with
        `port_id=None`) to `destination`: devices, VLAN tags, tunnel ids, NAT, and the
        security group rule that accepts it or the point where it is dropped."""
        if not self.available:
            if port_id:
                operator = (f"tcpdump -eni tap{port_id[:11]} host {destination}; "
                            f"ovs-appctl ofproto/trace br-int in_port=qvo{port_id[:11]},"
                            f"{protocol},nw_dst={destination}")
            else:
                operator = (f"ip netns exec qrouter-<router id> tcpdump -ni qg-<gateway port> "
                            f"host {destination}")
            return Hidden("the path a packet takes through the wiring", self.reason, operator)
        from labkit.cloud.network.walk import Hop

        data = self._get("/network/walk", port_id=port_id, destination=destination,
                         protocol=protocol, port=port, source_ip=source_ip)
        return Walk(Hop(**hop) for hop in data["hops"])


    # -- the hypervisor

    def guest(self, server_id: str) -> dict[str, Any] | Hidden:
        """What the server's compute host holds for it: the driver, and on qemu the domain
        XML, the qemu command line, the console log, the image cache and the forwards."""
        if not self.available:
            return Hidden("the hypervisor's view of this server", "The API shows the host "
                          "(to admins) and the power state, not the domain. " + self.reason,
                          "virsh list --all; virsh dumpxml instance-<id as 8 hex digits>")
        return self._get(f"/guests/{server_id}")

    def volume_targets(self) -> Code | Hidden:
        """The volume node's iSCSI targets, as `tgtadm --lld iscsi --mode target --op show`
        prints them: one per volume exported to a compute host, with its ACL and account."""
        if not self.available:
            return Hidden("the storage node's iSCSI targets", "The API shows a volume's "
                          "status and attachments, and admins its connection info. "
                          + self.reason, "tgtadm --lld iscsi --mode target --op show  "
                          "# on the cinder-volume host (targetcli ls with LIO)")
        return Code(self._get("/volume/targets")["text"])

    def domain_xml(self, server_id: str) -> Code | Hidden:
        """The libvirt domain XML nova's libvirt driver would write for this server."""
        if not self.available:
            return Hidden("the libvirt domain XML", self.reason,
                          "virsh dumpxml instance-<id as 8 hex digits>  # on its compute host")
        guest = self._get(f"/guests/{server_id}")
        return Code(guest.get("domain_xml") or f"(the {guest['driver']} driver writes no "
                    "domain XML)")

    def qemu_command(self, server_id: str) -> Code | Hidden:
        """The qemu command line the guest runs with."""
        if not self.available:
            return Hidden("qemu's command line", self.reason,
                          "ps -o args= -C qemu-system-x86_64 | grep instance-  # on its "
                          "compute host")
        guest = self._get(f"/guests/{server_id}")
        argv = guest.get("command")
        return Code(command_line(argv) if argv else f"(the {guest['driver']} driver starts "
                    "no process)")


    # -- the troubleshooting lab's faults

    def _faults_hidden(self, what: str) -> Hidden:
        return Hidden(what, "Faults are injected into labkit's embedded cloud only; on a real "
                      "cloud an operator breaks things by hand. " + self.reason,
                      "systemctl stop nova-compute  # or a typo in a service's password")

    def fault_kinds(self) -> list[dict[str, Any]] | Hidden:
        """Each kind of fault: its parameters, what it breaks and the symptom a user sees."""
        if not self.available:
            return self._faults_hidden("the kinds of faults labkit can inject")
        return self._get("/faults")["kinds"]

    def faults(self) -> list[dict[str, Any]] | Hidden:
        """The faults active now."""
        if not self.available:
            return self._faults_hidden("the faults injected into this cloud")
        return self._get("/faults")["faults"]

    def _faults_url(self, suffix: str = "") -> str:
        return self._base + "/labkit/v1/faults" + suffix

    def inject_fault(self, kind: str, **params: Any) -> dict[str, Any] | Hidden:
        """Break one thing (`inject_fault("compute-down", host="compute-1")`); the fault,
        with the id `clear_fault` takes."""
        if not self.available:
            return self._faults_hidden("fault injection")
        assert self._admin is not None
        r = self._admin.session.post(self._faults_url(), json={"kind": kind, **params},
                                     raise_exc=False)
        if r.status_code != 201:
            raise ValueError(_message(r))
        return r.json()["fault"]

    def clear_fault(self, fault_id: str) -> None | Hidden:
        """Undo one fault."""
        if not self.available:
            return self._faults_hidden("fault injection")
        assert self._admin is not None
        r = self._admin.session.delete(self._faults_url(f"/{fault_id}"), raise_exc=False)
        if r.status_code != 204:
            raise ValueError(_message(r))
        return None

    def clear_faults(self) -> None | Hidden:
        """Undo every fault."""
        if not self.available:
            return self._faults_hidden("fault injection")
        assert self._admin is not None
        self._admin.session.delete(self._faults_url())
        return None


def _message(response: Any) -> str:
    """The message of an inspection API error (keystone's {"error": {...}} format)."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.text}"


def inspector(conn: Connection) -> Inspector:
    """The inspector for the cloud behind `conn`."""
    return Inspector(conn)
