"""The warehouse the dashboard records promotions in: the same Airflow connection the DAGs use.

``model_factory_warehouse`` (``dags/connections.py``), resolved the way Airflow resolves it
(``AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE``, a secrets backend, ...): SQLite on the embedded
default, HiveServer2 in production. Switching is a connection change, never a code change.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from factory_tasks.core.names import WAREHOUSE_CONN_ID
from factory_tasks.warehouse.sql import WarehouseError


class WarehouseUnavailable(RuntimeError):
    """The warehouse connection cannot be resolved (not defined, unsupported type ...)."""


#: what reading or writing the warehouse can raise, shown in the page as a message
WAREHOUSE_ERRORS: tuple[type[BaseException], ...] = (WarehouseUnavailable, WarehouseError, sqlite3.Error, OSError)


@functools.lru_cache(maxsize=1)
def warehouse_hook() -> Any:
    """The DB-API hook behind ``model_factory_warehouse`` (imports Airflow on first use)."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()
    except Exception as exc:  # Airflow raises its own not-found / hook errors: name the connection
        raise WarehouseUnavailable(
            f"the warehouse connection {WAREHOUSE_CONN_ID!r} is not usable "
            f"({type(exc).__name__}: {exc}); define it, e.g. AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"
        ) from exc
