"""The training table and its snapshots.

Every experiment of a factory run reads one immutable snapshot of the training table: a
Parquet file named by the hash of its content, so a rerun on unchanged data reuses the same
file (and the same experiment ids), and changed data can never be mistaken for old data.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from factory_tasks.atomic import write_atomic
from factory_tasks.contracts import SnapshotRef
from factory_tasks.simulator import (
    INTERACTION_COLUMNS,
    INTERACTION_DTYPES,
    simulate_interactions,
    validate_interactions,
)
from factory_tasks.sql_dialects import Column, WarehouseError, checked_identifier, dialect_for

log = logging.getLogger(__name__)

TRAINING_TABLE = "historical_customer_interactions"

_SQL_TYPES = {"int64": "bigint", "float64": "double", "str": "string"}
INTERACTION_SCHEMA: tuple[Column, ...] = tuple(
    Column(name, _SQL_TYPES[INTERACTION_DTYPES[name]]) for name in INTERACTION_COLUMNS
)


class TrainingDataError(ValueError):
    """The training table is missing, empty or does not have the expected schema."""


def conform(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a frame against the interaction schema; return it in canonical column order and dtypes."""
    if frame.empty:
        raise TrainingDataError(f"{source}: the table has no rows")
    try:
        validate_interactions(frame)
    except ValueError as exc:
        raise TrainingDataError(f"{source}: {exc}") from None
    out = frame.loc[:, list(INTERACTION_COLUMNS)].astype(INTERACTION_DTYPES)
    if out["conversion"].nunique() < 2:
        raise TrainingDataError(f"{source}: 'conversion' has a single class; nothing to learn")
    return out.reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the data itself (values, column names, order) — not of a file's bytes."""
    digest = hashlib.sha256()
    digest.update(repr([(c, str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def ensure_training_table(hook: Any, *, n_rows: int, seed: int, table: str = TRAINING_TABLE) -> bool:
    """Create ``table`` filled by the simulator if it does not exist. Returns True if created."""
    dialect = dialect_for(hook)
    if dialect.table_exists(hook, checked_identifier(table)):
        return False
    frame = conform(simulate_interactions(n_rows=n_rows, seed=seed), "simulator")
    dialect.create_table(hook, table, INTERACTION_SCHEMA)
    dialect.append_rows(hook, table, INTERACTION_SCHEMA, frame.itertuples(index=False, name=None))
    log.info("created %s with %d simulated rows (seed %d)", table, len(frame), seed)
    return True


def read_training_frame(hook: Any, table: str = TRAINING_TABLE) -> pd.DataFrame:
    """The training table's rows in the interaction schema (see :func:`conform`).

    Raises :class:`TrainingDataError` naming the table when it is missing, lacks a column of
    :data:`INTERACTION_SCHEMA`, cannot be read (the database error is chained), or its rows do
    not fit the schema (types, missing values, no rows).
    """
    dialect = dialect_for(hook)
    try:
        checked_identifier(table)
    except ValueError as exc:
        raise TrainingDataError(f"training table {table!r}: {exc}") from None
    try:
        if not dialect.table_exists(hook, table):
            raise TrainingDataError(f"training table {table!r} does not exist in the warehouse")
        _check_columns(table, dialect.columns(hook, table))
        frame = dialect.read_frame(hook, table, INTERACTION_COLUMNS)
    except (sqlite3.Error, WarehouseError) as exc:
        raise TrainingDataError(f"training table {table!r}: could not read it: "
                                f"{type(exc).__name__}: {exc}") from exc
    return conform(frame, f"table {table}")


def _check_columns(table: str, present: list[str]) -> None:
    """Raise :class:`TrainingDataError` if ``table`` lacks a column of the interaction schema."""
    have = {name.lower() for name in present}  # both warehouses compare names case-insensitively
    missing = [c.name for c in INTERACTION_SCHEMA if c.name.lower() not in have]
    if missing:
        expected = ", ".join(f"{c.name} {c.type}" for c in INTERACTION_SCHEMA)
        raise TrainingDataError(
            f"training table {table!r} lacks column(s) {', '.join(missing)} "
            f"(it has {', '.join(present) or 'none'}); expected schema: {expected}")


def snapshot_parquet(frame: pd.DataFrame, table: str = TRAINING_TABLE) -> tuple[SnapshotRef, bytes]:
    """The content-addressed snapshot of ``frame``: where it goes in the project, and its bytes."""
    frame = conform(frame, f"snapshot of {table}")
    digest = content_hash(frame)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    ref = SnapshotRef(table=table, hash=digest, n_rows=len(frame),
                      project_path=f"snapshots/{table}-{digest[:16]}.parquet")
    return ref, buffer.getvalue()


def write_snapshot(frame: pd.DataFrame, directory: Path, table: str = TRAINING_TABLE) -> SnapshotRef:
    """Write the snapshot into ``directory`` as a project would hold it (kept if it exists)."""
    ref, data = snapshot_parquet(frame, table)
    path = Path(directory) / Path(ref.project_path).name
    if not path.exists():
        write_atomic(path, data)
    return ref
