"""
### model_factory — the experiment fan-out

Three hand-offs, whatever the grid's size:

1. **plan_experiments** validates the grid, snapshots the training table into a
   content-addressed Parquet file in the CML project, plans one CML job run per experiment and
   sizes the pool `model_factory_experiments` to the run's `max_parallel` (through the
   connection `airflow_api`; without it the pool keeps its size). An invalid grid or training
   table fails here at once, without retries.
2. **run_experiment** (one mapped instance per experiment, long ones first) submits its CML
   run, then waits for it in the triggerer. The pool counts deferred instances too
   (`include_deferred`), so at most `max_parallel` experiments are in flight. A retry never
   starts a second run: it finds the run of its earlier try and waits for it again. A failed
   experiment fails only its own instance, without retry, naming the run's error.
3. **record_outcomes** (whatever the experiments did) reads every experiment's `result.json`
   and replaces this run's rows in the warehouse table `experiment_outcomes` (failed ones
   recorded with their error), then emits the asset `experiment_outcomes` with the factory
   run id and `review_window_minutes`.

Reruns never duplicate rows: experiment ids hash (estimator, params, CV, metrics, economics,
data snapshot), and a succeeded result of an identical experiment is reused instead of being
computed again — only if the same code (a hash of its content) and the same scikit-learn,
numpy, pandas and skops computed it (param `reuse_results`). The leaderboard's `run_reason`
says why each experiment ran or was reused.

`include_interactions` trains on the history plus the matured rows of the grid's
`data.interactions_table` (`customer_interactions`), each weighted in the off-policy metrics by
the propensity with which its offer was logged; the monitoring DAG's retrain sets it. Off (the
default), the snapshot is the history's, byte for byte, so identical experiments are reused.

Params: `grid_path`, `max_parallel` (overrides the grid's cap), `reuse_results`,
`include_interactions`, `review_window_minutes` (the review window of the `deploy_best_model`
run this run triggers; empty = that DAG's default), `loop_config_path` (the closed loop's
settings, passed on to that run: set by `model_monitoring`'s retrain), `challenger_share` (that run's:
above 0, a challenger the gate lets through starts an A/B test; set by the retrain from the loop's
`monitoring.retrain_challenger_share`).
Connections: `model_factory_warehouse` (SQLite or HiveServer2), `cml_default` (CML API v2),
`airflow_api` (optional).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from assets import EXPERIMENT_OUTCOMES
from cml_provider.operators.cml import CmlJobRunOperator
from connections import AIRFLOW_API_CONN_ID, CML_CONN_ID, warehouse_hook
from planned_runs import CML_POLL_INTERVAL_S, CML_WAIT_BEFORE_DEFER_S
from task_errors import no_retry_on_bad_input

from factory_tasks.core.limits import MAX_CHALLENGER_SHARE, MAX_PARALLEL, MAX_REVIEW_WINDOW_MINUTES
from factory_tasks.core.names import EXPERIMENT_POOL

EXPERIMENT_TIMEOUT_S = 2 * 60 * 60
WAIT_TIMEOUT_S = EXPERIMENT_TIMEOUT_S + 600  # the run's own timeout, then ten minutes' grace


@dag(
    dag_id="model_factory",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["model-factory", "experiments", "cml"],
    doc_md=__doc__,
    default_args={"owner": "model-factory", "retries": 2, "retry_delay": timedelta(seconds=20)},
    params={
        "grid_path": Param("config/grid.yaml", type="string", description=(
            "Grid file in a config folder (config/, or $MODEL_FACTORY_CONFIG_DIRS), relative to the repository root or absolute.")),
        "max_parallel": Param(None, type=["null", "integer"], minimum=1, maximum=MAX_PARALLEL,
                              description="Experiments running at once; empty = the grid's max_parallel."),
        "reuse_results": Param(True, type="boolean", description="Reuse succeeded results of identical experiments."),
        "include_interactions": Param(False, type="boolean", description=(
            "Train on history plus the matured rows of customer_interactions (the grid's data.interactions_table).")),
        "review_window_minutes": Param(None, type=["null", "number"], minimum=0, maximum=MAX_REVIEW_WINDOW_MINUTES,
                                       description=("Review window of the deploy_best_model run this run triggers; "
                                                    "empty = deploy_best_model's default.")),
        "loop_config_path": Param(None, type=["null", "string"], description=(
            "The closed loop's settings whose interactions this run trains on (set by model_monitoring's retrain); "
            "passed on to the deploy_best_model run, whose shadow evaluation needs their response window.")),
        "challenger_share": Param(None, type=["null", "number"], minimum=0, maximum=MAX_CHALLENGER_SHARE,
                                  description=("The challenger_share of the deploy_best_model run this run triggers "
                                               "(above 0: a gated challenger starts an A/B test beside the champion); "
                                               "empty = deploy_best_model's default.")),
    },
)
def model_factory():
    @task
    def plan_experiments() -> list[dict]:
        """Validate the grid, snapshot the training data, plan, size the pool; the kwargs of
        each run_experiment instance, long experiments first."""
        from cml_provider.hooks.airflow_pool import AirflowPoolHook
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.stages.model_factory import plan_experiments, snapshot_to_project, validate_grid_file

        context = get_current_context()
        params = context["params"]
        cml = CmlHook(cml_conn_id=CML_CONN_ID)
        with no_retry_on_bad_input():
            grid = validate_grid_file(params["grid_path"], params["max_parallel"])
            AirflowPoolHook(airflow_conn_id=AIRFLOW_API_CONN_ID).size_pool(
                EXPERIMENT_POOL, grid["max_parallel"],
                description="model_factory's experiments in flight, sized by each run's max_parallel")
            interactions = grid["interactions_table"] if params["include_interactions"] else None
            snapshot = snapshot_to_project(warehouse_hook(), cml, grid["table"], interactions_table=interactions)
            return plan_experiments(grid, snapshot, cml, factory_run_id=context["run_id"],
                                    job_timeout_s=EXPERIMENT_TIMEOUT_S, reuse_results=params["reuse_results"])

    planned = plan_experiments()
    experiments = CmlJobRunOperator.partial(
        task_id="run_experiment",
        cml_conn_id=CML_CONN_ID,
        pool=EXPERIMENT_POOL,
        wait_for_completion=True,
        poll_interval=CML_POLL_INTERVAL_S,
        wait_before_defer=CML_WAIT_BEFORE_DEFER_S,
        wait_timeout=WAIT_TIMEOUT_S,
        retries=2,  # an error of the task, not of the run: the retry waits for the same run
        reuse_failed_run=True,  # a retry after the run failed reports that failure, never runs it twice
    ).expand_kwargs(planned)

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[EXPERIMENT_OUTCOMES])
    def record_outcomes() -> dict:
        """Every planned experiment's outcome (failed ones included) replaces this factory
        run's rows in experiment_outcomes (idempotent)."""
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.stages.model_factory import record_outcomes

        context = get_current_context()
        with no_retry_on_bad_input():
            recorded = record_outcomes(warehouse_hook(), CmlHook(cml_conn_id=CML_CONN_ID),
                                       factory_run_id=context["run_id"],
                                       recorded_at=context["dag_run"].run_after.isoformat())
        # the deploy DAG reviews this factory run, in this window (None: its own default),
        # counted from the event's timestamp: when the experiments were recorded
        context["outlet_events"][EXPERIMENT_OUTCOMES].extra = {
            "factory_run_id": context["run_id"],
            "review_window_minutes": context["params"]["review_window_minutes"],
            "loop_config_path": context["params"]["loop_config_path"],
            "challenger_share": context["params"]["challenger_share"],
        }
        return recorded

    experiments >> record_outcomes()


model_factory()
