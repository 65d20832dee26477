"""Graphviz pictures drawn from what a cloud returns: its service catalog, its trace.

Each function returns a `graphviz.Digraph`, which Jupyter shows as SVG; call
`.render(format="png")` on it to keep a file. Nothing here talks to a cloud:
pass in the catalog or the trace events you already have.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import graphviz

# One palette for every picture: clients grey, keystone gold, other services blue.
FONT = "Helvetica"
MONO = "Courier"
CLIENT_FILL = "#eeeeee"
KEYSTONE_FILL = "#ffe9a8"
KEYSTONE_LINE = "#b8860b"
SERVICE_FILL = "#dbeafe"
SERVICE_LINE = "#4a6fa5"
REFUSED = "#b22222"
MUTED = "#666666"

# What the trace calls each service, and the catalog type it serves.
SERVICE_TYPES = {
    "keystone": "identity",
    "nova-api": "compute",
    "neutron-server": "network",
    "glance-api": "image",
    "cinder-api": "block-storage",
    "placement-api": "placement",
}
CLIENTS = ("openstacksdk", "keystoneauth", "openstack CLI", "client")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


# -- the service catalog ---------------------------------------------------------------------


def _endpoint_lines(endpoints: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(interfaces, url) pairs: interfaces that share a URL are listed together."""
    by_url: dict[str, list[str]] = {}
    regions = {e.get("region_id") or e.get("region") for e in endpoints}
    for ep in endpoints:
        where = ep.get("interface", "?")
        if len(regions) > 1:
            where += f" ({ep.get('region_id') or ep.get('region')})"
        by_url.setdefault(ep.get("url", ""), []).append(where)
    return [(" · ".join(wheres), url) for url, wheres in by_url.items()]


def _group_label(group: list[Mapping[str, Any]], start: bool, width: int) -> str:
    """One node's label: the names and types of services that share their endpoints."""
    rows = [f'<tr><td align="left" width="{width - 110}"><b>'
            f'{_esc(s.get("name") or s.get("type", "?"))}</b></td><td align="right" width="110">'
            f'<font color="{MUTED}">{_esc(s.get("type", ""))}</font></td></tr>' for s in group]
    for interfaces, url in _endpoint_lines(group[0].get("endpoints", [])):
        rows.append(f'<tr><td align="left" colspan="2"><font face="{MONO}" point-size="10">'
                    f"{_esc(url)}</font></td></tr>")
        rows.append(f'<tr><td align="left" colspan="2"><font point-size="9" color="{MUTED}">'
                    f"{_esc(interfaces)}</font></td></tr>")
    if start:
        rows.append(f'<tr><td align="left" colspan="2"><font point-size="10" '
                    f'color="{KEYSTONE_LINE}"><b>everything starts here: '
                    "POST /v3/auth/tokens</b></font></td></tr>")
    return (f'<<table border="0" cellborder="0" cellspacing="0" cellpadding="2" width="{width}">'
            + "".join(rows) + "</table>>")


def _groups(catalog: Iterable[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Services grouped by their endpoints (cinder's two types share one API); keystone first."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for service in catalog:
        key = tuple(sorted((e.get("interface"), e.get("region_id") or e.get("region"),
                            e.get("url")) for e in service.get("endpoints", [])))
        groups.setdefault(key or (service.get("type"),), []).append(service)
    return sorted(groups.values(), key=lambda g: all(s.get("type") != "identity" for s in g))


def service_catalog(catalog: Iterable[Mapping[str, Any]], client: str = "you") -> graphviz.Digraph:
    """The catalog a token carries: each service's name, type and URL; keystone first.

    `catalog` is keystone's list of services (`access.service_catalog.catalog`
    in keystoneauth, `token["catalog"]` in the API's JSON). Services that share
    their endpoints share a box.
    """
    groups = _groups(catalog)
    graph = graphviz.Digraph("service_catalog", graph_attr={
        "rankdir": "LR", "compound": "true", "fontname": FONT, "nodesep": "0.15",
        "ranksep": "0.9", "bgcolor": "transparent",
        "size": "9.5,20"})  # inches: shrink to a notebook's width, never grow
    graph.attr("node", fontname=FONT, fontsize="11", shape="box", style="rounded,filled",
               margin="0.12,0.06")
    graph.attr("edge", fontname=FONT, fontsize="10")
    graph.node("client", f"<<b>{_esc(client)}</b><br/><font point-size='9'>openstacksdk, "
               "the CLI</font>>", fillcolor=CLIENT_FILL, color=MUTED)
    if not groups:
        graph.node("empty", "no catalog: an unscoped token carries none", shape="plaintext",
                   style="", fontcolor=MUTED)
        return graph
    # one width for every box, so the column reads as a list
    widest = max(len(e.get("url", "")) for g in groups for s in g
                 for e in s.get("endpoints", [{}]))
    width = int(max(widest * 6.0 + 8, 260))
    keystone = first = None
    with graph.subgraph(name="cluster_catalog") as cluster:
        cluster.attr(label="the service catalog in your token", fontname=FONT, fontsize="11",
                     style="rounded,dashed", color=MUTED, fontcolor=MUTED)
        for i, group in enumerate(groups):
            node = f"s{i}"
            if keystone is None and any(s.get("type") == "identity" for s in group):
                keystone = node
                cluster.node(node, _group_label(group, True, width),
                             fillcolor=KEYSTONE_FILL, color=KEYSTONE_LINE, penwidth="2")
            else:
                first = first or node
                cluster.node(node, _group_label(group, False, width),
                             fillcolor=SERVICE_FILL, color=SERVICE_LINE)
    # every box one step from the client: one column, in the catalog's order
    for i in range(len(groups)):
        if f"s{i}" not in (keystone, first):
            graph.edge("client", f"s{i}", style="invis")
    if keystone:
        graph.edge("client", keystone, label=" 1. sign in: token + catalog ", color=KEYSTONE_LINE,
                   fontcolor=KEYSTONE_LINE, penwidth="2")
    if first:
        graph.edge("client", first, lhead="cluster_catalog", color=SERVICE_LINE,
                   fontcolor=SERVICE_LINE, label=" 2. call a service,\n    with X-Auth-Token ")
    return graph


# -- sequence pictures from the trace ----------------------------------------------------------


@dataclass
class _Step:
    """One row of a sequence picture: an arrow between two lifelines, or a loop on one."""

    source: str
    target: str
    lines: list[str]
    reply: bool = False
    color: str = "black"
    bold_first: bool = False


@dataclass
class _Sequence:
    participants: list[str] = field(default_factory=list)
    steps: list[_Step] = field(default_factory=list)
    clients: set[str] = field(default_factory=set)

    def add(self, step: _Step) -> None:
        for name in (step.source, step.target):
            if name not in self.participants:
                self.participants.append(name)
        self.steps.append(step)


def _get(event: Any, key: str, default: Any = None) -> Any:
    if isinstance(event, Mapping):
        return event.get(key, default)
    return getattr(event, key, default)


def _short(text: str, limit: int = 56) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status_text(status: Any) -> str:
    try:
        return f"{int(status)} {HTTPStatus(int(status)).phrase}"
    except (TypeError, ValueError):
        return str(status)


def _auth_lines(detail: Mapping[str, Any]) -> list[str]:
    outcome = str(detail.get("outcome", "?"))
    if outcome != "valid" or not detail.get("user"):
        return [outcome]
    scope = f" in {detail['project']}" if detail.get("project") else " (unscoped)"
    roles = ", ".join(detail.get("roles") or []) or "no roles"
    return [f"valid: {detail['user']}{scope}", f"roles: {roles}"]


def _steps_for_request(api: Any, inner: list[Any], seq: _Sequence) -> None:
    detail = _get(api, "detail") or {}
    client, service = _get(api, "source", "client"), _get(api, "target", "?")
    method, path = detail.get("method", ""), detail.get("path", "")
    lines = [_short(f"{method} {path}".strip() or _get(api, "summary", ""))]
    if any(_get(e, "kind") == "auth" for e in inner):
        lines.append("X-Auth-Token: <token>")
    seq.clients.add(client)
    seq.add(_Step(client, service, lines, bold_first=True))
    # what happened before the answer went back, then the answer, then the rest (casts
    # keep the cloud working after the client has its 202)
    answered = _get(api, "time", 0.0) + float(detail.get("duration_ms") or 0.0) / 1000
    later = [e for e in inner if _get(e, "time", 0.0) > answered]
    for event in inner:
        if event not in later:
            _steps_for_event(event, seq)
    status = detail.get("status")
    reply = [_status_text(status)]
    ok = isinstance(status, int) and status < 400
    if ok and method == "POST" and path.rstrip("/").endswith("/auth/tokens"):
        reply.append("X-Subject-Token: <new token>")
    if detail.get("duration_ms") is not None:
        reply[0] += f"  ({float(detail['duration_ms']):.1f} ms)"
    seq.add(_Step(service, client, reply, reply=True, color="black" if ok else REFUSED))
    for event in later:
        _steps_for_event(event, seq)


def _steps_for_event(event: Any, seq: _Sequence) -> None:
    source, target = _get(event, "source", "?"), _get(event, "target", "?")
    detail = _get(event, "detail") or {}
    if _get(event, "kind") == "auth":
        outcome = _auth_lines(detail)
        refused = not outcome[0].startswith("valid")
        color = REFUSED if refused else "black"
        if source == target:
            # the service's own auth_token middleware, in process
            seq.add(_Step(source, target, ["auth_token middleware:", "validate X-Auth-Token",
                                           *outcome], color=color))
        else:
            seq.add(_Step(source, target, ["validate X-Auth-Token"]))
            seq.add(_Step(target, source, outcome, reply=True, color=color))
        return
    # the answer to an RPC call goes back dashed, like an HTTP reply
    seq.add(_Step(source, target, [_short(str(_get(event, "summary", "")))],
                  reply=detail.get("type") == "reply"))


def _sequence(events: Iterable[Any], hide: Sequence[str]) -> _Sequence:
    events = [e for e in events
              if _get(e, "source") not in hide and _get(e, "target") not in hide]
    events.sort(key=lambda e: (_get(e, "time", 0.0), _get(e, "seq") or 0))
    # A request's first API call frames it; the services' own calls that carry the same
    # request id (nova-compute asking neutron or glance) are steps inside that frame.
    first: dict[str, Any] = {}
    for e in events:
        if _get(e, "kind") == "api":
            first.setdefault(_get(e, "request_id"), e)
    inner: dict[str, list[Any]] = {}
    for e in events:
        rid = _get(e, "request_id")
        if rid in first and e is not first[rid]:
            inner.setdefault(rid, []).append(e)
    seq = _Sequence()
    for e in events:
        rid = _get(e, "request_id")
        if rid in first and e is first[rid]:
            _steps_for_request(e, inner.get(rid, []), seq)
        elif rid not in first:
            _steps_for_event(e, seq)
    return seq


# Layout, in points. Labels use a monospace font, so their width is known before rendering.
CHAR_W = 6.0  # Courier at 10 pt
LINE_H = 13.0
ROW_GAP = 16.0
LOOP_W = 28.0
MIN_GAP = 150.0


def _text_width(lines: list[str]) -> float:
    return max((len(line) for line in lines), default=0) * CHAR_W


def _title(name: str, client: bool) -> tuple[str, str]:
    """A participant's name and the small line under it: "nova-compute@compute-1" is
    nova-compute on compute-1."""
    if "@" in name:
        what, host = name.split("@", 1)
        return what, f"on {host}"
    if name.endswith("-db"):
        return name, "database"
    return name, "client" if client else SERVICE_TYPES.get(name, "")


def _header(name: str, client: bool) -> tuple[str, str, str]:
    """(label, fill, line colour) of a participant's box."""
    title, sub = _title(name, client)
    label = f"<<b>{_esc(title)}</b>" + (f'<br/><font point-size="9">{_esc(sub)}</font>'
                                           if sub else "") + ">"
    if client:
        return label, CLIENT_FILL, MUTED
    if name == "keystone":
        return label, KEYSTONE_FILL, KEYSTONE_LINE
    return label, SERVICE_FILL, SERVICE_LINE


def _label(lines: list[str], color: str, bold_first: bool) -> str:
    cells = []
    for i, line in enumerate(lines):
        text = _esc(line)
        if bold_first and i == 0:
            text = f"<b>{text}</b>"
        cells.append(f'<tr><td align="left"><font face="{MONO}" point-size="10" '
                     f'color="{color}">{text}</font></td></tr>')
    return ('<<table border="0" cellborder="0" cellspacing="0" cellpadding="0">'
            + "".join(cells) + "</table>>")


def token_flow(events: Iterable[Any], hide: Sequence[str] = ("labkit-inspector",),
               title: str | None = None) -> graphviz.Digraph:
    """A sequence picture of trace events: who called whom, in time order.

    Each API event (kind "api") becomes a request arrow and a reply arrow
    (status and duration); the events that share its request id are drawn
    between them: an "auth" event is the service's token check against
    keystone (a loop when the service is keystone itself), any other kind an
    arrow with its summary. Participants named in `hide` are left out.
    """
    seq = _sequence(events, hide)
    graph = graphviz.Digraph("token_flow", engine="neato", graph_attr={
        "inputscale": "72", "splines": "line", "overlap": "true", "fontname": FONT,
        "bgcolor": "transparent", "pad": "0.2"})
    graph.attr("node", fontname=FONT, fontsize="11")
    graph.attr("edge", arrowsize="0.7")
    if not seq.steps:
        graph.node("empty", "no trace events to draw", shape="plaintext", pos="0,0!")
        return graph

    # columns: wide enough for the widest label between two lifelines
    cols = {name: i for i, name in enumerate(seq.participants)}
    gaps = [MIN_GAP] * max(len(cols) - 1, 0)
    tail = 60.0  # room right of the last lifeline, for loops drawn there
    for step in seq.steps:
        a, b = sorted((cols[step.source], cols[step.target]))
        need = _text_width(step.lines) + 30
        if a == b:
            need = LOOP_W + 14 + _text_width(step.lines)
            if a < len(gaps):
                gaps[a] = max(gaps[a], need)
            else:
                tail = max(tail, need)
        else:
            for i in range(a, b):
                gaps[i] = max(gaps[i], need / (b - a))
    for i in range(len(gaps)):
        # neighbouring boxes must not touch: half of each one's width, and a margin
        halves = [max(len(t) for t in _title(seq.participants[j], False)) * 4.2 + 12
                  for j in (i, i + 1)]
        gaps[i] = max(gaps[i], sum(halves) + 16)
    xs = [0.0]
    for gap in gaps:
        xs.append(xs[-1] + gap)

    # rows, from the top down
    y = -40.0
    top = 0.0
    for name, x in zip(seq.participants, xs, strict=True):
        label, fill, line = _header(name, name in seq.clients or name in CLIENTS)
        graph.node(f"h{cols[name]}", label, shape="box", style="rounded,filled",
                   fillcolor=fill, color=line, pos=f"{x:.1f},{top:.1f}!")
    point = {"shape": "point", "width": "0.01", "height": "0.01", "color": "#00000000"}
    for n, step in enumerate(seq.steps):
        height = len(step.lines) * LINE_H
        xa, xb = xs[cols[step.source]], xs[cols[step.target]]
        style = "dashed" if step.reply else "solid"
        label = _label(step.lines, step.color, step.bold_first)
        if xa == xb:  # a loop on one lifeline, its text to the right
            y -= 6
            y1, y2 = y, y - max(height - 4, 18)
            graph.node(f"p{n}a", "", pos=f"{xa:.1f},{y1:.1f}!", **point)
            graph.node(f"p{n}b", "", pos=f"{xa + LOOP_W:.1f},{y1:.1f}!", **point)
            graph.node(f"p{n}c", "", pos=f"{xa + LOOP_W:.1f},{y2:.1f}!", **point)
            graph.node(f"p{n}d", "", pos=f"{xa:.1f},{y2:.1f}!", **point)
            for u, v in (("a", "b"), ("b", "c")):
                graph.edge(f"p{n}{u}", f"p{n}{v}", arrowhead="none", color=step.color)
            graph.edge(f"p{n}c", f"p{n}d", color=step.color)
            width = _text_width(step.lines)
            graph.node(f"t{n}", label, shape="plaintext", margin="0",
                       pos=f"{xa + LOOP_W + 8 + width / 2:.1f},{(y1 + y2) / 2:.1f}!")
            y = y2 - ROW_GAP
            continue
        y -= height + 2
        graph.node(f"p{n}a", "", pos=f"{xa:.1f},{y:.1f}!", **point)
        graph.node(f"p{n}b", "", pos=f"{xb:.1f},{y:.1f}!", **point)
        graph.edge(f"p{n}a", f"p{n}b", style=style, color=step.color,
                   arrowhead="vee" if step.reply else "normal")
        graph.node(f"t{n}", label, shape="plaintext", margin="0",
                   pos=f"{(xa + xb) / 2:.1f},{y + height / 2 + 3:.1f}!")
        y -= ROW_GAP
    # lifelines
    for name, x in zip(seq.participants, xs, strict=True):
        i = cols[name]
        graph.node(f"end{i}", "", pos=f"{x:.1f},{y:.1f}!", **point)
        graph.edge(f"h{i}", f"end{i}", style="dashed", color="#999999", arrowhead="none")
    if title:
        width = xs[-1] + tail
        graph.node("title", f"<<b>{_esc(title)}</b>>", shape="plaintext",
                   pos=f"{width / 2 - 40:.1f},{top + 34:.1f}!")
    return graph


# -- the scheduler funnel --------------------------------------------------------------------

PASSED = "#1a7f37"
CHOSEN_FILL = "#e6f4ea"
PLACEMENT_FILL = "#f3e8ff"
PLACEMENT_LINE = "#7e57c2"
FUNNEL_WIDTH = 600  # points: one column of boxes, readable at a notebook's width


def _wrap(text: str, width: int = 88) -> str:
    """Escaped text, wrapped into left-aligned lines for an HTML-like label."""
    import textwrap

    lines = textwrap.wrap(str(text), width) or [""]
    return '<br align="left"/>'.join(_esc(line) for line in lines) + '<br align="left"/>'


def _funnel_box(title: str, subtitle: str, rows: list[str], fill: str, line: str,
                note: str = "") -> str:
    head = f'<tr><td align="left" colspan="3"><b>{_esc(title)}</b>'
    if note:
        head += f'  <font point-size="10">{_esc(note)}</font>'
    if subtitle and len(title) + len(note) + len(subtitle) <= 90:
        # on the title's line when it fits: one line less per stage
        head += f'  <font point-size="10" color="{MUTED}">{_esc(subtitle)}</font>'
        subtitle = ""
    head += "</td></tr>"
    if subtitle:
        head += (f'<tr><td align="left" colspan="3"><font point-size="10" color="{MUTED}">'
                 f"{_esc(subtitle)}</font></td></tr>")
    return (f'<<table border="0" cellborder="0" cellspacing="0" cellpadding="2" '
            f'width="{FUNNEL_WIDTH}" bgcolor="{fill}" color="{line}">' + head + "".join(rows)
            + "</table>>")


def _verdict_row(host: str, passed: bool, reason: str | list[str]) -> str:
    mark, color = ("✔", PASSED) if passed else ("✘", REFUSED)
    weight = ("", "") if passed else ("<b>", "</b>")
    reasons = [reason] if isinstance(reason, str) else reason
    return (f'<tr><td align="left" valign="top" width="14"><font color="{color}">{mark}</font>'
            f'</td><td align="left" valign="top" width="80"><font color="{color}">{weight[0]}'
            f"{_esc(host)}{weight[1]}</font></td>"
            f'<td align="left" valign="top" width="{FUNNEL_WIDTH - 100}"><font point-size="10">'
            f"{''.join(_wrap(r) for r in reasons)}</font></td></tr>")


def _count(n: int) -> str:
    return f"{n} host" + ("" if n == 1 else "s")


def _request_text(spec: Mapping[str, Any]) -> list[str]:
    asks = " · ".join(f"{k} {v}" for k, v in (spec.get("resources") or {}).items())
    lines = [f"asks placement for {asks}" if asks else "asks for nothing"]
    extras = []
    if spec.get("availability_zone"):
        extras.append(f"zone {spec['availability_zone']}")
    group = spec.get("group")
    if group:
        where = ", ".join(group.get("hosts") or []) or "no servers yet"
        extras.append(f"{group.get('policy')} group ({where})")
    if spec.get("image_properties"):
        extras.append("image: " + ", ".join(f"{k}={v}" for k, v in
                                            spec["image_properties"].items()))
    if spec.get("extra_specs"):
        extras.append("extra specs: " + ", ".join(f"{k}={v}" for k, v in
                                                  spec["extra_specs"].items()))
    if extras:
        lines.append("; ".join(extras))
    return lines


def _weights_table(decision: Any) -> str:
    """The weighed hosts, heaviest first: raw value, normalised, × multiplier, per weigher."""
    by_host = {w.host: w for w in decision.weights}
    names = [t.weigher for t in decision.weights[0].terms] if decision.weights else []
    config = decision.config or {}
    head = "".join(f'<td align="right"><font point-size="10"><b>{_esc(n)}</b><br/>'
                   f'<font color="{MUTED}">× {_mult(config, n)}</font></font></td>'
                   for n in names)
    rows = [f'<tr><td align="left"><font point-size="10"><b>rank</b></font></td>'
            f'<td align="left"><font point-size="10"><b>host</b></font></td>{head}'
            f'<td align="right"><font point-size="10"><b>weight</b></font></td></tr>']
    chosen = decision.chosen
    for i, entry in enumerate(decision.ranking, 1):
        row = by_host[entry.host]
        cells = "".join(
            f'<td align="right"><font point-size="10">{_raw(t.raw, t.weigher)} → '
            f"{t.normalized:.2f}</font></td>" for t in row.terms)
        color = PASSED if entry.host == chosen else "black"
        rows.append(f'<tr><td align="left"><font color="{color}">{i}</font></td>'
                    f'<td align="left"><font color="{color}"><b>{_esc(entry.host)}</b></font></td>'
                    f'{cells}<td align="right"><font color="{color}"><b>{entry.weight:.3f}</b>'
                    "</font></td></tr>")
    note = ("weight = Σ multiplier × normalised value (raw → normalised: raw ÷ the largest, "
            "as nova's weighers count from 0)")
    if len(decision.ranking) == 1:
        note = "one host left: nova does not weigh it"
    rows.append(f'<tr><td align="left" colspan="{len(names) + 3}"><font point-size="9" '
                f'color="{MUTED}">{_esc(note)}</font></td></tr>')
    return ('<<table border="0" cellborder="0" cellspacing="0" cellpadding="3" '
            f'width="{FUNNEL_WIDTH}" bgcolor="{SERVICE_FILL}">'
            f'<tr><td align="left" colspan="{len(names) + 3}"><b>weighers</b>  '
            f'<font point-size="10" color="{MUTED}">the hosts left, heaviest first</font>'
            "</td></tr>" + "".join(rows) + "</table>>")


_MULTIPLIERS = {"RAMWeigher": "ram_weight_multiplier", "CPUWeigher": "cpu_weight_multiplier",
                "DiskWeigher": "disk_weight_multiplier"}


def _mult(config: Mapping[str, Any], weigher: str) -> str:
    value = config.get(_MULTIPLIERS.get(weigher, ""), 1.0)
    return f"{float(value):g}"


def _raw(value: float, weigher: str) -> str:
    if weigher == "RAMWeigher":
        return f"{value:.0f} MB"
    if weigher == "DiskWeigher":  # free_disk_mb, shown in GB when it is whole GB
        return f"{value / 1024:g} GB" if value % 1024 == 0 else f"{value:.0f} MB"
    return f"{value:g}"


def scheduler_funnel(decision: Any) -> graphviz.Digraph:
    """How the scheduler chose: hosts → placement → each filter → weighers → the host.

    `decision` is a `labkit.cloud.compute.scheduler.Decision` or its `to_dict()`
    (what the inspection API returns). Each stage lists every host it asked and
    its answer; a host once removed is not asked again, as in nova.
    """
    from labkit.cloud.compute.scheduler import Decision

    if not isinstance(decision, Decision):
        decision = Decision.from_dict(decision)
    spec = decision.spec
    graph = graphviz.Digraph("scheduler_funnel", graph_attr={
        "rankdir": "TB", "fontname": FONT, "nodesep": "0.2", "ranksep": "0.32",
        "bgcolor": "transparent", "size": "9.5,40"})
    graph.attr("node", fontname=FONT, fontsize="11", shape="box", style="rounded,filled",
               margin="0.1,0.06", fillcolor="white")
    graph.attr("edge", fontname=FONT, fontsize="10", color=MUTED, fontcolor=MUTED,
               arrowsize="0.7")

    known = decision.hosts
    rows = [f'<tr><td align="left" colspan="3"><font point-size="10">{_wrap(line, 100)}</font>'
            "</td></tr>" for line in _request_text(spec)]
    rows.append(f'<tr><td align="left" colspan="3"><font point-size="10">the scheduler knows '
                f"{_count(len(known))}: {_esc(', '.join(known) or 'none')}</font></td></tr>")
    graph.node("request", _funnel_box(f"a server of flavor {spec.get('flavor', '?')}", "", rows,
                                      CLIENT_FILL, MUTED), fillcolor=CLIENT_FILL, color=MUTED)

    # placement
    rows = [_verdict_row(c.host, c.fits, "room for all of it" if c.fits else c.reasons)
            for c in decision.candidates]
    fitting = sum(1 for c in decision.candidates if c.fits)
    graph.node("placement", _funnel_box(
        "placement", "GET /allocation_candidates: which providers have room for the request?",
        rows, PLACEMENT_FILL, PLACEMENT_LINE, note=f"{len(known)} → {fitting}"),
        fillcolor=PLACEMENT_FILL, color=PLACEMENT_LINE)
    graph.edge("request", "placement", label=f" {_count(len(known))} ")
    previous, left = "placement", fitting

    # the filters that ran, then one box for those that had no host left to ask
    for i, stage in enumerate(s for s in decision.filters if s.ran):
        node = f"filter{i}"
        title = stage.name  # a historical filter's description says it is one
        rows = [_verdict_row(v.host, v.passed, v.reason) for v in stage.verdicts]
        note = f"{len(stage.verdicts)} → {len(stage.survivors)}"
        graph.node(node, _funnel_box(title, stage.description, rows, SERVICE_FILL,
                                     SERVICE_LINE, note),
                   fillcolor=SERVICE_FILL, color=SERVICE_LINE)
        graph.edge(previous, node, label=f" {_count(left)} ")
        previous, left = node, len(stage.survivors)
    idle = [s.name for s in decision.filters if not s.ran]
    if idle:
        rows = [f'<tr><td align="left" colspan="3"><font point-size="10" color="{MUTED}">'
                f'{_wrap(", ".join(idle), 100)}</font></td></tr>']
        graph.node("idle", _funnel_box("filters not run", "no host left to ask", rows,
                                       "#f5f5f5", "#bbbbbb"),
                   fillcolor="#f5f5f5", color="#bbbbbb")
        graph.edge(previous, "idle", label=" 0 hosts ", color=REFUSED, fontcolor=REFUSED)
        previous = "idle"

    # weighing and the outcome
    if decision.ranking:
        graph.node("weighers", _weights_table(decision), fillcolor=SERVICE_FILL,
                   color=SERVICE_LINE)
        graph.edge(previous, "weighers", label=f" {_count(left)} ")
        alternates = ", ".join(decision.alternates) or "none"
        label = (f'<<font point-size="13"><b>chosen: {_esc(decision.chosen)}</b></font><br/>'
                 f'<font point-size="10">alternates, should the build fail there: '
                 f"{_esc(alternates)}</font>>")
        graph.node("outcome", label, fillcolor=CHOSEN_FILL, color=PASSED, penwidth="2.5")
        graph.edge("weighers", "outcome", color=PASSED, penwidth="1.5")
    else:
        reason = (decision.no_valid_host_reason or "").strip()
        label = (f'<<font point-size="13" color="{REFUSED}"><b>{_esc(reason)}</b></font><br/>'
                 f'<font point-size="10">the server goes to ERROR with this fault</font>>')
        graph.node("outcome", label, fillcolor="#fde8e8", color=REFUSED, penwidth="2.5")
        graph.edge(previous, "outcome", color=REFUSED,
                   **({} if idle else {"label": " 0 hosts ", "fontcolor": REFUSED}))
    return graph


def sequence(events: Iterable[Any], hide: Sequence[str] = ("labkit-inspector",),
             title: str | None = None) -> graphviz.Digraph:
    """The sequence picture of any request's trace: API calls, token checks, RPC messages
    (casts, calls and their replies), calls to placement and state changes."""
    return token_flow(events, hide=hide, title=title)


# -- the port wiring of each host ------------------------------------------------------------

OVS_FILL = SERVICE_FILL
LINUX_FILL = "#fff4d6"        # linux bridges and the iptables that act on them
LINUX_LINE = KEYSTONE_LINE
NS_FILL = PLACEMENT_FILL      # network namespaces
NS_LINE = PLACEMENT_LINE
TUNNEL = "#2f6f4f"


def _wid(*parts: str) -> str:
    """A graphviz node id from host and device names."""
    return "_".join(p.replace("-", "_").replace(".", "_") for p in parts)


def _cell(port: str, title: str, *lines: str, bold: bool = True) -> str:
    text = f"<b>{_esc(title)}</b>" if bold else _esc(title)
    text += "".join(f'<br/><font point-size="9" color="{MUTED}">{_esc(line)}</font>'
                    for line in lines if line)
    return f'<td port="{port}" align="center" balign="center">{text}</td>'


def _box(title: str, note: str, cells: list[str], rows: Sequence[str] = (),
         fill: str = "white", line: str = MUTED) -> str:
    width = max(len(cells), 1)
    head = (f'<tr><td colspan="{width}" align="left"><b>{_esc(title)}</b>'
            + (f'  <font point-size="9" color="{MUTED}">{_esc(note)}</font>' if note else "")
            + "</td></tr>")
    body = f"<tr>{''.join(cells)}</tr>" if cells else ""
    extra = "".join(f'<tr><td colspan="{width}" align="left"><font face="{MONO}" '
                    f'point-size="9">{_esc(row)}</font></td></tr>' for row in rows)
    return (f'<<table border="1" cellborder="1" cellspacing="0" cellpadding="4" '
            f'bgcolor="{fill}" color="{line}">{head}{body}{extra}</table>>')


def _net(network_id: str | None, names: Mapping[str, str]) -> str:
    if not network_id:
        return ""
    return names.get(network_id) or network_id[:8]


def _host_order(wirings: Mapping[str, Any], hosts: Sequence[str] | None) -> list[str]:
    if hosts is not None:
        return [h for h in hosts if h in wirings]
    # compute hosts on the left, the network node on the right, as the guides draw them
    return sorted(wirings, key=lambda h: (wirings[h].role == "network", h))


def wiring(host_wirings: Mapping[str, Any] | Iterable[Any], hosts: Sequence[str] | None = None,
           networks: Mapping[str, str] | None = None) -> graphviz.Digraph:
    """Each host's port wiring side by side: VM → tap → qbr → qvb/qvo → br-int (local VLAN
    tags) → patch → br-tun → a tunnel to each peer; on the network node the qdhcp and
    qrouter namespaces and br-ex.

    `host_wirings` is `wire(topology)` (or its values), or the inspection API's JSON for
    each host. `hosts` picks and orders the hosts; `networks` maps network ids to names
    for the labels.
    """
    from labkit.cloud.network.wiring import HostWiring

    items = host_wirings.values() if isinstance(host_wirings, Mapping) else host_wirings
    wirings = {w.host: w for w in (HostWiring.from_dict(i) if isinstance(i, Mapping) else i
                                   for i in items)}
    names = dict(networks or {})
    order = _host_order(wirings, hosts)
    graph = graphviz.Digraph("wiring", graph_attr={
        "rankdir": "TB", "fontname": FONT, "nodesep": "0.25", "ranksep": "0.45",
        "bgcolor": "transparent", "newrank": "true", "size": "14,12"})
    graph.attr("node", fontname=FONT, fontsize="10", shape="plaintext", margin="0")
    graph.attr("edge", fontname=FONT, fontsize="9", color=MUTED, fontcolor=MUTED,
               arrowsize="0.6", dir="none")
    if not order:
        graph.node("empty", "no host with an Open vSwitch agent to draw", fontcolor=MUTED)
        return graph
    for host in order:
        _draw_host(graph, wirings[host], names)
    # br-int and br-tun of every host on one level, hosts left to right in `order`
    for bridge in ("br_int", "br_tun"):
        row = [_wid(h, bridge) for h in order if wirings[h].bridge(bridge.replace("_", "-"))]
        with graph.subgraph() as level:
            level.attr(rank="same")
            for node in row:
                level.node(node)
        for left, right in zip(row, row[1:], strict=False):
            graph.edge(left, right, style="invis", weight="10")
    # one tunnel per pair of drawn hosts, between their br-tun ports
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            wa, wb = wirings[a], wirings[b]
            pa, pb = wa.tunnel_port(b), wb.tunnel_port(a)
            if pa is None or pb is None:
                continue
            graph.edge(f"{_wid(a, 'br_tun')}:{_wid('p', pa.name)}",
                       f"{_wid(b, 'br_tun')}:{_wid('p', pb.name)}",
                       label=f" {pa.type.upper()} {wa.local_ip} ↔ {wb.local_ip} ",
                       color=TUNNEL, fontcolor=TUNNEL, style="dashed", penwidth="1.6",
                       constraint="false")
    return graph


def _draw_host(graph: graphviz.Digraph, hw: Any, names: Mapping[str, str]) -> None:
    host = hw.host
    with graph.subgraph(name=f"cluster_{_wid(host)}") as c:
        c.attr(label=f"{host} ({hw.role}, tunnel address {hw.local_ip})", fontname=FONT,
               fontsize="12", style="rounded,dashed", color=MUTED, fontcolor="black",
               labeljust="l")
        br_int = hw.bridge("br-int")
        int_id = _wid(host, "br_int")
        cells = []
        for port in sorted(br_int.ports, key=lambda p: (p.type == "patch", p.ofport)):
            if port.name == "br-int":
                continue
            note = f"tag {port.tag}" if port.tag is not None else (
                f"→ {port.options.get('peer', '')}" if port.type == "patch" else "")
            cells.append(_cell(_wid("p", port.name), port.name, note,
                               _net(port.network_id, names)))
        vlans = [f"VLAN {tag} = {_net(net, names)}" for net, tag in hw.local_vlans.items()]
        c.node(int_id, _box("br-int", "integration bridge: one local VLAN per network",
                            cells, ["; ".join(vlans)] if vlans else [], OVS_FILL,
                            SERVICE_LINE))

        # the VMs: instance → tap → qbr (iptables) → qvb ─veth─ qvo on br-int
        for vif in hw.vifs:
            vm = _wid(host, "vm", vif.port_id[:8])
            c.node(vm, f"<<b>VM</b> port {_esc(vif.port_id[:8])}<br/>"
                       f'<font point-size="9">{_esc(", ".join(vif.fixed_ips))}<br/>'
                       f"{_esc(vif.mac_address)} · {_esc(_net(vif.network_id, names))}"
                       "</font>>", shape="box", style="rounded,filled", fillcolor=CLIENT_FILL,
                   color=MUTED, margin="0.1,0.05")
            qbr = _wid(host, "qbr", vif.port_id[:8])
            rule_note = (f"iptables: neutron-openvswi-[ios]{vif.port_id[:10]}"
                         if vif.chains else "port security off: no chains")
            c.node(qbr, _box(vif.qbr, "linux bridge",
                             [_cell("tap", vif.tap, "the VM's NIC"),
                              _cell("qvb", vif.qvb, "veth end")],
                             [rule_note], LINUX_FILL, LINUX_LINE))
            c.edge(vm, f"{qbr}:tap:n")
            c.edge(f"{qbr}:qvb:s", f"{int_id}:{_wid('p', vif.qvo)}:n", label=" veth ")

        # namespaces on the network node
        for ns in hw.namespaces:
            ns_id = _wid(host, ns.name[:14])
            cells = [_cell(_wid("d", d.name), d.name, ", ".join(d.addresses)) for d in ns.devices]
            rows: list[str] = []
            if ns.kind == "dhcp":
                rows = [f"dnsmasq: {len(ns.dhcp_hosts)} host entries"]
                title, note = f"qdhcp-{ns.network_id[:8]}…", _net(ns.network_id, names)
            else:
                nat = ns.table("nat")
                for rule in (nat.rules if nat else ()):
                    if rule.target == "DNAT" and rule.chain.endswith("PREROUTING"):
                        rows.append(f"DNAT {rule.destination} → {rule.target_args.split()[-1]}")
                    elif rule.target == "SNAT" and rule.out_interface:
                        rows.append(f"SNAT out {rule.out_interface} → "
                                    f"{rule.target_args.split()[-1]}")
                    elif rule.target == "REDIRECT":
                        rows.append(f"{rule.destination}:80 → metadata proxy :9697")
                title, note = f"qrouter-{(ns.router_id or '')[:8]}…", "router namespace"
            c.node(ns_id, _box(title, note, cells, rows, NS_FILL, NS_LINE))
            for d in ns.devices:
                c.edge(f"{ns_id}:{_wid('d', d.name)}:s", f"{int_id}:{_wid('p', d.name)}:n")

        # provider bridges (br-ex) above br-int
        for bridge in hw.bridges:
            if bridge.name in ("br-int", "br-tun"):
                continue
            b_id = _wid(host, bridge.name)
            cells = [_cell(_wid("p", p.name), p.name,
                           f"→ {p.options.get('peer', '')}" if p.type == "patch" else "")
                     for p in bridge.ports if p.name != bridge.name]
            c.node(b_id, _box(bridge.name, "to the physical network", cells, [],
                              CHOSEN_FILL, PASSED))
            for p in bridge.ports:
                peer = p.options.get("peer")
                if p.type == "patch" and peer and br_int.port(peer):
                    c.edge(f"{b_id}:{_wid('p', p.name)}:s", f"{int_id}:{_wid('p', peer)}:n",
                           label=" patch ")

        br_tun = hw.bridge("br-tun")
        if br_tun is not None:
            tun_id = _wid(host, "br_tun")
            cells = [_cell(_wid("p", p.name), p.name,
                           f"→ {p.peer_host} {p.remote_ip}" if p.peer_host else
                           f"→ {p.options.get('peer', '')}")
                     for p in sorted(br_tun.ports, key=lambda p: p.ofport)
                     if p.name != "br-tun"]
            maps = [f"{f.match.split('=')[1]} → VLAN {f.actions.split(',')[0].split(':')[1]}"
                    for f in br_tun.flows if f.match.startswith("tun_id=")]
            c.node(tun_id, _box("br-tun", "tunnel bridge: local VLAN ↔ tunnel id",
                                cells, ["tunnel id → local VLAN: " + ", ".join(maps)]
                                if maps else [], OVS_FILL, SERVICE_LINE))
            c.edge(f"{int_id}:{_wid('p', 'patch-tun')}:s", f"{tun_id}:{_wid('p', 'patch-int')}:n",
                   label=" patch ")
