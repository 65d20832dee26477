"""Neutron's list queries: filters, `fields=`, sort_key/sort_dir, limit/marker and the links.

`parse_query` reads a request's query string as neutron's QueryParametersHook does
(unknown filters are refused: the filter-validation extension); `run_query` applies it to
the records the model says the caller may see, in neutron's order: filter, sort (with the
id as the last key when paginating, as neutron's native pagination adds it), then the page
after (or, with page_reverse, before) the marker. `page_links` builds
`<collection>_links` as neutron's get_pagination_links does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from labkit.cloud.network.api.attributes import Attr
from labkit.cloud.network.exceptions import NeutronBadRequest, NeutronNotFound

# query parameters that are not filters
CONTROL = ("fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse")
TAG_FILTERS = ("tags", "tags-any", "not-tags", "not-tags-any")


@dataclass
class ListQuery:
    fields: list[str] = field(default_factory=list)
    filters: dict[str, Any] = field(default_factory=dict)
    sorts: list[tuple[str, bool]] = field(default_factory=list)     # (key, ascending)
    limit: int | None = None
    marker: str | None = None
    page_reverse: bool = False


def _first(params: Sequence[tuple[str, str]], key: str) -> str | None:
    return next((value for k, value in params if k == key), None)


def parse_query(params: Sequence[tuple[str, str]], attrs: dict[str, Attr]) -> ListQuery:
    """The query string (as ordered key/value pairs) read against a resource's attributes."""
    query = ListQuery(fields=[value for key, value in params if key == "fields" and value])
    grouped: dict[str, list[str]] = {}
    for key, value in params:
        if key not in CONTROL:
            grouped.setdefault(key, []).append(value)
    invalid = [key for key in grouped if not (attrs.get(key) and attrs[key].filter)]
    if invalid:
        raise NeutronBadRequest(f"{invalid} is invalid attribute for filtering")
    for key, values in grouped.items():
        attr = attrs[key]
        converted: Any
        if attr.convert_list is not None:
            converted = attr.convert_list(values)
        elif attr.convert is not None:
            converted = [attr.convert(value) for value in values]
        else:
            converted = values
        if converted:
            query.filters[key] = converted
    query.sorts = _sorts(params, attrs)
    query.limit = _limit(_first(params, "limit"))
    if query.limit:
        query.marker = _first(params, "marker")
    query.page_reverse = (_first(params, "page_reverse") or "False").lower() == "true"
    return query


def _sorts(params: Sequence[tuple[str, str]], attrs: dict[str, Attr]) -> list[tuple[str, bool]]:
    keys = [value for key, value in params if key == "sort_key" and value]
    dirs = [value for key, value in params if key == "sort_dir" and value]
    if len(keys) != len(dirs):
        raise NeutronBadRequest("The number of sort_keys and sort_dirs must be same")
    absent = [key for key in keys if not (attrs.get(key) and attrs[key].sort)]
    if absent:
        raise NeutronBadRequest(f"{absent} is invalid attribute for sort_keys")
    wrong = [d for d in dirs if d not in ("asc", "desc")]
    if wrong:
        raise NeutronBadRequest(f"{wrong} is invalid value for sort_dirs, valid value is "
                                "'asc' and 'desc'")
    return [(key, direction == "asc") for key, direction in zip(keys, dirs, strict=True)]


def _limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise NeutronBadRequest(f"Bad limit request: Limit must be an integer 0 or greater "
                                f"and not '{raw}'.", "BadRequest")
    return limit or None


# -- applying a query ---------------------------------------------------------------------

def _equal(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return stored is wanted
    if stored == wanted:
        return True
    # a number kept as a number, asked for as text (mtu=1450): SQL compares them as equal
    return stored is not None and isinstance(wanted, str) and str(stored) == wanted


def _fixed_ips_match(fixed: list[dict[str, Any]], wanted: dict[str, list[str]]) -> bool:
    addresses = wanted.get("ip_address")
    subnets = wanted.get("subnet_id")
    if addresses and not any(ip.get("ip_address") in addresses for ip in fixed):
        return False
    return not (subnets and not any(ip.get("subnet_id") in subnets for ip in fixed))


def _tags(values: list[str]) -> set[str]:
    return {tag for value in values for tag in value.split(",") if tag}


def _matches(record: dict[str, Any], key: str, wanted: Any) -> bool:
    if key in TAG_FILTERS:
        have, asked = set(record.get("tags") or []), _tags(wanted)
        return {"tags": asked <= have, "tags-any": bool(asked & have),
                "not-tags": not asked <= have, "not-tags-any": not asked & have}[key]
    if key not in record:
        return False
    stored = record[key]
    if key == "fixed_ips":
        return _fixed_ips_match(stored or [], wanted)
    if isinstance(stored, list):
        return any(_equal(item, w) for item in stored for w in wanted)
    return any(_equal(stored, w) for w in wanted)


def _compare(a: Any, b: Any) -> int:
    """neutron's emulated sort: None first, then the values' own order."""
    if a is None or b is None:
        return (a is not None) - (b is not None)
    try:
        return (a > b) - (a < b)
    except TypeError:
        return (str(a) > str(b)) - (str(a) < str(b))


def _ordering(sorts: list[tuple[str, bool]]) -> functools.partial[int]:
    def cmp(sorts: list[tuple[str, bool]], x: dict[str, Any], y: dict[str, Any]) -> int:
        for key, ascending in sorts:
            result = _compare(x.get(key), y.get(key))
            if result:
                return result if ascending else -result
        return 0
    return functools.partial(cmp, sorts)


def run_query(records: list[dict[str, Any]], query: ListQuery, resource: str,
              primary_key: str = "id") -> list[dict[str, Any]]:
    """Filter, sort and page `records` (everything the caller may see) as neutron does."""
    found = [r for r in records
             if all(_matches(r, key, wanted) for key, wanted in query.filters.items())]
    sorts = list(query.sorts)
    if query.limit and primary_key not in dict(sorts):
        sorts.append((primary_key, True))
    cmp = _ordering(sorts)
    if sorts:
        found.sort(key=functools.cmp_to_key(cmp))
    if not query.limit:
        return found
    if query.marker:
        marker = next((r for r in records if r.get(primary_key) == query.marker), None)
        if marker is None:
            raise NeutronNotFound(resource, query.marker)
        if query.page_reverse:
            before = [r for r in found if cmp(r, marker) < 0]
            return before[-query.limit:]
        return [r for r in found if cmp(r, marker) > 0][:query.limit]
    return found[-query.limit:] if query.page_reverse else found[:query.limit]


def page_links(url: str, params: Sequence[tuple[str, str]], items: list[dict[str, Any]],
               query: ListQuery, primary_key: str = "id") -> list[dict[str, str]]:
    """`<collection>_links`: next unless a short forward page, previous unless a short
    backward one (so a first page has both, as neutron answers)."""
    if not query.limit:
        return []
    links = []
    short = len(items) < query.limit
    if not (short and not query.page_reverse):
        rest = [(k, val) for k, val in params if k not in ("marker", "page_reverse")]
        if items:
            rest.append(("marker", items[-1][primary_key]))
        links.append({"rel": "next", "href": f"{url}?{urlencode(rest)}"})
    if not (short and query.page_reverse):
        rest = [(k, val) for k, val in params if k not in ("marker", "page_reverse")]
        if items:
            rest.append(("marker", items[0][primary_key]))
        rest.append(("page_reverse", "True"))
        links.append({"rel": "previous", "href": f"{url}?{urlencode(rest)}"})
    return links
