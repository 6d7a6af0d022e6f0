"""Every SQL difference between the warehouses the factory writes to, in one place.

Identifiers are never user input: table and column names are checked against a strict
pattern before they reach a statement, and values always travel as bound parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def checked_identifier(name: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a valid SQL identifier")
    return name


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of "string", "double", "bigint"

    def __post_init__(self) -> None:
        checked_identifier(self.name)
        if self.type not in ("string", "double", "bigint"):
            raise ValueError(f"column {self.name}: unknown type {self.type!r}")


class SqliteDialect:
    """SQLite through Airflow's ``SqliteHook`` (or any hook whose ``get_conn`` is sqlite3)."""

    name = "sqlite"
    _types = {"string": "TEXT", "double": "REAL", "bigint": "INTEGER"}

    def create_table(
        self, hook: Any, table: str, columns: Sequence[Column], partition_by: str | None = None
    ) -> None:
        cols = ", ".join(f"{checked_identifier(c.name)} {self._types[c.type]}" for c in columns)
        conn = hook.get_conn()
        try:
            with conn:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {checked_identifier(table)} ({cols})")
                if partition_by:
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {table}_{partition_by}_idx "
                        f"ON {table} ({checked_identifier(partition_by)})"
                    )
        finally:
            conn.close()

    def replace_partition(
        self,
        hook: Any,
        table: str,
        columns: Sequence[Column],
        key: str,
        value: str,
        rows: Iterable[dict[str, Any]],
    ) -> None:
        names = [checked_identifier(c.name) for c in columns]
        insert = (
            f"INSERT INTO {checked_identifier(table)} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        conn = hook.get_conn()
        try:
            # One transaction: readers see the old rows or the new ones, never a mix.
            with conn:
                conn.execute(f"DELETE FROM {table} WHERE {checked_identifier(key)} = ?", (value,))
                conn.executemany(insert, [tuple(r.get(n) for n in names) for r in rows])
        finally:
            conn.close()

    def select(
        self, hook: Any, table: str, columns: Sequence[str], where: dict[str, Any] | None = None
    ) -> list[tuple]:
        sql = f"SELECT {', '.join(map(checked_identifier, columns))} FROM {checked_identifier(table)}"
        params: tuple = ()
        if where:
            sql += " WHERE " + " AND ".join(f"{checked_identifier(k)} = ?" for k in where)
            params = tuple(where.values())
        conn = hook.get_conn()
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def table_exists(self, hook: Any, table: str) -> bool:
        conn = hook.get_conn()
        try:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (checked_identifier(table),),
            ).fetchone()
            return row is not None
        finally:
            conn.close()

    def append_rows(
        self, hook: Any, table: str, columns: Sequence[Column], rows: Iterable[tuple]
    ) -> None:
        """Append rows (tuples in ``columns`` order) in one transaction."""
        names = [checked_identifier(c.name) for c in columns]
        insert = (
            f"INSERT INTO {checked_identifier(table)} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        conn = hook.get_conn()
        try:
            with conn:
                conn.executemany(insert, rows)
        finally:
            conn.close()


_DIALECTS = {"sqlite": SqliteDialect}


def dialect_for(hook: Any):
    """The dialect for a DB-API hook, chosen by its connection type (never by a code change)."""
    conn_type = getattr(hook, "conn_type", None) or getattr(hook, "dialect_name", None)
    try:
        return _DIALECTS[conn_type]()
    except KeyError:
        raise ValueError(
            f"warehouse connection type {conn_type!r} is not supported; "
            f"supported: {', '.join(sorted(_DIALECTS))}"
        ) from None
