"""Rollback in one step under the real scheduler, on make up's stack (shared with other tests, so a
model may already be serving): deploy A, deploy B, then a reviewer's rollback request to A, as
the monitoring dashboard records it, carried out by the DAG rollback_requests through a
deploy_best_model run with model_version (no review, retrain or gate): A answers requests, a
rollback row is in model_deployments, B is stopped. Then a version never deployed is refused,
naming it."""

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
from factory_tasks.warehouse.rollbacks import load_requests, pending_request, request_rollback, run_id_for
from tests.e2e.test_deploy_e2e import CUSTOMER, GRID, ask_model, deploy_run, run_states
from tests.e2e.test_local_stack_up import Stack
from tests.sqlite_warehouse import SqliteWarehouse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

FACTORY_DAG, DEPLOY_DAG, REQUESTS_DAG = "model_factory", "deploy_best_model", "rollback_requests"


@pytest.fixture
def running(shared_stack: Stack) -> RunningStack:
    stack = RunningStack.find(stack_paths(shared_stack.var))
    assert stack is not None, f"no stack of make up runs under {shared_stack.var}"
    return stack


def _answering_version(stack: RunningStack) -> str:
    answer = ask_model(stack, [CUSTOMER])
    assert answer.prediction["predictions"][0]["customer_id"] == CUSTOMER["customer_id"], answer.prediction
    return answer.prediction["model_version"]


def test_deploy_a_deploy_b_then_a_dashboard_request_rolls_back_to_a(running):
    api, warehouse = running.api, SqliteWarehouse(running.paths.warehouse_db)
    grid = running.paths.config / "rollback_e2e_grid.yaml"
    grid.write_text(GRID)
    # (no review window: the review is the deploy test's; this one only needs two versions)
    factory_run_id = api.trigger(FACTORY_DAG, {"grid_path": str(grid), "review_window_minutes": 0})["dag_run_id"]
    run_states(running, FACTORY_DAG, factory_run_id)
    run_states(running, DEPLOY_DAG, find_deploy_run(api, factory_run_id).run_id)  # the asset-triggered one
    a_experiment, b_experiment = rank_candidates(OutcomeStore(warehouse).read(factory_run_id))["experiment_id"].tolist()

    # 1. deploy A (or keep it: the asset-triggered run may have deployed it), then B over the gate
    deploy_run(running, {"factory_run_id": factory_run_id, "experiment_id": a_experiment})
    a = serving(warehouse)
    assert a.experiment_id == a_experiment and _answering_version(running) == a.model_version
    _, states = deploy_run(running, {"factory_run_id": factory_run_id, "experiment_id": b_experiment})
    assert states["record_deployment"] == "success", states
    b = serving(warehouse)
    assert b.experiment_id == b_experiment and b.model_version != a.model_version
    assert _answering_version(running) == b.model_version

    # 2. a reviewer asks for A again (what the monitoring dashboard records), rollback_requests
    #    triggers the deploy run of that request, which redeploys A without review, retrain or gate
    request = request_rollback(warehouse, DEPLOYMENTS.read_all(warehouse), a.model_version, "ana",
                               "B answers worse", datetime.now(timezone.utc))
    assert pending_request(load_requests(warehouse), DEPLOYMENTS.read_all(warehouse)) == request
    poll = api.trigger(REQUESTS_DAG, {})["dag_run_id"]
    poll_states = run_states(running, REQUESTS_DAG, poll)
    # triggered by this run, or already by a scheduled one (then skipped: one deploy run per request)
    assert poll_states["trigger_rollback"] in ("success", "skipped"), poll_states
    states = run_states(running, DEPLOY_DAG, run_id_for(request))
    assert states["deploy_or_rollback"] == "success" and states["record_rollback"] == "success", states
    for skipped in ("resolve_run", "review", "retrain", "gate", "deploy", "record_deployment"):
        assert states[skipped] == "skipped", (skipped, states)
    assert api.dag_run(DEPLOY_DAG, run_id_for(request))["conf"]["model_version"] == a.model_version

    # 3. A answers requests, the rollback is recorded with who asked and why, B is stopped
    now = serving(warehouse)
    assert (now.model_version, now.action, now.requested_by, now.request_reason) == (
        a.model_version, "rollback", "ana", "B answers worse")
    assert (now.experiment_id, now.artifact_path) == (a.experiment_id, a.artifact_path)  # A's own lineage
    assert now.deployment_id not in (a.deployment_id, b.deployment_id)
    assert now.replaced_deployment_ids == [b.deployment_id]
    assert _answering_version(running) == a.model_version
    cml = running.cml_hook()
    model = cml.find_model(MODEL_NAME)
    active = {d.id for d in cml.list_model_deployments(model.id) if d.status.is_active}
    assert active == {now.deployment_id}, active
    assert pending_request(load_requests(warehouse), DEPLOYMENTS.read_all(warehouse)) is None  # handled

    # 4. a version never deployed fails at once, naming it; A keeps serving
    run_id, _ = deploy_run(running, {"model_version": "never-deployed-1", "requested_by": "ana", "reason": "typo"},
                        succeed=False)
    assert "'never-deployed-1' was never deployed" in failed_task(api, DEPLOY_DAG, run_id)
    assert serving(warehouse) == now and _answering_version(running) == a.model_version
