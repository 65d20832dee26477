"""ipywidgets for the notebooks, each with a static twin for the stored output.

A widget lives only while its kernel runs, so every widget here has a function
that shows the same facts as a plain table (`sign_in_widget` and
`sign_in_table`); a notebook cell shows both, and the table is what GitHub and
nbval see. Everything goes through keystoneauth, as any client's code would.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from http import HTTPStatus
from pathlib import Path
from typing import Any

import ipywidgets as w
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import session as ks_session
from keystoneauth1.access import AccessInfo
from keystoneauth1.identity import v3
from openstack.connection import Connection

from labkit.cloud import process
from labkit.cloud.identity.bootstrap import load_yaml
from labkit.cloud.settings import CloudSettings, env_flag
from labkit.connect import embedded_cloud_at

WRONG_PASSWORD = "not-the-password"
OK_COLOR = "#e6f4ea"
ERROR_COLOR = "#fde8e8"


# -- who is in the lab -------------------------------------------------------------------------


@dataclass
class Target:
    """Where to sign in, and who the lab's users are when we know them."""

    auth_url: str
    verify: bool | str = True
    user_domain: str = "Default"
    project_domain: str = "Default"
    users: dict[str, str] = field(default_factory=dict)  # name -> password
    projects: list[str] = field(default_factory=list)
    homes: dict[str, str] = field(default_factory=dict)  # user -> project they belong to
    default_user: str = ""
    default_project: str = ""
    default_password: str = ""

    @property
    def is_lab(self) -> bool:
        return bool(self.users)


def _lab_file(info: process.CloudInfo) -> Path | None:
    """identity.yaml of the lab the running embedded cloud was started with."""
    try:
        lab = CloudSettings.from_json((info.home / "settings.json").read_text()).lab
    except (OSError, ValueError, TypeError):
        return None
    path = lab / "identity.yaml"
    return path if path.exists() else None


def _lab_people(auth_url: str) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """The lab's people (not the services' users) and projects, if `auth_url` is the lab's."""
    info = None if env_flag("LABKIT_FOREIGN") else embedded_cloud_at(auth_url)
    path = _lab_file(info) if info is not None else None
    if path is None:
        return {}, [], {}
    lab = load_yaml(path)
    people = [u for u in lab.get("users", []) if u.get("project") != "service"]
    projects = [p["name"] for p in lab.get("projects", []) if p["name"] != "service"]
    return ({u["name"]: u["password"] for u in people}, projects,
            {u["name"]: u.get("project", "") for u in people})


def target(conn_or_auth_url: Connection | str, users: Mapping[str, str] | None = None,
           projects: Sequence[str] | None = None) -> Target:
    """Where to sign in: from a Connection's config or an auth URL; the lab's users if known."""
    if isinstance(conn_or_auth_url, Connection):
        args = conn_or_auth_url.config.get_auth_args() or {}
        tgt = Target(
            auth_url=args.get("auth_url", ""),
            verify=conn_or_auth_url.session.verify,
            user_domain=args.get("user_domain_name") or "Default",
            project_domain=args.get("project_domain_name") or "Default",
            default_user=args.get("username", ""),
            default_project=args.get("project_name", ""),
            default_password=args.get("password", ""),
        )
    else:
        tgt = Target(auth_url=str(conn_or_auth_url))
    lab_users, lab_projects, homes = _lab_people(tgt.auth_url)
    tgt.users = dict(users) if users is not None else lab_users
    tgt.projects = list(projects) if projects is not None else lab_projects
    tgt.homes = homes
    if tgt.users:
        tgt.default_user = tgt.default_user if tgt.default_user in tgt.users else next(
            iter(tgt.users))
        tgt.default_password = tgt.users[tgt.default_user]
    if tgt.projects and tgt.default_project not in tgt.projects:
        tgt.default_project = tgt.projects[0]
    return tgt


# -- signing in --------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One sign-in and what followed: the token keystone issued, or the error a user meets."""

    user: str
    project: str | None
    password_label: str
    access: AccessInfo | None = None
    status: int | None = None
    message: str = ""
    request_id: str | None = None
    session: ks_session.Session | None = None
    auth_url: str = ""

    @property
    def ok(self) -> bool:
        return self.access is not None


def _error_text(exc: Exception) -> tuple[int | None, str, str | None]:
    """(status, message, request id) of a refusal, from keystone's error body when there is one."""
    status = getattr(exc, "http_status", None) or getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    message = ""
    if response is not None:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = ""
    if not message:
        message = getattr(exc, "details", None) or str(exc)
    return status, message, getattr(exc, "request_id", None)


def sign_in(tgt: Target, user: str, password: str, project: str | None,
            password_label: str = "") -> Attempt:
    """POST /v3/auth/tokens through keystoneauth; a project of None asks for an unscoped token."""
    scope = {"project_name": project, "project_domain_name": tgt.project_domain} if project \
        else {}
    auth = v3.Password(auth_url=tgt.auth_url, username=user, password=password,
                       user_domain_name=tgt.user_domain, **scope)
    sess = ks_session.Session(auth=auth, verify=tgt.verify)
    attempt = Attempt(user, project, password_label, session=sess, auth_url=tgt.auth_url)
    try:
        attempt.access = auth.get_access(sess)
        attempt.status = 201
    except ks_exceptions.HttpError as exc:
        attempt.status, attempt.message, attempt.request_id = _error_text(exc)
    except ks_exceptions.ClientException as exc:
        attempt.message = str(exc)
    return attempt


def list_users(attempt: Attempt) -> tuple[int | None, str]:
    """GET /v3/users with the attempt's token: (status, what came back or the refusal)."""
    if attempt.session is None or attempt.access is None:
        return None, "no token"
    # keystone's own URL, from the auth URL: an unscoped token has no catalog to look it up in
    base = attempt.auth_url.rstrip("/")
    url = base + "/users" if base.endswith("/v3") else base + "/v3/users"
    try:
        resp = attempt.session.get(url)
    except ks_exceptions.HttpError as exc:
        status, message, _ = _error_text(exc)
        return status, message
    names = sorted(u["name"] for u in resp.json()["users"])
    return resp.status_code, f"{len(names)} users: {', '.join(names)}"


def _status(status: int | None) -> str:
    if status is None:
        return "no answer"
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class Facts(list):
    """(field, value) rows, shown as a two-column table."""

    def _repr_html_(self) -> str:
        return _facts_html(self)

    def __repr__(self) -> str:
        width = max((len(k) for k, _ in self), default=0)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self)


def _utc(moment: Any) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_facts(access: AccessInfo) -> Facts:
    """What a token says: user, scope, roles, issue and expiry, methods, audit ids, catalog."""
    body = access._data["token"]  # keystoneauth has no accessor for the methods list
    project = (f"{access.project_name} ({access.project_id})" if access.project_id
               else "none: an unscoped token")
    return Facts([
        ("user", f"{access.username} ({access.user_id})"),
        ("project", project),
        ("roles", ", ".join(access.role_names) or "none"),
        ("issued at", _utc(access.issued)),
        ("expires at", _utc(access.expires)),
        ("methods", ", ".join(body.get("methods", [])) or "?"),
        ("audit ids", ", ".join(body.get("audit_ids", [])) or "?"),
        ("catalog", f"{len(access.service_catalog.catalog)} services"
         if access.has_service_catalog() else "none"),
    ])


# -- the static table ------------------------------------------------------------------------


class SignInTable:
    """The outcome of each sign-in, as an HTML table (and a plain-text one for the terminal)."""

    columns = ("user", "password", "project", "POST /v3/auth/tokens", "roles in the token",
               "GET /v3/users")

    def __init__(self, rows: list[tuple[Attempt, tuple[int | None, str]]], note: str = "") -> None:
        self.rows = rows
        self.note = note

    def _cells(self, attempt: Attempt, users: tuple[int | None, str]) -> list[tuple[str, bool]]:
        """(text, ok) for each column."""
        signed = _status(attempt.status) + ("" if attempt.ok else f": {attempt.message}")
        listed = "" if not attempt.ok else _status(users[0]) + (
            f": {users[1]}")
        return [
            (attempt.user, True),
            (attempt.password_label, True),
            (attempt.project or "(unscoped)", True),
            (signed, attempt.ok),
            (", ".join(attempt.access.role_names) if attempt.access else "", True),
            (listed, users[0] == 200 or not attempt.ok),
        ]

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for attempt, users in self.rows:
            cells = []
            for text, ok in self._cells(attempt, users):
                color = "" if ok or not text else f" background:{ERROR_COLOR};"
                cells.append(f"<td style='text-align:left;{color}'>{html.escape(text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        note = f"<p><em>{html.escape(self.note)}</em></p>" if self.note else ""
        return (f"{note}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
                "</table>")

    def __repr__(self) -> str:
        rows = [list(self.columns)] + [[t for t, _ in self._cells(a, u)] for a, u in self.rows]
        widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(self.columns))]
        lines = ["  ".join(c[:60].ljust(wd) for c, wd in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * wd for wd in widths))
        return "\n".join(([self.note] if self.note else []) + lines)


def sign_in_table(conn_or_auth_url: Connection | str, users: Mapping[str, str] | None = None,
                  projects: Sequence[str] | None = None) -> SignInTable:
    """Try each user on each project (and each user with a wrong password) and tabulate it.

    On the embedded cloud the users and projects are the lab's; elsewhere, pass
    `users` (name -> password) and `projects`, or the connection's own account is
    tried with its password and with a wrong one.
    """
    tgt = target(conn_or_auth_url, users, projects)
    people = dict(tgt.users) or ({tgt.default_user: tgt.default_password}
                                 if tgt.default_user else {})
    places = list(tgt.projects) or ([tgt.default_project] if tgt.default_project else [None])
    rows = []
    for name, password in people.items():
        for project in places:
            attempt = sign_in(tgt, name, password, project, "right")
            rows.append((attempt, list_users(attempt) if attempt.ok else (None, "")))
        home = tgt.homes.get(name) if tgt.homes.get(name) in places else places[0]
        attempt = sign_in(tgt, name, WRONG_PASSWORD, home, "wrong")
        rows.append((attempt, (None, "")))
    note = "" if tgt.is_lab else ("Not the embedded cloud: only the connection's own account is "
                                  "tried.")
    return SignInTable(rows, note)


# -- the widget --------------------------------------------------------------------------------


def _facts_html(facts: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                   f"<td style='text-align:left'><code>{html.escape(v)}</code></td></tr>"
                   for k, v in facts)
    return f"<table>{rows}</table>"


def _box(title: str, text: str, ok: bool) -> str:
    color = OK_COLOR if ok else ERROR_COLOR
    return (f"<div style='background:{color};padding:6px 10px;border-radius:4px;"
            f"margin-top:4px'><b>{html.escape(title)}</b><br>{text}</div>")


class SignInWidget(w.VBox):
    """The sign-in widget. Its plain-text form says what it is, for places without a kernel."""

    def __repr__(self) -> str:
        return "Sign-in widget (live while the kernel runs; the table shows the same outcomes)"


def sign_in_widget(conn_or_auth_url: Connection | str, users: Mapping[str, str] | None = None,
                   projects: Sequence[str] | None = None) -> SignInWidget:
    """Sign in as any user, on any project, and see the token or the refusal.

    On the embedded cloud, users and projects are dropdowns of the lab's, and the
    password box is filled in with the user's lab password (or a wrong one, at a
    click); elsewhere they are free text. "List users with it" then calls
    GET /v3/users with the token, which only admins may do.
    """
    tgt = target(conn_or_auth_url, users, projects)
    style = {"description_width": "70px"}
    unscoped = "(none: unscoped)"
    choice: w.ToggleButtons | None = None
    if tgt.is_lab:
        user: w.ValueWidget = w.Dropdown(options=list(tgt.users), value=tgt.default_user,
                                         description="user", style=style)
        project: w.ValueWidget = w.Dropdown(options=[*tgt.projects, unscoped],
                                            value=tgt.default_project or unscoped,
                                            description="project", style=style)
        choice = w.ToggleButtons(options=["the lab's password", "a wrong password"],
                                 style={"button_width": "auto"},
                                 layout=w.Layout(margin="0 0 4px 74px"))
        # the lab's passwords are the install guide's placeholders: shown, not hidden
        password: w.ValueWidget = w.Text(value=tgt.default_password, description="password",
                                         style=style)
    else:
        user = w.Text(value=tgt.default_user, description="user", style=style)
        project = w.Text(value=tgt.default_project, description="project",
                         placeholder="empty: an unscoped token", style=style)
        password = w.Password(value=tgt.default_password, description="password", style=style)
    sign = w.Button(description="Sign in", button_style="primary", icon="key")
    list_button = w.Button(description="List users with it", icon="users", disabled=True)
    result = w.HTML()
    listing = w.HTML()
    last: dict[str, Attempt] = {}

    def fill_password(_: Any = None) -> None:
        if choice is not None:
            password.value = (tgt.users.get(user.value, "") if choice.index == 0
                              else WRONG_PASSWORD)

    def on_sign(_: Any = None) -> None:
        scope = project.value.strip() if project.value not in ("", unscoped) else None
        listing.value = ""
        attempt = sign_in(tgt, user.value.strip(), password.value, scope)
        last["attempt"] = attempt
        list_button.disabled = not attempt.ok
        if attempt.access is not None:
            result.value = _box("201 Created: keystone issued a token",
                                _facts_html(token_facts(attempt.access)), True)
        else:
            rid = f" ({attempt.request_id})" if attempt.request_id else ""
            result.value = _box(f"{_status(attempt.status)} from keystone{rid}",
                                html.escape(attempt.message), False)

    def on_list(_: Any = None) -> None:
        if "attempt" not in last:
            return
        status, text = list_users(last["attempt"])
        listing.value = _box(f"GET /v3/users: {_status(status)}", html.escape(text),
                             status == 200)

    if choice is not None:
        user.observe(fill_password, names="value")
        choice.observe(fill_password, names="value")
    sign.on_click(on_sign)
    list_button.on_click(on_list)
    head = w.HTML(f"<b>Sign in to</b> <code>{html.escape(tgt.auth_url)}</code>")
    rows: list[w.Widget] = [head, user, project, password]
    if choice is not None:
        rows.append(choice)
    rows += [w.HBox([sign, list_button], layout=w.Layout(margin="0 0 0 74px")), result,
             listing]
    return SignInWidget(rows)


# -- the scheduler playground ------------------------------------------------------------------


def _fmt_weight(value: float) -> str:
    return f"{value:.3f}"


class SchedulerTable:
    """One scheduling decision as a table: per host, placement's answer, the filters', the weight.

    The static twin of `scheduler_playground`: what a notebook's stored output keeps.
    """

    columns = ("host", "placement", "filters", "weight", "outcome")

    def __init__(self, decision: Any) -> None:
        from labkit.cloud.compute.scheduler import Decision

        self.decision = decision if isinstance(decision, Decision) else \
            Decision.from_dict(decision)

    def rows(self) -> list[tuple[list[str], bool]]:
        """(cells, still in) per host, in ranking order, then the removed hosts."""
        d = self.decision
        removed = d.removed_by()
        weights = {r.host: r.weight for r in d.ranking}
        placement = {c.host: c for c in d.candidates}
        order = [r.host for r in d.ranking] + [h for h in d.hosts if h not in weights]
        out = []
        for host in order:
            c = placement.get(host)
            fit = "fits" if c and c.fits else "; ".join(c.reasons if c else ["not asked"])
            if host in weights:
                filters = "passed all " + str(sum(1 for s in d.filters if s.ran))
                outcome = ("chosen" if host == d.chosen else
                           f"alternate {d.alternates.index(host) + 1}" if host in d.alternates
                           else "weighed, not kept")
                out.append(([host, fit, filters, _fmt_weight(weights[host]), outcome], True))
            else:
                why = removed.get(host, "")
                filters = "" if why.startswith("placement: ") else why
                out.append(([host, fit, filters, "", "out"], False))
        return out

    def _caption(self) -> str:
        d = self.decision
        asks = ", ".join(f"{k} {v}" for k, v in d.spec.get("resources", {}).items())
        return f"{d.spec.get('flavor', '?')} ({asks}): {d.explain()}"

    def _repr_html_(self) -> str:
        # padding of its own: inside a widget, JupyterLab's table style does not apply and
        # the columns would run together
        pad = "padding:2px 12px 2px 6px;"
        head = "".join(f"<th style='text-align:left;{pad}'>{html.escape(c)}</th>"
                       for c in self.columns)
        body = []
        for cells, kept in self.rows():
            chosen = cells[4] == "chosen"
            color = f" background:{OK_COLOR};" if chosen else (
                "" if kept else f" background:{ERROR_COLOR};")
            # a host name never breaks at its hyphen, however long placement's reasons are
            tds = "".join(f"<td style='text-align:left;{pad}{color}"
                          f"{'white-space:nowrap;' if i == 0 else ''}'>{html.escape(c)}</td>"
                          for i, c in enumerate(cells))
            body.append(f"<tr>{tds}</tr>")
        return (f"<p><b>{html.escape(self._caption())}</b></p><table><thead><tr>{head}</tr>"
                f"</thead><tbody>{''.join(body)}</tbody></table>")

    def __repr__(self) -> str:
        rows = [list(self.columns)] + [cells for cells, _ in self.rows()]
        widths = [min(max(len(r[i]) for r in rows), 70) for i in range(len(self.columns))]
        lines = ["  ".join(c[:70].ljust(wd) for c, wd in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * wd for wd in widths))
        return "\n".join([self._caption(), *lines])


def scheduler_table(decision: Any) -> SchedulerTable:
    """A scheduling decision (a Decision or its to_dict()) as a table for the stored output."""
    return SchedulerTable(decision)


class SchedulerPlayground(w.VBox):
    """The scheduler playground. `decision` is the latest prediction; `controls` its inputs."""

    decision: Any = None
    controls: dict[str, Any]

    def __repr__(self) -> str:
        return ("Scheduler playground (live while the kernel runs; the table and the funnel "
                "show one decision)")


def _svg(graph: Any) -> str:
    svg = graph.pipe(format="svg").decode()
    svg = svg[svg.find("<svg"):]
    return f"<div style='max-width:100%;overflow-x:auto'>{svg}</div>"


def scheduler_playground(hosts: Sequence[Any] | None = None,
                         flavors: Sequence[Mapping[str, Any]] | None = None,
                         config: Any = None) -> SchedulerPlayground:
    """Change the hosts, the flavor, the filters and the weighers; see where nova would schedule.

    Every change runs `labkit.scheduling.predict`, the code the embedded cloud's
    scheduler runs, and redraws the ranking table and the funnel diagram.
    Defaults: the lab's hosts (data/hosts.yaml) and flavors (data/flavors.yaml).
    """
    from labkit import diagrams, scheduling
    from labkit.cloud.compute.scheduler import FILTERS, SchedulerConfig

    base_hosts = list(hosts) if hosts is not None else scheduling.lab_hosts()
    flavor_list = [dict(f) for f in (flavors if flavors is not None
                                     else scheduling.lab_flavors())]
    config = config or SchedulerConfig()
    style = {"description_width": "150px"}
    wide = w.Layout(width="420px")

    flavor = w.Dropdown(options=[(f["name"], i) for i, f in enumerate(flavor_list)],
                        value=0, description="flavor", style=style, layout=wide)
    # the dropdown's values are indices into `groups`: a None value would mean "nothing
    # selected" to ipywidgets, and the browser would show an empty box instead of "none"
    groups: list[tuple[str, dict[str, Any] | None]] = [("none", None)]
    for policy in ("anti-affinity", "affinity"):
        for h in base_hosts:
            groups.append((f"{policy}, a member on {h.host}",
                           {"policy": policy, "hosts": [h.host]}))
    group = w.Dropdown(options=[(label, i) for i, (label, _) in enumerate(groups)], value=0,
                       description="server group", style=style, layout=wide)

    # filters: the configured ones ticked, in their order, then the rest (historical last)
    names = list(config.enabled_filters) + [n for n in FILTERS if n not in
                                            config.enabled_filters]
    filter_boxes = {n: w.Checkbox(value=n in config.enabled_filters, indent=False,
                                  description=n + ("  (2013)" if FILTERS[n].historical else ""))
                    for n in names}
    multipliers = {
        key: w.FloatSlider(value=getattr(config, key), min=-2.0, max=2.0, step=0.1,
                           description=key.replace("_weight_multiplier", " weight ×"),
                           style=style, layout=wide, continuous_update=False)
        for key in ("ram_weight_multiplier", "cpu_weight_multiplier", "disk_weight_multiplier")}

    host_controls: dict[str, dict[str, w.ValueWidget]] = {}
    tabs = []
    for h in base_hosts:
        usable_ram = max(h.memory_mb - h.reserved_host_memory_mb, 0)
        c: dict[str, w.ValueWidget] = {
            "service_enabled": w.Checkbox(value=h.service_enabled, indent=False,
                                          description="nova-compute enabled"),
            "memory_mb_used": w.IntSlider(value=h.memory_mb_used, min=0,
                                          max=int(usable_ram * 2), step=256,
                                          description="RAM used (MB)", style=style,
                                          layout=wide, continuous_update=False),
            "vcpus_used": w.IntSlider(value=h.vcpus_used, min=0, max=max(h.vcpus * 8, 1),
                                      description="vCPUs used", style=style, layout=wide,
                                      continuous_update=False),
            "disk_gb_used": w.IntSlider(value=h.disk_gb_used, min=0, max=max(h.disk_gb * 2, 1),
                                        description="disk used (GB)", style=style,
                                        layout=wide, continuous_update=False),
            "cpu_allocation_ratio": w.FloatSlider(value=h.cpu_allocation_ratio, min=0.5,
                                                  max=16.0, step=0.5,
                                                  description="cpu_allocation_ratio",
                                                  style=style, layout=wide,
                                                  continuous_update=False),
            "ram_allocation_ratio": w.FloatSlider(value=h.ram_allocation_ratio, min=0.5,
                                                  max=3.0, step=0.1,
                                                  description="ram_allocation_ratio",
                                                  style=style, layout=wide,
                                                  continuous_update=False),
            "disk_allocation_ratio": w.FloatSlider(value=h.disk_allocation_ratio, min=0.5,
                                                   max=3.0, step=0.1,
                                                   description="disk_allocation_ratio",
                                                   style=style, layout=wide,
                                                   continuous_update=False),
        }
        host_controls[h.host] = c
        facts = w.HTML(f"<small>{h.vcpus} vCPUs, {h.memory_mb} MB RAM "
                       f"({h.reserved_host_memory_mb} reserved), {h.disk_gb} GB disk; zone "
                       f"{html.escape(h.availability_zone)}</small>")
        tabs.append(w.VBox([facts, *c.values()]))
    host_tabs = w.Tab(children=tabs, titles=[h.host for h in base_hosts])

    summary = w.HTML()
    table = w.HTML()
    funnel = w.HTML()

    def current_hosts() -> list[Any]:
        return [h.copy(**{k: v.value for k, v in host_controls[h.host].items()})
                for h in base_hosts]

    def current_config() -> Any:
        return SchedulerConfig(
            enabled_filters=[n for n, box in filter_boxes.items() if box.value],
            max_attempts=config.max_attempts, host_subset_size=config.host_subset_size,
            **{k: s.value for k, s in multipliers.items()})

    widget = SchedulerPlayground()

    def redraw(_: Any = None) -> None:
        decision = scheduling.predict(current_hosts(), flavor_list[flavor.value],
                                      current_config(), group=groups[group.value][1])
        widget.decision = decision
        ok = decision.chosen is not None
        summary.value = _box("nova would choose " + decision.chosen if ok
                             else (decision.no_valid_host_reason or "").strip(),
                             html.escape(decision.explain()), ok)
        table.value = SchedulerTable(decision)._repr_html_()
        funnel.value = _svg(diagrams.scheduler_funnel(decision))

    inputs: list[w.ValueWidget] = [flavor, group, *filter_boxes.values(),
                                   *multipliers.values()]
    inputs += [c for controls in host_controls.values() for c in controls.values()]
    for control in inputs:
        control.observe(redraw, names="value")
    widget.controls = {"flavor": flavor, "group": group, "filters": filter_boxes,
                       "multipliers": multipliers, "hosts": host_controls}

    request = w.VBox([w.HTML("<b>The request</b>"), flavor, group,
                      w.HTML("<b>Weighers</b> (negative: stack instead of spread)"),
                      *multipliers.values()])
    filters_box = w.VBox([w.HTML("<b>Filters</b> (in this order)"), *filter_boxes.values()],
                         layout=w.Layout(margin="0 0 0 20px"))
    widget.children = [w.HBox([request, filters_box]), w.HTML("<b>The hosts</b>"), host_tabs,
                       summary, table, funnel]
    redraw()
    return widget
