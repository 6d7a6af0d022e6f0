"""A live A/B test from start to verdict under the real scheduler, on make up's stack (shared with
other tests): a weak champion (a logistic regression so regularised that it sends everyone the
same offer) serves; deploy_best_model with ``challenger_share`` 0.5 starts a test of a real model
beside it; three hours of traffic are asked of the test's deployment and monitored (Airflow
backfills, as make run's demo does); monitoring's always-valid interval concludes, the verdict's
deploy run serves the challenger alone, and every step is recorded (model_deployments,
model_monitoring, model_alerts). Asserted from the warehouse, the REST API and the endpoint."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import pytest
import yaml
from stack.airflow_api import iso
from stack.backfill import HOUR, backfill
from stack.closed_loop import DEMO_RESPONSES, decided_windows, demo_windows
from stack.env import stack_paths
from stack.running import RunningStack

from factory_tasks.core.settings import REPO_ROOT
from factory_tasks.loop.config import load_loop_config
from factory_tasks.loop.selection import rank_candidates
from factory_tasks.stages.monitoring import verdict_run_id
from factory_tasks.warehouse.deployments import DEPLOYMENTS, serving
from factory_tasks.warehouse.outcomes import OutcomeStore
from tests.e2e.test_deploy_e2e import CUSTOMER, ask_model, deploy_run, run_states
from tests.e2e.test_local_stack_up import Stack
from tests.e2e.test_model_factory_e2e import LOGISTIC, SETTINGS
from tests.sqlite_warehouse import SqliteWarehouse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

FACTORY_DAG, DEPLOY_DAG = "model_factory", "deploy_best_model"
TRAFFIC_DAG, MONITORING_DAG = "customer_interactions", "model_monitoring"
WEAK_GRID = SETTINGS + LOGISTIC % "[0.000001]"  # one offer for everyone: worth the best blast offer, ~11
GOOD_GRID = SETTINGS + LOGISTIC % "[1.0]"  # ~14 per customer on the simulator
CUSTOMERS_PER_WINDOW = 20_000  # ~40,000 matured at the last look: the interval ±1.1 against a gap of ~2.5


@pytest.fixture
def running(shared_stack: Stack) -> RunningStack:
    stack = RunningStack.find(stack_paths(shared_stack.var))
    assert stack is not None, f"no stack of make up runs under {shared_stack.var}"
    return stack


def _only_experiment(stack: RunningStack, grid_text: str, name: str) -> tuple[str, str]:
    """A factory run of a one-experiment grid: (run id, experiment id). The deploy run its event
    starts has no review window: the test's own deploy runs queue behind it (one at a time)."""
    api = stack.api
    grid = stack.paths.config / f"ab_e2e_{name}.yaml"
    grid.write_text(grid_text)
    run_id = api.trigger(FACTORY_DAG, {"grid_path": str(grid), "review_window_minutes": 0})["dag_run_id"]
    run_states(stack, FACTORY_DAG, run_id)
    [experiment] = rank_candidates(OutcomeStore(SqliteWarehouse(stack.paths.warehouse_db)).read(run_id))[
        "experiment_id"].tolist()
    return run_id, experiment


def _rows(stack: RunningStack, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(stack.paths.warehouse_db) as db:
        return db.execute(sql, args).fetchall()


def _loop_config(stack: RunningStack):
    """The closed loop's settings for the test's hours: no drift, labels maturing within the test,
    alerts that retrain nothing (the test answers for these hours)."""
    config = load_loop_config(REPO_ROOT / "config" / "closed_loop.yaml").model_dump(mode="json")
    config["traffic"]["customers_per_window"] = CUSTOMERS_PER_WINDOW
    config["responses"].update(DEMO_RESPONSES)
    config["monitoring"]["retrain_on_alert"] = False
    path = stack.paths.config / "ab_e2e_loop.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    load_loop_config(path)
    return path


def test_a_better_challenger_is_tested_live_and_promoted_by_the_verdict(running):
    warehouse = SqliteWarehouse(running.paths.warehouse_db)
    weak_run, weak = _only_experiment(running, WEAK_GRID, "weak")
    good_run, good = _only_experiment(running, GOOD_GRID, "good")

    # the weak model serves (a manual pick overrides the gate), then the test starts as a deploy
    deploy_run(running, {"factory_run_id": weak_run, "experiment_id": weak})
    champion = serving(warehouse)
    assert champion.experiment_id == weak and champion.action == "deploy"
    _, states = deploy_run(running, {"factory_run_id": good_run, "experiment_id": good, "challenger_share": 0.5})
    assert states["record_deployment"] == "success", states
    test = serving(warehouse)
    assert (test.action, test.experiment_id, test.champion_version, test.challenger_share) == (
        "ab_start", good, champion.model_version, 0.5)
    assert test.test_id == f"{champion.model_version}:{test.model_version}" and test.exploration_epsilon == 0.1
    # one deployment serves both: a customer id sees one arm, the deciding model says which
    answer = ask_model(running, [CUSTOMER, {**CUSTOMER, "customer_id": "c-2"}, {**CUSTOMER, "customer_id": "c-3"}])
    for p in answer.prediction["predictions"]:
        assert p["model_version"] == {"champion": champion.model_version, "challenger": test.model_version}[p["arm"]]

    try:
        _test_concludes(running, test, champion)
    finally:  # the stack is shared: a test this one leaves running would hold back the next tests' retrains
        if serving(warehouse).action == "ab_start":
            deploy_run(running, {"model_version": champion.model_version, "requested_by": "test_ab_test_e2e",
                                 "reason": "the e2e test ends its A/B test", "test_verdict": "end"})


def _test_concludes(running: RunningStack, test, champion) -> None:
    api, warehouse = running.api, SqliteWarehouse(running.paths.warehouse_db)
    # three hours of traffic to the test's deployment, then monitoring of each
    _, windows = demo_windows(datetime.now(timezone.utc), decided_windows(running.warehouse_hook()))
    config = _loop_config(running)
    backfill(running, TRAFFIC_DAG, windows, (windows[0], windows[-1]), {"loop_config_path": str(config)})
    arms = dict(_rows(running, 
        "SELECT arm, COUNT(*) FROM prediction_log WHERE deployment_crn = ? GROUP BY arm",
        (test.deployment_crn or test.deployment_id,)))
    total = sum(arms.values())
    assert total == len(windows) * CUSTOMERS_PER_WINDOW, arms
    assert abs(arms["challenger"] / total - 0.5) < 4.5 * (0.25 / total) ** 0.5, arms  # the split, by the hash
    monitoring_conf = {"loop_config_path": str(config), "grid_path": str(running.paths.config / "ab_e2e_good.yaml")}
    backfill(running, MONITORING_DAG, windows, (windows[0] + HOUR, windows[-1] + HOUR), monitoring_conf)

    # the test's rows: each arm's value and the always-valid difference, concluding
    # the last hour monitored while the test ran (a verdict's redeploy may come before the next look)
    looked = sorted({a for (a,) in _rows(running, "SELECT as_of_window FROM model_monitoring WHERE metric = "
                                                  "'ab_verdict'")} & {iso(w) for w in windows})
    assert looked, "no monitoring run reported on the test"
    rows = {(m, d): (v, lo, hi, n) for m, d, v, lo, hi, n in _rows(
        running, "SELECT metric, dimension, value, lower, upper, n FROM model_monitoring "
                 "WHERE as_of_window = ? AND metric LIKE 'ab_%'", (looked[-1],))}

    value, lower, upper, n = rows[("ab_difference_dr", "")]
    champion_value, challenger_value = rows[("ab_value_dr", "arm=champion")], rows[("ab_value_dr", "arm=challenger")]
    assert lower > 0 and n >= 1000, (rows, champion_value, challenger_value)
    assert ("ab_verdict", "verdict=promote") in rows, rows
    alerts = _rows(running, "SELECT alert_id, kind, retrain_run_id FROM model_alerts WHERE kind = 'ab_test'")
    assert any(test.model_version in a[0] for a in alerts) and all(a[2] is None for a in alerts), alerts
    # monitoring retrained nothing for these hours: the test answers for them
    retrains = {f"monitoring__{w:%Y%m%dT%H%M%S}" for w in windows} & {r["dag_run_id"] for r in api.dag_runs(FACTORY_DAG)}
    assert not retrains, retrains

    # the verdict's deploy run (once per test) serves the challenger alone, recorded as ab_promote
    states = run_states(running, DEPLOY_DAG, verdict_run_id(test.test_id, test.deployment_id))
    assert states["record_rollback"] == "success" and states["gate"] == "skipped", states
    conf = api.dag_run(DEPLOY_DAG, verdict_run_id(test.test_id, test.deployment_id))["conf"]
    assert (conf["model_version"], conf["test_verdict"], conf["requested_by"]) == (
        test.model_version, "promote", "model_monitoring")
    now = serving(warehouse)
    assert (now.action, now.model_version, now.champion_version, now.challenger_share) == (
        "ab_promote", test.model_version, None, 0.0)
    assert "A/B test" in now.request_reason and "the challenger is better" in now.request_reason
    assert now.replaced_deployment_ids == [test.deployment_id]
    assert [r.action for r in DEPLOYMENTS.read_all(warehouse)][-2:] == ["ab_start", "ab_promote"]
    answer = ask_model(running, [CUSTOMER, {**CUSTOMER, "customer_id": "c-2"}])
    assert {p["model_version"] for p in answer.prediction["predictions"]} == {test.model_version}
