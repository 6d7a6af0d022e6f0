"""deploy_best_model end to end: `airflow dags test` on the embedded stack after a real factory
run — choice, retrain job run, gate, the custom deploy operator against the local workspace's
real model servers, the deployment record — then the gate keeping the champion, and a
reviewer's promotion overriding it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from factory_tasks.core.names import MODEL_NAME
from factory_tasks.loop.history import ensure_training_table
from factory_tasks.warehouse.deployments import DEPLOYMENTS, serving
from factory_tasks.warehouse.outcomes import OutcomeStore
from factory_tasks.warehouse.promotions import promote
from stack.airflow_cli import dags_test, find_dag_run, task_states
from stack.env import stack_paths
from stack.local import local_stack

pytestmark = pytest.mark.e2e

GRID = """
cv: {folds: 3, random_state: 0}
metrics: [roc_auc, log_loss, policy_value, policy_uplift]
ranking_metric: roc_auc
max_parallel: 2
economics:
  conversion_value: 100.0
  offer_costs: {Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}
families:
  logistic_regression:
    estimator: LogisticRegression
    resources: {cpu: 1, memory_gb: 1}
    params: {C: [0.05, 1.0]}
"""
DEPLOY = {"skip_review": True, "review_window_minutes": 0, "replicas": 1}


def _dags_test(stack, dag_id: str, conf: dict, name: str):
    log = stack.paths.logs / f"{name}.log"
    when = datetime.now(timezone.utc)
    rc = dags_test(dag_id, conf, stack.env, log, timeout_s=900, logical_date=when)
    run = find_dag_run(dag_id, when, stack.env)
    return rc, run, log


def _states(stack, run) -> dict[str, str]:
    return {t.task_id: t.state for t in task_states("deploy_best_model", run.run_id, stack.env)}


def _ask(stack, customers: list[dict]):
    cml = stack.cml_hook()
    model = cml.find_model(MODEL_NAME)
    return cml.call_model(model, {"customers": customers}, model_service_url=stack.workspace.model_service_url,
                          api_key=stack.workspace.api_key)


CUSTOMER = {"customer_id": "c-1", "recency": 3, "history": 420.0, "used_discount": 0, "used_bogo": 1,
            "zip_code": "Surburban", "is_referral": 1, "channel": "Phone"}


@pytest.fixture(scope="module")
def factory_run(tmp_path_factory):
    paths = stack_paths(tmp_path_factory.mktemp("deploy-stack"))
    with local_stack(paths, cpus=2, memory_gb=6) as stack:
        assert ensure_training_table(stack.warehouse_hook(), n_rows=6000, seed=9)
        grid = paths.config / "grid.yaml"
        grid.write_text(GRID)
        rc, run, log = _dags_test(stack, "model_factory", {"grid_path": str(grid)}, "factory")
        assert rc == 0, log.read_text()[-5000:]
        yield stack, run.run_id


def test_first_deployment_then_the_gate_keeps_the_champion_then_a_promotion_overrides(factory_run):
    stack, factory_run_id = factory_run
    warehouse = stack.warehouse_hook()

    # 1. first deployment, after a short review window on the deferrable time sensor: the best
    #    experiment, retrained, passes the gate trivially
    short_window = {**DEPLOY, "review_window_minutes": 0.1, "factory_run_id": factory_run_id}
    rc, run, log = _dags_test(stack, "deploy_best_model", short_window, "deploy-1")
    assert rc == 0, log.read_text()[-8000:]
    first = serving(warehouse)
    assert first is not None and first.chosen_by == "automatic" and first.gate_reason.startswith("first deployment")
    outcomes = OutcomeStore(warehouse).read(factory_run_id)
    best = outcomes.sort_values("ranking_score", ascending=False)["experiment_id"].iloc[0]
    assert first.experiment_id == best and first.factory_run_id == factory_run_id
    answer = _ask(stack, [CUSTOMER, {**CUSTOMER, "customer_id": "c-2", "channel": "Web"}])
    predictions = answer.prediction["predictions"]
    assert [p["customer_id"] for p in predictions] == ["c-1", "c-2"] and answer.uuid
    assert set(predictions[0]["offers"]) == {"Buy One Get One", "Discount", "No Offer"}
    assert answer.prediction["model_version"] == first.model_version

    # 2. nothing new: the automatic choice is the champion itself; the gate keeps it
    rc, run, log = _dags_test(stack, "deploy_best_model", {**DEPLOY, "factory_run_id": factory_run_id}, "deploy-2")
    assert rc == 0, log.read_text()[-8000:]
    states = _states(stack, run)
    assert states["gate"] == "success" and states["deploy_or_keep_champion"] == "success"
    assert states["record_deployment"] == "skipped"
    assert "already serving" in log.read_text()
    assert len(DEPLOYMENTS.read_all(warehouse)) == 1

    # 3. a reviewer promotes the other experiment: it is deployed even if not better (recorded)
    other = outcomes[outcomes.experiment_id != best].iloc[0]
    promote(outcomes, other["experiment_id"], factory_run_id, "ana", "simpler model", warehouse,
            now=datetime.now(timezone.utc))
    rc, run, log = _dags_test(stack, "deploy_best_model", {**DEPLOY, "factory_run_id": factory_run_id}, "deploy-3")
    assert rc == 0, log.read_text()[-8000:]
    third = serving(warehouse)
    assert (third.experiment_id, third.chosen_by, third.chosen_by_user) == (other["experiment_id"], "promotion", "ana")
    assert third.replaced_deployment_ids == [first.deployment_id]
    assert _ask(stack, [CUSTOMER]).prediction["model_version"] == third.model_version
