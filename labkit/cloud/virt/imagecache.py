"""The compute host's image cache, as nova's libvirt driver keeps it.

nova downloads an image from glance once per host into instances_path/_base/, named by
the SHA-1 of the image id, and every instance disk on that host is a qcow2 overlay whose
backing file is that base file. A second boot of the same image is a cache hit: no
download. Downloads go to a temporary name and are renamed when complete, so a crash
never leaves a half-written base file that looks whole; a lock per image keeps two
builds from downloading the same image at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Download = Callable[[str, Path], Awaitable[None]]
TraceEvent = Callable[[str, dict[str, Any]], None]


def cache_name(image_id: str) -> str:
    """nova's name for a base file: the SHA-1 of the image id."""
    return hashlib.sha1(image_id.encode()).hexdigest()  # noqa: S324 - a name, as nova does


class ImageCache:
    """`base_dir` is nova's instances_path/_base. `download(image_id, dest)` writes the
    image's bytes to `dest` (glance's GET /v2/images/{id}/file); `trace_event(summary,
    detail)` records each hit and download."""

    def __init__(self, base_dir: Path, download: Download,
                 trace_event: TraceEvent | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.download = download
        self.trace_event = trace_event
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, image_id: str) -> Path:
        return self.base_dir / cache_name(image_id)

    def _trace(self, summary: str, **detail: Any) -> None:
        if self.trace_event is None:
            return
        try:
            self.trace_event(summary, detail)
        except Exception:  # the trace is for watching: it must never fail a spawn
            log.exception("tracing %r failed", summary)

    async def fetch(self, image_id: str) -> tuple[Path, bool]:
        """The base file of `image_id`, downloading it on a miss; (path, hit)."""
        lock = self._locks.setdefault(image_id, asyncio.Lock())
        async with lock:
            path = self.path(image_id)
            if path.exists():
                self._trace(f"image cache hit for {image_id[:8]}", image_id=image_id,
                            path=str(path), hit=True)
                return path, True
            self.base_dir.mkdir(parents=True, exist_ok=True)
            part = path.with_name(f"{path.name}.part.{os.getpid()}")
            self._trace(f"image cache miss for {image_id[:8]}: download from glance",
                        image_id=image_id, path=str(path), hit=False)
            try:
                await self.download(image_id, part)
                os.replace(part, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
            self._trace(f"image {image_id[:8]} cached", image_id=image_id, path=str(path),
                        bytes=path.stat().st_size)
            return path, False

    def cached(self) -> list[dict[str, Any]]:
        """What the cache holds: [{name, path, bytes}] (nova's image cache manager's view)."""
        if not self.base_dir.is_dir():
            return []
        return [{"name": p.name, "path": str(p), "bytes": p.stat().st_size}
                for p in sorted(self.base_dir.iterdir()) if ".part." not in p.name]
