"""The model_factory DAG (under `airflow dags test`) with the warehouse connection pointed at
the real HiveServer2: training data read from Hive, outcomes recorded in Hive, the summary query
on Hive — and a record step that failed while Hive was down succeeds on retry without re-running
experiments."""

from __future__ import annotations

import pytest
from stack.env import stack_paths
from stack.local import local_stack

from factory_tasks.loop.history import ensure_training_table
from factory_tasks.stages.model_factory import record_outcomes
from factory_tasks.warehouse.outcomes import OutcomeStore
from factory_tasks.warehouse.sql import WarehouseError
from factory_tasks.warehouse.summary import read_summary, refresh_summary
from tests.dags.dags_test_cli import dags_test

pytestmark = pytest.mark.e2e

GRID = """
cv: {folds: 3, random_state: 0}
metrics: [roc_auc, log_loss, policy_value]
ranking_metric: roc_auc
economics:
  conversion_value: 100.0
  offer_costs: {Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}
families:
  logistic_regression:
    estimator: LogisticRegression
    resources: {cpu: 1, memory_gb: 1}
    params: {C: [0.1, 1.0]}
"""


def _job_run_count(stack) -> int:
    cml = stack.cml_hook()
    return sum(len(cml.list_job_runs(job.id)) for job in cml.list_jobs())


def test_model_factory_on_hive(hive_server, tmp_path_factory, monkeypatch, fast_retries):
    paths = stack_paths(tmp_path_factory.mktemp("hive-stack"))
    with local_stack(paths, cpus=2, memory_gb=4, warehouse_conn=hive_server.conn_uri) as stack:
        monkeypatch.setenv("MODEL_FACTORY_ARTIFACTS", stack.env["MODEL_FACTORY_ARTIFACTS"])
        hive = stack.warehouse_hook()
        assert hive.conn_type == "hiveserver2"
        ensure_training_table(hive, n_rows=1200, seed=11)
        grid = paths.config / "grid.yaml"
        grid.write_text(GRID)

        log = paths.logs / "hive-run.log"
        rc = dags_test("model_factory", {"grid_path": str(grid)}, stack.env, log, timeout_s=900)
        assert rc == 0, log.read_text()[-5000:]

        frame = OutcomeStore(hive).read()
        assert len(frame) == 2 and set(frame.status) == {"succeeded"}
        assert frame["roc_auc_mean"].between(0.5, 1).all()
        run_id = frame["factory_run_id"].iloc[0]

        summary = paths.artifacts / "summary.csv"
        assert refresh_summary(hive, summary) == 2
        assert set(read_summary(summary)["experiment_id"]) == set(frame["experiment_id"])

        # Hive goes away while the record step runs: a named error, nothing recorded twice...
        runs_before = _job_run_count(stack)
        recorded_at = frame["recorded_at"].iloc[0]
        monkeypatch.setenv("AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE", "hiveserver2://airflow@127.0.0.1:9/default?auth_mechanism=NONE")
        from airflow.sdk import BaseHook

        down = BaseHook.get_connection("model_factory_warehouse").get_hook()
        with pytest.raises(WarehouseError, match="model_factory_warehouse"):
            record_outcomes(down, stack.cml_hook(), factory_run_id=run_id, recorded_at=recorded_at)
        # ...and the retry records from the plan and the result files alone: no experiment re-runs.
        result = record_outcomes(stack.warehouse_hook(), stack.cml_hook(), factory_run_id=run_id,
                                 recorded_at=recorded_at)
        assert result["recorded"] == 2
        assert len(OutcomeStore(hive).read(run_id)) == 2
        assert _job_run_count(stack) == runs_before
