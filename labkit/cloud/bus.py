"""The message bus: RPC between the cloud's components, with oslo.messaging's semantics.

A component registers an endpoint on a topic (`conductor`, `scheduler`,
`compute.compute-1`). `call` waits for the answer; `cast` hands the message over
and returns at once. Every message, and every answer to a call, is recorded in
the trace with its request id: that is what the sequence diagrams draw.

Endpoint methods are `async def method(self, ctx, **kwargs)`; `ctx` says which
request the message belongs to, and the receiving component sends its own
messages with `ctx.sent_by(<its name>)`.

A topic can be paused (its consumer stopped, as when nova-compute on a host dies):
casts to it wait in its queue, as rabbit keeps them, and are handled in order when it
resumes; a call to it waits for the answer up to `call_timeout` seconds, then fails
with MessagingTimeout, as oslo.messaging's does.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from labkit.cloud.trace import Trace, TraceEvent

log = logging.getLogger(__name__)
SHORT = 60  # characters of an argument kept in the trace
# how long a call waits for its answer (oslo's rpc_response_timeout is 60 s; the lab's
# callers give up sooner so a stopped compute host shows in a few seconds)
CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class MessageContext:
    """Who is sending, on behalf of which request and caller (oslo's RequestContext)."""

    request_id: str | None
    source: str
    user_id: str | None = None
    project_id: str | None = None
    is_admin: bool = False

    def sent_by(self, component: str) -> MessageContext:
        return replace(self, source=component)


class NoSuchTopic(LookupError):
    """Nobody listens on the topic (oslo.messaging would time out)."""


class MessagingTimeout(TimeoutError):
    """oslo.messaging's MessagingTimeout: a call got no answer in time."""


def short(value: Any) -> str:
    """An argument as the trace shows it: its id or name if it has one, clipped."""
    if isinstance(value, dict):
        for key in ("uuid", "id", "name"):
            if key in value:
                value = value[key]
                break
    text = str(value)
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"


@dataclass(frozen=True)
class _Queued:
    """A cast waiting in a paused topic's queue."""

    request_id: str | None
    component: str
    method: str
    deliver: Callable[[], None]


class MessageBus:
    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._endpoints: dict[str, tuple[str, object]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        # paused topics: the casts waiting in each queue, and what wakes waiting calls
        self._queued: dict[str, list[_Queued]] = {}
        self._resumed: dict[str, asyncio.Event] = {}
        self.call_timeout = CALL_TIMEOUT
        self._message_ids = itertools.count(1)

    def register(self, topic: str, component: str, endpoint: object) -> None:
        """`component` (e.g. "nova-compute@compute-1") answers messages sent to `topic`."""
        self._endpoints[topic] = (component, endpoint)

    def topics(self) -> dict[str, str]:
        return {topic: component for topic, (component, _) in self._endpoints.items()}

    def _route(self, topic: str, method: str) -> tuple[str, Any]:
        if topic not in self._endpoints:
            raise NoSuchTopic(f"no component listens on topic {topic!r}")
        component, endpoint = self._endpoints[topic]
        handler = getattr(endpoint, method, None)
        if handler is None:
            raise NoSuchTopic(f"{component} has no method {method!r}")
        return component, handler

    def _record(self, ctx: MessageContext, target: str, topic: str, method: str,
                kind: str, args: dict[str, Any], outcome: str | None = None) -> None:
        summary = f"{kind} {method}" if outcome is None else f"{method} → {outcome}"
        detail: dict[str, Any] = {"topic": topic, "method": method, "type": kind,
                                  "args": {k: short(v) for k, v in args.items()}}
        if outcome is not None:
            detail["outcome"] = outcome
        self.trace.record(TraceEvent(kind="rpc", source=ctx.source, target=target,
                                     summary=summary, request_id=ctx.request_id,
                                     detail=detail))

    # -- a stopped consumer

    def pause(self, topic: str) -> None:
        """The topic's consumer stops: what is sent to it waits in its queue."""
        if topic not in self._queued:
            self._queued[topic] = []
            self._resumed[topic] = asyncio.Event()

    def resume(self, topic: str) -> None:
        """The consumer is back: the queued casts are handled in the order sent, and the
        calls still waiting get their answer."""
        queued = self._queued.pop(topic, [])
        resumed = self._resumed.pop(topic, None)
        for message in queued:
            self.trace.record(TraceEvent(
                kind="event", source="rabbitmq", target=message.component,
                summary=f"{message.method} delivered from queue {topic}",
                request_id=message.request_id, detail={"topic": topic,
                                                       "method": message.method}))
            message.deliver()
        if resumed is not None:
            resumed.set()

    def paused(self, topic: str) -> bool:
        return topic in self._queued

    def queued(self, topic: str) -> int:
        """How many casts wait in the topic's queue."""
        return len(self._queued.get(topic, []))

    async def _wait_for_consumer(self, ctx: MessageContext, component: str, topic: str,
                                 method: str) -> None:
        resumed = self._resumed.get(topic)
        if resumed is None:
            return
        try:
            await asyncio.wait_for(resumed.wait(), self.call_timeout)
        except TimeoutError:
            message_id = hashlib.md5(f"{ctx.request_id}:{next(self._message_ids)}".encode(),
                                     usedforsecurity=False).hexdigest()
            exc = MessagingTimeout(f"Timed out waiting for a reply to message ID "
                                   f"{message_id}")
            self.trace.record(TraceEvent(
                kind="rpc", source=component, target=ctx.source,
                summary=f"{method}: no reply in {self.call_timeout:g} s (MessagingTimeout)",
                request_id=ctx.request_id,
                detail={"topic": topic, "method": method, "type": "reply",
                        "error": short(exc)}))
            raise exc from None

    async def call(self, ctx: MessageContext, topic: str, method: str, **kwargs: Any) -> Any:
        """Send and wait for the answer; the answer is recorded as a reply."""
        component, handler = self._route(topic, method)
        self._record(ctx, component, topic, method, "call", kwargs)
        await self._wait_for_consumer(ctx, component, topic, method)
        try:
            result = await handler(ctx.sent_by(component), **kwargs)
        except Exception as exc:
            self.trace.record(TraceEvent(
                kind="rpc", source=component, target=ctx.source,
                summary=f"{method} raised {type(exc).__name__}", request_id=ctx.request_id,
                detail={"topic": topic, "method": method, "type": "reply",
                        "error": short(exc)}))
            raise
        self.trace.record(TraceEvent(
            kind="rpc", source=component, target=ctx.source, summary=f"reply to {method}",
            request_id=ctx.request_id,
            detail={"topic": topic, "method": method, "type": "reply",
                    "result": short(result)}))
        return result

    def cast(self, ctx: MessageContext, topic: str, method: str, **kwargs: Any) -> None:
        """Send and do not wait. The receiver runs as its own task, as a worker would."""
        component, handler = self._route(topic, method)
        self._record(ctx, component, topic, method, "cast", kwargs)

        async def deliver() -> None:
            try:
                await handler(ctx.sent_by(component), **kwargs)
            except Exception:
                # a cast has nobody to answer: the receiver must record its own failure
                log.exception("%s.%s failed", component, method)

        def start() -> None:
            task = asyncio.get_running_loop().create_task(deliver())
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

        queue = self._queued.get(topic)
        if queue is None:
            start()
            return
        # nobody consumes the topic now: the message waits in its queue
        queue.append(_Queued(ctx.request_id, component, method, start))
        self.trace.record(TraceEvent(
            kind="event", source="rabbitmq", target=component,
            summary=f"{method} waits in queue {topic} ({len(queue)} queued): "
                    f"{component} is not consuming",
            request_id=ctx.request_id, detail={"topic": topic, "method": method,
                                               "queued": len(queue)}))

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every cast sent so far (and what they sent) has been handled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._in_flight and loop.time() < deadline:
            await asyncio.wait(set(self._in_flight), timeout=deadline - loop.time())
