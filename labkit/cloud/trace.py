"""The trace: every API request and every internal step, with its request id and time.

API requests are recorded by `TraceMiddleware`; components add their own events
(token validation now, RPC messages later) with `Trace.record`. Events live in
the cloud's own SQLite file, so the trace survives a restart.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Float, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from labkit.cloud.db import Database


class TraceBase(DeclarativeBase):
    pass


class TraceRow(TraceBase):
    __tablename__ = "trace"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


@dataclass
class TraceEvent:
    """One thing that happened: an API request (kind "api") or a step inside the cloud."""

    kind: str
    source: str
    target: str
    summary: str
    request_id: str | None = None
    time: float = field(default_factory=time.time)
    detail: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trace:
    """Appends events and answers queries by request id, time window or kind.

    Events are written in small batches (a commit per event would cost more than
    the request it records); a query or `close` writes what is pending first, so
    readers always see every event.
    """

    FLUSH_EVERY = 0.25  # seconds
    FLUSH_SIZE = 200  # events

    def __init__(self, path: Path) -> None:
        self.db = Database(path, TraceBase)
        self._pending: list[TraceEvent] = []
        self._last_flush = time.monotonic()

    def record(self, event: TraceEvent) -> TraceEvent:
        self._pending.append(event)
        if (len(self._pending) >= self.FLUSH_SIZE
                or time.monotonic() - self._last_flush >= self.FLUSH_EVERY):
            self.flush()
        return event

    def flush(self) -> None:
        """Write the pending events."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if not pending:
            return
        rows = [TraceRow(time=e.time, kind=e.kind, request_id=e.request_id, source=e.source,
                         target=e.target, summary=e.summary[:255],
                         detail=json.loads(json.dumps(e.detail, default=str)))
                for e in pending]
        with self.db.session() as session:
            session.add_all(rows)
            session.flush()
            for event, row in zip(pending, rows, strict=True):
                event.seq = row.seq

    def close(self) -> None:
        self.flush()
        self.db.close()

    def query(
        self,
        request_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        limit: int = 1000,
    ) -> list[TraceEvent]:
        self.flush()
        # newest first under the limit, then in time order: a request is recorded when it
        # ends, after the steps inside it, so time (not seq) tells the story
        stmt = select(TraceRow).order_by(TraceRow.time.desc(), TraceRow.seq.desc())
        if request_id:
            stmt = stmt.where(TraceRow.request_id == request_id)
        if since is not None:
            stmt = stmt.where(TraceRow.time >= since)
        if until is not None:
            stmt = stmt.where(TraceRow.time <= until)
        if kind:
            stmt = stmt.where(TraceRow.kind == kind)
        stmt = stmt.limit(limit)
        with self.db.session() as session:
            newest_first = [
                TraceEvent(
                    kind=r.kind,
                    source=r.source,
                    target=r.target,
                    summary=r.summary,
                    request_id=r.request_id,
                    time=r.time,
                    detail=r.detail,
                    seq=r.seq,
                )
                for r in session.scalars(stmt)
            ]
        return newest_first[::-1]
