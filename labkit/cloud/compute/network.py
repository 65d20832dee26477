"""How nova-compute asks for an instance's ports (nova.network.neutron's role).

Until the networking service exists, `NoNetwork` hands out no ports: a server
boots with empty `addresses`. The compute manager calls this interface at the
"networking" step whatever implementation it has.
"""

from __future__ import annotations

from typing import Any, Protocol

from labkit.cloud.bus import MessageContext


class NetworkAPI(Protocol):
    async def allocate_for_instance(self, ctx: MessageContext, instance_uuid: str, host: str,
                                    requested: Any) -> list[dict[str, Any]]:
        """Create or bind the instance's ports on `host`; return their network info."""

    async def deallocate_for_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        """Unbind and delete the ports nova created for the instance."""


class NoNetwork:
    """No networking service in this lab yet: no ports, nothing to wire."""

    async def allocate_for_instance(self, ctx: MessageContext, instance_uuid: str, host: str,
                                    requested: Any) -> list[dict[str, Any]]:
        return []

    async def deallocate_for_instance(self, ctx: MessageContext, instance_uuid: str) -> None:
        return None
