"""Which SQL engine speaks to a warehouse connection: chosen by the connection's type, so
switching from SQLite to Hive is a connection change, never a code change."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

from factory_tasks.warehouse.sql import Column, Dialect

log = logging.getLogger(__name__)

#: the connection types :func:`dialect_for` knows
CONNECTION_TYPES = ("hive", "hiveserver2", "sqlite")


def dialect_for(hook: Any) -> Dialect:
    """The dialect for a DB-API hook, chosen by its connection type (never by a code change).

    The engine's module is imported here, not at the top: a SQLite run never needs the Hive
    engine's retry and PyHive code.
    """
    conn_type = getattr(hook, "conn_type", None) or getattr(hook, "dialect_name", None)
    if conn_type == "sqlite":
        from factory_tasks.warehouse.sqlite import SqliteDialect

        return SqliteDialect()
    if conn_type in ("hiveserver2", "hive"):
        from factory_tasks.warehouse.hive import HiveDialect

        return HiveDialect()
    raise ValueError(
        f"warehouse connection type {conn_type!r} is not supported; "
        f"supported: {', '.join(CONNECTION_TYPES)}"
    )


def add_missing_columns(hook: Any, table: str, columns: Sequence[Column],
                        addable: Collection[str]) -> tuple[list[Column], list[str]]:
    """Bring an existing ``table`` written by an older version up to ``columns``: the ones it
    lacks are added (its old rows read NULL there) when all of them are ``addable``; nothing is
    ever dropped. Returns the columns in the table's own order, added ones last (positional
    inserts, as Hive's, must follow it), and the lacking columns that may not be added (then
    nothing is added: the caller says what to do)."""
    dialect = dialect_for(hook)
    existing = dialect.columns(hook, table)
    present = {name.lower() for name in existing}  # Hive answers lower case
    missing = [c for c in columns if c.name.lower() not in present]
    unaddable = [c.name for c in missing if c.name not in addable]
    if unaddable:
        return [], unaddable
    if missing:
        dialect.add_columns(hook, table, missing)
        log.warning("table %s was created by an older version: added the column(s) %s (NULL in its old rows)",
                    table, ", ".join(c.name for c in missing))
    by_name = {c.name.lower(): c for c in columns}
    return [by_name[name.lower()] for name in existing if name.lower() in by_name] + missing, []
