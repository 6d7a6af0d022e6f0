"""Fixtures shared by the unit tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def hook(tmp_path, monkeypatch):
    """A real SQLite warehouse behind Airflow's SqliteHook, as the DAGs get it (by connection id)."""
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE",
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}),
    )
    return SqliteHook(sqlite_conn_id="model_factory_warehouse")
