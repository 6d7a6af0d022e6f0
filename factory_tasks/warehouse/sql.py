"""What every warehouse engine shares, and the choice of engine.

Identifiers are never user input: table and column names are checked against a strict
pattern before they reach a statement, and values always travel as bound parameters.

Each engine implements one interface (``create_table``, ``replace_partition``,
``append_rows``, ``select``, ``select_between``, ``read_frame``, ``table_exists``,
``columns``) on top of :class:`Dialect`; :func:`dialect_for` picks one from the hook's
connection type, so switching the warehouse is a connection change, never a code change.

* :class:`~factory_tasks.warehouse.sqlite.SqliteDialect` -- the embedded default
  (``SqliteHook``, sqlite3).
* :class:`~factory_tasks.warehouse.hive.HiveDialect` -- HiveServer2 (``HiveServer2Hook``,
  PyHive), with its literal binding and connection retries.

Both store the values :func:`coerce_value` gives and read them back with
:func:`frame_from_records`, so the same rows read back the same everywhere.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

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


class WarehouseError(RuntimeError):
    """A warehouse statement failed: names the connection, what was being done and the cause.

    The message never carries row values (statements are not quoted; quoted literals in the
    server's error text are masked).
    """

    def __init__(self, connection: str, purpose: str, cause: str, attempts: int = 1):
        self.connection = connection
        self.purpose = purpose
        self.cause = cause
        self.attempts = attempts
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{connection}: could not {purpose}{tried}: {cause}")


# --------------------------------------------------------------------------- values


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (str, bytes)) else False
    except (TypeError, ValueError):  # arrays and other non-scalars are not "missing"
        return False


def coerce_value(value: Any, column: Column) -> Any:
    """A Python value of the column's declared type (None for NULL, NaN, +-inf, pd.NA).

    Both dialects store exactly these values, so the same rows read back the same everywhere.
    """
    if _is_missing(value):
        return None
    if column.type == "string":
        if isinstance(value, bytes):
            return value.decode("utf-8")
        return value if isinstance(value, str) else str(value)
    if isinstance(value, (str, bytes)):
        raise ValueError(f"column {column.name} is {column.type}; got a string")
    if column.type == "double":
        value = float(value)
        return value if math.isfinite(value) else None
    # bigint
    if isinstance(value, numbers.Integral):
        return int(value)
    as_float = float(value)
    if not math.isfinite(as_float):
        return None
    if not as_float.is_integer():
        raise ValueError(f"column {column.name} is bigint; got a non-integral number")
    return int(as_float)


def _typed_columns(columns: Sequence[Column | str]) -> list[Column] | None:
    if all(isinstance(c, Column) for c in columns):
        return list(columns)  # type: ignore[arg-type]
    return None


def column_names(columns: Sequence[Column | str]) -> list[str]:
    return [checked_identifier(c.name if isinstance(c, Column) else c) for c in columns]


def frame_from_records(records: Sequence[tuple], columns: Sequence[Column | str]) -> pd.DataFrame:
    """A frame with the declared dtypes: bigint -> int64 (Int64 if NULLs), double -> float64,
    string -> str. Plain names (no types) give pandas' inferred dtypes."""
    names = column_names(columns)
    frame = pd.DataFrame.from_records(list(records), columns=names)
    typed = _typed_columns(columns)
    if typed is None:
        return frame
    for col in typed:
        series = frame[col.name]
        if col.type == "bigint":
            frame[col.name] = series.astype("Int64" if series.isna().any() else "int64")
        elif col.type == "double":
            frame[col.name] = series.astype("float64")
        else:
            frame[col.name] = series.astype("str") if not series.isna().all() else series
    return frame


# --------------------------------------------------------------------------- the interface


class Dialect:
    """The base of every engine: what each derives from its own ``select``."""

    def select(self, hook: Any, table: str, columns: Sequence[str],
               where: dict[str, Any] | None = None) -> list[tuple]:
        raise NotImplementedError

    def read_frame(
        self,
        hook: Any,
        table: str,
        columns: Sequence[Column | str],
        where: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """The table's rows as a frame with the declared dtypes (see :func:`frame_from_records`)."""
        return frame_from_records(self.select(hook, table, column_names(columns), where), columns)


# --------------------------------------------------------------------------- choosing one


def connection_label(hook: Any) -> str:
    """``hiveserver2 connection 'model_factory_warehouse'`` -- for error messages."""
    conn_type = getattr(hook, "conn_type", None) or "warehouse"
    conn_id = None
    attr = getattr(hook, "conn_name_attr", None)
    if isinstance(attr, str):
        conn_id = getattr(hook, attr, None)
    conn_id = conn_id or getattr(hook, "hiveserver2_conn_id", None)
    return f"{conn_type} connection {conn_id!r}" if conn_id else f"{conn_type} connection"


