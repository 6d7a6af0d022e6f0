"""The SQLite engine on a real database file through Airflow's SqliteHook: a database that is
locked or read-only is a WarehouseError naming the connection and the table, and what was
already recorded is kept."""

from __future__ import annotations

import json
import sqlite3

import pytest
from airflow.providers.sqlite.hooks.sqlite import SqliteHook

from factory_tasks.warehouse.loop_tables import PREDICTION_LOG, PREDICTION_LOG_SCHEMA
from factory_tasks.warehouse.outcomes import OUTCOMES_TABLE, OutcomeStore
from factory_tasks.warehouse.sql import WarehouseError
from factory_tasks.warehouse.sqlite import SqliteDialect

WINDOW = "2026-12-01T06:00:00Z"


def _row(uuid: str) -> dict:
    return {"window_start": WINDOW, "prediction_uuid": uuid, "decided_at_ms": 1, "propensity": 0.9}


def test_a_locked_database_names_the_connection_and_the_table(hook):
    dialect = SqliteDialect()
    dialect.create_table(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA, partition_by="window_start")
    dialect.replace_partition(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA, "window_start", WINDOW, [_row("a")])
    holder = sqlite3.connect(hook.get_connection("model_factory_warehouse").host)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        with pytest.raises(WarehouseError) as info:
            dialect.replace_partition(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA, "window_start", WINDOW,
                                      [_row("b")])
    finally:
        holder.rollback()
        holder.close()
    assert str(info.value) == (f"sqlite connection 'model_factory_warehouse': could not replace window_start "
                               f"'{WINDOW}' in {PREDICTION_LOG}: OperationalError: database is locked")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    rows = dialect.select(hook, PREDICTION_LOG, ["prediction_uuid"])
    assert rows == [("a",)]  # the recorded row is kept


def test_record_outcomes_into_a_read_only_database_names_the_connection_and_the_table(tmp_path, monkeypatch):
    path = tmp_path / "warehouse.db"
    sqlite3.connect(path).close()
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE", json.dumps(
        {"conn_type": "sqlite", "host": str(path), "extra": {"mode": "ro"}}))
    store = OutcomeStore(SqliteHook(sqlite_conn_id="model_factory_warehouse"))
    with pytest.raises(WarehouseError) as info:
        store.replace_run("run-a", [])
    assert str(info.value) == (f"sqlite connection 'model_factory_warehouse': could not create table "
                               f"{OUTCOMES_TABLE}: OperationalError: attempt to write a readonly database")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
