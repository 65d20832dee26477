"""Changing an instance's state, and leaving that change in the trace.

Every component that moves an instance (nova-api, the conductor, a compute host)
goes through `set_state`, so the state timeline drawn from the trace is complete.
"""

from __future__ import annotations

from typing import Any

from labkit.cloud.bus import MessageContext
from labkit.cloud.compute.instances import Instances
from labkit.cloud.trace import Trace, TraceEvent

STATE_FIELDS = ("vm_state", "task_state", "power_state")


def set_state(trace: Trace, instances: Instances, ctx: MessageContext, uuid: str,
              **values: Any) -> None:
    """Write the new values; record vm_state, task_state and power_state as they now are.

    The summary names what changed (all three on the first record of an instance).
    """
    instance, before = instances.update(uuid, **values)
    state = {name: getattr(instance, name) for name in STATE_FIELDS}
    changed = {k: v for k, v in state.items() if before.get(k, v) != v}
    # the first record of an instance, or a change of host alone, shows all three
    shown = " ".join(f"{k}={v}" for k, v in (changed or state).items())
    trace.record(TraceEvent(
        kind="state", source=ctx.source, target="nova-db",
        summary=f"{instance.display_name}: {shown}", request_id=ctx.request_id,
        detail={"instance_uuid": uuid, "status": instance.status, **state,
                **({"host": instance.host} if instance.host else {})}))
