"""Connection ids the factory's DAGs use. Switching warehouse or workspace is a connection change."""

from __future__ import annotations

from factory_tasks.core.names import WAREHOUSE_CONN_ID

CML_CONN_ID = "cml_default"
#: Airflow's own REST API, where model_factory sizes its experiment pool (optional: without
#: it the pool keeps its size)
AIRFLOW_API_CONN_ID = "airflow_api"


def warehouse_hook():
    """The DB-API hook behind the warehouse connection (SqliteHook, HiveServer2Hook, ...)."""
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()
