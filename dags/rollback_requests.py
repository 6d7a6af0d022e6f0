"""
### rollback_requests — carry out the monitoring dashboard's rollback requests

Every 2 minutes (UTC): `pending_rollback` reads `model_rollback_requests` (written by the
monitoring dashboard, a signed-in reviewer asking to serve an earlier model version again) and
`model_deployments`. The newest request is *pending* until a rollback record of its version
deployed at or after it was asked is in `model_deployments` (an older unhandled request is
superseded by it). Nothing pending: `trigger_rollback` is mapped over nothing and skipped.
Otherwise it triggers `deploy_best_model` with `model_version`, `requested_by` and `reason`,
as the run `rollback__<request_id>`: one run per request, so a later run of this DAG, while that
deploy run is still queued or running (or after it failed), does not trigger it again
(`skip_when_already_exists`). A failed rollback run is retried by hand (clear it in Airflow) or
by a new request.

Connection: `model_factory_warehouse`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, dag, task
from connections import warehouse_hook
from task_errors import no_retry_on_bad_input

DEPLOY_DAG_ID = "deploy_best_model"


@dag(
    dag_id="rollback_requests",
    schedule=CronTriggerTimetable("*/2 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["model-factory", "deploy", "rollback"],
    default_args={"owner": "model-factory", "retries": 2, "retry_delay": timedelta(seconds=20)},
)
def rollback_requests():
    @task
    def pending_rollback() -> list[dict]:
        """The deploy run of the pending request (none: nothing to do)."""
        from factory_tasks.stages.rollback import pending_rollback

        with no_retry_on_bad_input():
            return pending_rollback(warehouse_hook())

    TriggerDagRunOperator.partial(
        task_id="trigger_rollback", trigger_dag_id=DEPLOY_DAG_ID, logical_date=None,
        skip_when_already_exists=True, wait_for_completion=False,
    ).expand_kwargs(pending_rollback())


rollback_requests()
