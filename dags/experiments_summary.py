"""
### Experiments summary

Rewrites `experiments_summary.csv` (the file the experiments dashboard reads) from the
warehouse table `experiment_outcomes`:

* every 30 minutes (UTC), and
* whenever `model_factory` records new outcomes (the `experiment_outcomes` asset).

The warehouse is the Airflow connection `model_factory_warehouse` (`factory_tasks.core.names.WAREHOUSE_CONN_ID`;
SQLite or HiveServer2).
The file lives in object storage at `factory_tasks.core.settings.summary_location()`:
`$MODEL_FACTORY_OBJECT_STORE/experiments_summary/experiments_summary.csv` (default
`file://<repo>/var/artifacts/...`; in production e.g. `s3://bucket/model-factory/...`). It is
written whole, so the dashboard never sees a half-written summary: one object PUT on a remote
store, temporary file + fsync + rename on a `file://` store.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task
from assets import EXPERIMENT_OUTCOMES

from factory_tasks.core.names import WAREHOUSE_CONN_ID


@dag(
    dag_id="experiments_summary",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("*/30 * * * *", timezone="UTC"),
        assets=[EXPERIMENT_OUTCOMES],
    ),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["model_factory", "summary"],
    default_args={
        "owner": "model_factory",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
    },
)
def experiments_summary():
    @task
    def refresh_experiments_summary() -> dict:
        """Read every outcome row through the warehouse hook and rewrite the summary object."""
        import logging

        from connections import warehouse_hook

        from factory_tasks.stages.summary import refresh_experiments_summary

        summary = refresh_experiments_summary(warehouse_hook())
        logging.getLogger(__name__).info(
            "wrote %d experiment rows to %s (connection %s)", summary["rows"], summary["location"], WAREHOUSE_CONN_ID)
        return summary

    refresh_experiments_summary()


experiments_summary()
