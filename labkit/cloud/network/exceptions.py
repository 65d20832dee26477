"""Neutron's refusals. Each carries neutron's exception name, which the error body shows.

Neutron answers every error as `{"NeutronError": {"type": ..., "message": ...,
"detail": ""}}`, where `type` is the name of the exception neutron raised
("PortNotFound", "IpAddressGenerationFailure"). The model raises these; the handlers
turn any `ServiceError` into that body (a plain BadRequest becomes "HTTPBadRequest").
"""

from __future__ import annotations

from labkit.cloud.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceError

# what neutron's message calls each resource in "... could not be found"
RESOURCE_WORDS = {
    "network": "Network", "subnet": "Subnet", "port": "Port", "router": "Router",
    "floatingip": "Floating IP", "security_group": "Security group",
    "security_group_rule": "Security group rule", "agent": "Agent",
}
# the exception neutron raises for each
NOT_FOUND_TYPES = {
    "network": "NetworkNotFound", "subnet": "SubnetNotFound", "port": "PortNotFound",
    "router": "RouterNotFound", "floatingip": "FloatingIPNotFound",
    "security_group": "SecurityGroupNotFound",
    "security_group_rule": "SecurityGroupRuleNotFound", "agent": "AgentNotFound",
}


def neutron_type(error: ServiceError) -> str:
    """The `type` of the error body: the exception's neutron name, else webob's."""
    named = getattr(error, "neutron_type", None)
    if named:
        return named
    return {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden",
            404: "HTTPNotFound", 405: "HTTPMethodNotAllowed", 409: "HTTPConflict",
            413: "HTTPRequestEntityTooLarge"}.get(error.status, "HTTPInternalServerError")


class NeutronNotFound(NotFound):
    """`Network 5f0c... could not be found.` with type NetworkNotFound."""

    def __init__(self, resource: str, resource_id: str) -> None:
        word = RESOURCE_WORDS.get(resource, resource)
        if resource == "security_group":
            message = f"Security group {resource_id} does not exist"
        else:
            message = f"{word} {resource_id} could not be found."
        super().__init__(message)
        self.neutron_type = NOT_FOUND_TYPES.get(resource, "HTTPNotFound")


class NeutronNamedNotFound(NotFound):
    """A 404 with its own neutron type and message (RouterInterfaceNotFound, ...)."""

    def __init__(self, neutron_type: str, message: str) -> None:
        super().__init__(message)
        self.neutron_type = neutron_type


class NeutronConflict(Conflict):
    """A 409 with neutron's exception name: IpAddressGenerationFailure, NetworkInUse, ..."""

    def __init__(self, neutron_type: str, message: str) -> None:
        super().__init__(message)
        self.neutron_type = neutron_type


class NeutronBadRequest(BadRequest):
    """A 400 with a named type (InvalidInput, BadRequest...); plain BadRequest is HTTPBadRequest."""

    def __init__(self, message: str, neutron_type: str = "HTTPBadRequest") -> None:
        super().__init__(message)
        self.neutron_type = neutron_type


class PolicyNotAuthorized(Forbidden):
    """`(rule:create_network:provider:network_type) is disallowed by policy`."""

    def __init__(self, rule: str) -> None:
        super().__init__(f"(rule:{rule}) is disallowed by policy")
        self.neutron_type = "PolicyNotAuthorized"


class OverQuota(NeutronConflict):
    def __init__(self, resource: str) -> None:
        super().__init__("OverQuota", f"Quota exceeded for resources: ['{resource}'].")


def invalid_input(message: str) -> NeutronBadRequest:
    """`Invalid input for operation: <why>.`, neutron's InvalidInput."""
    return NeutronBadRequest(f"Invalid input for operation: {message}", "InvalidInput")
