"""Ids, request ids and random bytes: random, or seeded in deterministic mode.

Seeded values come from sha256(seed, boot, stream, n). Each kind of value has
its own stream, so an extra request id does not shift every user id after it,
and the boot number (one more at each start of the cloud) keeps a restarted
cloud from handing out ids it already used.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import defaultdict


class IdSource:
    def __init__(self, deterministic: bool = False, seed: int = 0, boot: int = 0) -> None:
        self.deterministic = deterministic
        self.seed = seed
        self.boot = boot
        self._counters: defaultdict[str, int] = defaultdict(int)

    def random_bytes(self, stream: str, size: int) -> bytes:
        if not self.deterministic:
            return os.urandom(size)
        n = self._counters[stream]
        self._counters[stream] = n + 1
        out = b""
        block = 0
        while len(out) < size:
            key = f"{self.seed}:{self.boot}:{stream}:{n}:{block}".encode()
            out += hashlib.sha256(key).digest()
            block += 1
        return out[:size]

    def uuid(self, stream: str) -> str:
        """A dashed UUID4 string, as nova and neutron use."""
        return str(uuid.UUID(bytes=self.random_bytes(stream, 16), version=4))

    def hex_id(self, stream: str) -> str:
        """A 32-character hex id without dashes, as keystone uses."""
        return uuid.UUID(bytes=self.random_bytes(stream, 16), version=4).hex

    def request_id(self, stream: str = "request") -> str:
        return "req-" + self.uuid(stream)
