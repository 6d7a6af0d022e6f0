"""The experiment pool and a failed experiment under the real scheduler (the session's stack of
``make up``), counted from what the workspace recorded, not from what Airflow says it did.

Six experiments with ``max_parallel: 2``, one of them failing at fit: ``plan_experiments``
sizes the pool ``model_factory_experiments`` to 2 (it held 4 before), never more than 2 of the
run's CML runs are in flight at once (each from its creation to its end, as the workspace
recorded them) and 2 are at some point; the failing point's run ends ``ENGINE_FAILED``, its
``run_experiment`` instance fails naming the job's own error, the five others succeed, each
experiment had exactly one CML run, and the factory run ends and records all six rows — in
minutes, not at the waits' 7,800 s deadline (a trigger that asked the triggerer for an XCom it
cannot answer waited that long)."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime

import pytest

from benchmarks.grid_scale import max_concurrency
from tests.e2e.test_local_stack_up import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(720)]

DAG_ID = "model_factory"
POOL = "model_factory_experiments"
MAX_PARALLEL = 2
GRID = f"""
cv: {{folds: 2, random_state: 0}}
metrics: [roc_auc, log_loss]
ranking_metric: roc_auc
max_parallel: {MAX_PARALLEL}
economics:
  conversion_value: 100.0
  offer_costs: {{Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}}
data: {{table: historical_customer_interactions}}
families:
  broken_boosting:    # a valid grid, but a validation set larger than the data: fails at fit, alone
    estimator: HistGradientBoostingClassifier
    resources: {{cpu: 1, memory_gb: 1}}
    params: {{max_iter: [5], early_stopping: [true], validation_fraction: [100000]}}
  logistic_regression:
    estimator: LogisticRegression
    resources: {{cpu: 1, memory_gb: 1}}
    params: {{C: [0.01, 0.1, 1.0, 3.0, 10.0]}}
"""
EXPERIMENTS = 6
RUN_DEADLINE_S = 420


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_the_pool_caps_experiments_in_flight_and_a_failed_one_fails_alone(shared_stack: Stack):
    from stack.deploy import find_deploy_run
    from stack.run import experiment_runs

    stack = shared_stack.running()
    api = stack.api
    grid = stack.paths.config / "pool_grid.yaml"
    grid.write_text(GRID)
    stack.pool_hook().size_pool(POOL, 4)  # as make up made it: the run must resize it
    began = time.monotonic()
    run_id = api.trigger(DAG_ID, {"grid_path": str(grid)})["dag_run_id"]

    final = api.wait_for_run(DAG_ID, run_id, timeout_s=RUN_DEADLINE_S)
    tis = api.task_instances(DAG_ID, run_id)
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    assert states[("plan_experiments", -1)] == "success", states
    assert states[("record_outcomes", -1)] == "success", states
    experiments = {key: state for key, state in states.items() if key[0] == "run_experiment"}
    assert sorted(experiments.values()) == ["failed"] + ["success"] * (EXPERIMENTS - 1), states
    assert final["state"] == "success", final  # a failed experiment is an outcome, not the run's failure

    pool = api.pool(POOL)
    assert (pool["slots"], pool["include_deferred"]) == (MAX_PARALLEL, True), pool

    # the workspace's records: one run per experiment, never more than max_parallel in flight
    runs = experiment_runs(stack.cml_hook(), run_id)
    assert len(runs) == EXPERIMENTS, [(r.id, r.status, r.environment) for r in runs]
    assert all(r.finished_at for r in runs), [(r.id, r.status) for r in runs]
    spans = [(_epoch(r.created_at), _epoch(r.finished_at)) for r in runs]
    timeline = sorted((round(a - min(s for s, _ in spans), 1), round(b - min(s for s, _ in spans), 1))
                      for a, b in spans)
    assert max_concurrency(spans) == MAX_PARALLEL, timeline
    assert sorted(r.status.value for r in runs) == ["ENGINE_FAILED"] + ["ENGINE_SUCCEEDED"] * (EXPERIMENTS - 1)

    # the failed instance names the job's own error; the outcome table has all six rows
    [failed] = [t for t in tis if t["task_id"] == "run_experiment" and t["state"] == "failed"]
    error = api.task_error(DAG_ID, run_id, "run_experiment", map_index=failed["map_index"],
                           try_number=failed["try_number"])
    assert error and "ENGINE_FAILED" in error and "test_size=100000" in error, error
    with sqlite3.connect(stack.paths.warehouse_db) as db:
        rows = db.execute("SELECT family, status, error FROM experiment_outcomes WHERE factory_run_id = ?",
                          (run_id,)).fetchall()
    assert len(rows) == EXPERIMENTS, rows
    by_status = sorted((family, status) for family, status, _ in rows)
    assert by_status == [("broken_boosting", "failed")] + [("logistic_regression", "succeeded")] * 5, rows
    assert "test_size=100000" in next(e for f, _, e in rows if f == "broken_boosting"), rows

    # its asset event started a deployment that would wait 2 hours for a review: not this test's
    deploy = find_deploy_run(api, run_id)
    api.mark_failed("deploy_best_model", deploy.run_id)
    print(f"the factory run's CML runs (s from the first): {timeline}; test {time.monotonic() - began:.0f}s")
