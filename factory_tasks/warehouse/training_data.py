"""The training table and its snapshots.

Every experiment of a factory run reads one immutable snapshot of the training table: a
Parquet file named by the hash of its content, so a rerun on unchanged data reuses the same
file (and the same experiment ids), and changed data can never be mistaken for old data.

A factory run may also include the closed loop's matured decisions (the grid's
``data.interactions_table``, :data:`~factory_tasks.warehouse.loop_tables.CUSTOMER_INTERACTIONS`). Those
offers were chosen by the ε-greedy production policy, not at random, so such a snapshot has
one more column, :data:`PROPENSITY_COLUMN`: the probability with which each row's offer was
made — the logged one for interaction rows, :data:`HISTORY_PROPENSITY` (1/3) for the
randomized history. The off-policy metrics weight each row by it. Such a snapshot also
carries :data:`PREDICTION_UUID_COLUMN` (last): the ``prediction_uuid`` of the logged decision
each interaction row came from, null for history rows, so a challenger's fit rows can be told
apart from the live traffic it is judged on in shadow
(:func:`factory_tasks.loop.shadow.unseen_traffic`). Neither column is ever a model input
(:func:`~factory_tasks.training.features.feature_frame`). A snapshot without interaction rows
has neither column and is exactly the history-only snapshot (same bytes, same hash, same
experiment ids); one written before the uuid column existed still reads and hashes as it did.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from factory_tasks.core.atomic import write_atomic
from factory_tasks.core.contracts import SnapshotRef
from factory_tasks.core.schema import (
    HISTORY_PROPENSITY,
    INTERACTION_COLUMNS,
    INTERACTION_DTYPES,
    OFFERS,
    PREDICTION_UUID_COLUMN,
    PROPENSITY_COLUMN,
    TRAINING_TABLE,
    TrainingDataError,
    check_prediction_uuids,
    check_propensity,
    validate_interactions,
)
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS_SCHEMA
from factory_tasks.warehouse.sql import Column, WarehouseError, checked_identifier

log = logging.getLogger(__name__)

_SQL_TYPES = {"int64": "bigint", "float64": "double", "str": "string"}
INTERACTION_SCHEMA: tuple[Column, ...] = tuple(
    Column(name, _SQL_TYPES[INTERACTION_DTYPES[name]]) for name in INTERACTION_COLUMNS
)

#: what the factory reads of the interactions table: the training columns, the propensity and the
#: decision's uuid (in this order)
INTERACTIONS_TRAINING_SCHEMA: tuple[Column, ...] = tuple(
    c for c in CUSTOMER_INTERACTIONS_SCHEMA
    if c.name in (*INTERACTION_COLUMNS, PROPENSITY_COLUMN, PREDICTION_UUID_COLUMN))


def conform(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a frame against the interaction schema; return it in canonical column order and dtypes.

    A :data:`PROPENSITY_COLUMN` is kept (float64) when the frame has one, after
    :func:`check_propensity`, then a :data:`PREDICTION_UUID_COLUMN` (``str``, null where
    missing) when it has one, after :func:`check_prediction_uuids`; without them the result is
    the interaction columns only.
    """
    if frame.empty:
        raise TrainingDataError(f"{source}: the table has no rows")
    try:
        validate_interactions(frame)
    except ValueError as exc:
        raise TrainingDataError(f"{source}: {exc}") from None
    columns, dtypes = list(INTERACTION_COLUMNS), dict(INTERACTION_DTYPES)
    if PROPENSITY_COLUMN in frame.columns:
        check_propensity(frame[PROPENSITY_COLUMN], source)
        columns.append(PROPENSITY_COLUMN)
        dtypes[PROPENSITY_COLUMN] = "float64"
    if PREDICTION_UUID_COLUMN in frame.columns:
        check_prediction_uuids(frame[PREDICTION_UUID_COLUMN], source)
        columns.append(PREDICTION_UUID_COLUMN)
        dtypes[PREDICTION_UUID_COLUMN] = "str"  # a missing value stays missing (NaN), it is not "None"
    out = frame.loc[:, columns].astype(dtypes)
    if out["conversion"].nunique() < 2:
        raise TrainingDataError(f"{source}: 'conversion' has a single class; nothing to learn")
    return out.reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the data itself (values, column names, order) — not of a file's bytes."""
    digest = hashlib.sha256()
    digest.update(repr([(c, str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


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


def _check_columns(table: str, present: list[str], schema: tuple[Column, ...] = INTERACTION_SCHEMA,
                   kind: str = "training table") -> None:
    """Raise :class:`TrainingDataError` if ``table`` lacks a column of ``schema``."""
    have = {name.lower() for name in present}  # both warehouses compare names case-insensitively
    missing = [c.name for c in schema if c.name.lower() not in have]
    if missing:
        expected = ", ".join(f"{c.name} {c.type}" for c in schema)
        raise TrainingDataError(
            f"{kind} {table!r} lacks column(s) {', '.join(missing)} "
            f"(it has {', '.join(present) or 'none'}); expected schema: {expected}")


def read_interactions_frame(hook: Any, table: str) -> pd.DataFrame | None:
    """The interactions table's training columns, :data:`PROPENSITY_COLUMN` and
    :data:`PREDICTION_UUID_COLUMN`, in a canonical row order (sorted by every column, the uuid
    last, so the snapshot does not depend on the warehouse's read order); None, with a warning,
    when the table does not exist yet or has no rows.

    Raises :class:`TrainingDataError` naming the table and the column when it lacks a column of
    :data:`INTERACTIONS_TRAINING_SCHEMA`, a row does not fit the interaction schema, a
    propensity is outside (0, 1], or a uuid is missing or empty.
    """
    source = f"interactions table {table!r}"
    dialect = dialect_for(hook)
    try:
        checked_identifier(table)
    except ValueError as exc:
        raise TrainingDataError(f"{source}: {exc}") from None
    columns = [c.name for c in INTERACTIONS_TRAINING_SCHEMA]
    try:
        if not dialect.table_exists(hook, table):
            log.warning("%s does not exist (yet): the snapshot holds the history only", source)
            return None
        _check_columns(table, dialect.columns(hook, table), INTERACTIONS_TRAINING_SCHEMA, "interactions table")
        frame = dialect.read_frame(hook, table, columns)
    except (sqlite3.Error, WarehouseError) as exc:
        raise TrainingDataError(f"{source}: could not read it: {type(exc).__name__}: {exc}") from exc
    if frame.empty:
        log.warning("%s has no rows (yet): the snapshot holds the history only", source)
        return None
    try:
        validate_interactions(frame)
    except ValueError as exc:
        raise TrainingDataError(f"{source}: {exc}") from None
    check_propensity(frame[PROPENSITY_COLUMN], source)
    check_prediction_uuids(frame[PREDICTION_UUID_COLUMN], source, allow_null=False)
    frame = frame.loc[:, columns].astype({**INTERACTION_DTYPES, PROPENSITY_COLUMN: "float64",
                                          PREDICTION_UUID_COLUMN: "str"})
    return frame.sort_values(columns, kind="mergesort").reset_index(drop=True)


def training_frame(hook: Any, table: str = TRAINING_TABLE,
                   interactions_table: str | None = None) -> tuple[pd.DataFrame, int]:
    """The rows to snapshot and how many of them are interactions.

    Without ``interactions_table`` (or when it is missing or empty): :func:`read_training_frame`
    of ``table``, unchanged, and 0. Otherwise the history rows with propensity
    :data:`HISTORY_PROPENSITY` and no uuid, followed by the interaction rows with their logged
    propensity and their decision's uuid.
    """
    history = read_training_frame(hook, table)
    interactions = read_interactions_frame(hook, interactions_table) if interactions_table else None
    if interactions is None:
        return history, 0
    combined = pd.concat([history.assign(**{PROPENSITY_COLUMN: HISTORY_PROPENSITY, PREDICTION_UUID_COLUMN: None}),
                          interactions], ignore_index=True)
    frame = conform(combined, f"table {table} with interactions table {interactions_table}")
    log.info("training rows: %d from %s (propensity 1/%d) + %d matured interactions from %s (logged propensity)",
             len(history), table, len(OFFERS), len(interactions), interactions_table)
    return frame, len(interactions)


def snapshot_parquet(frame: pd.DataFrame, table: str = TRAINING_TABLE, *, interactions_table: str | None = None,
                     interaction_rows: int = 0) -> tuple[SnapshotRef, bytes]:
    """The content-addressed snapshot of ``frame``: where it goes in the project, and its bytes.

    ``interactions_table`` / ``interaction_rows`` describe a frame of :func:`training_frame` with
    interactions (it then has a :data:`PROPENSITY_COLUMN`, and a :data:`PREDICTION_UUID_COLUMN`
    set on exactly ``interaction_rows`` rows); without interaction rows they are ignored, and
    the snapshot is the history's.
    """
    frame = conform(frame, f"snapshot of {table}")
    with_interactions = bool(interaction_rows) and interactions_table is not None
    if with_interactions != (PROPENSITY_COLUMN in frame.columns):
        raise ValueError(f"a snapshot with interaction rows needs the {PROPENSITY_COLUMN!r} column, "
                         "and only such a snapshot has one")
    if PREDICTION_UUID_COLUMN in frame.columns:
        if not with_interactions:
            raise ValueError(f"only a snapshot with interaction rows has the {PREDICTION_UUID_COLUMN!r} column")
        named = int(frame[PREDICTION_UUID_COLUMN].notna().sum())
        if named != interaction_rows:
            raise ValueError(f"the {PREDICTION_UUID_COLUMN!r} column names {named} row(s) of a snapshot with "
                             f"{interaction_rows} interaction row(s): it must name each of them and no other")
    digest = content_hash(frame)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    name = f"{table}-and-{interactions_table}" if with_interactions else table
    ref = SnapshotRef(table=table, hash=digest, n_rows=len(frame),
                      project_path=f"snapshots/{name}-{digest[:16]}.parquet",
                      interactions_table=interactions_table if with_interactions else None,
                      interaction_rows=interaction_rows if with_interactions else 0)
    return ref, buffer.getvalue()


def write_snapshot(frame: pd.DataFrame, directory: Path, table: str = TRAINING_TABLE) -> SnapshotRef:
    """Write the snapshot into ``directory`` as a project would hold it (kept if it exists)."""
    ref, data = snapshot_parquet(frame, table)
    path = Path(directory) / Path(ref.project_path).name
    if not path.exists():
        write_atomic(path, data)
    return ref
