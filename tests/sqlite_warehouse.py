"""The DB-API surface the warehouse engines use (``conn_type`` and ``get_conn``, like Airflow's
``SqliteHook``), on a real SQLite file, for tests that need no Airflow connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class SqliteWarehouse:
    conn_type = "sqlite"

    def __init__(self, path: str | Path):
        self.path = str(path)

    def get_conn(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)
