"""A microversion ("2.47", "3.71"), as nova and cinder compare them: numbers, not text."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from labkit.cloud.errors import BadRequest

_FORMAT = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


@dataclass(frozen=True, order=True)
class APIVersion:
    """One microversion, ordered as numbers (2.10 > 2.9)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> APIVersion:
        """'2.47' as a version; BadRequest in the services' words when it is not
        MajorNum.MinorNum."""
        match = _FORMAT.match(text.strip())
        if not match:
            raise BadRequest(f"API Version String {text} is of invalid format. "
                             "Must be of format MajorNum.MinorNum.")
        return cls(int(match.group(1)), int(match.group(2)))

    def at_least(self, other: str | APIVersion) -> bool:
        """Does this request see the change made in microversion `other`?"""
        if isinstance(other, str):
            other = _parsed(other)
        return self >= other

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> APIVersion:
    """The versions handlers compare against are a few literals: parse each once."""
    return APIVersion.parse(text)
