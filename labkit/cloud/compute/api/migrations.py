"""GET /v2.1/os-migrations and /v2.1/servers/{id}/migrations: the moves of instances.

os-migrations lists every migration record (resizes and cold migrations here), for
admins only as in nova of the 2.79 era. The fields grow with the microversion:
migration_type from 2.23; uuid, paging (limit, marker, a next link) and the
changes-since filter from 2.59, newest first; changes-before from 2.66. user_id and
project_id arrive only in 2.80, past our maximum.

The per-server API (2.23 on) shows in-progress *live* migrations only. The lab does
no live migrations, so its list is empty and every id is 404, in nova's words.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.cloud.compute.api.errors import policy_check
from labkit.cloud.compute.api.microversion import APIVersion, version
from labkit.cloud.compute.api.servers import iso_micro, query_time
from labkit.cloud.compute.api.versions import MAX_LIMIT, next_links
from labkit.cloud.compute.migrations import Migration, MigrationNotFound
from labkit.cloud.errors import BadRequest, NotFound
from labkit.cloud.http import context

INDEX = "os_compute_api:os-migrations:index"
SERVER_INDEX = "os_compute_api:servers:migrations:index"
SERVER_SHOW = "os_compute_api:servers:migrations:show"
# the filters every version reads; later versions add paging and time filters
FILTERS = ("hidden", "host", "instance_uuid", "source_compute", "status", "migration_type")


# -- the query, checked as nova's query schemas check it -------------------------------

def _allowed(v: APIVersion) -> tuple[str, ...]:
    allowed = FILTERS
    if v.at_least("2.59"):
        allowed += ("limit", "marker", "changes-since")
    if v.at_least("2.66"):
        allowed += ("changes-before",)
    return allowed


def _invalid(name: str, value: object, message: str) -> BadRequest:
    return BadRequest(f"Invalid input for query parameters {name}. Value: {value}. {message}")


def _single(request: Request, name: str) -> str:
    """A parameter the schema allows once (nova's single_param)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise _invalid(name, values, f"{values} is too long")
    return values[0]


def _timestamp(request: Request, name: str) -> float:
    return query_time(_single(request, name), name)


def _filters(request: Request, v: APIVersion) -> dict[str, Any]:
    """The filters for Migrations.listing; 400 in nova's words for a bad query."""
    query = request.query_params
    allowed = _allowed(v)
    if v.at_least("2.59"):
        # from 2.59 the schema refuses unknown parameters (before, nova dropped them)
        unknown = sorted({k for k in query if k not in allowed})
        if unknown:
            listed = ", ".join(f"'{k}'" for k in unknown)
            verb = "was" if len(unknown) == 1 else "were"
            raise BadRequest(f"Additional properties are not allowed ({listed} {verb} "
                             "unexpected)")
    # a repeated filter counts once, its last value (nova copies req.GET into a dict)
    filters: dict[str, Any] = {k: query[k] for k in FILTERS if k in query and k != "hidden"}
    if "limit" in allowed and "limit" in query:
        raw = _single(request, "limit")
        if not raw.isdigit():
            raise _invalid("limit", raw, f"'{raw}' does not match '^[0-9]*$'")
        filters["limit"] = min(int(raw), MAX_LIMIT)
    elif "limit" in allowed:
        filters["limit"] = MAX_LIMIT
    if "marker" in allowed and "marker" in query:
        filters["marker"] = _single(request, "marker")
    if "changes-since" in allowed and "changes-since" in query:
        filters["changes_since"] = _timestamp(request, "changes-since")
    if "changes-before" in allowed and "changes-before" in query:
        filters["changes_before"] = _timestamp(request, "changes-before")
        if filters["changes_before"] < filters.get("changes_since", float("-inf")):
            raise BadRequest("The value of changes-since must be less than or equal to "
                             "changes-before.")
    return filters


# -- the view ----------------------------------------------------------------------------

def _flavor_row_id(nova: Any, flavor: dict[str, Any] | None) -> int | None:
    """old/new_instance_type_id: the flavors table's own id (not the API's flavorid)."""
    if not flavor:
        return None
    if isinstance(flavor.get("id"), int):
        return int(flavor["id"])
    try:
        return int(nova.flavors.get(flavor["flavorid"])["id"])
    except (KeyError, NotFound):
        # the flavor was deleted since: nova would still know its row id, we do not
        return None


def _migration(nova: Any, row: Migration, v: APIVersion) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": row.id, "instance_uuid": row.instance_uuid, "status": row.status,
        "source_compute": row.source_compute, "source_node": row.source_node,
        "dest_compute": row.dest_compute, "dest_node": row.dest_node,
        "dest_host": row.dest_host,
        "old_instance_type_id": _flavor_row_id(nova, row.old_flavor),
        "new_instance_type_id": _flavor_row_id(nova, row.new_flavor),
        "created_at": iso_micro(row.created_at), "updated_at": iso_micro(row.updated_at)}
    if v.at_least("2.23"):
        # nova links only in-progress live migrations, which the lab never has
        shown["migration_type"] = row.migration_type
    if v.at_least("2.59"):
        shown["uuid"] = row.uuid
    return shown


# -- the handlers --------------------------------------------------------------------------

def routes(nova: Any) -> list[Route]:
    async def index(request: Request) -> Response:
        v = version(request)
        # nova checks the query against its schema before the policy
        filters = _filters(request, v)
        policy_check(context(request), INDEX)
        if filters.get("limit") == 0:
            rows: list[Migration] = []
        elif v.at_least("2.59"):
            rows = nova.migrations.listing(filters)
        else:
            # before 2.59 nova neither sorts nor pages: the table's own order
            rows = sorted(nova.migrations.listing(filters), key=lambda r: r.id)
        shown = [_migration(nova, r, v) for r in rows]
        body: dict[str, Any] = {"migrations": shown}
        if v.at_least("2.59"):
            links = next_links(request, shown, "os-migrations", id_key="uuid")
            if links:
                body["migrations_links"] = links
        return JSONResponse(body)

    def server(request: Request) -> Any:
        """The server, 404 before 2.23 (no such API) or when the caller cannot see it."""
        if not version(request).at_least("2.23"):
            raise NotFound("The resource could not be found.")
        token = context(request)
        with nova.database.session() as s:
            return nova.instances.get(s, request.path_params["server_id"],
                                      None if token.is_admin else token.project_id)

    async def server_index(request: Request) -> Response:
        server(request)
        policy_check(context(request), SERVER_INDEX)
        # only in-progress live migrations are listed here: the lab makes none
        return JSONResponse({"migrations": []})

    async def server_show(request: Request) -> Response:
        instance = server(request)
        policy_check(context(request), SERVER_SHOW)
        wanted = request.path_params["migration_id"]
        uuid = instance.uuid
        try:
            row = nova.migrations.get(int(wanted)) if wanted.isdigit() else None
        except MigrationNotFound:
            row = None
        if row is None or row.instance_uuid != uuid:
            raise NotFound(f"In-progress live migration {wanted} is not found for server "
                           f"{uuid}.")
        if row.migration_type != "live-migration":
            raise NotFound(f"Migration {wanted} for server {uuid} is not live-migration.")
        # nova shows a live migration while queued, preparing, running or post-migrating;
        # the lab makes none
        raise NotFound(f"Live migration {wanted} for server {uuid} is not in progress.")

    return [
        Route("/v2.1/os-migrations", index, methods=["GET"]),
        Route("/v2.1/servers/{server_id}/migrations", server_index, methods=["GET"]),
        Route("/v2.1/servers/{server_id}/migrations/{migration_id}", server_show,
              methods=["GET"]),
    ]
