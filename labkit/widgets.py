"""ipywidgets for the notebooks, each with a static twin that stays in the stored output.

A widget never holds the only copy of what it shows: `sign_in_table` leaves
the same story as HTML, so a notebook reads well on GitHub and under nbval.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import ipywidgets as w
from IPython.display import HTML, display
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.access import AccessInfo
from keystoneauth1.identity import v3

from labkit.cloud.identity.bootstrap import load_yaml
from labkit.paths import lab_dir


@dataclass(frozen=True)
class Account:
    """Who signs in, and to which project (None: an unscoped token)."""

    user: str
    password: str
    project: str | None
    label: str = ""


@dataclass
class SignIn:
    """What keystone answered: a token's facts, or the error a user meets."""

    account: Account
    facts: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    error: str = ""
    session: ks_session.Session | None = None

    @property
    def ok(self) -> bool:
        return not self.error


def lab_accounts() -> list[Account]:
    """The lab's users with their own projects, from data/identity.yaml."""
    identity = load_yaml(lab_dir() / "identity.yaml")
    return [Account(u["name"], u["password"], u["project"]) for u in identity["users"]]


def token_facts(access: AccessInfo) -> dict[str, Any]:
    """What a token says, from keystone's answer: who, where, which roles, until when."""
    body = access._data["token"]  # keystoneauth has no accessor for the methods list
    return {
        "user": f"{access.username} ({access.user_id})",
        "project": f"{access.project_name} ({access.project_id})" if access.project_id
        else "none: an unscoped token",
        "roles": ", ".join(access.role_names) or "none",
        "methods": ", ".join(body.get("methods", [])),
        "issued_at": access.issued.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": access.expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "audit_ids": ", ".join(body.get("audit_ids", [])),
        "catalog": f"{len(access.service_catalog.catalog)} services"
        if access.service_catalog.catalog else "none",
    }


def facts_table(facts: dict[str, Any]) -> HTML:
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                   for k, v in facts.items())
    return HTML(f"<table>{rows}</table>")


def sign_in(auth_url: str, account: Account) -> SignIn:
    """Ask keystone for a token as `account`; a refusal comes back as the user would see it."""
    auth = v3.Password(auth_url=auth_url, username=account.user, password=account.password,
                       user_domain_name="Default", project_name=account.project,
                       project_domain_name="Default" if account.project else None)
    session = ks_session.Session(auth=auth)
    try:
        access = auth.get_access(session)
    except ks_exc.HttpError as exc:
        return SignIn(account, status=exc.http_status, error=_message(exc))
    return SignIn(account, facts=token_facts(access), session=session)


def _message(exc: ks_exc.HttpError) -> str:
    """The message in the service's error body, as a user reads it; else keystoneauth's."""
    try:
        (error,) = exc.response.json().values()
        return error["message"]
    except Exception:
        return exc.message


def list_users(result: SignIn, auth_url: str) -> tuple[int, str]:
    """GET /v3/users with the token from `result`: keystone lets only admins list users."""
    assert result.session is not None
    try:
        resp = result.session.get(auth_url.rstrip("/") + "/v3/users")
    except ks_exc.HttpError as exc:
        return exc.http_status, _message(exc)
    names = sorted(u["name"] for u in resp.json()["users"])
    return resp.status_code, f"{len(names)} users: " + ", ".join(names)


def sign_in_table(auth_url: str, accounts: list[Account]) -> HTML:
    """Every attempt and keystone's answer, as a table: the widget's static twin."""
    rows = []
    for account in accounts:
        result = sign_in(auth_url, account)
        if result.ok:
            status, users = list_users(result, auth_url)
            what = f"a token for project {account.project}" if account.project \
                else "an unscoped token"
            answer = f"201: {what}, roles {result.facts['roles']}"
            then = f"{status}: {users}"
        else:
            answer = f"{result.status}: {result.error}"
            then = "(no token, nothing to call with)"
        rows.append((account.label or f"{account.user} → {account.project or 'no project'}",
                     answer, then))
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in row)
        + "</tr>" for row in rows)
    return HTML("<table><thead><tr><th style='text-align:left'>sign in as</th>"
                "<th style='text-align:left'>POST /v3/auth/tokens</th>"
                "<th style='text-align:left'>then GET /v3/users</th></tr></thead>"
                f"<tbody>{body}</tbody></table>")


def sign_in_widget(auth_url: str, accounts: list[Account]) -> w.VBox:
    """Pick a user, a password and a project, sign in, and see the token or the error."""
    users = {a.user: a for a in accounts}
    projects = sorted({a.project for a in accounts if a.project})
    user = w.Dropdown(options=list(users), description="user")
    password = w.Text(description="password")
    project = w.Dropdown(options=[*projects, "(none: unscoped)"], description="project")
    go = w.Button(description="Sign in", button_style="primary", icon="key")
    call = w.Button(description="List users with it", disabled=True)
    out = w.Output()
    last: dict[str, SignIn] = {}

    def pick_user(_: Any = None) -> None:
        password.value = users[user.value].password
        project.value = users[user.value].project or "(none: unscoped)"

    def do_sign_in(_: Any = None) -> None:
        chosen = None if project.value.startswith("(none") else project.value
        result = sign_in(auth_url, Account(user.value, password.value, chosen))
        last["result"] = result
        call.disabled = not result.ok
        out.clear_output()
        with out:
            if result.ok:
                display(HTML("<b>201 Created</b>: keystone issued a token"))
                display(facts_table(result.facts))
            else:
                display(HTML(f"<b style='color:#b22222'>{result.status}</b>: "
                             f"{html.escape(result.error)}"))

    def do_call(_: Any = None) -> None:
        status, text = list_users(last["result"], auth_url)
        with out:
            color = "#b22222" if status >= 400 else "inherit"
            display(HTML(f"GET /v3/users → <b style='color:{color}'>{status}</b>: "
                         f"{html.escape(text)}"))

    user.observe(pick_user, names="value")
    go.on_click(do_sign_in)
    call.on_click(do_call)
    pick_user()
    return w.VBox([w.HBox([user, project]), w.HBox([password, go, call]), out])
