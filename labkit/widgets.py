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
