"""SQLite, the embedded default warehouse (``SqliteHook``, sqlite3): the shared dialect
interface of :mod:`factory_tasks.warehouse.sql` in SQLite's SQL.

A partition is the rows holding one value of its key column (indexed); a run's rows are
replaced by a delete and an insert in one transaction, so readers see the old rows or the new
ones, never a mix. A database error (locked, read-only, not a database, disk full) becomes a
:class:`~factory_tasks.warehouse.sql.WarehouseError` naming the connection and what was being
done, as on Hive.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Iterable, Sequence

from factory_tasks.warehouse.sql import (
    Column,
    Dialect,
    WarehouseError,
    checked_identifier,
    coerce_value,
    column_names,
    connection_label,
)


class SqliteDialect(Dialect):
    """SQLite through Airflow's ``SqliteHook`` (or any hook whose ``get_conn`` is sqlite3)."""

    name = "sqlite"
    _types = {"string": "TEXT", "double": "REAL", "bigint": "INTEGER"}

    @staticmethod
    def _run(hook: Any, purpose: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """``work(conn)`` on a fresh connection, closed after; a database error becomes a
        :class:`WarehouseError` (sqlite3's messages name no row values)."""
        try:
            conn = hook.get_conn()
            try:
                return work(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise WarehouseError(connection_label(hook), purpose, f"{type(exc).__name__}: {exc}") from exc

    def create_table(
        self, hook: Any, table: str, columns: Sequence[Column], partition_by: str | None = None
    ) -> None:
        cols = ", ".join(f"{checked_identifier(c.name)} {self._types[c.type]}" for c in columns)

        def work(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {checked_identifier(table)} ({cols})")
                if partition_by:
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {table}_{partition_by}_idx "
                        f"ON {table} ({checked_identifier(partition_by)})"
                    )

        self._run(hook, f"create table {table}", work)

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
        values = [tuple(coerce_value(r.get(c.name), c) for c in columns) for r in rows]

        def work(conn: sqlite3.Connection) -> None:
            # One transaction: readers see the old rows or the new ones, never a mix.
            with conn:
                conn.execute(f"DELETE FROM {table} WHERE {checked_identifier(key)} = ?", (value,))
                conn.executemany(insert, values)

        self._run(hook, f"replace {key} {value!r} in {table}", work)

    def select(
        self, hook: Any, table: str, columns: Sequence[str], where: dict[str, Any] | None = None
    ) -> list[tuple]:
        sql = f"SELECT {', '.join(column_names(columns))} FROM {checked_identifier(table)}"
        params: tuple = ()
        if where:
            sql += " WHERE " + " AND ".join(f"{checked_identifier(k)} = ?" for k in where)
            params = tuple(where.values())
        return self._run(hook, f"read {table}",
                         lambda conn: [tuple(r) for r in conn.execute(sql, params).fetchall()])

    def select_between(
        self, hook: Any, table: str, columns: Sequence[str], column: str, low: Any, high: Any,
        where: dict[str, Any] | None = None,
    ) -> list[tuple]:
        """Rows with ``low <= column < high`` (and the ``where`` equalities), ``columns`` only."""
        sql = (f"SELECT {', '.join(column_names(columns))} FROM {checked_identifier(table)} "
               f"WHERE {checked_identifier(column)} >= ? AND {column} < ?")
        params: tuple = (low, high)
        if where:
            sql += "".join(f" AND {checked_identifier(k)} = ?" for k in where)
            params += tuple(where.values())
        return self._run(hook, f"read a range of {table}", lambda conn: conn.execute(sql, params).fetchall())

    def table_exists(self, hook: Any, table: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (checked_identifier(table),),
            ).fetchone()
            return row is not None

        return self._run(hook, f"look up table {table}", work)

    def columns(self, hook: Any, table: str) -> list[str]:
        """The table's column names in table order (empty if there is no such table)."""
        sql = f"PRAGMA table_info({checked_identifier(table)})"
        return self._run(hook, f"describe table {table}",
                         lambda conn: [str(r[1]) for r in conn.execute(sql).fetchall()])

    def add_columns(self, hook: Any, table: str, columns: Sequence[Column]) -> None:
        """Add nullable columns to an existing table (existing rows read NULL)."""
        statements = [f"ALTER TABLE {checked_identifier(table)} ADD COLUMN {checked_identifier(c.name)} "
                      f"{self._types[c.type]}" for c in columns]

        def work(conn: sqlite3.Connection) -> None:
            with conn:
                for statement in statements:
                    conn.execute(statement)

        self._run(hook, f"add columns to {table}", work)

    def append_rows(
        self, hook: Any, table: str, columns: Sequence[Column], rows: Iterable[tuple]
    ) -> None:
        """Append rows (tuples in ``columns`` order) in one transaction."""
        names = [checked_identifier(c.name) for c in columns]
        insert = (
            f"INSERT INTO {checked_identifier(table)} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        values = [tuple(coerce_value(v, c) for v, c in zip(row, columns, strict=True)) for row in rows]

        def work(conn: sqlite3.Connection) -> None:
            with conn:
                conn.executemany(insert, values)

        self._run(hook, f"append {len(values)} rows to {table}", work)
