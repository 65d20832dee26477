"""Nova's migrations APIs: GET /os-migrations (admin) and /servers/{id}/migrations.

The rows are written straight into the cloud's nova database through the
Migrations model (as nova.migrations.create would), so these tests read the API's
filters, fields and paging whatever the resize flow does. The last tests go
through the real `openstack server migration list`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from openstack.connection import Connection

from conftest import auth_header, wait_for
from labkit.cloud.compute.flavors import Flavors
from labkit.cloud.compute.migrations import Migration, Migrations
from labkit.cloud.db import Database
from labkit.cloud.ids import IdSource
from labkit.cloud.process import CloudInfo

Run = Callable[..., subprocess.CompletedProcess[str]]
URL = "/compute/v2.1/os-migrations"
IMAGE = "6b4f1c2e-4d4a-4c55-9a57-1a5b0f3c7d21"  # labkit-tiny, fixed in data/images.yaml
ADMIN = "labkit-admin"
BASE_FIELDS = {"id", "instance_uuid", "status", "source_compute", "source_node", "dest_compute",
               "dest_node", "dest_host", "old_instance_type_id", "new_instance_type_id",
               "created_at", "updated_at"}


def compute(token: str, version: str | None = None) -> dict[str, str]:
    headers = auth_header(token)
    if version:
        headers["OpenStack-API-Version"] = f"compute {version}"
    return headers


def fake_uuid(n: int) -> str:
    """An instance uuid of its own per test, so each test reads only its rows."""
    return f"00000000-0000-4000-8000-{n:012d}"


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def nova_db(cloud: CloudInfo) -> Iterator[Database]:
    """The running cloud's own nova.sqlite (WAL: both processes read and write it)."""
    db = Database(cloud.home / "nova.sqlite")
    yield db
    db.close()


@pytest.fixture(scope="module")
def migrations(nova_db: Database) -> Migrations:
    return Migrations(nova_db, IdSource())


def resize_row(migrations: Migrations, instance: str, **values: Any) -> Migration:
    """A resize from compute-1 to compute-2, m1.nano (42) to m1.tiny (1)."""
    fields: dict[str, Any] = {
        "source_compute": "compute-1", "source_node": "compute-1",
        "dest_compute": "compute-2", "dest_node": "compute-2", "dest_host": "10.0.0.12",
        "old_flavor": {"flavorid": "42", "name": "m1.nano"},
        "new_flavor": {"flavorid": "1", "name": "m1.tiny"}}
    fields.update(values)
    return migrations.create(instance, **fields)


def set_updated_at(nova_db: Database, migration_id: int, when: str) -> None:
    with nova_db.session() as s:
        row = s.get(Migration, migration_id)
        assert row is not None
        row.updated_at = at(when)


def listed(http: httpx.Client, token: str, version: str | None = None,
           **query: Any) -> httpx.Response:
    return http.get(URL, params=query, headers=compute(token, version))


# -- GET /os-migrations --------------------------------------------------------------------

def test_os_migrations_is_for_admins_only(http: httpx.Client, demo_token: str) -> None:
    r = listed(http, demo_token)
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == (
        "Policy doesn't allow os_compute_api:os-migrations:index to be performed.")


def test_fields_grow_with_the_microversion(http: httpx.Client, admin_token: str,
                                          migrations: Migrations, nova_db: Database) -> None:
    instance = fake_uuid(1)
    row = resize_row(migrations, instance, status="finished")
    flavors = Flavors(nova_db, IdSource())

    def one(version: str) -> dict[str, Any]:
        r = listed(http, admin_token, version, instance_uuid=instance)
        assert r.status_code == 200, r.text
        assert r.headers["OpenStack-API-Version"] == f"compute {version}"
        [shown] = r.json()["migrations"]
        return shown

    old = one("2.1")
    assert set(old) == BASE_FIELDS
    assert (old["id"], old["instance_uuid"], old["status"]) == (row.id, instance, "finished")
    assert (old["source_compute"], old["dest_compute"], old["dest_host"]) == (
        "compute-1", "compute-2", "10.0.0.12")
    # the flavors table's own ids, not the API's flavor ids
    assert old["old_instance_type_id"] == flavors.get("42")["id"]
    assert old["new_instance_type_id"] == flavors.get("1")["id"]
    assert abs(at(old["created_at"]) - row.created_at) < 1e-3
    # migration_type from 2.23 (no links: nova links only running live migrations)
    assert set(one("2.23")) == BASE_FIELDS | {"migration_type"}
    assert one("2.23")["migration_type"] == "resize"
    assert set(one("2.59")) == BASE_FIELDS | {"migration_type", "uuid"}
    assert one("2.59")["uuid"] == row.uuid
    # user_id and project_id are 2.80, past the cloud's maximum
    assert set(one("2.79")) == BASE_FIELDS | {"migration_type", "uuid"}


def test_filters_select_rows(http: httpx.Client, admin_token: str,
                             migrations: Migrations) -> None:
    instance = fake_uuid(2)
    resize = resize_row(migrations, instance, status="finished")
    cold = migrations.create(instance, migration_type="migration", status="error",
                             source_compute="compute-2", dest_compute="compute-3")

    def ids(**query: str) -> set[int]:
        r = listed(http, admin_token, "2.23", instance_uuid=instance, **query)
        assert r.status_code == 200, r.text
        return {m["id"] for m in r.json()["migrations"]}

    assert ids() == {resize.id, cold.id}
    # host matches either end of the move; source_compute only the start
    assert ids(host="compute-2") == {resize.id, cold.id}
    assert ids(host="compute-3") == {cold.id}
    assert ids(source_compute="compute-2") == {cold.id}
    assert ids(status="finished") == {resize.id}
    assert ids(migration_type="migration") == {cold.id}
    # before 2.59 nova drops parameters it does not know
    assert ids(flavor="ignored") == {resize.id, cold.id}
    other = listed(http, admin_token, instance_uuid=fake_uuid(999)).json()
    assert other == {"migrations": []}


def test_list_is_newest_first_and_pages_from_259(http: httpx.Client, admin_token: str,
                                                 migrations: Migrations) -> None:
    instance = fake_uuid(3)
    rows = [resize_row(migrations, instance, status=s)
            for s in ("reverted", "confirmed", "finished")]
    newest_first = [r.uuid for r in reversed(rows)]
    body = listed(http, admin_token, "2.59", instance_uuid=instance).json()
    assert [m["uuid"] for m in body["migrations"]] == newest_first
    assert "migrations_links" not in body
    # before 2.59: no paging, the table's order, and limit is not a parameter
    old = listed(http, admin_token, "2.58", instance_uuid=instance, limit=1).json()
    assert [m["id"] for m in old["migrations"]] == [r.id for r in rows]
    assert "migrations_links" not in old

    page = listed(http, admin_token, "2.59", instance_uuid=instance, limit=2).json()
    assert [m["uuid"] for m in page["migrations"]] == newest_first[:2]
    [link] = page["migrations_links"]
    assert link["rel"] == "next" and f"marker={newest_first[1]}" in link["href"]
    assert "/compute/v2.1/os-migrations?" in link["href"]
    rest = http.get(link["href"], headers=compute(admin_token, "2.59")).json()
    assert [m["uuid"] for m in rest["migrations"]] == newest_first[2:]
    assert listed(http, admin_token, "2.59", instance_uuid=instance,
                  limit=0).json()["migrations"] == []


def test_changes_since_from_259_and_changes_before_from_266(
        http: httpx.Client, admin_token: str, migrations: Migrations,
        nova_db: Database) -> None:
    instance = fake_uuid(4)
    early = resize_row(migrations, instance, status="confirmed")
    late = resize_row(migrations, instance, status="finished")
    set_updated_at(nova_db, early.id, "2020-01-01T00:00:00")
    set_updated_at(nova_db, late.id, "2022-01-01T00:00:00")

    def ids(version: str, **query: str) -> set[int]:
        r = listed(http, admin_token, version, instance_uuid=instance, **query)
        assert r.status_code == 200, r.text
        return {m["id"] for m in r.json()["migrations"]}

    assert ids("2.59", **{"changes-since": "2021-01-01T00:00:00Z"}) == {late.id}
    # the bound is inclusive, on updated_at
    assert ids("2.59", **{"changes-since": "2022-01-01T00:00:00"}) == {late.id}
    assert ids("2.58", **{"changes-since": "2021-01-01T00:00:00Z"}) == {early.id, late.id}
    assert ids("2.66", **{"changes-before": "2021-01-01T00:00:00Z"}) == {early.id}
    assert ids("2.66", **{"changes-since": "2019-06-01T00:00:00Z",
                          "changes-before": "2020-06-01T00:00:00Z"}) == {early.id}


@pytest.mark.parametrize(("version", "query", "message"), [
    ("2.59", {"changes-before": "2020-01-01T00:00:00Z"},
     "Additional properties are not allowed ('changes-before' was unexpected)"),
    ("2.59", {"flavor": "x"}, "Additional properties are not allowed ('flavor' was unexpected)"),
    ("2.59", {"limit": "lots"},
     "Invalid input for query parameters limit. Value: lots. 'lots' does not match '^[0-9]*$'"),
    ("2.59", {"changes-since": "yesterday"},
     "Invalid input for query parameters changes-since. Value: yesterday. "
     "'yesterday' is not a 'date-time'"),
    ("2.66", {"changes-since": "2021-01-01T00:00:00Z", "changes-before": "2020-01-01T00:00:00Z"},
     "The value of changes-since must be less than or equal to changes-before."),
    ("2.59", {"marker": "no-such-migration"}, "Marker no-such-migration could not be found."),
], ids=["before-266", "unknown", "limit", "since", "since-after-before", "marker"])
def test_bad_queries_are_400_in_novas_words(http: httpx.Client, admin_token: str,
                                            version: str, query: dict[str, str],
                                            message: str) -> None:
    r = listed(http, admin_token, version, **query)
    assert r.status_code == 400, r.text
    assert r.json()["badRequest"]["message"] == message


# -- GET /servers/{id}/migrations -----------------------------------------------------------

@pytest.fixture(scope="module")
def server(demo_conn: Connection) -> Iterator[Any]:
    """One server of the demo project, on the model driver."""
    created = demo_conn.compute.create_server(name="vm", flavor_id="42", image_id=IMAGE,
                                              networks="none")
    created = demo_conn.compute.wait_for_server(created, interval=0.1, wait=30)
    yield created
    demo_conn.compute.delete_server(created, ignore_missing=True)


def test_server_migrations_list_only_live_ones(http: httpx.Client, admin_token: str,
                                               demo_token: str, server: Any,
                                               migrations: Migrations) -> None:
    # rows of the real server are ended moves: the cloud's own resize code leaves them be
    resize_row(migrations, server.id, status="confirmed")
    url = f"/compute/v2.1/servers/{server.id}/migrations"
    r = http.get(url, headers=compute(admin_token, "2.23"))
    assert r.status_code == 200, r.text
    assert r.json() == {"migrations": []}
    # the API arrived in 2.23
    before = http.get(url, headers=compute(admin_token, "2.22"))
    assert before.status_code == 404
    assert before.json()["itemNotFound"]["message"] == "The resource could not be found."
    refused = http.get(url, headers=compute(demo_token, "2.23"))
    assert refused.status_code == 403
    assert refused.json()["forbidden"]["message"] == (
        "Policy doesn't allow os_compute_api:servers:migrations:index to be performed.")
    missing = http.get(f"/compute/v2.1/servers/{fake_uuid(77)}/migrations",
                       headers=compute(admin_token, "2.23"))
    assert missing.status_code == 404
    assert missing.json()["itemNotFound"]["message"] == (
        f"Instance {fake_uuid(77)} could not be found.")


def test_server_migration_show_is_404_in_novas_words(http: httpx.Client, admin_token: str,
                                                     server: Any,
                                                     migrations: Migrations) -> None:
    resize = resize_row(migrations, server.id, status="confirmed")
    other = resize_row(migrations, fake_uuid(5), status="finished")
    base = f"/compute/v2.1/servers/{server.id}/migrations"

    def message(migration_id: object) -> str:
        r = http.get(f"{base}/{migration_id}", headers=compute(admin_token, "2.59"))
        assert r.status_code == 404, r.text
        return str(r.json()["itemNotFound"]["message"])

    assert message(resize.id) == (
        f"Migration {resize.id} for server {server.id} is not live-migration.")
    for unknown in (999999, other.id):
        assert message(unknown) == (
            f"In-progress live migration {unknown} is not found for server {server.id}.")


# -- the openstack CLI ----------------------------------------------------------------------

def cli_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"{result.args}\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.mark.cli
def test_cli_server_migration_list(openstack_cli: Run, server: Any,
                                   migrations: Migrations) -> None:
    row = resize_row(migrations, server.id, status="reverted")
    everything = cli_json(openstack_cli("server", "migration", "list", "-f", "json",
                                        cloud_name=ADMIN))
    assert row.uuid in {m["UUID"] for m in everything}
    # the admin finds a demo server by id (by name only within the admin's own project)
    mine = cli_json(openstack_cli("server", "migration", "list", "--server", server.id,
                                  "-f", "json", cloud_name=ADMIN))
    assert mine and {m["Server UUID"] for m in mine} == {server.id}
    shown = next(m for m in mine if m["UUID"] == row.uuid)
    assert (shown["Id"], shown["Type"], shown["Status"]) == (row.id, "resize", "reverted")
    assert (shown["Source Compute"], shown["Dest Compute"]) == ("compute-1", "compute-2")
    pinned = cli_json(openstack_cli("--os-compute-api-version", "2.59", "server", "migration",
                                    "list", "--status", "finished", "--limit", "1",
                                    "-f", "json", cloud_name=ADMIN))
    assert len(pinned) == 1 and pinned[0]["Status"] == "finished"
    refused = openstack_cli("server", "migration", "list")
    assert refused.returncode != 0
    assert "Policy doesn't allow os_compute_api:os-migrations:index" in refused.stderr


@pytest.mark.cli
def test_cli_real_resize_is_listed_then_confirmed(openstack_cli: Run, http: httpx.Client,
                                                  admin_token: str, nova_db: Database) -> None:
    created = cli_json(openstack_cli("server", "create", "--flavor", "m1.nano", "--image",
                                     "labkit-tiny", "--nic", "none", "--wait", "resized-vm",
                                     "-f", "json"))
    resized = openstack_cli("server", "resize", "--flavor", "m1.tiny", "--wait", "resized-vm")
    assert resized.returncode == 0, resized.stderr
    [row] = cli_json(openstack_cli("server", "migration", "list", "--server", created["id"],
                                   "-f", "json", cloud_name=ADMIN))
    flavors = Flavors(nova_db, IdSource())
    assert (row["Type"], row["Status"], row["Server UUID"]) == (
        "resize", "finished", created["id"])
    assert (row["Old Flavor"], row["New Flavor"]) == (
        flavors.get("42")["id"], flavors.get("1")["id"])
    assert row["Source Compute"] and row["Dest Compute"]
    pinned = cli_json(openstack_cli("--os-compute-api-version", "2.59", "server", "migration",
                                    "list", "--type", "resize", "-f", "json",
                                    cloud_name=ADMIN))
    assert row["UUID"] in {m["UUID"] for m in pinned}

    assert openstack_cli("server", "resize", "confirm", "resized-vm").returncode == 0
    confirmed = wait_for(
        lambda: listed(http, admin_token, "2.59", instance_uuid=created["id"]).json(),
        lambda body: body["migrations"][0]["status"] == "confirmed", timeout=30)
    assert confirmed["migrations"][0]["status"] == "confirmed"
    assert openstack_cli("server", "delete", "--wait", "resized-vm").returncode == 0
