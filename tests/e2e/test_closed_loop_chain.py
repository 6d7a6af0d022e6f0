"""The closed loop, closing by itself on ``make up``'s stack under the real scheduler.

A small grid is deployed first (a factory run triggered over REST, the deploy run its asset
event starts). Then ``make run``'s closed-loop demo: Airflow backfills of
``customer_interactions`` (three windows, drift on from the second) and ``model_monitoring``
(the last two), the alerts monitoring raises, the one ``model_factory`` run they trigger
(history plus the matured interactions; the second window's alerts name the first's retrain),
and the ``deploy_best_model`` run its outcomes start, to the gate's verdict. Asserted from Airflow's REST API, the
warehouse and the CML project: the chain is whole and nothing in it is duplicated; and the
backfill's runs sit at the dates the hourly schedules give those windows, so the schedules'
next runs find their dates free (a run of ``customer_interactions`` dated at its window's end
would take the date of the schedule's next window, which the schedule would then skip).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from datetime import timedelta

import pytest
from stack.ab_demo import DEMO_CHALLENGER_SHARE
from stack.airflow_api import iso, when
from stack.closed_loop import (
    DEMO_CUSTOMERS,
    MONITORING_DAG,
    RETRAIN_REVIEW_MINUTES,
    TRAFFIC_DAG,
    closed_loop_demo,
)
from stack.deploy import DAG_ID as DEPLOY_DAG
from stack.deploy import OUTCOMES_ASSET, failed_task, follow_deployment
from stack.env import stack_paths
from stack.running import RunningStack

from tests.e2e.test_local_stack_up import Stack
from tests.e2e.test_model_factory_e2e import LOGISTIC, SETTINGS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

FACTORY_DAG = "model_factory"
GRID = SETTINGS + LOGISTIC % "[0.1, 1.0]"  # two cheap experiments
CUSTOMERS_PER_WINDOW = DEMO_CUSTOMERS


@pytest.fixture
def running(shared_stack: Stack) -> RunningStack:
    stack = RunningStack.find(stack_paths(shared_stack.var))
    assert stack is not None, f"no stack of make up runs under {shared_stack.var}"
    return stack


def _rows(stack: RunningStack, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(stack.paths.warehouse_db) as db:
        return db.execute(sql, args).fetchall()


def _one_backfill_run_per_window(runs: list[dict], windows: list) -> None:
    assert [when(r["logical_date"]) for r in runs] == windows, runs
    for start, r in zip(windows, runs):
        assert (r["run_type"], r["state"]) == ("backfill", "success"), r
        # created by the backfill, not an earlier run it cleared (see stack.backfill)
        assert r["dag_run_id"].startswith("backfill__"), r
        assert (when(r["data_interval_start"]), when(r["data_interval_end"])) == (start, start + timedelta(hours=1)), r


def test_alert_retrain_and_deploy_close_the_loop_once(running: RunningStack):
    stack, api = running, running.api
    grid = stack.paths.config / "small_grid.yaml"
    grid.write_text(GRID)

    # a model serving: the factory run's outcomes trigger its deployment (no review window)
    started = time.time()
    factory = api.trigger(FACTORY_DAG, {"grid_path": str(grid), "review_window_minutes": 0})
    run = api.wait_for_run(FACTORY_DAG, factory["dag_run_id"], timeout_s=600)
    assert run["state"] == "success", failed_task(api, FACTORY_DAG, factory["dag_run_id"])
    first = follow_deployment(stack, factory["dag_run_id"], started)
    assert first.ok and first.gate is not None, first
    assert _rows(stack, "SELECT COUNT(*) FROM model_deployments") != [(0,)], "no model serves"

    demo_started = time.time()
    demo = closed_loop_demo(stack, demo_started, grid_path=str(grid))
    assert demo.ok, demo.error or demo
    windows = demo.windows
    monitored = windows[-2:]

    # interactions: one customer_interactions run per window, a backfill run at the window's start
    # (a run's logical date under every timetable), covering exactly that hour
    traffic_runs = api.dag_runs(TRAFFIC_DAG, logical_date_gte=iso(windows[0]), logical_date_lte=iso(windows[-1]))
    _one_backfill_run_per_window(traffic_runs, windows)
    assert [r["dag_run_id"] for r in traffic_runs] == demo.traffic_runs

    # ... each window decided once: its prediction_log partition is one batch of distinct decisions
    decided = dict((w, (n, distinct)) for w, n, distinct in _rows(
        stack, "SELECT window_start, COUNT(*), COUNT(DISTINCT prediction_uuid) FROM prediction_log GROUP BY 1"))
    for start in windows:
        assert decided.get(iso(start)) == (CUSTOMERS_PER_WINDOW, CUSTOMERS_PER_WINDOW), decided
    [(matured, distinct_matured)] = _rows(
        stack, "SELECT COUNT(*), COUNT(DISTINCT prediction_uuid) FROM customer_interactions")
    assert matured > 0 and matured == distinct_matured

    # monitoring: one backfill run per monitored window
    monitoring_runs = api.dag_runs(MONITORING_DAG, logical_date_gte=iso(monitored[0]),
                                   logical_date_lte=iso(monitored[-1]))
    _one_backfill_run_per_window(monitoring_runs, monitored)
    assert [r["dag_run_id"] for r in monitoring_runs] == demo.monitoring_runs

    # the hourly schedules go on after the backfilled windows, on dates nothing has taken
    for dag_id in (TRAFFIC_DAG, MONITORING_DAG):
        following = when(api.dag(dag_id)["next_dagrun_logical_date"])
        assert following > windows[-1], (dag_id, following, windows)
        taken = api.dag_runs(dag_id, logical_date_gte=iso(following), logical_date_lte=iso(following))
        assert all(r["run_type"] == "scheduled" for r in taken), taken

    # alerts: recorded once per id, on both drifted windows; the first window's retrain answers
    # them all (the second window's alerts name it: monitoring.retrain_cooldown_minutes), so the
    # drift retrains once, not once per hour it lasts
    alerts = _rows(stack, "SELECT alert_id, as_of_window, retrain_run_id FROM model_alerts")
    ours = [a for a in alerts if a[1] in {iso(w) for w in monitored}]
    assert {a[1] for a in ours} == {iso(w) for w in monitored}, f"both drifted windows should alert: {alerts}"
    assert len({a[0] for a in alerts}) == len(alerts), alerts
    answering = f"monitoring__{monitored[0]:%Y%m%dT%H%M%S}"
    assert {a[2] for a in ours} == {answering}, ours
    # (a scheduled monitoring run of a later hour may retrain too: only the monitored windows' count)
    possible = {f"monitoring__{w:%Y%m%dT%H%M%S}" for w in monitored}
    retrains = [r for r in api.dag_runs(FACTORY_DAG) if r["dag_run_id"] in possible]
    assert [r["dag_run_id"] for r in retrains] == [answering], retrains
    assert [r.run_id for r in demo.retrains] == [answering]

    from factory_tasks.stages.model_factory import load_plan

    cml = stack.cml_hook()
    retrain_ids = {answering}
    deploy_runs: set[str] = set()
    for retrain in retrains:
        run_id = retrain["dag_run_id"]
        # the retrain ran on history plus the interactions, with the demo's short review window
        assert retrain["state"] == "success", failed_task(api, FACTORY_DAG, run_id)
        assert retrain["conf"]["include_interactions"] is True
        assert retrain["conf"]["review_window_minutes"] == RETRAIN_REVIEW_MINUTES
        snapshot = load_plan(cml, run_id).snapshot
        assert snapshot.interaction_rows > 0, snapshot

        # its outcomes' one event started one deploy run, the one the demo followed
        events = [e for e in api.get("/api/v2/assets/events", source_dag_id=FACTORY_DAG, source_run_id=run_id)
                  ["asset_events"] if e["name"] == OUTCOMES_ASSET]
        assert len(events) == 1, events
        [deploy_ref] = [r for r in events[0]["created_dagruns"] if r["dag_id"] == DEPLOY_DAG]
        deploy_runs.add(deploy_ref["run_id"])
        [followed] = [r for r in demo.retrains if r.run_id == run_id]
        assert followed.deploy is not None and followed.deploy.run_id == deploy_ref["run_id"], followed
        assert followed.interaction_rows == snapshot.interaction_rows

    # each deploy run (one per retrain, unless Airflow handed one run both events: then it
    # deploys the newer) asked for a review that timed out, and its gate decided and recorded
    deployments = _rows(stack, "SELECT factory_run_id, gate_reason FROM model_deployments "
                               "WHERE action IN ('deploy', 'ab_start')")  # not the A/B verdict's redeploy
    for deploy_run_id in deploy_runs:
        deploy_run = api.dag_run(DEPLOY_DAG, deploy_run_id)
        assert (deploy_run["run_type"], deploy_run["state"]) == ("asset_triggered", "success"), deploy_run
        deployed_from = api.xcom(DEPLOY_DAG, deploy_run_id, "resolve_run")["factory_run_id"]
        assert deployed_from in retrain_ids, deployed_from
        review = api.xcom(DEPLOY_DAG, deploy_run_id, "review", map_index=0)
        assert review is not None and review.get("responded_by_user") is None, review
        gate = api.xcom(DEPLOY_DAG, deploy_run_id, "gate")
        assert isinstance(gate["deploy"], bool) and gate["reason"], gate
        assert [d[1] for d in deployments if d[0] == deployed_from] == ([gate["reason"]] if gate["deploy"] else [])
        assert all(r.deploy.gate == gate for r in demo.retrains if r.deploy.run_id == deploy_run_id)

    # no factory run deployed twice
    deployed = Counter(api.xcom(DEPLOY_DAG, r["dag_run_id"], "resolve_run")["factory_run_id"]
                       for r in api.dag_runs(DEPLOY_DAG)
                       if not (r.get("conf") or {}).get("model_version"))  # not a redeploy (rollback, A/B verdict)
    # (this test's factory runs: other tests on the shared stack deploy theirs again by hand)
    assert deployed[factory["dag_run_id"]] == 1 and all(deployed[r] <= 1 for r in retrain_ids), deployed

    # the A/B phase: the retrain the gate let through is tested beside the champion on the next
    # hours, each monitored; a verdict redeploys the winner alone (recorded), else the test goes on
    ab = demo.ab
    assert ab is not None, demo
    started = [r for r in demo.retrains if r.started_test]
    assert ab.started == bool(started), (ab, demo.retrains)
    if not ab.started:  # the gate showed the retrain worse: nothing to test (said so)
        assert all("worse" in r.deploy.gate["reason"] for r in demo.retrains), demo.retrains
        assert "nothing was tested" in ab.note
        return
    assert ab.windows == demo.ab_windows and ab.windows[0] == windows[-1] + timedelta(hours=1)
    test = _rows(stack, "SELECT model_version, champion_version, challenger_share, test_id, deployment_crn, "
                        "deployment_id FROM model_deployments WHERE action = 'ab_start' ORDER BY deployed_at")[-1]
    assert test[3] == ab.test_id and test[2] == DEMO_CHALLENGER_SHARE
    arms = dict(_rows(stack, "SELECT arm, COUNT(*) FROM prediction_log WHERE deployment_crn = ? GROUP BY arm",
                      test[4] or test[5]))
    assert set(arms) == {"champion", "challenger"}, arms
    # every hour monitored while the test ran reports on it (after a verdict's redeploy, none does)
    looked = [iso(w) for w in ab.windows][:len(ab.standings)]
    assert ab.standings and [w for w, *_ in ab.standings] == looked, ab.standings
    monitored_test = _rows(stack, "SELECT DISTINCT as_of_window FROM model_monitoring WHERE metric = 'ab_difference_dr'")
    assert set(looked) <= {m for (m,) in monitored_test}
    if ab.concluded_by:
        last = _rows(stack, "SELECT action, model_version, requested_by FROM model_deployments ORDER BY deployed_at")[-1]
        assert last == (ab.concluded_by, test[0] if ab.concluded_by == "ab_promote" else test[1], "model_monitoring")
    else:
        assert ab.note and "no verdict yet" in ab.note, ab
