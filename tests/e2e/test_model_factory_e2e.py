"""The model_factory DAG end to end under `airflow dags test` (one task at a time, no pool:
what the scheduler adds is tested on make up's stack) against the real local CML workspace
(real HTTP, each experiment a real subprocess) and a real SQLite warehouse."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from stack.env import stack_paths
from stack.local import local_stack

from factory_tasks.loop.history import ensure_training_table
from factory_tasks.warehouse.outcomes import OutcomeStore
from tests.dags.dags_test_cli import dag_run, dags_test

pytestmark = pytest.mark.e2e

SETTINGS = """
cv: {folds: 3, random_state: 0}
metrics: [roc_auc, log_loss, policy_value]
ranking_metric: roc_auc
max_parallel: 2
economics:
  conversion_value: 100.0
  offer_costs: {Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}
data: {table: historical_customer_interactions}
families:
"""
BROKEN_BOOSTING = """
  broken_boosting:    # a valid grid, but a validation set larger than the data: fails at fit, alone
    estimator: HistGradientBoostingClassifier
    resources: {cpu: 1, memory_gb: 1}
    params: {max_iter: [5], early_stopping: [true], validation_fraction: [100000]}
"""
FOREST = """
  forest:
    estimator: RandomForestClassifier
    resources: {cpu: 1, memory_gb: 1}
    params: {n_estimators: [5], max_depth: [4]}
"""
LOGISTIC = """
  logistic_regression:
    estimator: LogisticRegression
    resources: {cpu: 1, memory_gb: 1}
    params: {C: %s}
"""
GRID = SETTINGS + BROKEN_BOOSTING + FOREST + LOGISTIC % "[0.1, 1.0]"


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    paths = stack_paths(tmp_path_factory.mktemp("stack"))
    with local_stack(paths, cpus=2, memory_gb=4) as stack:
        grid = paths.config / "grid.yaml"
        grid.write_text(GRID)
        yield stack, grid


def _run(stack, grid, name):
    """One model_factory run; (its exit code, its log, its task instances' states by task)."""
    log = stack.paths.logs / f"{name}.log"
    when = datetime.now(timezone.utc)
    rc = dags_test("model_factory", {"grid_path": str(grid)}, stack.env, log, timeout_s=600, logical_date=when)
    run = dag_run(stack.env, "model_factory", when)
    return rc, log, run.tasks if run else {}


def test_fan_out_records_every_experiment_and_reruns_never_duplicate(factory):
    stack, grid = factory
    store = OutcomeStore(stack.warehouse_hook())
    assert ensure_training_table(store.hook, n_rows=1500, seed=3)

    # boosting and forest are planned first, logistic regression after them
    rc, log, tasks = _run(stack, grid, "first")
    assert rc == 0, log.read_text()[-5000:]
    # one instance per experiment; the failed one fails alone, and the record step still runs
    assert sorted(tasks["run_experiment"]) == ["failed", "success", "success", "success"], tasks
    assert tasks["plan_experiments"] == tasks["record_outcomes"] == ["success"], tasks
    frame = store.read()
    assert frame["factory_run_id"].nunique() == 1
    assert len(frame) == 4 and frame["experiment_id"].is_unique
    ok = frame[frame.status == "succeeded"]
    assert sorted(ok["family"]) == ["forest", "logistic_regression", "logistic_regression"]
    assert sorted(json.loads(p)["C"] for p in ok.loc[ok.family == "logistic_regression", "params_json"]) == [0.1, 1.0]
    assert ok["roc_auc_mean"].between(0.5, 1.0).all()
    assert all(len(json.loads(f)) == 3 for f in ok["roc_auc_folds"])
    assert ok["policy_value_mean"].notna().all()
    assert (ok["run_status"] == "ENGINE_SUCCEEDED").all()
    failed = frame[frame.status == "failed"].iloc[0]
    assert failed["family"] == "broken_boosting"
    assert "test_size=100000" in failed["error"] and failed["run_status"] == "ENGINE_FAILED"
    # artifacts were left in the project files by the job runs
    project_files = next((stack.paths.workspace_root / "projects").glob("*/files"))
    for artifact in ok["artifact_path"]:
        assert (project_files / artifact).is_file()
    text = log.read_text()
    assert text.count("Started CML job run") == 4
    # the failed instance says why: the run's status and its result file's error
    assert "ENGINE_FAILED" in text and "test_size=100000" in text

    # A rerun: identical succeeded experiments are reused, only the failure runs again, and
    # the new factory run gets its own rows.
    rc, log, tasks = _run(stack, grid, "second")
    assert rc == 0, log.read_text()[-5000:]
    assert tasks["run_experiment"] == ["failed"], tasks
    frame = store.read()
    assert frame["factory_run_id"].nunique() == 2 and len(frame) == 8
    second = frame[frame.factory_run_id != failed["factory_run_id"]]
    assert set(second.loc[second.status == "succeeded", "run_status"]) == {"REUSED"}
    assert second.loc[second.status == "failed", "family"].tolist() == ["broken_boosting"]
    assert (frame.groupby("factory_run_id")["experiment_id"].nunique() == 4).all()

    # Without the broken family and with one new C: only the new point runs; every experiment
    # is still recorded.
    grid.write_text(SETTINGS + FOREST + LOGISTIC % "[0.1, 1.0, 3.0]")
    rc, log, tasks = _run(stack, grid, "third")
    assert rc == 0, log.read_text()[-5000:]
    assert tasks["run_experiment"] == ["success"], tasks
    third = store.read()
    third = third[~third.factory_run_id.isin(frame.factory_run_id)]
    assert len(third) == 4 and (third.status == "succeeded").all()
    fresh = third[third.run_status == "ENGINE_SUCCEEDED"]
    assert [json.loads(p)["C"] for p in fresh["params_json"]] == [3.0]
