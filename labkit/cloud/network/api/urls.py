"""Neutron v2.0's URL map, relative to /networking: which handler answers which path.

Collections and members for each resource in attributes.RESOURCES, the router's
interface actions, the quotas extension's paths, the extension list and the version
documents. Anything else is a 404 in neutron's body (responses.exception_handlers).
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Route

from labkit.cloud.network.api import responses
from labkit.cloud.network.api.attributes import RESOURCES
from labkit.cloud.network.api.responses import QuotaHandlers, ResourceHandlers

V2 = "/v2.0"


def routes(neutron: Any) -> list[BaseRoute]:
    found: list[BaseRoute] = [
        Route("/", responses.versions, methods=["GET"]),
        Route(f"{V2}/", responses.resources, methods=["GET"]),
        # neutron answers /v2.0 without its slash with a 404
        Route(V2, responses.not_found, methods=["GET"]),
        Route(f"{V2}/extensions", responses.list_extensions, methods=["GET"]),
        Route(f"{V2}/extensions/{{alias}}", responses.show_extension, methods=["GET"]),
        # the legacy extensions controller answered other methods with 404, and so does neutron
        Route(f"{V2}/extensions", responses.not_found, methods=["POST", "PUT", "DELETE", "PATCH"]),
        Route(f"{V2}/extensions/{{alias}}", responses.not_found,
              methods=["POST", "PUT", "DELETE", "PATCH"]),
    ]
    for action in ("add_router_interface", "remove_router_interface"):
        found.append(Route(f"{V2}/routers/{{id}}/{action}",
                           responses.router_action(neutron, action), methods=["PUT"]))
    quotas = QuotaHandlers(neutron)
    found += [
        Route(f"{V2}/quotas", quotas.index, methods=["GET"]),
        Route(f"{V2}/quotas", quotas.create, methods=["POST"]),
        Route(f"{V2}/quotas/project", quotas.own_project, methods=["GET"]),
        Route(f"{V2}/quotas/tenant", quotas.own_project, methods=["GET"]),
        Route(f"{V2}/quotas/{{project_id}}", quotas.show, methods=["GET"]),
        Route(f"{V2}/quotas/{{project_id}}", quotas.update, methods=["PUT"]),
        Route(f"{V2}/quotas/{{project_id}}", quotas.delete, methods=["DELETE"]),
        Route(f"{V2}/quotas/{{project_id}}/details", quotas.details, methods=["GET"]),
        Route(f"{V2}/quotas/{{project_id}}/default", quotas.default, methods=["GET"]),
    ]
    for resource in RESOURCES.values():
        handlers = ResourceHandlers(neutron, resource)
        collection = f"{V2}/{resource.path}"
        found += [
            Route(collection, handlers.index, methods=["GET"]),
            Route(collection, handlers.create, methods=["POST"]),
            Route(f"{collection}/{{id}}", handlers.show, methods=["GET"]),
            Route(f"{collection}/{{id}}", handlers.update, methods=["PUT"]),
            Route(f"{collection}/{{id}}", handlers.delete, methods=["DELETE"]),
        ]
    return found
