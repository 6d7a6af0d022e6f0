"""Reading the training table on a real SQLite file through Airflow's SqliteHook.

One negative test per rule: each asserts that the TrainingDataError names the table and what
is wrong with it.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from airflow.providers.sqlite.hooks.sqlite import SqliteHook

from factory_tasks.simulator import INTERACTION_COLUMNS, simulate_interactions
from factory_tasks.sql_dialects import SqliteDialect
from factory_tasks.training_data import (
    INTERACTION_SCHEMA,
    TRAINING_TABLE,
    TrainingDataError,
    ensure_training_table,
    read_training_frame,
)


def create(hook, table: str, frame, columns=INTERACTION_SCHEMA) -> None:
    dialect = SqliteDialect()
    dialect.create_table(hook, table, columns)
    names = [c.name for c in columns]
    dialect.append_rows(hook, table, columns, frame[names].itertuples(index=False, name=None))


def error_of(hook, table: str = TRAINING_TABLE) -> str:
    with pytest.raises(TrainingDataError) as info:
        read_training_frame(hook, table)
    message = str(info.value)
    assert repr(table) in message or f"table {table}" in message  # names the table
    return message


def test_reads_the_table_in_the_interaction_schema(hook):
    assert ensure_training_table(hook, n_rows=200, seed=1)
    frame = read_training_frame(hook)
    assert list(frame.columns) == list(INTERACTION_COLUMNS) and len(frame) == 200


def test_missing_table(hook):
    assert "does not exist in the warehouse" in error_of(hook, "no_such_table")


def test_missing_column_names_the_column_and_the_expected_schema(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2),
           [c for c in INTERACTION_SCHEMA if c.name != "channel"])
    message = error_of(hook)
    assert f"training table {TRAINING_TABLE!r} lacks column(s) channel " in message
    assert "(it has recency, history," in message
    assert "expected schema: recency bigint, history double," in message and "conversion bigint" in message


def test_several_missing_columns_are_named_together(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2),
           [c for c in INTERACTION_SCHEMA if c.name not in ("offer", "zip_code")])
    assert "lacks column(s) zip_code, offer " in error_of(hook)


def test_column_names_compare_case_insensitively(hook):
    conn = hook.get_conn()
    with conn:
        conn.execute(f"CREATE TABLE {TRAINING_TABLE} (RECENCY INTEGER)")
    conn.close()
    assert "lacks column(s) history, used_discount," in error_of(hook)  # RECENCY is recency


def test_other_database_errors_become_training_data_errors_naming_the_table(hook, monkeypatch):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2))

    def locked(self, *args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqliteDialect, "select", locked)
    with pytest.raises(TrainingDataError) as info:
        read_training_frame(hook)
    assert str(info.value) == (f"training table {TRAINING_TABLE!r}: could not read it: "
                               "OperationalError: database is locked")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


def test_an_unreadable_database_file_is_a_training_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE",
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}),
    )
    (tmp_path / "warehouse.db").write_bytes(b"this is not a database" * 100)
    message = error_of(SqliteHook(sqlite_conn_id="model_factory_warehouse"))
    assert "could not read it: DatabaseError: file is not a database" in message


def test_a_table_name_that_is_not_an_identifier(hook):
    assert "is not a valid SQL identifier" in error_of(hook, "interactions; DROP TABLE x")


def test_an_empty_table(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2).iloc[:0])
    assert "the table has no rows" in error_of(hook)


def test_text_in_a_numeric_column_is_a_schema_error(hook):
    frame = simulate_interactions(50, seed=2)
    typed = [c if c.name != "history" else type(c)("history", "string") for c in INTERACTION_SCHEMA]
    create(hook, TRAINING_TABLE, frame.assign(history="a lot"), typed)
    assert "history must be numeric" in error_of(hook)


def test_missing_values_are_a_schema_error(hook):
    frame = simulate_interactions(50, seed=2)
    create(hook, TRAINING_TABLE, frame.assign(history=np.where(frame.index == 3, np.nan, frame["history"])))
    assert "history has 1 missing value(s)" in error_of(hook)


def test_a_single_class_target_is_refused(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2).assign(conversion=0))
    assert "'conversion' has a single class" in error_of(hook)
