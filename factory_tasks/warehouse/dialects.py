"""Which SQL engine speaks to a warehouse connection: chosen by the connection's type, so
switching from SQLite to Hive is a connection change, never a code change."""

from __future__ import annotations

from typing import Any

from factory_tasks.warehouse.sql import Dialect

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
