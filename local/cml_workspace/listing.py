"""List semantics shared by every list endpoint: ``search_filter``, ``sort``, pagination.

- ``search_filter``: a JSON object string; each key names a field of the listed resource
  (dotted for nested, e.g. ``owner.username``) and matches when its value contains the
  given value as a case-sensitive substring. Unknown fields are rejected (400).
- ``sort``: comma-separated field names, ``-`` prefix for descending (``-created_at``).
  The default is insertion order (oldest first).
- ``page_size`` (default 10) and ``page_token`` (opaque; ``next_page_token`` of the
  previous page, ``""`` on the last page).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

from .errors import invalid

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 10_000


@dataclass(frozen=True)
class ListQuery:
    page_size: int = DEFAULT_PAGE_SIZE
    offset: int = 0
    search_filter: tuple[tuple[str, Any], ...] = ()
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending)


def parse_list_query(
    page_size: int | None = None,
    page_token: str | None = None,
    search_filter: str | None = None,
    sort: str | None = None,
) -> ListQuery:
    if page_size is None or page_size == 0:
        page_size = DEFAULT_PAGE_SIZE
    if page_size < 0:
        raise invalid(f"page_size must not be negative, got {page_size}")
    page_size = min(page_size, MAX_PAGE_SIZE)

    offset = _decode_token(page_token) if page_token else 0

    filters: tuple[tuple[str, Any], ...] = ()
    if search_filter:
        try:
            parsed = json.loads(search_filter)
        except json.JSONDecodeError as exc:
            raise invalid(f"search_filter is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise invalid("search_filter must be a JSON object, e.g. {\"name\": \"model-factory\"}")
        filters = tuple(parsed.items())

    sort_keys: list[tuple[str, bool]] = []
    for part in (sort or "").split(","):
        part = part.strip()
        if not part:
            continue
        descending = part.startswith("-")
        name = part.lstrip("+-").strip()
        if not name:
            raise invalid(f"bad sort field {part!r}")
        sort_keys.append((name, descending))
    return ListQuery(page_size, offset, filters, tuple(sort_keys))


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        offset = json.loads(base64.urlsafe_b64decode(padded.encode()))["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(offset)
        return offset
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise invalid(f"invalid page_token {token!r}") from None


_MISSING = object()


def _lookup(item: dict, dotted: str) -> Any:
    value: Any = item
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _has_field(items: Sequence[dict], fields: Iterable[str], name: str) -> bool:
    return name in fields or name.split(".")[0] in fields or any(
        _lookup(item, name) is not _MISSING for item in items
    )


def apply_list_query(items: list[dict], query: ListQuery, fields: Iterable[str]) -> tuple[list[dict], str]:
    """Filter, sort and page API-shaped ``items`` (given in insertion order).

    ``fields`` are the resource's top-level field names, used to reject unknown
    filter/sort fields even when the list is empty.
    """
    fields = set(fields)
    for name, _ in query.search_filter:
        if not _has_field(items, fields, name):
            raise invalid(f"unknown search_filter field {name!r}; fields: {', '.join(sorted(fields))}")
    for name, _ in query.sort:
        if not _has_field(items, fields, name):
            raise invalid(f"unknown sort field {name!r}; fields: {', '.join(sorted(fields))}")

    selected = [
        item
        for item in items
        if all(_as_text(want) in _as_text(_lookup(item, name)) for name, want in query.search_filter)
    ]
    if query.sort:
        selected = _sorted(selected, query.sort)

    page = selected[query.offset : query.offset + query.page_size]
    end = query.offset + len(page)
    next_token = _encode_token(end) if end < len(selected) else ""
    return page, next_token


def _sorted(items: list[dict], keys: Sequence[tuple[str, bool]]) -> list[dict]:
    """Sort by several (field, descending) keys; ties keep insertion order in the direction
    of the first key (so ``-created_at`` is newest first even within one millisecond)."""
    decorated = [([_sort_key(_lookup(item, name)) for name, _ in keys], index, item)
                 for index, item in enumerate(items)]

    def compare(a: tuple, b: tuple) -> int:
        for key_a, key_b, (_, descending) in zip(a[0], b[0], keys, strict=True):
            if key_a != key_b:
                result = -1 if key_a < key_b else 1
                return -result if descending else result
        result = (a[1] > b[1]) - (a[1] < b[1])
        return -result if keys[0][1] else result

    return [item for _, _, item in sorted(decorated, key=cmp_to_key(compare))]


def _sort_key(value: Any) -> tuple:
    if value is _MISSING or value is None or value == "":
        return (0, 0, "")
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    if isinstance(value, str):
        try:  # int64 fields travel as strings: sort them as numbers
            return (1, float(value), "") if value.lstrip("-").isdigit() else (2, 0, value)
        except ValueError:
            return (2, 0, value)
    return (2, 0, json.dumps(value, sort_keys=True))
