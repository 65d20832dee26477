"""IdentityBackend without HTTP: keystone's rules on a tmp database with the lab's data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from sqlalchemy import select

from labkit.cloud.db import Database
from labkit.cloud.errors import BadRequest, Conflict, Unauthorized
from labkit.cloud.identity import backend as backend_module
from labkit.cloud.identity.backend import IdentityBackend, TokenInfo
from labkit.cloud.identity.bootstrap import bootstrap
from labkit.cloud.identity.exceptions import TokenNotFound
from labkit.cloud.identity.models import IdentityBase, User
from labkit.cloud.identity.tokens import FernetTokens
from labkit.cloud.ids import IdSource
from labkit.paths import lab_dir

BASE_URL = "http://127.0.0.1:5000"
UNAUTHORIZED_MESSAGE = "The request you have made requires authentication."


def make_backend(home: Path, seed: int = 2013, boot: int = 0) -> IdentityBackend:
    ids = IdSource(deterministic=True, seed=seed, boot=boot)
    backend = IdentityBackend(Database(home / "keystone.sqlite", IdentityBase),
                              FernetTokens(home / "fernet-keys", ids), ids,
                              bcrypt_rounds=4, token_ttl=3600)
    bootstrap(backend, lab_dir(), BASE_URL)
    return backend


@pytest.fixture
def backend(tmp_path: Path) -> IdentityBackend:
    return make_backend(tmp_path)


def by_name(backend: IdentityBackend, kind: str, name: str) -> Any:
    (entity,) = backend.list(kind, {"name": name})
    return entity


def password(user: str | None = None, secret: str = "", *, user_id: str | None = None,
             project: str | None = None, project_id: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"password": secret}
    if user_id is not None:
        ref["id"] = user_id
    else:
        ref.update(name=user, domain={"name": "Default"})
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": ref}}}
    if project_id is not None:
        auth["scope"] = {"project": {"id": project_id}}
    elif project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    return auth


def rescope(token: str, project: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["token"], "token": {"id": token}}}
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return auth


def demo_token(backend: IdentityBackend, now: float | None = None) -> TokenInfo:
    return backend.authenticate(password("demo", "DEMO_PASS", project="demo"), now=now)


# -- password authentication ---------------------------------------------------------------

def test_password_auth_by_user_name_and_domain(backend: IdentityBackend) -> None:
    info = backend.authenticate(password("demo", "DEMO_PASS"))
    assert info.user["name"] == "demo"
    assert info.user["domain"] == {"id": "default", "name": "Default"}
    assert info.methods == ["password"]
    assert backend.validate(info.token).user_id == info.user_id


def test_password_auth_by_user_id(backend: IdentityBackend) -> None:
    demo = by_name(backend, "user", "demo")
    info = backend.authenticate(password(user_id=demo.id, secret="DEMO_PASS"))
    assert info.user_id == demo.id
    assert info.user["name"] == "demo"


def test_project_scope_by_name(backend: IdentityBackend) -> None:
    info = demo_token(backend)
    project = by_name(backend, "project", "demo")
    assert info.project == {"id": project.id, "name": "demo",
                            "domain": {"id": "default", "name": "Default"}}
    assert info.role_names == ["member", "reader"]


def test_project_scope_by_id(backend: IdentityBackend) -> None:
    project = by_name(backend, "project", "demo")
    info = backend.authenticate(password("demo", "DEMO_PASS", project_id=project.id))
    assert info.project_id == project.id
    assert "member" in info.role_names


def test_unscoped_token_has_no_roles_and_no_project(backend: IdentityBackend) -> None:
    info = backend.authenticate(password("demo", "DEMO_PASS"))
    assert info.project is None
    assert info.domain is None
    assert info.roles == []
    validated = backend.validate(info.token)
    assert validated.project is None
    assert validated.roles == []


def test_explicit_unscoped_scope_gives_an_unscoped_token(backend: IdentityBackend) -> None:
    auth = password("demo", "DEMO_PASS")
    auth["scope"] = "unscoped"
    info = backend.authenticate(auth)
    assert info.project is None and info.roles == []


def test_bare_auth_scopes_to_the_users_default_project(backend: IdentityBackend) -> None:
    project = backend.create("project", {"name": "lab42"})
    user = backend.create("user", {"name": "carol", "password": "CAROL_PASS",
                                   "default_project_id": project.id})
    backend.grant(user.id, "project", project.id, by_name(backend, "role", "member").id)
    info = backend.authenticate(password("carol", "CAROL_PASS"))
    assert info.project_id == project.id
    assert info.role_names == ["member", "reader"]


def test_bare_auth_without_a_role_on_the_default_project_is_unscoped(
        backend: IdentityBackend) -> None:
    project = backend.create("project", {"name": "lab42"})
    backend.create("user", {"name": "carol", "password": "CAROL_PASS",
                            "default_project_id": project.id})
    info = backend.authenticate(password("carol", "CAROL_PASS"))
    assert info.project is None


def test_token_expires_after_the_configured_lifetime(backend: IdentityBackend) -> None:
    info = demo_token(backend, now=1_000_000.0)
    assert info.issued_at == 1_000_000.0
    assert info.expires_at == 1_000_000.0 + 3600


def test_rescoping_with_the_token_method_keeps_the_expiry(backend: IdentityBackend) -> None:
    unscoped = backend.authenticate(password("demo", "DEMO_PASS"), now=1_000_000.0)
    scoped = backend.authenticate(rescope(unscoped.token, "demo"), now=1_000_100.0)
    assert scoped.project is not None and scoped.project["name"] == "demo"
    assert scoped.expires_at == unscoped.expires_at
    assert scoped.issued_at == 1_000_100.0


def test_rescoping_chains_the_audit_ids(backend: IdentityBackend) -> None:
    unscoped = backend.authenticate(password("demo", "DEMO_PASS"))
    first = backend.authenticate(rescope(unscoped.token, "demo"))
    second = backend.authenticate(rescope(first.token, "demo"))
    (original,) = unscoped.audit_ids
    assert len(first.audit_ids) == 2 and first.audit_ids[1] == original
    # the chain id stays the first token's audit id however often it is rescoped
    assert len(second.audit_ids) == 2 and second.audit_ids[1] == original
    assert len({original, first.audit_ids[0], second.audit_ids[0]}) == 3
    assert all(len(a) == 22 for a in (original, first.audit_ids[0], second.audit_ids[0]))


def test_rescoped_token_keeps_the_original_methods(backend: IdentityBackend) -> None:
    unscoped = backend.authenticate(password("demo", "DEMO_PASS"))
    scoped = backend.authenticate(rescope(unscoped.token, "demo"))
    assert sorted(scoped.methods) == ["password", "token"]


def test_rescoping_an_expired_token_is_unauthorized(backend: IdentityBackend) -> None:
    unscoped = backend.authenticate(password("demo", "DEMO_PASS"), now=1_000_000.0)
    with pytest.raises(Unauthorized):
        backend.authenticate(rescope(unscoped.token, "demo"), now=1_000_000.0 + 3600)


def test_admin_token_carries_the_implied_member_and_reader_roles(
        backend: IdentityBackend) -> None:
    info = backend.authenticate(password("admin", "ADMIN_PASS", project="admin"))
    assert info.role_names == ["admin", "member", "reader"]
    assert info.is_admin


def test_member_token_is_not_admin(backend: IdentityBackend) -> None:
    info = demo_token(backend)
    assert "admin" not in info.role_names
    assert not info.is_admin


# -- refusals --------------------------------------------------------------------------

def _refusal(backend: IdentityBackend, auth: dict[str, Any]) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        backend.authenticate(auth)
    return caught.value


def test_wrong_password_unknown_user_and_disabled_user_get_the_same_refusal(
        backend: IdentityBackend) -> None:
    alt = by_name(backend, "user", "alt_demo")
    backend.update("user", alt.id, {"enabled": False})
    refusals = [
        _refusal(backend, password("demo", "WRONG")),
        _refusal(backend, password("nobody", "DEMO_PASS")),
        _refusal(backend, password("alt_demo", "ALT_DEMO_PASS")),
        _refusal(backend, password(user_id="0" * 32, secret="DEMO_PASS")),
    ]
    assert {(r.status, r.title, r.message) for r in refusals} == {
        (401, "Unauthorized", UNAUTHORIZED_MESSAGE)}


def test_no_role_on_the_project_is_unauthorized(backend: IdentityBackend) -> None:
    with pytest.raises(Unauthorized):
        backend.authenticate(password("demo", "DEMO_PASS", project="alt_demo"))


def test_unknown_project_is_unauthorized(backend: IdentityBackend) -> None:
    with pytest.raises(Unauthorized):
        backend.authenticate(password("demo", "DEMO_PASS", project="no-such-project"))


def test_unsupported_method_is_unauthorized(backend: IdentityBackend) -> None:
    with pytest.raises(Unauthorized, match="unsupported method: totp"):
        backend.authenticate({"identity": {"methods": ["totp"], "totp": {}}})


@pytest.mark.parametrize("auth, missing", [
    ({}, "identity"),
    ({"identity": {}}, "methods"),
    ({"identity": {"methods": []}}, "methods"),
    ({"identity": {"methods": ["password"]}}, "password"),
    ({"identity": {"methods": ["password"], "password": {}}}, "user"),
    ({"identity": {"methods": ["password"],
                   "password": {"user": {"password": "x"}}}}, "id or name"),
    ({"identity": {"methods": ["token"], "token": {}}}, "id"),
])
def test_incomplete_auth_is_a_bad_request(backend: IdentityBackend, auth: dict[str, Any],
                                          missing: str) -> None:
    with pytest.raises(BadRequest, match=f"Expecting to find {missing}"):
        backend.authenticate(auth)


def test_expired_token_is_refused(backend: IdentityBackend) -> None:
    info = demo_token(backend, now=1_000_000.0)
    assert backend.validate(info.token, now=1_000_000.0 + 3599).user_id == info.user_id
    with pytest.raises(TokenNotFound, match="expired"):
        backend.validate(info.token, now=1_000_000.0 + 3600)


def test_revoked_token_is_refused(backend: IdentityBackend) -> None:
    info = demo_token(backend)
    other = demo_token(backend)
    backend.revoke_token(info)
    with pytest.raises(TokenNotFound, match="revoked"):
        backend.validate(info.token)
    # only that token: another token of the same user stays valid
    assert backend.validate(other.token).user_id == other.user_id


def test_revoking_a_token_leaves_tokens_rescoped_from_it_valid(
        backend: IdentityBackend) -> None:
    parent = backend.authenticate(password("demo", "DEMO_PASS"))
    child = backend.authenticate(rescope(parent.token, "demo"))
    backend.revoke_token(parent)
    with pytest.raises(TokenNotFound):
        backend.validate(parent.token)
    assert backend.validate(child.token).project_id == child.project_id


def test_token_from_another_key_repository_is_refused(backend: IdentityBackend,
                                                      tmp_path: Path) -> None:
    other = make_backend(tmp_path / "other", seed=99)
    info = other.authenticate(password("demo", "DEMO_PASS", project="demo"))
    with pytest.raises(TokenNotFound, match="malformed or was not issued here"):
        backend.validate(info.token)


def test_garbage_token_is_refused(backend: IdentityBackend) -> None:
    with pytest.raises(TokenNotFound):
        backend.validate("not-a-token")


def test_revoking_a_role_assignment_invalidates_tokens_on_that_project(
        backend: IdentityBackend) -> None:
    info = demo_token(backend)
    member = by_name(backend, "role", "member")
    backend.revoke_grant(info.user_id, "project", info.project_id, member.id)
    with pytest.raises(TokenNotFound):
        backend.validate(info.token)
    with pytest.raises(Unauthorized):
        demo_token(backend)


def test_revoking_a_role_assignment_keeps_tokens_on_other_projects(
        backend: IdentityBackend) -> None:
    demo = by_name(backend, "user", "demo")
    member = by_name(backend, "role", "member")
    alt = by_name(backend, "project", "alt_demo")
    backend.grant(demo.id, "project", alt.id, member.id)
    on_alt = backend.authenticate(password("demo", "DEMO_PASS", project="alt_demo"))
    on_demo = demo_token(backend)
    backend.revoke_grant(demo.id, "project", on_demo.project_id, member.id)
    assert backend.validate(on_alt.token).project_id == alt.id


def test_password_change_revokes_earlier_tokens(backend: IdentityBackend) -> None:
    info = demo_token(backend)
    backend.change_password(info.user_id, "DEMO_PASS", "NEW_PASS")
    with pytest.raises(TokenNotFound):
        backend.validate(info.token)


def test_old_password_no_longer_works_after_a_change(backend: IdentityBackend) -> None:
    demo = by_name(backend, "user", "demo")
    backend.change_password(demo.id, "DEMO_PASS", "NEW_PASS")
    with pytest.raises(Unauthorized):
        backend.authenticate(password("demo", "DEMO_PASS"))


def test_password_change_needs_the_original_password(backend: IdentityBackend) -> None:
    demo = by_name(backend, "user", "demo")
    with pytest.raises(Unauthorized):
        backend.change_password(demo.id, "WRONG", "NEW_PASS")
    assert backend.authenticate(password("demo", "DEMO_PASS")).user_id == demo.id


def test_new_password_gives_a_token_right_after_the_change(backend: IdentityBackend) -> None:
    demo = by_name(backend, "user", "demo")
    backend.change_password(demo.id, "DEMO_PASS", "NEW_PASS")
    info = backend.authenticate(password("demo", "NEW_PASS", project="demo"))
    assert info.user_id == demo.id


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_token_issued_in_the_second_after_a_password_change_is_valid(
        backend: IdentityBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = by_name(backend, "user", "demo")
    monkeypatch.setattr(backend_module, "time", _Clock(1_000_000.5))
    backend.change_password(demo.id, "DEMO_PASS", "NEW_PASS")
    info = backend.authenticate(password("demo", "NEW_PASS", project="demo"),
                                now=1_000_001.0)
    assert backend.validate(info.token, now=1_000_001.0).user_id == demo.id


def test_disabling_a_user_revokes_their_tokens(backend: IdentityBackend) -> None:
    info = demo_token(backend)
    backend.update("user", info.user_id, {"enabled": False})
    with pytest.raises(TokenNotFound):
        backend.validate(info.token)


def test_deleting_a_project_revokes_its_tokens(backend: IdentityBackend) -> None:
    info = demo_token(backend)
    backend.delete("project", info.project_id)
    with pytest.raises(TokenNotFound):
        backend.validate(info.token)


# -- passwords at rest -------------------------------------------------------------------

def test_passwords_are_stored_as_bcrypt_hashes(backend: IdentityBackend) -> None:
    with backend.db.session() as session:
        users = {u.name: u.password_hash for u in session.scalars(select(User))}
    assert users["demo"] != "DEMO_PASS"
    for name, hashed in users.items():
        assert hashed.startswith("$2b$04$"), name
        assert "PASS" not in hashed
    assert bcrypt.checkpw(b"DEMO_PASS", users["demo"].encode())
    assert not bcrypt.checkpw(b"ADMIN_PASS", users["demo"].encode())


def test_created_user_password_is_stored_hashed(backend: IdentityBackend) -> None:
    user = backend.create("user", {"name": "carol", "password": "CAROL_PASS"})
    with backend.db.session() as session:
        stored = session.get(User, user.id).password_hash
    assert stored != "CAROL_PASS" and "CAROL_PASS" not in stored
    assert bcrypt.checkpw(b"CAROL_PASS", stored.encode())
    raw = (backend.db.path).read_bytes()
    assert b"CAROL_PASS" not in raw


def test_same_password_hashes_differently_each_time(backend: IdentityBackend) -> None:
    assert backend.hash_password("x") != backend.hash_password("x")


# -- create, update, delete --------------------------------------------------------------

def test_create_project_then_get_and_list_it(backend: IdentityBackend) -> None:
    project = backend.create("project", {"name": "lab42", "description": "d"})
    assert project.domain_id == "default" and len(project.id) == 32
    assert backend.get("project", project.id).name == "lab42"
    assert [p.id for p in backend.list("project", {"name": "lab42"})] == [project.id]


def test_create_project_with_a_duplicate_name_is_a_conflict(backend: IdentityBackend) -> None:
    before = len(backend.list("project"))
    with pytest.raises(Conflict, match="Duplicate entry"):
        backend.create("project", {"name": "demo"})
    assert len(backend.list("project")) == before


def test_create_user_with_a_duplicate_name_is_a_conflict(backend: IdentityBackend) -> None:
    before = len(backend.list("user"))
    with pytest.raises(Conflict):
        backend.create("user", {"name": "demo", "password": "x"})
    assert len(backend.list("user")) == before


def test_rename_project_to_an_existing_name_is_a_conflict(backend: IdentityBackend) -> None:
    project = backend.create("project", {"name": "lab42"})
    with pytest.raises(Conflict):
        backend.update("project", project.id, {"name": "demo"})
    assert backend.get("project", project.id).name == "lab42"


def test_rename_user_to_an_existing_name_is_a_conflict(backend: IdentityBackend) -> None:
    user = backend.create("user", {"name": "carol"})
    with pytest.raises(Conflict):
        backend.update("user", user.id, {"name": "admin"})
    assert backend.get("user", user.id).name == "carol"


def test_update_project_changes_its_fields(backend: IdentityBackend) -> None:
    project = backend.create("project", {"name": "lab42"})
    backend.update("project", project.id, {"name": "lab43", "description": "renamed"})
    stored = backend.get("project", project.id)
    assert (stored.name, stored.description) == ("lab43", "renamed")


def test_delete_then_recreate_with_the_same_name(backend: IdentityBackend) -> None:
    user = backend.create("user", {"name": "carol"})
    backend.delete("user", user.id)
    assert backend.list("user", {"name": "carol"}) == []
    again = backend.create("user", {"name": "carol"})
    assert again.id != user.id


def test_create_project_without_a_name_is_a_bad_request(backend: IdentityBackend) -> None:
    with pytest.raises(BadRequest, match="'name' is a required property"):
        backend.create("project", {"description": "nameless"})


def test_create_with_a_non_boolean_enabled_is_a_bad_request(backend: IdentityBackend) -> None:
    with pytest.raises(BadRequest, match="enabled"):
        backend.create("project", {"name": "lab42", "enabled": "yes"})


@pytest.mark.parametrize("kind, limit", [("project", 64), ("user", 255)])
def test_name_longer_than_keystone_allows_is_a_bad_request(
        backend: IdentityBackend, kind: str, limit: int) -> None:
    backend.create(kind, {"name": "x" * limit})
    with pytest.raises(BadRequest, match="too long"):
        backend.create(kind, {"name": "y" * (limit + 1)})


def test_granted_role_lets_a_new_user_scope_to_the_project(backend: IdentityBackend) -> None:
    user = backend.create("user", {"name": "carol", "password": "CAROL_PASS"})
    project = backend.create("project", {"name": "lab42"})
    with pytest.raises(Unauthorized):
        backend.authenticate(password("carol", "CAROL_PASS", project="lab42"))
    backend.grant(user.id, "project", project.id, by_name(backend, "role", "reader").id)
    info = backend.authenticate(password("carol", "CAROL_PASS", project="lab42"))
    assert info.role_names == ["reader"]


# -- ids ---------------------------------------------------------------------------------

def _ids(backend: IdentityBackend) -> dict[str, str]:
    return {f"{kind}:{e.name}": e.id for kind in ("user", "project", "role")
            for e in backend.list(kind)}


def test_deterministic_ids_repeat_for_the_same_seed(tmp_path: Path) -> None:
    first = _ids(make_backend(tmp_path / "a", seed=7))
    second = _ids(make_backend(tmp_path / "b", seed=7))
    assert first == second
    assert len(set(first.values())) == len(first)


def test_deterministic_ids_differ_for_another_boot(tmp_path: Path) -> None:
    first = _ids(make_backend(tmp_path / "a", seed=7, boot=0))
    second = _ids(make_backend(tmp_path / "b", seed=7, boot=1))
    assert first.keys() == second.keys()
    assert set(first.values()).isdisjoint(second.values())


def test_deterministic_ids_differ_for_another_seed(tmp_path: Path) -> None:
    first = _ids(make_backend(tmp_path / "a", seed=7))
    second = _ids(make_backend(tmp_path / "b", seed=8))
    assert set(first.values()).isdisjoint(second.values())


def test_id_source_streams_are_independent() -> None:
    a, b = IdSource(True, 1, 0), IdSource(True, 1, 0)
    a.request_id()
    a.request_id()
    assert a.hex_id("user") == b.hex_id("user")
    assert a.request_id() != b.request_id()


def test_random_id_source_does_not_repeat() -> None:
    assert IdSource(False).hex_id("user") != IdSource(False).hex_id("user")


def test_deterministic_clouds_repeat_ids_but_keep_their_own_fernet_key(tmp_path: Path) -> None:
    first = make_backend(tmp_path / "a")
    second = make_backend(tmp_path / "b")
    now = time.time()
    one, two = demo_token(first, now=now), demo_token(second, now=now)
    assert (one.user_id, one.project_id, one.audit_ids) == \
        (two.user_id, two.project_id, two.audit_ids)
    # a key from a public seed would let anyone mint tokens: each cloud makes its own
    assert one.token != two.token
    with pytest.raises(TokenNotFound):
        second.validate(one.token)


def test_a_time_reads_the_same_before_and_after_a_trip_through_the_token() -> None:
    # The token keeps whole microseconds; the issued body and a rescoped body must agree.
    from labkit.cloud.identity.handlers import iso
    start = 1_795_000_000.0
    for step in range(20_000):
        moment = start + step * 0.000_000_37 + step * 1.3
        assert iso(moment) == iso(round(moment * 1_000_000) / 1_000_000)
