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
5. **retrain_or_not** → **trigger_retrain** — when alerts were raised,
   `monitoring.retrain_on_alert` and no retrain answers them yet (one that alerts on the same
   model version asked for within `monitoring.retrain_cooldown_minutes`, default 6 hours, does
   unless that `model_factory` run failed: the alerts name it), a `TriggerDagRunOperator`
   starts `model_factory` with conf
   `{"grid_path": <this run's grid_path>, "include_interactions": true, "reason": "<alert ids>", "review_window_minutes":
   <monitoring.retrain_review_window_minutes>}` and run id `monitoring__<as_of_window>` (a
   rerun finds it and does not trigger again); otherwise `trigger_retrain` is skipped.
6. **record_alerts** — writes the alerts to the append-only `model_alerts` after the trigger,
   each with the id of the retrain that answers it in `retrain_run_id` (the triggered run, or
   the earlier one within its cooldown; empty when none does);
   ids already present are skipped (ids are `<as_of_window>/<model_version>/<kind>/<dimension>`).
7. **A/B test** — while a test runs (a `deploy_best_model` with `challenger_share` > 0 serving),
   `monitor` also reads every decision since the test began and writes each arm's policy value
   and the difference challenger − champion with its always-valid interval (`ab_*` rows;
   docs/ab-test.md). A verdict (`ab_test` alert; never a retrain) makes **conclude_test** →
   **trigger_verdict** start `deploy_best_model` with `model_version` = the winner and
   `test_verdict` (`promote`: the challenger alone; `end`, also when `ab_test.max_decisions`
   pass without a verdict: the champion alone), run id `ab_test__<hash of the test id and its deployment>`, once
   per test. `ab_test.conclude: false` records the verdict only.

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
DEPLOY_DAG_ID = "deploy_best_model"


def _window():
    """The run's closed-loop settings and monitoring window; an invalid settings file fails the
    task (the sensor included) at once, without retries."""
    from factory_tasks.stages.monitoring import monitoring_window

    context = get_current_context()
    with no_retry_on_bad_input():
        return monitoring_window(context["params"]["loop_config_path"], context["data_interval_start"],
                                 context["data_interval_end"])


def _retrain_failed(run_id: str) -> bool:
    """Whether a retrain run failed or is gone (a failed retrain answers no alerts): the DAG
    run's state through the task's execution API."""
    ti = get_current_context()["ti"]
    return ti.get_dr_count(dag_id=RETRAIN_DAG_ID, run_ids=[run_id], states=["queued", "running", "success"]) == 0


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
        "loop_config_path": Param("config/closed_loop.yaml", type="string", description=(
            "Closed-loop settings in a config folder (config/, or $MODEL_FACTORY_CONFIG_DIRS), "
            "relative to the repository root or absolute.")),
        "grid_path": Param("config/grid.yaml", type="string", description=(
            "Grid file whose economics price the rewards, in a config folder like loop_config_path.")),
    },
)
def model_monitoring():
    @task.short_circuit
    def serving_model() -> dict | None:
        """The deployment now serving; none skips the run (nothing to monitor)."""
        import logging

        from factory_tasks.stages.monitoring import serving_model

        with no_retry_on_bad_input():
            deployment = serving_model(warehouse_hook())
        if deployment is None:
            logging.getLogger(__name__).info("no deployment is serving: nothing to monitor")
        return deployment

    @task.sensor(poke_interval=120, timeout=3 * 3600, mode="reschedule")
    def responses_ingested(deployment: dict) -> PokeReturnValue:
        """True once the response feed's watermark reaches the window's end."""
        from factory_tasks.stages.monitoring import responses_ingested

        _, window = _window()
        through, ready = responses_ingested(warehouse_hook(), window)
        return PokeReturnValue(is_done=ready, xcom_value=through)

    @task
    def monitor(deployment: dict) -> dict:
        """Cohorts → model_monitoring rows (partition as_of_window) and the alert decisions."""
        import logging

        from cml_provider.errors import CmlNotFoundError
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.stages.monitoring import monitor, reference_frames

        config, window = _window()
        cml = CmlHook(cml_conn_id=CML_CONN_ID)
        with no_retry_on_bad_input():
            try:
                references = reference_frames(cml, deployment)
            except CmlNotFoundError as exc:
                logging.getLogger(__name__).warning(
                    "the training snapshot of %s is not in the CML project (%s): no feature drift this run",
                    deployment["model_version"], exc)
                references = {}
            return monitor(warehouse_hook(), window, config, get_current_context()["params"]["grid_path"],
                           references, deployment)

    @task
    def post_aggregate_metrics(deployment: dict, summary: dict) -> dict:
        """Each cohort's dimensionless values to CML's model metrics store; failures are reported."""
        from cml_provider.hooks.model_metrics import CmlModelMetricsHook

        from factory_tasks.stages.monitoring import post_aggregate_metrics

        _, window = _window()
        return post_aggregate_metrics(warehouse_hook(), window, deployment["deployment_crn"],
                                      CmlModelMetricsHook(cml_conn_id=CML_CONN_ID))

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def retrain_or_not(summary: dict) -> dict | None:
        """The retrain's conf when alerts were raised, retraining on alerts is on and no earlier
        retrain answers them; else None, which skips the trigger."""
        from factory_tasks.stages.monitoring import retrain_due

        config, window = _window()
        params = get_current_context()["params"]
        return retrain_due(warehouse_hook(), window, summary, config, params["grid_path"], params["loop_config_path"],
                           retrain_failed=_retrain_failed)

    deployment = serving_model()
    summary = monitor(deployment)
    responses_ingested(deployment) >> summary
    post_aggregate_metrics(deployment, summary)
    conf = retrain_or_not(summary)
    trigger_retrain = TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id=RETRAIN_DAG_ID,
        trigger_run_id="monitoring__{{ data_interval_start | ts_nodash }}",
        conf=conf,  # the task's dict, numbers kept numbers (a template would render strings)
        skip_when_already_exists=True,
        openlineage_inject_parent_info=False,
        retries=0,
    )

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def record_alerts() -> list[str]:
        """The run's alerts into model_alerts, with the retrain's run id."""
        from factory_tasks.stages.monitoring import record_run_alerts

        config, window = _window()
        ti = get_current_context()["ti"]
        run_id = ti.xcom_pull(task_ids="trigger_retrain", key="trigger_run_id", default=None)
        return record_run_alerts(warehouse_hook(), window, config, run_id, retrain_failed=_retrain_failed)

    alerts_recorded = record_alerts()
    [summary, trigger_retrain] >> alerts_recorded

    @task
    def conclude_test(deployment: dict, summary: dict) -> list[dict]:
        """The redeploy that carries out an A/B test's verdict (none: no test, or no verdict yet)."""
        from factory_tasks.stages.monitoring import verdict_run

        config, _ = _window()
        return verdict_run(summary, config, deployment)

    verdict = conclude_test(deployment, summary)
    alerts_recorded >> verdict  # the verdict's alert is recorded before the redeploy is asked for
    TriggerDagRunOperator.partial(
        task_id="trigger_verdict", trigger_dag_id=DEPLOY_DAG_ID, logical_date=None,
        skip_when_already_exists=True, wait_for_completion=False, openlineage_inject_parent_info=False, retries=0,
    ).expand_kwargs(verdict)


model_monitoring()
