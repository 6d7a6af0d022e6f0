"""The model_factory stages that hand off to Airflow, against the local CML workspace over real
HTTP and a SQLite warehouse: the plan is the mapped operator's kwargs themselves (long
experiments first), and recording turns every planned experiment into one row, whatever became
of it, replacing the factory run's rows."""

from __future__ import annotations

import inspect
import json

import pytest

from factory_tasks.core.contracts import ContractError, ExperimentSpec
from factory_tasks.core.versions import current_provenance
from factory_tasks.loop.history import ensure_training_table
from factory_tasks.stages.model_factory import (
    load_plan,
    plan_experiments,
    record_outcomes,
    snapshot_to_project,
    validate_grid_file,
)
from factory_tasks.warehouse.outcomes import OutcomeStore
from tests.contract_factories import make_result

pytestmark = pytest.mark.integration

GRID = """
cv: {folds: 2, random_state: 0}
metrics: [roc_auc, log_loss]
max_parallel: 3
economics:
  conversion_value: 100.0
  offer_costs: {Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}
families:
  logistic_regression:
    estimator: LogisticRegression
    resources: {cpu: 1, memory_gb: 1}
    params: {C: [0.1, 1.0]}
  forest:
    estimator: RandomForestClassifier
    resources: {cpu: 2, memory_gb: 2}
    params: {n_estimators: [5], max_depth: [3]}
"""


@pytest.fixture(scope="module")
def cml(tmp_path_factory):
    from cml_provider.hooks.cml import CmlHook
    from cml_workspace.server_process import running_workspace

    with running_workspace(tmp_path_factory.mktemp("ws"), cpus=2, memory_gb=4) as ws:
        yield CmlHook.from_url(ws.url, ws.api_key, project_name=ws.project)


@pytest.fixture
def planned(cml, hook, tmp_path, monkeypatch):
    """Plan factory run ``run_1`` of GRID: (the grid, the snapshot, what plan_experiments returned)."""
    monkeypatch.setenv("MODEL_FACTORY_CONFIG_DIRS", str(tmp_path))
    (tmp_path / "grid.yaml").write_text(GRID)
    ensure_training_table(hook, n_rows=400, seed=5)
    grid = validate_grid_file(str(tmp_path / "grid.yaml"))
    snapshot = snapshot_to_project(hook, cml, grid["table"])
    return grid, snapshot, plan_experiments(grid, snapshot, cml, factory_run_id="run_1", job_timeout_s=600)


def test_the_plan_is_the_operators_kwargs_long_experiments_first(cml, planned):
    from cml_provider.operators.cml import CmlJobRunOperator

    _, _, runs = planned
    specs = [ExperimentSpec.parse(r["environment"][ExperimentSpec.ENV], "env") for r in runs]
    assert [s.estimator for s in specs] == ["RandomForestClassifier", "LogisticRegression", "LogisticRegression"]
    accepted = set(inspect.signature(CmlJobRunOperator.__init__).parameters)
    for run, spec in zip(runs, specs):
        assert set(run) <= accepted, set(run) - accepted
        assert run["result_file"] == spec.result_path == f"experiments/{spec.experiment_id}/result.json"
        # the plan created the job of each profile: a submission looks nothing up
        job = cml.find_job(spec.job_name)
        assert (run["project_id"], run["job_id"], run["job_name"]) == (cml.get_project_id(), job.id, spec.job_name)
        assert run["environment"]["MF_FACTORY_RUN_ID"] == "run_1"
        CmlJobRunOperator(task_id="run_experiment", **run)  # what the mapped instance is built from
    json.dumps(runs)  # XCom-safe
    assert len(load_plan(cml, "run_1").to_run) == 3


def test_a_reused_experiment_is_left_out_of_the_plan_and_recorded_with_the_others(cml, hook, planned):
    grid, snapshot, runs = planned
    reused = ExperimentSpec.parse(runs[1]["environment"][ExperimentSpec.ENV], "env")
    provenance = current_provenance()
    result = make_result(reused, code_version=provenance.code_version,
                         library_versions=provenance.library_versions)
    cml.upload_file(reused.result_path, result.to_json(), overwrite=True)

    again = plan_experiments(grid, snapshot, cml, factory_run_id="run_2", job_timeout_s=600)
    assert [r["result_file"] for r in again] == [runs[0]["result_file"], runs[2]["result_file"]]
    assert load_plan(cml, "run_2").reused == [reused.experiment_id]

    # nothing was submitted: the two planned runs are recorded as failed, the reused one as reused
    for _ in range(2):  # a retry of the record step replaces the rows, never adds to them
        recorded = record_outcomes(hook, cml, factory_run_id="run_2", recorded_at="2026-12-01T00:00:00+00:00")
        assert recorded == {"factory_run_id": "run_2", "recorded": 3, "failed": 2}
    rows = OutcomeStore(hook).read("run_2")
    assert len(rows) == 3 and rows["experiment_id"].is_unique
    by_id = rows.set_index("experiment_id")
    assert by_id.loc[reused.experiment_id, "run_status"] == "REUSED"
    assert by_id.loc[reused.experiment_id, "status"] == "succeeded"
    assert (by_id.drop(reused.experiment_id)["status"] == "failed").all()


def test_recording_a_factory_run_that_never_planned_names_it(cml, hook):
    with pytest.raises(ContractError, match="plan_experiments did not finish for factory run never_planned"):
        record_outcomes(hook, cml, factory_run_id="never_planned", recorded_at="2026-12-01T00:00:00+00:00")
