"""A failed experiment under the real scheduler (``make up``'s stack): its CML run ends
``ENGINE_FAILED``, its wait fails in the triggerer naming the result file's error, the other
experiment succeeds, and the factory run ends and records both rows — in minutes, not at the
waits' 7,800 s deadline (a trigger that asked the triggerer for an XCom it cannot answer
waited that long)."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest
from stack.env import stack_paths

from tests.e2e.test_local_stack_up import Stack, _print, free_port
from tests.e2e.test_model_factory_e2e import BROKEN_BOOSTING, LOGISTIC, SETTINGS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

GRID = SETTINGS + BROKEN_BOOSTING + LOGISTIC % "[1.0]"
RUN_DEADLINE_S = 300


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "var", free_port(), free_port())
    result = s.up()
    try:
        assert result.returncode == 0, _print(result)
        yield s
    finally:
        s.shut_down()


def test_a_failed_experiment_fails_only_its_own_wait_and_the_run_ends(stack: Stack):
    grid = stack_paths(stack.var).config / "failing_grid.yaml"
    grid.parent.mkdir(parents=True, exist_ok=True)
    grid.write_text(GRID)
    api = httpx.Client(base_url=f"{stack.api}/api/v2", headers={"Authorization": f"Bearer {stack.token()}"},
                       timeout=30)
    created = api.post("/dags/model_factory/dagRuns", json={"logical_date": None, "conf": {"grid_path": str(grid)}})
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]

    deadline = time.monotonic() + RUN_DEADLINE_S
    while True:
        state = api.get(f"/dags/model_factory/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"model_factory {run_id} still {state} after {RUN_DEADLINE_S} s"
        time.sleep(2)

    tis = api.get(f"/dags/model_factory/dagRuns/{run_id}/taskInstances", params={"limit": 100}).json()
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tis["task_instances"]}
    waits = {key: s for key, s in states.items() if key[0].startswith("wait_for_")}
    assert sorted(waits.values()) == ["failed", "success"], states
    assert states[("record_outcomes", -1)] == "success", states

    with sqlite3.connect(stack.var / "warehouse.db") as db:
        rows = db.execute("SELECT family, status, error FROM experiment_outcomes WHERE factory_run_id = ?",
                          (run_id,)).fetchall()
    by_family = {family: (status, error) for family, status, error in rows}
    assert set(by_family) == {"broken_boosting", "logistic_regression"}, rows
    assert by_family["logistic_regression"][0] == "succeeded", rows
    status, error = by_family["broken_boosting"]
    assert status == "failed" and "test_size=100000" in error, rows

    # the failed wait's trigger log names the run's end and the job's own error
    [failed_wait] = [key for key, s in waits.items() if s == "failed"]
    logs = list((stack.var / "airflow" / "logs").glob(
        f"dag_id=model_factory/run_id={run_id}/task_id={failed_wait[0]}/map_index={failed_wait[1]}/*.trigger.*.log"))
    assert logs, f"no trigger log for {failed_wait}"
    text = logs[0].read_text()
    assert "ended with ENGINE_FAILED" in text and "result.json: ValueError: test_size=100000" in text, text[-2000:]
