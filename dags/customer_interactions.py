"""
### customer_interactions — new interactions and their late responses (the NiFi flow's stand-in)

Every hour (UTC), for the run's data interval `[start, end)` (never "now"; `catchup=False`):

1. **Traffic**: `traffic.customers_per_window` simulated customers (seeded from `traffic.seed`
   and the window start: a rerun draws the same customers; with drift enabled, from
   `drift.start` the simulator's drift applies) ask the **deployed** model
   (`model_deployments`' latest record, through the CML model service) for their next best
   offer, `traffic.request_batch` customers per request, and **log what it answered**: the
   DAG draws nothing itself. The deployment's policy decides (champion, or a challenger on a
   sticky share of customers) and explores (a share ε, `MF_EXPLORATION_EPSILON`, set by
   `deploy_best_model`'s param `exploration_epsilon`, gets a uniformly random offer). Each
   decision goes to `prediction_log` with its prediction id (`<request uuid>:<index in the
   request>`), deployment CRN, the deciding **arm** and its model version, the offer made,
   whether it was explored, its **propensity** as the endpoint answered it (1 − ε + ε/3 for
   the arm's greedy pick, ε/3 otherwise), that greedy pick (`model_offer`), the features and
   the deciding model's probability of each offer.
2. **Responses** arriving in the window (from this or earlier windows' decisions, recomputed
   from their seeds and logged rows) go to `customer_responses`: `attached` (and sent to CML
   with `track_delayed_metrics`), or counted as `duplicate`, `unknown` or `expired`.
3. **Matured** decisions (response window `responses.window_minutes` closed in this window)
   go to `customer_interactions` in the training schema, with their conversion and propensity:
   what `model_factory` trains on with `include_interactions`.
4. **Watermark**: last, one `response_feed` row for the window (its end, the responses
   written): every response received before it is in the tables. `model_monitoring` waits for
   it before it treats labels as final.

Each table is replaced per partition `window_start`, at the end, after every endpoint call
succeeded: a rerun or retry never duplicates rows, a failing endpoint leaves nothing of the
window. A window decided before keeps its decisions on a rerun. No model serving → the task
fails at once, telling you to run `deploy_best_model` first.

Settings: `config/closed_loop.yaml` (param `loop_config_path`; param `drift_enabled` overrides
`drift.enabled`).

**Plugging in the real flow.** This DAG plays the part of the original system's NiFi flow and
Kudu table. A real flow would post customers to the same model service (connection
`cml_default`, extra `model_service_url`) and land its decisions, responses and matured rows in
the same tables (and the `response_feed` watermark once a window is delivered) through the warehouse connection `model_factory_warehouse` (SQLite, Hive;
a Kudu table behind Impala would be one more dialect module beside `factory_tasks/warehouse/hive.py`,
chosen by that connection's type). Monitoring and training read the tables, not this DAG, so
swapping the producer is a connection and scheduling change, not a code change downstream.
Delayed metrics go through `CmlModelMetricsHook`, which answers on the local workspace; on a
real CML workspace those calls exist only as Python inside CML (run them in a CML job).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task
from connections import CML_CONN_ID, warehouse_hook
from task_errors import no_retry_on_bad_input

from factory_tasks.core.names import WAREHOUSE_CONN_ID


@dag(
    dag_id="customer_interactions",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["model-factory", "closed-loop", "cml"],
    doc_md=__doc__,
    default_args={"owner": "model-factory", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "loop_config_path": Param("config/closed_loop.yaml", type="string",
                             description=("The closed-loop settings in a config folder (config/, or "
                                          "$MODEL_FACTORY_CONFIG_DIRS), relative to the repository or absolute.")),
        "drift_enabled": Param(None, type=["null", "boolean"],
                               description="Override drift.enabled of the settings file (empty: the file's)."),
    },
)
def customer_interactions():
    @task
    def simulate_window() -> dict:
        """Decide, deliver and mature this run's window; replace its partitions of the three tables."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException
        from cml_provider.hooks.cml import CmlHook
        from cml_provider.hooks.model_metrics import CmlModelMetricsHook, CmlModelMetricsUnavailable

        from factory_tasks.stages.interactions import LOOP_INPUT_ERRORS, load_loop_settings, simulate_window

        context = get_current_context()
        params = context["params"]
        warehouse = warehouse_hook()
        cml = CmlHook(cml_conn_id=CML_CONN_ID)
        metrics = CmlModelMetricsHook(cml_conn_id=CML_CONN_ID)
        try:
            with no_retry_on_bad_input():
                config = load_loop_settings(params["loop_config_path"])
                metrics.require_local_workspace("track_delayed_metrics")  # before asking the model
                summary = simulate_window(warehouse, cml, config, context["data_interval_start"],
                                          context["data_interval_end"], metrics.track_delayed_metrics,
                                          drift_enabled=params["drift_enabled"])
        except (*LOOP_INPUT_ERRORS, CmlModelMetricsUnavailable) as exc:
            raise AirflowFailException(str(exc)) from exc
        logging.getLogger(__name__).info("%s\n  (warehouse %s, CML %s)", summary.describe(),
                                         WAREHOUSE_CONN_ID, CML_CONN_ID)
        return summary.as_dict()

    simulate_window()


customer_interactions()
