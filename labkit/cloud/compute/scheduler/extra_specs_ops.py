"""The little language of flavor extra specs that ComputeCapabilitiesFilter reads.

A requirement is an operator and operand(s), e.g. ">= 4", "s== QEMU",
"<in> avx", "<or> x86_64 <or> aarch64". A requirement whose first word is no
operator must equal the value as a string. Numbers compare as floats, and
"=" means "at least" (as in nova: `= 4` passes a host with 8).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "=": lambda value, want: float(value) >= float(want),
    "==": lambda value, want: float(value) == float(want),
    "!=": lambda value, want: float(value) != float(want),
    ">=": lambda value, want: float(value) >= float(want),
    "<=": lambda value, want: float(value) <= float(want),
    "s==": operator.eq,
    "s!=": operator.ne,
    "s<": operator.lt,
    "s<=": operator.le,
    "s>": operator.gt,
    "s>=": operator.ge,
    "<in>": lambda value, want: want in value,
}
SET_OPERATORS = ("<all-in>", "<or>")


def match(value: str | None, requirement: str) -> bool:
    """Does the host's `value` (as a string) meet `requirement`?"""
    words = requirement.split()
    op = words.pop(0) if words else None
    if op not in OPERATORS and op not in SET_OPERATORS:
        return value == requirement
    if value is None or not words:
        return False
    if op == "<or>":  # v1 <or> v2 <or> v3: the operands are every other word
        return value in words[::2]
    if op == "<all-in>":
        return all(word in value for word in words)
    try:
        return OPERATORS[op](value, words[0])
    except ValueError:  # a numeric operator on a value that is no number
        return False
