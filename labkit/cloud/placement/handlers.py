"""Placement's HTTP face: microversions, parse requests, check policy, shape replies.

Holds no state: everything goes through `Placement`. Microversions run from 1.0 to
MAX_VERSION; every change up to it is honoured (the body formats of 1.12, consumer
generations of 1.28, ...). Allocation candidates are single providers, as placement
gives them before 1.29 (nested-aware candidates).
"""

from __future__ import annotations

import re
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labkit.cloud.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    ServiceError,
)
from labkit.cloud.http import context, read_json
from labkit.cloud.placement.capacity import Inventory
from labkit.cloud.placement.exceptions import (
    MICROVERSION_KEY,
    DuplicateName,
    DuplicateQueryParam,
    error_response,
    exception_handlers,
)
from labkit.cloud.placement.models import (
    INCOMPLETE_CONSUMER,
    MAX_INT,
    AllocationWrite,
    Placement,
    ProviderVerdict,
    RequestGroup,
    capacity_of,
)

Version = tuple[int, int]
MIN_VERSION: Version = (1, 0)
MAX_VERSION: Version = (1, 28)
Handler = Callable[[Request], Awaitable[Response]]
CUSTOM_NAME = re.compile(r"^CUSTOM_[A-Z0-9_]+$")
INVENTORY_FIELDS = {"total": 1, "reserved": 0, "min_unit": 1, "max_unit": 1, "step_size": 1}


def vstr(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def version_of(request: Request) -> Version:
    return request.scope.get(MICROVERSION_KEY, MIN_VERSION)


def version_document() -> dict[str, Any]:
    return {"versions": [{
        "id": f"v{vstr(MIN_VERSION)}", "max_version": vstr(MAX_VERSION),
        "min_version": vstr(MIN_VERSION), "status": "CURRENT",
        # placement points back at "this same URL" with a relative, empty href
        "links": [{"rel": "self", "href": ""}]}]}


def root_response(request: Request) -> Response:
    """The version document at the service's own path, microversion headers and all."""
    try:
        version = parse_version_header(request.headers.get("openstack-api-version"))
        response: Response = JSONResponse(version_document())
    except ServiceError as exc:
        version = MIN_VERSION
        response = error_response(request, exc)
    response.headers["openstack-api-version"] = f"placement {vstr(version)}"
    response.headers["vary"] = "openstack-api-version"
    return response


def parse_version_header(value: str | None) -> Version:
    """The placement microversion asked for in `OpenStack-API-Version` (default 1.0)."""
    if not value:
        return MIN_VERSION
    wanted = None
    for part in value.split(","):
        words = part.strip().split()
        if len(words) == 2 and words[0].lower() == "placement":
            wanted = words[1]
    if wanted is None:
        return MIN_VERSION
    if wanted.lower() == "latest":
        return MAX_VERSION
    match = re.fullmatch(r"(\d+)\.(\d+)", wanted)
    if not match:
        raise BadRequest(f"invalid version string: {wanted}")
    version = (int(match[1]), int(match[2]))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise NotAcceptable(f"Unacceptable version header: {wanted}")
    return version


class Microversions:
    """ASGI wrapper: read the microversion, refuse what is out of range, echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope.get("headers", []):
            if key == b"openstack-api-version":
                header = value.decode("latin-1")
        try:
            version = parse_version_header(header)
        except ServiceError as exc:
            version = None
            response = error_response(Request(scope), exc)
        scope[MICROVERSION_KEY] = version or MIN_VERSION

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                shown = vstr(version or MIN_VERSION)
                headers.append((b"openstack-api-version", f"placement {shown}".encode()))
                headers.append((b"vary", b"openstack-api-version"))
                message["headers"] = headers
            await send(message)

        if version is None:
            await response(scope, receive, send_with_version)
        else:
            await self.app(scope, receive, send_with_version)


# -- small helpers ----------------------------------------------------------------------

def base_url(request: Request) -> str:
    """Links are relative to the host, under the mount point, as placement makes them."""
    return request.scope.get("root_path", "")


def reply(request: Request, body: Any, status: int = 200,
          modified: float | None = None, headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if version_of(request) >= (1, 15):
        headers["cache-control"] = "no-cache"
        headers["last-modified"] = formatdate(modified or time.time(), usegmt=True)
    return JSONResponse(body, status_code=status, headers=headers)


def no_content(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, headers=headers)


def policy(request: Request, rule: str) -> None:
    """Placement's default policy: these APIs are for admins (and services) only."""
    if not context(request).is_admin:
        raise Forbidden(f"Policy does not allow placement:{rule} to be performed.")


def check_query(request: Request, allowed: set[str]) -> None:
    unexpected = sorted(set(request.query_params) - allowed)
    if unexpected:
        raise BadRequest("Invalid query string parameters: Additional properties are not "
                         f"allowed ({', '.join(repr(u) for u in unexpected)} "
                         f"{'was' if len(unexpected) == 1 else 'were'} unexpected)")


def normal_uuid(value: Any, what: str) -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except ValueError:
        raise BadRequest(f"Malformed {what}: {value}") from None


def expect(body: dict[str, Any], key: str, kind: type | tuple[type, ...],
           required: bool = True) -> Any:
    """A field of a JSON body of the right JSON type (placement validates with JSON schema)."""
    if key not in body:
        if required:
            raise BadRequest(f"JSON does not validate: '{key}' is a required property")
        return None
    value = body[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BadRequest(f"JSON does not validate: {value!r} is not of the expected type "
                         f"for '{key}'")
    if not isinstance(value, kind):
        raise BadRequest(f"JSON does not validate: {value!r} is not of the expected type "
                         f"for '{key}'")
    return value


def only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise BadRequest("JSON does not validate: Additional properties are not allowed "
                         f"({', '.join(repr(e) for e in extra)} unexpected)")


def parse_resources(value: str, name: str = "resources") -> dict[str, int]:
    """`VCPU:1,MEMORY_MB:512` as placement reads it."""
    found: dict[str, int] = {}
    for part in value.split(","):
        rc, sep, amount = part.partition(":")
        if not sep or not rc.strip():
            raise BadRequest(
                f"Badly formed {name} parameter. Expected {name} query string parameter in "
                f"form: ?{name}=VCPU:2,MEMORY_MB:1024. Got: {value}.")
        try:
            number = int(amount)
        except ValueError:
            number = 0
        if number < 1:
            raise BadRequest(f"Requested resource {rc.strip()} expected positive integer "
                             f"amount. Got: {amount}.")
        found[rc.strip()] = number
    return found


def parse_traits(value: str, version: Version, name: str = "required"
                 ) -> tuple[set[str], set[str]]:
    """Required and (from 1.22) forbidden (`!TRAIT`) traits."""
    required, forbidden = set(), set()
    for trait in (t.strip() for t in value.split(",")):
        if not trait:
            raise BadRequest(f'Invalid query string parameters: Expected "{name}" parameter '
                             f'value of the form: HW_CPU_X86_VMX,CUSTOM_MAGIC. Got: "{value}"')
        if trait.startswith("!") and version >= (1, 22):
            forbidden.add(trait[1:])
        else:
            required.add(trait)
    conflict = required & forbidden
    if conflict:
        raise BadRequest("Conflicting required and forbidden traits found in the following "
                         f"traits keys: {name}: ({', '.join(sorted(conflict))})")
    return required, forbidden


def parse_member_of(values: list[str], version: Version) -> tuple[list[set[str]], set[str]]:
    """member_of values: each `in:a,b` or one uuid; several from 1.24; `!` from 1.32
    (not offered here)."""
    if len(values) > 1 and version < (1, 24):
        raise BadRequest("Multiple member_of parameters are not supported")
    groups = []
    for value in values:
        listed = value[3:] if value.startswith("in:") else value
        uuids = {u.strip() for u in listed.split(",")}
        for aggregate in uuids:
            try:
                uuidlib.UUID(aggregate)
            except ValueError:
                raise BadRequest(f"Invalid query string parameters: Expected 'member_of' "
                                 f"parameter to contain valid UUID(s). Got: {aggregate}"
                                 ) from None
        if len(uuids) > 1 and not value.startswith("in:"):
            raise BadRequest("Invalid query string parameters: Expected 'member_of' parameter "
                             "to be a UUID or 'in:' followed by UUIDs")
        groups.append(uuids)
    return groups, set()


def inventory_from(body: dict[str, Any], rc: str, uuid: str, version: Version,
                   extra: set[str] = frozenset()) -> Inventory:  # type: ignore[assignment]
    """One inventory record from JSON, with placement's defaults and checks."""
    only(body, set(INVENTORY_FIELDS) | {"allocation_ratio"} | extra)
    values: dict[str, Any] = {}
    for key, minimum in INVENTORY_FIELDS.items():
        value = expect(body, key, int, required=key == "total")
        if value is None:
            continue
        if not minimum <= value <= MAX_INT:
            raise BadRequest(f"JSON does not validate: {value} is out of range for '{key}' "
                             f"(from {minimum} to {MAX_INT})")
        values[key] = value
    ratio = expect(body, "allocation_ratio", (int, float), required=False)
    if ratio is not None:
        if not 0 < ratio <= 3.40282e38:
            raise BadRequest(f"JSON does not validate: {ratio} is less than or equal to the "
                             "minimum of 0 for 'allocation_ratio'")
        values["allocation_ratio"] = float(ratio)
    values.setdefault("max_unit", MAX_INT)
    inventory = Inventory(**values)
    # 1.26 lets the whole inventory be reserved; before, something must stay free
    if version >= (1, 26):
        bad, words = inventory.capacity < 0, "greater than total"
    else:
        bad, words = inventory.capacity <= 0, "greater than or equal to total"
    if bad:
        raise BadRequest(f"Unable to update inventory for resource provider {uuid}: Invalid "
                         f"inventory for '{rc}' on resource provider '{uuid}'. The reserved "
                         f"value is {words}.")
    return inventory


def inventory_view(inventory: Inventory) -> dict[str, Any]:
    return {"total": inventory.total, "reserved": inventory.reserved,
            "min_unit": inventory.min_unit,
            "max_unit": inventory.total if inventory.max_unit is None else inventory.max_unit,
            "step_size": inventory.step_size, "allocation_ratio": inventory.allocation_ratio}


def generation_from(body: dict[str, Any]) -> int:
    return expect(body, "resource_provider_generation", int)


def provider_view(request: Request, provider: Any) -> dict[str, Any]:
    version = version_of(request)
    url = f"{base_url(request)}/resource_providers/{provider.uuid}"
    rels = ["inventories", "usages"]
    rels += ["aggregates"] if version >= (1, 1) else []
    rels += ["traits"] if version >= (1, 6) else []
    rels += ["allocations"] if version >= (1, 11) else []
    body = {"uuid": provider.uuid, "name": provider.name, "generation": provider.generation,
            "links": [{"rel": "self", "href": url}]
            + [{"rel": rel, "href": f"{url}/{rel}"} for rel in rels]}
    if version >= (1, 14):
        body["parent_provider_uuid"] = provider.parent_uuid
        body["root_provider_uuid"] = provider.root_uuid
    return body


# -- routing with microversions ---------------------------------------------------------

class Routes:
    """Path -> method -> (first microversion, handler), answering 404/405 as placement does."""

    def __init__(self) -> None:
        self.table: dict[str, dict[str, tuple[Version, Handler, int]]] = {}

    def add(self, path: str, method: str, since: Version = MIN_VERSION,
            below: int = 404) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.table.setdefault(path, {})[method] = (since, handler, below)
            return handler
        return register

    def routes(self) -> list[Route]:
        return [Route(path, self._dispatch(methods), methods=["GET", "HEAD", "POST", "PUT",
                                                               "DELETE", "PATCH"])
                for path, methods in self.table.items()]

    @staticmethod
    def _dispatch(methods: dict[str, tuple[Version, Handler, int]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            version = version_of(request)
            entry = methods.get(request.method)
            if entry is None:
                raise MethodNotAllowed(f"The method specified is not allowed for this "
                                       f"resource: {request.method}.")
            since, handler, below = entry
            if version < since:
                # placement hides what a microversion does not have: 404, or 405 for a
                # new method on a path that exists
                raise MethodNotAllowed() if below == 405 else NotFound()
            return await handler(request)
        return endpoint


def build_placement_app(model: Placement) -> ASGIApp:
    r = Routes()

    @r.add("/", "GET")
    async def home(request: Request) -> Response:
        return reply(request, version_document())

    # -- resource providers

    @r.add("/resource_providers", "GET")
    async def list_providers(request: Request) -> Response:
        policy(request, "resource_providers:list")
        version = version_of(request)
        allowed = {"name", "uuid"}
        allowed |= {"member_of"} if version >= (1, 3) else set()
        allowed |= {"resources"} if version >= (1, 4) else set()
        allowed |= {"in_tree"} if version >= (1, 14) else set()
        allowed |= {"required"} if version >= (1, 18) else set()
        check_query(request, allowed)
        q = request.query_params
        filters: dict[str, Any] = {"uuid": q.get("uuid"), "name": q.get("name"),
                                   "in_tree": q.get("in_tree")}
        if "resources" in q:
            filters["resources"] = parse_resources(q["resources"])
        if "member_of" in q:
            filters["member_of"], filters["forbidden_aggregates"] = parse_member_of(
                q.getlist("member_of"), version)
        if "required" in q:
            filters["required"], filters["forbidden"] = parse_traits(q["required"], version)
        try:
            found = model.list_providers(**filters)
        except BadRequest as exc:
            where = ("Invalid resource class in resources parameter"
                     if exc.message.startswith("No such resource class")
                     else 'Invalid trait(s) in "required" parameter')
            raise BadRequest(f"{where}: {exc.message}") from exc
        modified = max((p.updated_at for p in found), default=None)
        return reply(request, {"resource_providers": [provider_view(request, p) for p in found]},
                     modified=modified)

    @r.add("/resource_providers", "POST")
    async def create_provider(request: Request) -> Response:
        policy(request, "resource_providers:create")
        version = version_of(request)
        body = await read_json(request)
        only(body, {"name", "uuid"} | ({"parent_provider_uuid"} if version >= (1, 14) else set()))
        name = expect(body, "name", str)
        if not 1 <= len(name) <= 200:
            raise BadRequest("JSON does not validate: 'name' must be 1 to 200 characters long")
        uuid = body.get("uuid")
        uuid = normal_uuid(uuid, "uuid") if uuid is not None else None
        parent = body.get("parent_provider_uuid")
        parent = normal_uuid(parent, "parent_provider_uuid") if parent is not None else None
        provider = model.create_provider(name, uuid=uuid, parent_uuid=parent)
        location = f"{base_url(request)}/resource_providers/{provider.uuid}"
        if version >= (1, 20):
            return reply(request, provider_view(request, provider),
                         modified=provider.updated_at, headers={"location": location})
        return no_content(201, headers={"location": location})

    @r.add("/resource_providers/{uuid}", "GET")
    async def show_provider(request: Request) -> Response:
        policy(request, "resource_providers:show")
        provider = model.provider(request.path_params["uuid"])
        return reply(request, provider_view(request, provider), modified=provider.updated_at)

    @r.add("/resource_providers/{uuid}", "PUT")
    async def update_provider(request: Request) -> Response:
        policy(request, "resource_providers:update")
        version = version_of(request)
        uuid = request.path_params["uuid"]
        model.provider(uuid)  # 404 before the body is looked at, as placement does
        body = await read_json(request)
        only(body, {"name"} | ({"parent_provider_uuid"} if version >= (1, 14) else set()))
        name = expect(body, "name", str)
        if not 1 <= len(name) <= 200:
            raise BadRequest("JSON does not validate: 'name' must be 1 to 200 characters long")
        set_parent = "parent_provider_uuid" in body
        parent = body.get("parent_provider_uuid")
        parent = normal_uuid(parent, "parent_provider_uuid") if parent is not None else None
        provider = model.update_provider(uuid, name=name, parent_uuid=parent,
                                         set_parent=set_parent)
        return reply(request, provider_view(request, provider), modified=provider.updated_at)

    @r.add("/resource_providers/{uuid}", "DELETE")
    async def delete_provider(request: Request) -> Response:
        policy(request, "resource_providers:delete")
        uuid = request.path_params["uuid"]
        try:
            model.delete_provider(uuid)
        except NotFound as exc:
            raise NotFound(f"No resource provider with uuid {uuid} found for delete") from exc
        return no_content()

    # -- inventories

    def inventories_body(generation: int, inventories: dict[str, Inventory]) -> dict[str, Any]:
        return {"resource_provider_generation": generation,
                "inventories": {rc: inventory_view(inv) for rc, inv in inventories.items()}}

    def one_inventory_body(generation: int, inventory: Inventory) -> dict[str, Any]:
        return {"resource_provider_generation": generation, **inventory_view(inventory)}

    def known_class(rc: str) -> None:
        if not model.has_resource_class(rc):
            raise BadRequest(f"Unknown resource class in inventory for resource provider: "
                             f"No such resource class {rc}.")

    @r.add("/resource_providers/{uuid}/inventories", "GET")
    async def list_inventories(request: Request) -> Response:
        policy(request, "resource_providers:inventories:list")
        uuid = request.path_params["uuid"]
        try:
            generation, inventories = model.inventories(uuid)
        except NotFound as exc:
            raise NotFound(f"No resource provider with uuid {uuid} found : {exc.message}"
                           ) from exc
        return reply(request, inventories_body(generation, inventories))

    @r.add("/resource_providers/{uuid}/inventories", "PUT")
    async def set_inventories(request: Request) -> Response:
        policy(request, "resource_providers:inventories:update")
        uuid = request.path_params["uuid"]
        model.provider(uuid)
        body = await read_json(request)
        only(body, {"inventories", "resource_provider_generation"})
        generation = generation_from(body)
        raw = expect(body, "inventories", dict)
        inventories = {}
        for rc, record in raw.items():
            if not isinstance(record, dict):
                raise BadRequest(f"JSON does not validate: inventory for {rc} is not an object")
            known_class(rc)
            inventories[rc] = inventory_from(record, rc, uuid, version_of(request))
        new_generation = model.set_inventories(uuid, inventories, generation)
        return reply(request, inventories_body(new_generation, inventories))

    @r.add("/resource_providers/{uuid}/inventories", "POST")
    async def create_inventory(request: Request) -> Response:
        policy(request, "resource_providers:inventories:create")
        uuid = request.path_params["uuid"]
        model.provider(uuid)
        body = await read_json(request)
        rc = expect(body, "resource_class", str)
        known_class(rc)
        inventory = inventory_from(body, rc, uuid, version_of(request),
                                   extra={"resource_class"})
        generation = model.set_inventory(uuid, rc, inventory, create_only=True)
        return reply(request, one_inventory_body(generation, inventory), status=201,
                     headers={"location": f"{base_url(request)}/resource_providers/{uuid}"
                                          f"/inventories/{rc}"})

    @r.add("/resource_providers/{uuid}/inventories", "DELETE", since=(1, 5), below=405)
    async def delete_inventories(request: Request) -> Response:
        policy(request, "resource_providers:inventories:delete")
        uuid = request.path_params["uuid"]
        generation, _ = model.inventories(uuid)
        model.set_inventories(uuid, {}, generation)
        return no_content()

    @r.add("/resource_providers/{uuid}/inventories/{rc}", "GET")
    async def show_inventory(request: Request) -> Response:
        policy(request, "resource_providers:inventories:show")
        uuid, rc = request.path_params["uuid"], request.path_params["rc"]
        generation, inventories = model.inventories(uuid)
        if rc not in inventories:
            raise NotFound(f"No inventory of class {rc} for {uuid}")
        return reply(request, one_inventory_body(generation, inventories[rc]))

    @r.add("/resource_providers/{uuid}/inventories/{rc}", "PUT")
    async def update_inventory(request: Request) -> Response:
        policy(request, "resource_providers:inventories:update")
        uuid, rc = request.path_params["uuid"], request.path_params["rc"]
        model.provider(uuid)
        body = await read_json(request)
        generation = generation_from(body)
        known_class(rc)
        inventory = inventory_from(body, rc, uuid, version_of(request),
                                   extra={"resource_provider_generation"})
        new_generation = model.set_inventory(uuid, rc, inventory, generation, update_only=True)
        return reply(request, one_inventory_body(new_generation, inventory))

    @r.add("/resource_providers/{uuid}/inventories/{rc}", "DELETE")
    async def delete_inventory(request: Request) -> Response:
        policy(request, "resource_providers:inventories:delete")
        uuid, rc = request.path_params["uuid"], request.path_params["rc"]
        model.delete_inventory(uuid, rc)
        return no_content()

    # -- usages and a provider's allocations

    @r.add("/resource_providers/{uuid}/usages", "GET")
    async def provider_usages(request: Request) -> Response:
        policy(request, "resource_providers:usages")
        uuid = request.path_params["uuid"]
        try:
            generation, usages = model.provider_usages(uuid)
        except NotFound as exc:
            raise NotFound(f"No resource provider with uuid {uuid} found: {exc.message}"
                           ) from exc
        return reply(request, {"resource_provider_generation": generation, "usages": usages})

    @r.add("/usages", "GET", since=(1, 9))
    async def project_usages(request: Request) -> Response:
        policy(request, "usages")
        check_query(request, {"project_id", "user_id"})
        project_id = request.query_params.get("project_id")
        if project_id is None:
            raise BadRequest("Invalid query string parameters: 'project_id' is a required "
                             "property")
        return reply(request, {"usages": model.project_usages(
            project_id, request.query_params.get("user_id"))})

    @r.add("/resource_providers/{uuid}/allocations", "GET")
    async def provider_allocations(request: Request) -> Response:
        policy(request, "resource_providers:allocations:list")
        uuid = request.path_params["uuid"]
        try:
            generation, found = model.provider_allocations(uuid)
        except NotFound as exc:
            raise NotFound(f"Resource provider '{uuid}' not found: {exc.message}") from exc
        allocations: dict[str, Any] = {}
        for consumer, (consumer_generation, resources) in found.items():
            allocations[consumer] = {"resources": resources}
            if version_of(request) >= (1, 28):
                allocations[consumer]["consumer_generation"] = consumer_generation
        return reply(request, {"resource_provider_generation": generation,
                               "allocations": allocations})

    # -- aggregates and traits of a provider

    @r.add("/resource_providers/{uuid}/aggregates", "GET", since=(1, 1))
    async def provider_aggregates(request: Request) -> Response:
        policy(request, "resource_providers:aggregates:list")
        generation, aggregates = model.provider_aggregates(request.path_params["uuid"])
        body: dict[str, Any] = {"aggregates": aggregates}
        if version_of(request) >= (1, 19):
            body["resource_provider_generation"] = generation
        return reply(request, body)

    @r.add("/resource_providers/{uuid}/aggregates", "PUT", since=(1, 1))
    async def set_aggregates(request: Request) -> Response:
        policy(request, "resource_providers:aggregates:update")
        uuid = request.path_params["uuid"]
        model.provider(uuid)
        version = version_of(request)
        raw = await _json_any(request)
        generation = None
        if version >= (1, 19):
            if not isinstance(raw, dict):
                raise BadRequest("JSON does not validate: expecting an object with aggregates "
                                 "and resource_provider_generation")
            only(raw, {"aggregates", "resource_provider_generation"})
            generation = generation_from(raw)
            raw = expect(raw, "aggregates", list)
        if not isinstance(raw, list):
            raise BadRequest("JSON does not validate: expecting a list of aggregate uuids")
        aggregates = [normal_uuid(a, "aggregate uuid") for a in raw]
        if len(set(aggregates)) != len(aggregates):
            raise BadRequest("JSON does not validate: aggregate uuids must be unique")
        new_generation = model.set_provider_aggregates(uuid, aggregates, generation,
                                                       bump=version >= (1, 19))
        body: dict[str, Any] = {"aggregates": sorted(set(aggregates))}
        if version >= (1, 19):
            body["resource_provider_generation"] = new_generation
        return reply(request, body)

    @r.add("/resource_providers/{uuid}/traits", "GET", since=(1, 6))
    async def provider_traits(request: Request) -> Response:
        policy(request, "resource_providers:traits:list")
        generation, traits = model.provider_traits(request.path_params["uuid"])
        return reply(request, {"traits": traits, "resource_provider_generation": generation})

    @r.add("/resource_providers/{uuid}/traits", "PUT", since=(1, 6))
    async def set_provider_traits(request: Request) -> Response:
        policy(request, "resource_providers:traits:update")
        uuid = request.path_params["uuid"]
        model.provider(uuid)
        body = await read_json(request)
        only(body, {"traits", "resource_provider_generation"})
        generation = generation_from(body)
        traits = expect(body, "traits", list)
        if not all(isinstance(t, str) for t in traits):
            raise BadRequest("JSON does not validate: traits must be strings")
        new_generation = model.set_provider_traits(uuid, traits, generation)
        return reply(request, {"traits": sorted(set(traits)),
                               "resource_provider_generation": new_generation})

    @r.add("/resource_providers/{uuid}/traits", "DELETE", since=(1, 6))
    async def delete_provider_traits(request: Request) -> Response:
        policy(request, "resource_providers:traits:delete")
        model.set_provider_traits(request.path_params["uuid"], [])
        return no_content()

    # -- allocations of a consumer

    @r.add("/allocations/{consumer_uuid}", "GET")
    async def show_allocations(request: Request) -> Response:
        policy(request, "allocations:list")
        version = version_of(request)
        consumer, found = model.consumer_allocations(request.path_params["consumer_uuid"])
        body: dict[str, Any] = {"allocations": {
            uuid: {"generation": generation, "resources": resources}
            for uuid, (generation, resources) in found.items()}}
        if found and consumer is not None and version >= (1, 12):
            body["project_id"] = consumer.project_id
            body["user_id"] = consumer.user_id
            if version >= (1, 28):
                body["consumer_generation"] = consumer.generation
        return reply(request, body, modified=consumer.updated_at if consumer else None)

    @r.add("/allocations/{consumer_uuid}", "PUT")
    async def set_allocations(request: Request) -> Response:
        policy(request, "allocations:update")
        consumer_uuid = normal_uuid(request.path_params["consumer_uuid"], "consumer_uuid")
        write = allocation_write(consumer_uuid, await read_json(request), version_of(request),
                                 many=False)
        model.write_allocations([write])
        return no_content()

    @r.add("/allocations/{consumer_uuid}", "DELETE")
    async def delete_allocations(request: Request) -> Response:
        policy(request, "allocations:delete")
        consumer_uuid = request.path_params["consumer_uuid"]
        if not model.allocations_for(consumer_uuid):
            raise NotFound(f"No allocations for consumer '{consumer_uuid}'")
        model.release(consumer_uuid)
        return no_content()

    @r.add("/allocations", "POST", since=(1, 13), below=405)
    async def post_allocations(request: Request) -> Response:
        policy(request, "allocations:manage")
        body = await read_json(request)
        writes = []
        for consumer_uuid, entry in body.items():
            if not isinstance(entry, dict):
                raise BadRequest(f"JSON does not validate: the entry for {consumer_uuid} is "
                                 "not an object")
            writes.append(allocation_write(normal_uuid(consumer_uuid, "consumer_uuid"), entry,
                                           version_of(request), many=True))
        model.write_allocations(writes)
        return no_content()

    # -- allocation candidates

    @r.add("/allocation_candidates", "GET", since=(1, 10))
    async def allocation_candidates(request: Request) -> Response:
        policy(request, "allocation_candidates:list")
        version = version_of(request)
        groups, group_policy, limit = candidate_query(request, version)
        found = model.candidates(groups, group_policy, limit)
        requested = {rc for g in groups.values() for rc in g.resources}
        return reply(request, candidates_body(found, groups, requested, version))

    # -- resource classes

    def class_view(request: Request, name: str) -> dict[str, Any]:
        return {"name": name, "links": [
            {"rel": "self", "href": f"{base_url(request)}/resource_classes/{name}"}]}

    def custom_name(name: Any) -> str:
        if not isinstance(name, str) or not CUSTOM_NAME.match(name) or len(name) > 255:
            raise BadRequest(f"JSON does not validate: {name!r} does not match "
                             f"'{CUSTOM_NAME.pattern}'")
        return name

    @r.add("/resource_classes", "GET", since=(1, 2))
    async def list_classes(request: Request) -> Response:
        policy(request, "resource_classes:list")
        return reply(request, {"resource_classes": [class_view(request, n)
                                                    for n in model.resource_classes()]})

    @r.add("/resource_classes", "POST", since=(1, 2), below=405)
    async def create_class(request: Request) -> Response:
        policy(request, "resource_classes:create")
        body = await read_json(request)
        only(body, {"name"})
        name = custom_name(expect(body, "name", str))
        if not model.create_resource_class(name):
            raise DuplicateName(f"Conflicting resource class already exists: {name}")
        return no_content(201, headers={"location":
                                        f"{base_url(request)}/resource_classes/{name}"})

    @r.add("/resource_classes/{name}", "GET", since=(1, 2))
    async def show_class(request: Request) -> Response:
        policy(request, "resource_classes:show")
        name = request.path_params["name"]
        if not model.has_resource_class(name):
            raise NotFound(f"No such resource class {name}.")
        return reply(request, class_view(request, name))

    @r.add("/resource_classes/{name}", "PUT", since=(1, 2))
    async def put_class(request: Request) -> Response:
        policy(request, "resource_classes:update")
        name = request.path_params["name"]
        if version_of(request) >= (1, 7):
            # 1.7: a bodiless, idempotent create
            if model.has_resource_class(name):
                return no_content()
            model.create_resource_class(custom_name(name))
            return no_content(201, headers={"location":
                                            f"{base_url(request)}/resource_classes/{name}"})
        body = await read_json(request)
        only(body, {"name"})
        new_name = custom_name(expect(body, "name", str))
        if not name.startswith("CUSTOM_") and model.has_resource_class(name):
            raise BadRequest(f"Cannot update standard resource class {name}")
        model.rename_resource_class(name, new_name)
        return reply(request, class_view(request, new_name))

    @r.add("/resource_classes/{name}", "DELETE", since=(1, 2))
    async def delete_class(request: Request) -> Response:
        policy(request, "resource_classes:delete")
        model.delete_resource_class(request.path_params["name"])
        return no_content()

    # -- traits

    @r.add("/traits", "GET", since=(1, 6))
    async def list_traits(request: Request) -> Response:
        policy(request, "traits:list")
        check_query(request, {"name", "associated"})
        q = request.query_params
        names, prefix, associated = None, None, None
        if "name" in q:
            value = q["name"]
            if value.startswith("in:"):
                names = {n.strip() for n in value[3:].split(",")}
            elif value.startswith("startswith:"):
                prefix = value[len("startswith:"):]
            else:
                raise BadRequest(f"Badly formatted name parameter. Expected name query string "
                                 f"parameter in form: ?name=[in|startswith]:[name1,name2|prefix]"
                                 f". Got: \"{value}\"")
        if "associated" in q:
            if q["associated"] not in ("true", "false"):
                raise BadRequest(f"Invalid query string parameters: '{q['associated']}' is not "
                                 "one of ['true', 'false']")
            associated = q["associated"] == "true"
        return reply(request, {"traits": model.traits(names, prefix, associated)})

    @r.add("/traits/{name}", "GET", since=(1, 6))
    async def show_trait(request: Request) -> Response:
        policy(request, "traits:show")
        name = request.path_params["name"]
        if not model.has_trait(name):
            raise NotFound(f"No such trait(s): {name}.")
        return no_content()

    @r.add("/traits/{name}", "PUT", since=(1, 6))
    async def put_trait(request: Request) -> Response:
        policy(request, "traits:update")
        name = request.path_params["name"]
        if not CUSTOM_NAME.match(name) or len(name) > 255:
            raise BadRequest('The trait is invalid. A valid trait must be no longer than 255 '
                             'characters, start with the prefix "CUSTOM_" and use following '
                             'characters: "A"-"Z", "0"-"9" and "_"')
        created = model.create_trait(name)
        return no_content(201 if created else 204,
                          headers={"location": f"{base_url(request)}/traits/{name}"})

    @r.add("/traits/{name}", "DELETE", since=(1, 6))
    async def delete_trait(request: Request) -> Response:
        policy(request, "traits:delete")
        model.delete_trait(request.path_params["name"])
        return no_content()

    app = Starlette(routes=r.routes(), exception_handlers=exception_handlers())
    return Microversions(app)


async def _json_any(request: Request) -> Any:
    """A JSON body that may be a list (PUT aggregates before 1.19)."""
    import json
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from exc


def allocation_write(consumer_uuid: str, body: dict[str, Any], version: Version,
                     many: bool) -> AllocationWrite:
    """One consumer's new allocations from a PUT /allocations/{c} or POST /allocations body,
    in the format of the microversion: a list before 1.12, a dict keyed by provider after."""
    allowed = {"allocations", "project_id", "user_id"}
    allowed |= {"consumer_generation"} if version >= (1, 28) else set()
    only(body, allowed)
    raw = body.get("allocations")
    allocations: dict[str, dict[str, int]] = {}
    if version < (1, 12) and not many:
        if not isinstance(raw, list) or not raw:
            raise BadRequest("JSON does not validate: 'allocations' must be a non-empty list")
        for entry in raw:
            if not isinstance(entry, dict) or not isinstance(entry.get("resource_provider"),
                                                             dict):
                raise BadRequest("JSON does not validate: each allocation needs a "
                                 "resource_provider with a uuid and resources")
            uuid = normal_uuid(entry["resource_provider"].get("uuid"), "resource provider uuid")
            allocations[uuid] = resources_of(entry)
    else:
        if not isinstance(raw, dict):
            raise BadRequest("JSON does not validate: 'allocations' must be an object")
        if not raw and version < (1, 28) and not many:
            raise BadRequest("JSON does not validate: {} does not have enough properties")
        for uuid, entry in raw.items():
            if not isinstance(entry, dict):
                raise BadRequest(f"JSON does not validate: allocation for {uuid} is not an "
                                 "object")
            only(entry, {"resources", "generation"})
            allocations[normal_uuid(uuid, "resource provider uuid")] = resources_of(entry)
    project_id = body.get("project_id")
    user_id = body.get("user_id")
    if version >= (1, 8):
        project_id = expect(body, "project_id", str)
        user_id = expect(body, "user_id", str)
    write = AllocationWrite(consumer_uuid, allocations,
                            project_id or INCOMPLETE_CONSUMER, user_id or INCOMPLETE_CONSUMER)
    if version >= (1, 28):
        if "consumer_generation" not in body:
            raise BadRequest("JSON does not validate: 'consumer_generation' is a required "
                             "property")
        generation = body["consumer_generation"]
        if generation is not None and (not isinstance(generation, int)
                                       or isinstance(generation, bool)):
            raise BadRequest("JSON does not validate: 'consumer_generation' must be an "
                             "integer or null")
        write.generation = generation
        write.check_generation = True
    return write


def resources_of(entry: dict[str, Any]) -> dict[str, int]:
    resources = entry.get("resources")
    if not isinstance(resources, dict) or not resources:
        raise BadRequest("JSON does not validate: 'resources' must be a non-empty object")
    for rc, amount in resources.items():
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
            raise BadRequest(f"JSON does not validate: {amount!r} for {rc} is not an integer "
                             "of at least 1")
    return dict(resources)


def candidate_query(request: Request, version: Version
                    ) -> tuple[dict[str, RequestGroup], str | None, int | None]:
    """GET /allocation_candidates's query: request groups, group_policy and limit."""
    q = request.query_params
    granular = version >= (1, 25)
    pattern = re.compile(r"^(resources|required|member_of)(\d*)$" if granular
                         else r"^(resources|required|member_of)()$")
    allowed_plain = {"resources"}
    allowed_plain |= {"limit"} if version >= (1, 16) else set()
    allowed_plain |= {"required"} if version >= (1, 17) else set()
    allowed_plain |= {"member_of"} if version >= (1, 21) else set()
    allowed_plain |= {"group_policy"} if granular else set()
    groups: dict[str, RequestGroup] = {}
    for key in q:
        match = pattern.match(key)
        if key not in allowed_plain and not (granular and match and match[2]):
            raise BadRequest("Invalid query string parameters: Additional properties are not "
                             f"allowed ('{key}' was unexpected)")
        if key in ("limit", "group_policy"):
            continue
        assert match is not None
        kind, suffix = match[1], match[2]
        if len(q.getlist(key)) > 1 and kind != "member_of":
            raise DuplicateQueryParam(f"Query parameter '{key}' may only be given once")
        group = groups.setdefault(suffix, RequestGroup())
        if kind == "resources":
            group.resources = parse_resources(q[key], key)
        elif kind == "required":
            group.required, group.forbidden = parse_traits(q[key], version, key)
        else:
            group.member_of, _ = parse_member_of(q.getlist(key), version)
    for suffix, group in groups.items():
        if not group.resources:
            if not granular and suffix == "":
                raise BadRequest("Invalid query string parameters: 'resources' is a required "
                                 "property")
            if suffix:
                raise BadRequest(f'All request groups must specify resources. Resourceless '
                                 f'suffixed groups are not supported (suffix {suffix}).')
    if not any(g.resources for g in groups.values()):
        raise BadRequest("Invalid query string parameters: 'resources' is a required property"
                         if not granular else
                         "At least one request group (`resources` or `resources{N}`) is "
                         "required.")
    # an unnumbered group of traits or aggregates alone still constrains every candidate
    group_policy = q.get("group_policy")
    if group_policy is not None and group_policy not in ("none", "isolate"):
        raise BadRequest(f"Invalid query string parameters: '{group_policy}' is not one of "
                         "['none', 'isolate']")
    if granular and len([k for k in groups if k]) > 1 and group_policy is None:
        raise BadRequest('The "group_policy" parameter is required when specifying more than '
                         'one "resources{N}" parameter.')
    limit = None
    if "limit" in q:
        try:
            limit = int(q["limit"])
        except ValueError:
            limit = 0
        if limit < 1:
            raise BadRequest(f"Invalid query string parameters: '{q['limit']}' does not "
                             "match '^[1-9][0-9]*$'")
    return groups, group_policy, limit


def candidates_body(found: list[ProviderVerdict], groups: dict[str, RequestGroup],
                    requested: set[str], version: Version) -> dict[str, Any]:
    """allocation_requests and provider_summaries in the microversion's shape."""
    total: dict[str, int] = {}
    for group in groups.values():
        for rc, amount in group.resources.items():
            total[rc] = total.get(rc, 0) + amount
    requests = []
    summaries: dict[str, Any] = {}
    for verdict in found:
        if version >= (1, 12):
            requests.append({"allocations": {verdict.uuid: {"resources": dict(total)}}})
        else:
            requests.append({"allocations": [{"resource_provider": {"uuid": verdict.uuid},
                                              "resources": dict(total)}]})
        shown = verdict.inventories if version >= (1, 27) else {
            rc: inv for rc, inv in verdict.inventories.items() if rc in requested}
        summary: dict[str, Any] = {"resources": {
            rc: {"capacity": capacity_of(inv), "used": verdict.usages.get(rc, 0)}
            for rc, inv in shown.items()}}
        if version >= (1, 17):
            summary["traits"] = verdict.traits
        summaries[verdict.uuid] = summary
    return {"allocation_requests": requests, "provider_summaries": summaries}


def anonymous(method: str, path: str) -> bool:
    """Only the version document needs no token."""
    return method == "GET" and path in ("", "/")
