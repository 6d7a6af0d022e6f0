"""
### model_monitoring — the deployed model's decisions against their delayed ground truth

Hourly (UTC, `catchup=False`): the run at each full hour monitors the hour that just ended, its
data interval `[start, end)`.

1. **serving_model** — the deployment now serving (latest `model_deployments` record). None
   yet: the run logs "no deployment is serving: nothing to monitor" and skips the rest (it
   succeeds; there is nothing to monitor).
2. **responses_ingested** — waits (a sensor in reschedule mode: no worker slot while it waits;
   up to 3 hours) until the response feed's watermark (`response_feed`, written last by
   `customer_interactions` or a NiFi flow for each window it has delivered) reaches `end`, so
   conversions not yet delivered are never taken for non-conversions.
3. **monitor** — reads the cohorts that can still change (predictions decided in `[start, end)`
   and the earlier hourly cohorts whose response window, `responses.window_minutes` of
   `config/closed_loop.yaml`, had not closed at the previous run) from `prediction_log`, with
   their `attached` responses from `customer_responses` received before `end`; computes per
   cohort and model version, as of `end`: volume, score distribution, offer mix, label
   completeness, realised AUC / log loss / calibration / conversion on matured labels
   (`final` or `immature`), CBPE estimates from the scores (`estimate`), the policy value of the
   model's decisions (IPW, SNIPW, DR with intervals), each blast offer's and the exploration
   policy's, the differences policy − best blast and policy − exploration, and feature drift
   of the customers against the model's training snapshot (downloaded once per snapshot hash
   from the CML project and cached). Rows replace the partition `as_of_window = start` of
   `model_monitoring`: a rerun never duplicates them. Then the alert decisions
   (`factory_tasks.loop.alerts`).
4. **post_aggregate_metrics** — each cohort's values through the CML model metrics API
   (`track_aggregate_metrics` for the serving deployment's CRN). A failure is logged as an
   error and reported in the task's return value; the warehouse rows are already written.
5. **retrain_or_not** → **trigger_retrain** — when alerts were raised and
   `monitoring.retrain_on_alert`, a `TriggerDagRunOperator` starts `model_factory` with conf
   `{"include_interactions": true, "reason": "<alert ids>"}` and run id
   `monitoring__<as_of_window>` (a rerun finds it and does not trigger again).
6. **record_alerts** — writes the alerts to the append-only `model_alerts` after the trigger,
   each with the triggered run's id in `retrain_run_id` (empty when no retrain was asked for);
   ids already present are skipped (ids are `<as_of_window>/<model_version>/<kind>/<dimension>`).

Connections: `model_factory_warehouse`, `cml_default`. Settings: `config/closed_loop.yaml`
(param `loop_config_path`); economics from the grid (param `grid_path`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, Param, PokeReturnValue, TriggerRule, dag, get_current_context, task
from connections import CML_CONN_ID, warehouse_hook
from task_errors import no_retry_on_bad_input

RETRAIN_DAG_ID = "model_factory"


def _resolve(path: str):
    from pathlib import Path

    from factory_tasks.core.settings import REPO_ROOT

    return Path(path) if Path(path).is_absolute() else REPO_ROOT / path


def _window():
    from factory_tasks.loop.config import load_loop_config
    from factory_tasks.loop.monitoring import MonitoringWindow

    context = get_current_context()
    config = load_loop_config(_resolve(context["params"]["loop_config_path"]))
    window = MonitoringWindow.from_interval(context["data_interval_start"], context["data_interval_end"],
                                            config.responses.window_minutes)
    return config, window


@dag(
    dag_id="model_monitoring",
    # at each hour, for the hour that just ended: data interval [hour - 1h, hour)
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC", interval=timedelta(hours=1)),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["model-factory", "monitoring", "cml"],
    doc_md=__doc__,
    default_args={"owner": "model-factory", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "loop_config_path": Param("config/closed_loop.yaml", type="string",
                                  description="Closed-loop settings, relative to the repository root or absolute."),
        "grid_path": Param("config/grid.yaml", type="string", description="Grid file whose economics price the rewards."),
    },
)
def model_monitoring():
    @task.short_circuit
    def serving_model() -> dict | None:
        """The deployment now serving; none skips the run (nothing to monitor)."""
        import logging

        from factory_tasks.warehouse.deployments import serving

        with no_retry_on_bad_input():
            record = serving(warehouse_hook())
        if record is None:
            logging.getLogger(__name__).info("no deployment is serving: nothing to monitor")
            return None
        return {"model_version": record.model_version, "deployment_crn": record.deployment_crn,
                "data_snapshot_hash": record.data_snapshot_hash, "metadata_path": record.metadata_path}

    @task.sensor(poke_interval=120, timeout=3 * 3600, mode="reschedule")
    def responses_ingested(deployment: dict) -> PokeReturnValue:
        """True once the response feed's watermark reaches the window's end."""
        import logging

        from factory_tasks.loop.monitoring import iso, responses_ingested_through

        _, window = _window()
        through = responses_ingested_through(warehouse_hook())
        ready = through is not None and through >= window.end_ms
        logging.getLogger(__name__).info(
            "response feed ingested through %s; monitoring needs %s: %s", iso(through) if through else "nothing yet",
            iso(window.end_ms), "ready" if ready else "waiting for customer_interactions (or the NiFi flow)")
        return PokeReturnValue(is_done=ready, xcom_value=through)

    @task
    def monitor(deployment: dict) -> dict:
        """Cohorts → model_monitoring rows (partition as_of_window) and the alert decisions."""
        import logging

        from cml_provider.errors import CmlNotFoundError
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.core.settings import artifacts_dir
        from factory_tasks.loop.alerts import monitor_window
        from factory_tasks.loop.monitoring import grid_economics, reference_frame, snapshot_path

        config, window = _window()
        cml = CmlHook(cml_conn_id=CML_CONN_ID)
        digest = deployment["data_snapshot_hash"]

        def fetch() -> bytes:
            path = snapshot_path(cml.download_file(deployment["metadata_path"]), digest)
            return cml.download_file(path)

        with no_retry_on_bad_input():
            try:
                references = {deployment["model_version"]: reference_frame(digest, fetch, artifacts_dir() / "monitoring")}
            except CmlNotFoundError as exc:
                logging.getLogger(__name__).warning(
                    "the training snapshot of %s is not in the CML project (%s): no feature drift this run",
                    deployment["model_version"], exc)
                references = {}
            economics = grid_economics(_resolve(get_current_context()["params"]["grid_path"]))
            return monitor_window(warehouse_hook(), window, config, economics, references)

    @task
    def post_aggregate_metrics(deployment: dict, summary: dict) -> dict:
        """Each cohort's dimensionless values to CML's model metrics store; failures are reported."""
        import logging

        from factory_tasks.loop.monitoring import read_rows

        log = logging.getLogger(__name__)
        _, window = _window()
        rows = read_rows(warehouse_hook(), window.as_of_window)
        if not deployment["deployment_crn"] or rows.empty:
            return {"posted": 0, "error": None if not rows.empty else "no rows"}
        posted = 0
        try:
            from cml_provider.hooks.model_metrics import CmlModelMetricsHook

            metrics_hook = CmlModelMetricsHook(cml_conn_id=CML_CONN_ID)
            plain = rows[(rows["dimension"] == "") & rows["value"].notna()]
            for (cohort_start, cohort_end, version), group in plain.groupby(
                    ["cohort_start", "cohort_end", "model_version"], sort=True):
                from factory_tasks.loop.monitoring import epoch_ms

                metrics = {"model_version": version, "as_of_ms": int(window.end_ms),
                           **{m: float(v) for m, v in zip(group["metric"], group["value"])}}
                metrics_hook.track_aggregate_metrics(metrics, epoch_ms(cohort_start), epoch_ms(cohort_end),
                                                     deployment["deployment_crn"])
                posted += 1
        except Exception as exc:  # the warehouse rows are written; this must not lose them
            log.error("could not post the aggregate metrics to CML (%d of the cohorts posted): %s: %s",
                      posted, type(exc).__name__, exc)
            return {"posted": posted, "error": f"{type(exc).__name__}: {exc}"}
        log.info("posted the aggregate metrics of %d cohort(s) to %s", posted, deployment["deployment_crn"])
        return {"posted": posted, "error": None}

    @task.branch
    def retrain_or_not(summary: dict) -> str:
        """Trigger a retrain when alerts were raised and retraining on alerts is on."""
        config, _ = _window()
        return "trigger_retrain" if summary["alert_ids"] and config.monitoring.retrain_on_alert else "record_alerts"

    trigger_retrain = TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id=RETRAIN_DAG_ID,
        trigger_run_id="monitoring__{{ data_interval_start | ts_nodash }}",
        conf={"include_interactions": True,
              "reason": "{{ ti.xcom_pull(task_ids='monitor')['alert_ids'] | join(', ') }}"},
        skip_when_already_exists=True,
        openlineage_inject_parent_info=False,
        retries=0,
    )

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def record_alerts() -> list[str]:
        """The run's alerts into model_alerts, with the retrain's run id."""
        from factory_tasks.loop.alerts import alerts_of_run, record_alerts

        config, window = _window()
        ti = get_current_context()["ti"]
        run_id = ti.xcom_pull(task_ids="trigger_retrain", key="trigger_run_id", default=None)
        hook = warehouse_hook()
        return record_alerts(hook, alerts_of_run(hook, window, config), retrain_run_id=run_id)

    deployment = serving_model()
    summary = monitor(deployment)
    responses_ingested(deployment) >> summary
    post_aggregate_metrics(deployment, summary)
    branch = retrain_or_not(summary)
    branch >> [trigger_retrain, record_alerts_task := record_alerts()]
    trigger_retrain >> record_alerts_task


model_monitoring()
