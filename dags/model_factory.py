"""
### model_factory — the experiment fan-out

Validates `config/grid.yaml`, snapshots the training table into a content-addressed Parquet
file in the CML project, fans the grid out into one CML job run per experiment, waits for
them on the triggerer, collects each run's `result.json` from the project files, and records
one row per experiment in the warehouse table `experiment_outcomes`.

* Long experiments (forests, boosting) are submitted first (`submit_long_experiment`), the
  short ones after (`submit_short_experiment`), so that short ones fill the cores at the end.
* A failed experiment fails only its own `wait_for_*_experiment` instance; it is still recorded
  (status `failed`, with its error) and the others carry on. Under a scheduler those instances
  wait in the triggerer from the start (`start_from_trigger`) and never take a worker.
* Reruns never duplicate rows: experiment ids hash (estimator, params, CV, metrics, economics,
  data snapshot), the record step replaces this run's rows, and a succeeded result of an
  identical experiment is reused instead of being computed again — only if the same code (a hash
  of its content) and the same scikit-learn, numpy, pandas and skops computed it (param
  `reuse_results`). The leaderboard's `run_reason` says why each experiment ran or was reused.
* Tasks hand each other only small XCom values and project files (the plan, the collected
  outcomes), never a worker's local path. An invalid grid or training table fails at once,
  without retries.

* `include_interactions` trains on the history plus the matured rows of the grid's
  `data.interactions_table` (`customer_interactions`), each weighted in the off-policy metrics
  by the propensity with which its offer was logged. The monitoring DAG triggers a retrain on
  fresh data with the conf `{"include_interactions": true}`. Off (the default), the snapshot is
  the history's, byte for byte, so identical experiments are still reused.

Params: `grid_path`, `max_parallel` (overrides the grid's cap), `reuse_results`, `include_interactions`.
Connections: `model_factory_warehouse` (SQLite or HiveServer2), `cml_default` (CML API v2).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from assets import EXPERIMENT_OUTCOMES
from cml_provider.operators.cml import CmlJobRunOperator
from cml_provider.sensors.cml import CmlJobRunSensor
from connections import CML_CONN_ID, warehouse_hook
from planned_runs import CML_POLL_INTERVAL_S, sensor_kwargs, submit_kwargs
from task_errors import no_retry_on_bad_input

from factory_tasks.core.limits import MAX_PARALLEL

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
    },
)
def model_factory():
    @task
    def validate_grid() -> dict:
        """Fail before anything is submitted if the grid is invalid."""
        from factory_tasks.stages.model_factory import validate_grid_file

        params = get_current_context()["params"]
        with no_retry_on_bad_input():
            return validate_grid_file(params["grid_path"], params["max_parallel"])

    @task
    def snapshot_training_data(grid: dict) -> dict:
        """The history table, plus the matured interactions when `include_interactions` is on."""
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.core.contracts import GridRef
        from factory_tasks.stages.model_factory import snapshot_to_project

        include = get_current_context()["params"]["include_interactions"]
        with no_retry_on_bad_input():
            ref = GridRef.from_data(grid, "the validate_grid task's output")
            return snapshot_to_project(warehouse_hook(), CmlHook(cml_conn_id=CML_CONN_ID), ref.table,
                                       interactions_table=ref.interactions_table if include else None)

    @task
    def plan_experiments(grid: dict, snapshot: dict) -> dict[str, list[dict]]:
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.stages.model_factory import plan_experiments

        context = get_current_context()
        with no_retry_on_bad_input():
            return plan_experiments(
                grid,
                snapshot,
                CmlHook(cml_conn_id=CML_CONN_ID),
                factory_run_id=context["run_id"],
                job_timeout_s=EXPERIMENT_TIMEOUT_S,
                reuse_results=context["params"]["reuse_results"],
            )

    @task
    def wave(plan: dict, name: str) -> list[dict]:
        """One wave of the plan, as a list to map over (mapping needs a task's return value)."""
        return plan[name]

    grid = validate_grid()
    plan = plan_experiments(grid, snapshot_training_data(grid))
    long_wave = wave.override(task_id="long_experiments")(plan, "long")
    short_wave = wave.override(task_id="short_experiments")(plan, "short")

    def submit(task_id: str, planned, **options):
        # The plan created the jobs: each request names its project, job and the jobs counted
        # for the cap, so a submission looks nothing up.
        return CmlJobRunOperator.partial(
            task_id=task_id,
            cml_conn_id=CML_CONN_ID,
            capacity_poll_interval=CML_POLL_INTERVAL_S,
            **options,
        ).expand_kwargs(planned.map(submit_kwargs))

    submitted_long = submit("submit_long_experiment", long_wave)
    # after every long submission, whatever became of it (ALL_DONE)
    submitted_short = submit("submit_short_experiment", short_wave, trigger_rule=TriggerRule.ALL_DONE)
    submitted_long >> submitted_short

    def wait(task_id: str, submitted, planned):
        # Under a scheduler each instance waits in the triggerer from the start, never on a
        # worker (it reads its run from the submit's XCom); `airflow dags test` runs it as an
        # ordinary deferrable sensor with the mapped arguments.
        return CmlJobRunSensor.partial(
            task_id=task_id,
            cml_conn_id=CML_CONN_ID,
            deferrable=True,
            poll_interval=CML_POLL_INTERVAL_S,
            timeout=WAIT_TIMEOUT_S,
            retries=0,  # a finished run does not change its mind; its failure is the outcome
            trigger_rule=TriggerRule.NONE_FAILED,  # a skipped upstream (an empty wave) is no reason to skip
            **CmlJobRunSensor.start_in_triggerer(
                run_task_id=submitted.task_id,
                result_files_task_id=planned.operator.task_id,
                cml_conn_id=CML_CONN_ID,
                poll_interval=CML_POLL_INTERVAL_S,
                timeout=WAIT_TIMEOUT_S,
            ),
        ).expand_kwargs(submitted.output.zip(planned).map(sensor_kwargs))

    waited_long = wait("wait_for_long_experiment", submitted_long, long_wave)
    waited_short = wait("wait_for_short_experiment", submitted_short, short_wave)
    # Waiting starts once everything is submitted (`airflow dags test` runs deferred tasks one
    # at a time, so a sensor that went first would hold up the submissions behind it), through
    # a gate that succeeds whatever the submissions did: a failed short submission must not
    # stop the long runs from being waited for.
    all_submitted = EmptyOperator(task_id="all_submitted", trigger_rule=TriggerRule.ALL_DONE)
    [submitted_long, submitted_short] >> all_submitted >> [waited_long, waited_short]

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def collect_outcomes(grid: dict) -> str:
        """Read every experiment's result file (failed ones included) into the collected outcomes
        (a project file: the record task may run on another worker); returns its project path."""
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.stages.model_factory import collect_outcomes

        context = get_current_context()
        with no_retry_on_bad_input():
            return collect_outcomes(
                grid,
                CmlHook(cml_conn_id=CML_CONN_ID),
                factory_run_id=context["run_id"],
                recorded_at=context["dag_run"].run_after.isoformat(),
            )

    @task(outlets=[EXPERIMENT_OUTCOMES])
    def record_outcomes(outcomes_path: str) -> dict:
        """Replace this factory run's rows in experiment_outcomes (idempotent)."""
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.stages.model_factory import record_outcomes

        context = get_current_context()
        with no_retry_on_bad_input():
            recorded = record_outcomes(warehouse_hook(), CmlHook(cml_conn_id=CML_CONN_ID), outcomes_path,
                                       factory_run_id=context["run_id"])
        # which factory run the event is about (the deploy DAG's review window counts from the
        # event's own timestamp: when the experiments were recorded)
        context["outlet_events"][EXPERIMENT_OUTCOMES].extra = {"factory_run_id": context["run_id"]}
        return recorded

    rows = collect_outcomes(grid)
    [plan, submitted_long, submitted_short, waited_long, waited_short] >> rows
    record_outcomes(rows)


model_factory()
