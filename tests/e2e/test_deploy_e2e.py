"""deploy_best_model under the real scheduler, on make up's stack (shared with other tests, so a
model may already be serving), after a real factory run: the deploy run the factory run's asset
event starts asks for a review in Airflow, which times out to its default at the end of the
window the factory run passed on; then the retrain job run, the gate, the custom deploy
operator against the local workspace's real model servers and the deployment record. Then a
manual pick of what serves, which the gate keeps, and a reviewer's promotion deployed over the
gate. (``dag.test()`` cannot run this DAG: it never times out a review, and it resumes a
deferred task without the arguments the task deferred with.)"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from stack.deploy import failed_task, find_deploy_run
from stack.env import stack_paths
from stack.running import RunningStack

from factory_tasks.core.names import MODEL_NAME
from factory_tasks.loop.selection import rank_candidates
from factory_tasks.warehouse.deployments import DEPLOYMENTS, serving
from factory_tasks.warehouse.outcomes import OutcomeStore
from factory_tasks.warehouse.promotions import promote
from tests.e2e.test_local_stack_up import Stack
from tests.sqlite_warehouse import SqliteWarehouse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

FACTORY_DAG, DEPLOY_DAG = "model_factory", "deploy_best_model"
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
WINDOW_MINUTES = 0.4
RUN_TIMEOUT_S = 600
CUSTOMER = {"customer_id": "c-1", "recency": 3, "history": 420.0, "used_discount": 0, "used_bogo": 1,
            "zip_code": "Surburban", "is_referral": 1, "channel": "Phone"}


@pytest.fixture
def running(shared_stack: Stack) -> RunningStack:
    stack = RunningStack.find(stack_paths(shared_stack.var))
    assert stack is not None, f"no stack of make up runs under {shared_stack.var}"
    return stack


def run_states(stack: RunningStack, dag_id: str, run_id: str, *, succeed: bool = True) -> dict[str, str]:
    """Wait for a run that must succeed (or, ``succeed=False``, fail); its task states (a mapped
    task's first instance)."""
    run = stack.api.wait_for_run(dag_id, run_id, timeout_s=RUN_TIMEOUT_S)
    assert (run["state"] == "success") is succeed, failed_task(stack.api, dag_id, run_id)
    return {t["task_id"]: t["state"] for t in stack.api.task_instances(dag_id, run_id) if t["map_index"] in (-1, 0)}


def deploy_run(stack: RunningStack, conf: dict, *, succeed: bool = True) -> tuple[str, dict[str, str]]:
    """A deploy_best_model run with ``conf`` (one replica), waited for: its id and task states."""
    run_id = stack.api.trigger(DEPLOY_DAG, {"replicas": 1, **conf})["dag_run_id"]
    return run_id, run_states(stack, DEPLOY_DAG, run_id, succeed=succeed)


def ask_model(stack: RunningStack, customers: list[dict]):
    """The deployed model's answer for ``customers``, through the model service."""
    cml = stack.cml_hook()
    return cml.call_model(cml.find_model(MODEL_NAME), {"customers": customers},
                          model_service_url=stack.model_service_url, api_key=stack.api_key)


def test_a_timed_out_review_then_the_gate_keeping_the_champion_then_a_promotion_deployed(running):
    api, warehouse = running.api, SqliteWarehouse(running.paths.warehouse_db)
    grid = running.paths.config / "deploy_e2e_grid.yaml"
    grid.write_text(GRID)
    factory_run_id = api.trigger(FACTORY_DAG, {"grid_path": str(grid),
                                               "review_window_minutes": WINDOW_MINUTES})["dag_run_id"]
    run_states(running, FACTORY_DAG, factory_run_id)
    outcomes = OutcomeStore(warehouse).read(factory_run_id)
    best, other = rank_candidates(outcomes)["experiment_id"].tolist()

    # 1. the factory run's event starts a deploy run with the factory run's window; nobody
    #    answers the review, which ends with the window and its default: the best experiment
    trigger = find_deploy_run(api, factory_run_id)
    assert trigger.review_window_minutes == WINDOW_MINUTES
    states = run_states(running, DEPLOY_DAG, trigger.run_id)
    assert states["review"] == "success" and states["wait_for_review_window"] == "skipped", states
    resolved = api.xcom(DEPLOY_DAG, trigger.run_id, "resolve_run")
    assert (resolved["factory_run_id"], resolved["minutes"]) == (factory_run_id, WINDOW_MINUTES)
    choice = api.xcom(DEPLOY_DAG, trigger.run_id, "choose_experiment")
    assert (choice["experiment_id"], choice["chosen_by"]) == (best, "automatic")
    decision = api.xcom(DEPLOY_DAG, trigger.run_id, "gate")
    assert states["retrain"] == "success" and decision["reason"]
    assert states["record_deployment"] == ("success" if decision["deploy"] else "skipped"), (states, decision)

    # 2. a manual pick of the best (no review): afterwards it serves, deployed now by the gate
    #    or kept by it as already serving
    deploy_run(running, {"factory_run_id": factory_run_id, "experiment_id": best})
    champion = serving(warehouse)
    assert (champion.experiment_id, champion.factory_run_id) == (best, factory_run_id)
    answer = ask_model(running, [CUSTOMER, {**CUSTOMER, "customer_id": "c-2", "channel": "Web"}])
    predictions = answer.prediction["predictions"]
    assert [p["customer_id"] for p in predictions] == ["c-1", "c-2"] and answer.uuid
    assert set(predictions[0]["offers"]) == {"Buy One Get One", "Discount", "No Offer"}
    assert answer.prediction["model_version"] == champion.model_version

    # 3. the same pick again: the gate keeps the model already serving, nothing is recorded
    recorded = len(DEPLOYMENTS.read_all(warehouse))
    run_id, states = deploy_run(running, {"factory_run_id": factory_run_id, "experiment_id": best})
    assert states["deploy_or_keep_champion"] == "success" and states["record_deployment"] == "skipped", states
    assert "already serving" in api.xcom(DEPLOY_DAG, run_id, "gate")["reason"]
    assert len(DEPLOYMENTS.read_all(warehouse)) == recorded

    # 4. a reviewer promotes the other experiment in the dashboard during the window: it is
    #    deployed even if not better (recorded), the review timing out unanswered
    promote(outcomes, other, factory_run_id, "ana", "simpler model", warehouse, now=datetime.now(timezone.utc))
    run_id, states = deploy_run(running, {"factory_run_id": factory_run_id, "review_window_minutes": WINDOW_MINUTES})
    assert states["review"] == "success", states
    promoted = serving(warehouse)
    assert (promoted.experiment_id, promoted.chosen_by, promoted.chosen_by_user) == (other, "promotion", "ana")
    assert promoted.replaced_deployment_ids == [champion.deployment_id]
    assert ask_model(running, [CUSTOMER]).prediction["model_version"] == promoted.model_version
