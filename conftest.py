"""pytest settings for the whole repo: nbval leaves graphviz SVG out of comparison.

A diagram's SVG changes with graphviz's version and with every id or port it
shows; what a notebook says in text is compared, the pictures are looked at.
"""

from __future__ import annotations

import pytest

NOT_COMPARED = ("image/svg+xml",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        notebook = item.parent
        skip = getattr(notebook, "skip_compare", None)
        if skip is not None and not set(NOT_COMPARED) <= set(skip):
            notebook.skip_compare = tuple(skip) + NOT_COMPARED
