"""HiveServer2 (``HiveServer2Hook``, PyHive): the shared dialect interface of
:mod:`factory_tasks.warehouse.sql` in HiveQL, with PyHive's literal binding hardened.

Tables are Hive-format Parquet tables (``STORED AS PARQUET``: valid on Apache Hive and on
Spark's Thrift Server), partitioned where a partition is the unit of replacement. A run's rows
are replaced with one ``INSERT OVERWRITE TABLE t PARTITION (k = v)`` statement, so a rerun
never duplicates rows and readers never see half a run. Connection failures are retried with
backoff; whatever still fails becomes a :class:`~factory_tasks.warehouse.sql.WarehouseError`
naming the connection and the purpose.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Sequence

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from factory_tasks.warehouse.sql import (
    Column,
    Dialect,
    WarehouseError,
    checked_identifier,
    coerce_value,
    column_names,
    connection_label,
)

log = logging.getLogger(__name__)


def _hive_escaper():
    from pyhive.hive import HiveParamEscaper

    class HiveLiteralEscaper(HiveParamEscaper):
        """PyHive's client-side ``pyformat`` binding, hardened.

        PyHive escapes backslashes, quotes, CR/LF/TAB. It misses that HiveServer2 (Hive and
        Spark alike) substitutes ``${var}`` anywhere in the statement text *before* parsing,
        string literals included -- so ``$`` is sent as the ``\\u0024`` escape, which both
        parsers decode inside string literals. Numbers are rendered so both engines read a
        DOUBLE (``1.5e0``, not the DECIMAL ``1.5``); NaN and infinities are refused.
        """

        def escape_string(self, item):
            return super().escape_string(item).replace("$", "\\u0024")

        def escape_number(self, item):
            if isinstance(item, bool):
                return str(int(item))
            if isinstance(item, numbers.Integral):
                return str(int(item))
            item = float(item)
            if not math.isfinite(item):
                raise ValueError("NaN and infinities cannot be sent to Hive; bind NULL instead")
            text = repr(item)
            return text if "e" in text else f"{text}e0"

    return HiveLiteralEscaper()


# built at the first bind: importing PyHive is left to the first Hive statement
_ESCAPER = None


def bind(operation: str, parameters: dict[str, Any] | Sequence[Any]) -> str:
    """``operation % escaped(parameters)``: PyHive's own pyformat binding (client-side, as the
    HiveServer2 protocol has no server-side parameters) with the hardened escaper above."""
    global _ESCAPER
    if _ESCAPER is None:
        _ESCAPER = _hive_escaper()
    return operation % _ESCAPER.escape_args(parameters)


def _status(exc: BaseException) -> Any:
    """The TStatus of a PyHive ``OperationalError`` (its first arg is the Thrift response)."""
    first = exc.args[0] if exc.args else None
    return getattr(first, "status", None)


def is_connection_error(exc: BaseException) -> bool:
    """Worth retrying: the server could not be reached or the session broke mid-way.

    SQL errors (syntax, missing table, type mismatch) are not: retrying cannot fix them.
    """
    try:
        from thrift.transport.TTransport import TTransportException
    except ImportError:  # pragma: no cover
        TTransportException = ()  # type: ignore[assignment]
    if isinstance(exc, (TTransportException, ConnectionError, TimeoutError, EOFError)):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return True
    status = _status(exc)
    sql_state = getattr(status, "sqlState", None) or ""
    return sql_state.startswith("08")  # SQLSTATE class 08: connection exception


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.S)


def describe_cause(exc: BaseException) -> str:
    """One line about what went wrong, without statement text or quoted values."""
    status = _status(exc)
    server_text = getattr(status, "errorMessage", None)
    if server_text:  # the server's message may quote the statement: mask its literals
        text = _QUOTED.sub("'…'", server_text.split("== SQL ==")[0])
    else:
        text = str(exc) or type(exc).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) > 400:
        line = line[:400] + "…"
    return f"{type(exc).__name__}: {line}"


class HiveDialect(Dialect):
    """HiveServer2 through Airflow's ``HiveServer2Hook`` (PyHive ``get_conn()``)."""

    name = "hive"
    _types = {"string": "STRING", "double": "DOUBLE", "bigint": "BIGINT"}
    storage = "STORED AS PARQUET"
    staging_suffix = "__staging"

    #: Bounds of one statement carrying rows: rows (JSON payload / VALUES list) and characters
    #: of SQL text (HiveServer2's Thrift message limit is 100 MB by default on Hive and Spark).
    #: 10,000 outcome rows are ~15 MB of JSON: one statement, no staging.
    max_rows_per_statement = 20_000
    max_rows_per_values_statement = 1_000
    max_chars_per_statement = 32_000_000
    #: Retries of connection errors (tests swap ``retry_wait`` for ``tenacity.wait_none()``).
    retry_attempts = 4
    retry_wait = wait_exponential(multiplier=1, min=1, max=15)

    def __init__(self) -> None:
        # PyHive logs every statement text (row values included) at INFO: keep it out of logs.
        pyhive_log = logging.getLogger("pyhive.hive")
        if pyhive_log.level == logging.NOTSET:
            pyhive_log.setLevel(logging.WARNING)

    # ----------------------------------------------------------------- plumbing

    def _run(self, hook: Any, purpose: str, work: Callable[[Any, dict], Any]) -> Any:
        """Run ``work(conn, state)`` on a fresh connection; retry connection errors with
        backoff; raise :class:`WarehouseError` for whatever still fails.

        ``work`` sets ``state["no_retry"] = True`` once retrying could duplicate data.
        """
        state: dict[str, Any] = {}
        label = connection_label(hook)

        def attempt() -> Any:
            state.clear()
            conn = hook.get_conn()
            try:
                return work(conn, state)
            finally:
                try:
                    conn.close()
                except Exception:  # closing a broken connection must not hide the real error
                    log.debug("closing the warehouse connection failed", exc_info=True)

        def retryable(exc: BaseException) -> bool:
            return is_connection_error(exc) and not state.get("no_retry")

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning(
                "%s: %s failed (attempt %d of %d), retrying in %.1fs: %s",
                label, purpose, rs.attempt_number, self.retry_attempts,
                rs.next_action.sleep if rs.next_action else 0.0,
                describe_cause(exc) if exc else "?",
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=self.retry_wait,
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except (ValueError, TypeError):
            raise  # our own validation: a caller bug, not a warehouse failure
        except Exception as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise WarehouseError(label, purpose, describe_cause(exc), attempts) from exc

    @staticmethod
    def _execute(cursor: Any, operation: str, parameters: Any = None) -> None:
        cursor.execute(bind(operation, parameters) if parameters is not None else operation)

    def _load_mode(self, cursor: Any) -> str:
        """``"json"`` where the server has Spark SQL's ``from_json`` (Spark Thrift Server), else
        ``"values"`` (Apache Hive). Probed once per write: one cheap statement."""
        try:
            cursor.execute("SELECT from_json('[]', 'array<int>')")
            cursor.fetchall()
            return "json"
        except Exception as exc:
            if is_connection_error(exc):
                raise
            return "values"

    def _row_sources(self, mode: str, columns: Sequence[Column], rows: Sequence[tuple]) -> Iterator[str]:
        """Bounded SQL fragments that produce ``rows`` (in ``columns`` order), each usable after
        ``INSERT ... TABLE t [PARTITION (...)]``.

        ``values``: ``VALUES (...), (...)`` -- portable, but Spark parses and analyses every
        literal, which makes wide rows slow to send. ``json``: one string literal holding the
        rows as JSON, expanded server-side by ``inline(from_json(...))``, so Spark parses one
        literal per statement instead of one per value. Both carry the values through the same
        escaper; types come from the declared columns.
        """
        if mode == "json":
            fields = [f"c{i}" for i in range(len(columns))]
            schema = "array<struct<" + ",".join(
                f"{f}:{self._types[c.type].lower()}" for f, c in zip(fields, columns)
            ) + ">>"
            select = ", ".join(f"{f} AS {c.name}" for f, c in zip(fields, columns))
            chunk: list[str] = []
            size = 0
            for row in rows:
                item = json.dumps(dict(zip(fields, row)), ensure_ascii=False, allow_nan=False)
                if chunk and (
                    len(chunk) >= self.max_rows_per_statement
                    or size + len(item) > self.max_chars_per_statement
                ):
                    yield bind(f"SELECT {select} FROM (SELECT inline(from_json(%s, %s)))",
                               ("[" + ",".join(chunk) + "]", schema))
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item) + 1
            if chunk:
                yield bind(f"SELECT {select} FROM (SELECT inline(from_json(%s, %s)))",
                           ("[" + ",".join(chunk) + "]", schema))
            return
        chunk = []
        size = 0
        max_rows = min(self.max_rows_per_statement, self.max_rows_per_values_statement)
        for row in rows:
            literal = bind("(" + ", ".join(["%s"] * len(row)) + ")", row)
            if chunk and (
                len(chunk) >= max_rows
                or size + len(literal) + 2 > self.max_chars_per_statement
            ):
                yield "VALUES " + ", ".join(chunk)
                chunk, size = [], 0
            chunk.append(literal)
            size += len(literal) + 2
        if chunk:
            yield "VALUES " + ", ".join(chunk)

    def _ensure_staging(self, cursor: Any, table: str, columns: Sequence[Column]) -> str:
        staging = checked_identifier(f"{table}{self.staging_suffix}")
        cols = ", ".join(f"{c.name} {self._types[c.type]}" for c in columns)
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {staging} ({cols}) "
            f"PARTITIONED BY (load_id STRING) {self.storage}"
        )
        return staging

    def _load(
        self,
        cursor: Any,
        state: dict,
        table: str,
        columns: Sequence[Column],
        rows: Sequence[tuple],
        target: str,
        target_params: dict[str, Any],
    ) -> int:
        """Write ``rows`` with ONE final statement ``target`` (``INSERT ... TABLE t [PARTITION]``):
        directly if they fit one statement, else staged first. Returns the statements sent."""
        mode = self._load_mode(cursor)
        head = bind(target, target_params) if target_params else target
        sources = list(self._row_sources(mode, columns, rows))
        if len(sources) == 1:
            state["no_retry"] = state.get("final_not_idempotent", False)
            cursor.execute(f"{head} {sources[0]}")
            return 2
        staging = self._ensure_staging(cursor, table, columns)
        load_id = uuid.uuid4().hex
        into_staging = bind(f"INSERT INTO TABLE {staging} PARTITION (load_id = %s)", (load_id,))
        try:
            for source in sources:
                cursor.execute(f"{into_staging} {source}")
            names = ", ".join(c.name for c in columns)
            state["no_retry"] = state.get("final_not_idempotent", False)
            # Bind target and staging key together: ``head`` may hold a bound "%".
            self._execute(
                cursor,
                f"{target} SELECT {names} FROM {staging} WHERE load_id = %(load_id)s",
                {**target_params, "load_id": load_id},
            )
            return len(sources) + 3
        finally:
            try:
                self._execute(
                    cursor,
                    f"ALTER TABLE {staging} DROP IF EXISTS PARTITION (load_id = %(load_id)s)",
                    {"load_id": load_id},
                )
            except Exception:  # a leftover staging partition is harmless (unique load id)
                log.warning("could not drop staging partition of %s", staging, exc_info=True)

    # ----------------------------------------------------------------- interface

    def create_table(
        self, hook: Any, table: str, columns: Sequence[Column], partition_by: str | None = None
    ) -> None:
        """``CREATE TABLE IF NOT EXISTS`` as Parquet, partitioned by ``partition_by`` if given."""
        checked_identifier(table)
        data = [c for c in columns if c.name != partition_by]
        cols = ", ".join(f"{checked_identifier(c.name)} {self._types[c.type]}" for c in data)
        partition = ""
        if partition_by:
            part = [c for c in columns if c.name == checked_identifier(partition_by)]
            if not part:
                raise ValueError(f"partition column {partition_by!r} is not one of the columns")
            partition = f" PARTITIONED BY ({part[0].name} {self._types[part[0].type]})"
        sql = f"CREATE TABLE IF NOT EXISTS {table} ({cols}){partition} {self.storage}"
        self._run(hook, f"create table {table}", lambda conn, state: conn.cursor().execute(sql))

    def replace_partition(
        self,
        hook: Any,
        table: str,
        columns: Sequence[Column],
        key: str,
        value: str,
        rows: Iterable[dict[str, Any]],
    ) -> None:
        """Make partition ``key = value`` of ``table`` hold exactly ``rows``, in one statement
        (``INSERT OVERWRITE``; ``DROP PARTITION`` for no rows). Idempotent: safe to retry."""
        checked_identifier(table)
        checked_identifier(key)
        key_cols = [c for c in columns if c.name == key]
        if not key_cols:
            raise ValueError(f"partition column {key!r} is not one of the columns")
        key_value = coerce_value(value, key_cols[0])
        if key_value is None:
            raise ValueError(f"partition column {key!r} needs a value")
        data = [c for c in columns if c.name != key]
        values: list[tuple] = []
        for r in rows:
            if key in r and coerce_value(r[key], key_cols[0]) != key_value:
                raise ValueError(f"a row for another {key} was passed to replace {key} {value!r}")
            values.append(tuple(coerce_value(r.get(c.name), c) for c in data))
        purpose = f"replace {key} {value!r} in {table}"

        def work(conn: Any, state: dict) -> int:
            cursor = conn.cursor()
            if not values:
                self._execute(
                    cursor,
                    f"ALTER TABLE {table} DROP IF EXISTS PARTITION ({key} = %(key)s)",
                    {"key": key_value},
                )
                return 1
            return self._load(
                cursor, state, table, data, values,
                f"INSERT OVERWRITE TABLE {table} PARTITION ({key} = %(key)s)", {"key": key_value},
            )

        started = time.monotonic()
        n = self._run(hook, purpose, work)
        log.info("%s: %d rows in %d statements, %.1fs", purpose, len(values), n,
                 time.monotonic() - started)

    def append_rows(
        self, hook: Any, table: str, columns: Sequence[Column], rows: Iterable[tuple]
    ) -> None:
        """Append rows (tuples in ``columns`` order) with one final ``INSERT INTO`` statement
        (staged first when they need several), so readers see all of them or none."""
        checked_identifier(table)
        for c in columns:
            checked_identifier(c.name)
        values = [tuple(coerce_value(v, c) for v, c in zip(row, columns, strict=True)) for row in rows]
        if not values:
            return
        purpose = f"append {len(values)} rows to {table}"

        def work(conn: Any, state: dict) -> int:
            # Once the final INSERT INTO is sent, a retry could append the rows twice.
            state["final_not_idempotent"] = True
            return self._load(conn.cursor(), state, table, columns, values,
                              f"INSERT INTO TABLE {table}", {})

        started = time.monotonic()
        n = self._run(hook, purpose, work)
        log.info("%s: %d statements, %.1fs", purpose, n, time.monotonic() - started)

    def select(
        self, hook: Any, table: str, columns: Sequence[str], where: dict[str, Any] | None = None
    ) -> list[tuple]:
        names = column_names(columns)
        sql = f"SELECT {', '.join(names)} FROM {checked_identifier(table)}"
        params: dict[str, Any] = {}
        if where:
            clauses = []
            for i, (k, v) in enumerate(where.items()):
                clauses.append(f"{checked_identifier(k)} = %(w{i})s")
                params[f"w{i}"] = v
            sql += " WHERE " + " AND ".join(clauses)

        def work(conn: Any, state: dict) -> list[tuple]:
            cursor = conn.cursor()
            cursor.arraysize = 10_000
            self._execute(cursor, sql, params)
            return [tuple(r) for r in cursor.fetchall()]

        return self._run(hook, f"read {table}", work)

    def select_between(
        self, hook: Any, table: str, columns: Sequence[str], column: str, low: Any, high: Any,
        where: dict[str, Any] | None = None,
    ) -> list[tuple]:
        """Rows with ``low <= column < high`` (and the ``where`` equalities), ``columns`` only."""
        names = column_names(columns)
        sql = (f"SELECT {', '.join(names)} FROM {checked_identifier(table)} "
               f"WHERE {checked_identifier(column)} >= %(low)s AND {column} < %(high)s")
        params: dict[str, Any] = {"low": low, "high": high}
        for i, (k, v) in enumerate((where or {}).items()):
            sql += f" AND {checked_identifier(k)} = %(w{i})s"
            params[f"w{i}"] = v

        def work(conn: Any, state: dict) -> list[tuple]:
            cursor = conn.cursor()
            cursor.arraysize = 10_000
            self._execute(cursor, sql, params)
            return [tuple(r) for r in cursor.fetchall()]

        return self._run(hook, f"read a range of {table}", work)

    def table_exists(self, hook: Any, table: str) -> bool:
        checked_identifier(table)

        def work(conn: Any, state: dict) -> bool:
            cursor = conn.cursor()
            self._execute(cursor, "SHOW TABLES LIKE %(t)s", {"t": table})
            # Spark answers (namespace, tableName, isTemporary); Hive answers (tab_name).
            names = {str(r[1] if len(r) >= 2 else r[0]).lower() for r in cursor.fetchall()}
            return table.lower() in names

        return self._run(hook, f"look up table {table}", work)

    def add_columns(self, hook: Any, table: str, columns: Sequence[Column]) -> None:
        """Add nullable columns to an existing table (existing rows read NULL)."""
        added = ", ".join(f"{checked_identifier(c.name)} {self._types[c.type]}" for c in columns)
        sql = f"ALTER TABLE {checked_identifier(table)} ADD COLUMNS ({added})"
        self._run(hook, f"add columns to {table}", lambda conn, state: conn.cursor().execute(sql))

    def columns(self, hook: Any, table: str) -> list[str]:
        """The table's column names in table order, partition columns included (``DESCRIBE``)."""
        checked_identifier(table)

        def work(conn: Any, state: dict) -> list[str]:
            cursor = conn.cursor()
            cursor.execute(f"DESCRIBE {table}")
            names: list[str] = []
            # (col_name, data_type, comment) rows; Hive and Spark then repeat the partition
            # columns after a blank row and/or a "# Partition Information" header: stop there.
            for row in cursor.fetchall():
                name = str(row[0] or "").strip()
                if not name or name.startswith("#"):
                    break
                names.append(name)
            return names

        return self._run(hook, f"describe table {table}", work)
