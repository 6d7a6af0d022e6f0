"""`make run` (``python -m stack run``) as a user sees it: a real subprocess on a tmp
``MODEL_FACTORY_VAR``, driving the stack of ``make up`` over its REST API.

* On the session's running stack it uses that stack and leaves it up, and reports *this*
  factory run — its leaderboard, its deployment, the closed loop (``--no-ab-test``: the gate
  alone decides the retrain) — never an older run's.
* Ctrl-C during the experiments: exit 130 in two lines, the DAG run failed, the CML runs it
  started stopped (the workspace's records), the stack still up.
* On a fresh folder it starts the stack itself; a bad grid ends it with the grid's error and a
  non-zero exit, and nothing it started is left running.
* A second ``make run`` on the same folder is refused in two lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from stack.env import REPO, stack_paths

from tests.e2e.test_local_stack_up import Stack, free_port, live, processes_of, recorded

pytestmark = pytest.mark.e2e

ROWS = 4000  # enough for a refit to agree with its CV estimate (the deploy gate checks it)
#: an older factory run already in the warehouse, recorded "later" than anything real, so a
#: driver that picked the newest recorded run would print it
OLD_RUN = "manual__2020-01-01T00:00:00+00:00"
OLD_EXPERIMENT = "0123456789abcdef"
OLD_FAMILY = "seeded_older_family"

#: random_state 1: no other test of the session's stack runs these experiments (they would be reused)
SETTINGS = """
cv: {folds: %d, random_state: 1}
metrics: [roc_auc, log_loss]
ranking_metric: roc_auc
max_parallel: 2
economics:
  conversion_value: 100.0
  offer_costs: {Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}
data: {table: historical_customer_interactions}
families:
"""
LOGISTIC = """
  logistic_regression:
    estimator: LogisticRegression
    resources: {cpu: 1, memory_gb: 1}
    params: {C: [1.0]}
"""
#: long enough to be seen running (hundreds of trees per fold), stopped by the test
SLOW_FOREST = """
  slow_forest:
    estimator: RandomForestClassifier
    resources: {cpu: 1, memory_gb: 1}
    params: {n_estimators: [3000]}
"""


def stack_env(var: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "MODEL_FACTORY_"))}
    env["MODEL_FACTORY_VAR"] = str(var)
    env.update(extra)
    return env


def make_run(var: Path, grid: Path, timeout: float, *args: str, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "stack", "run", "--grid", str(grid), "--rows", str(ROWS), *args],
        cwd=REPO, env=stack_env(var, **env), capture_output=True, text=True, timeout=timeout,
    )
    print(proc.stdout + proc.stderr)
    return proc


def seed_older_run(var: Path) -> None:
    """One succeeded outcome row of OLD_RUN in the stack's warehouse."""
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    from factory_tasks.warehouse.outcomes import OUTCOME_COLUMNS, OutcomeStore

    by_type = {"string": "seeded", "double": 0.99, "bigint": 2}
    row = {c.name: by_type[c.type] for c in OUTCOME_COLUMNS}
    row.update(factory_run_id=OLD_RUN, experiment_id=OLD_EXPERIMENT, family=OLD_FAMILY, status="succeeded",
               error=None, params_json="{}", ranking_metric="roc_auc", run_status="ENGINE_SUCCEEDED",
               recorded_at="2099-01-01T00:00:00+00:00")
    for column in OUTCOME_COLUMNS:
        if column.name.endswith("_folds") and column.type == "string":  # per-fold scores, JSON
            row[column.name] = "[0.99, 0.99]"
    var.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_SEEDED_WAREHOUSE",
                  json.dumps({"conn_type": "sqlite", "host": str(stack_paths(var).warehouse_db)}))
        OutcomeStore(SqliteHook(sqlite_conn_id="seeded_warehouse")).replace_run(OLD_RUN, [row])


def assert_no_older_run(output: str) -> None:
    for older in (OLD_RUN, OLD_EXPERIMENT, OLD_FAMILY):
        assert older not in output, output


def assert_still_up(stack: Stack, before: list[dict]) -> None:
    after = recorded(stack.var)
    assert [(r["name"], r["pid"]) for r in after] == [(r["name"], r["pid"]) for r in before]
    assert all(live(r) for r in after), after


def test_a_second_make_run_on_the_same_folder_is_refused_in_two_lines(tmp_path):
    from stack.local import acquire_driver_lock

    paths = stack_paths(tmp_path / "var")
    with acquire_driver_lock(paths):  # what a running `make run` holds
        proc = make_run(paths.var, REPO / "config" / "grid.yaml", timeout=120)
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 75, out
    assert len(out) == 3, out  # the banner, then the refusal in two lines
    assert out[1].startswith(f"make run refused: {paths.var} is in use by another make run (pid {os.getpid()}")
    assert "MODEL_FACTORY_VAR" in out[2]
    assert not (paths.var / "stack-up.json").exists() and not paths.workspace_root.exists()  # nothing started


@pytest.mark.timeout(1800)
def test_on_the_running_stack_it_reports_this_run_and_leaves_the_stack_up(shared_stack: Stack, tmp_path):
    from stack.closed_loop import DEMO_CONFIG

    seed_older_run(shared_stack.var)
    before = recorded(shared_stack.var)
    grid = tmp_path / "grid.yaml"
    grid.write_text(SETTINGS % 2 + LOGISTIC)
    # an earlier loop on this stack (another test's, or make run's) left its settings
    demo_config = stack_paths(shared_stack.var).config / DEMO_CONFIG
    earlier_loop = demo_config.is_file()
    # the A/B phase is the chain test's and the A/B test's: here the gate alone decides the retrain
    proc = make_run(shared_stack.var, grid, 1500, "--no-ab-test")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "[1/8] using the stack of make up" in out
    copy = re.search(r"\[3/8\] grid \S+, copied to (\S+) \(a config folder", out).group(1)
    assert Path(copy).parent == stack_paths(shared_stack.var).config and Path(copy).read_text() == grid.read_text()
    run_id = re.search(r"\[5/8\] model_factory run (manual__\S+): success after", out).group(1)
    assert f"Factory run {run_id}: 1 experiments" in out
    assert "Top 1 of 1 experiments, ranked by roc_auc" in out
    assert "logistic_regression" in out
    assert_no_older_run(out)
    # the gate reads the champion's live traffic with the response window its traffic was made with
    conf = shared_stack.running().api.dag_run("model_factory", run_id)["conf"]
    assert conf.get("loop_config_path") == (str(demo_config) if earlier_loop else None), conf
    assert re.search(r"^\d\d:\d\d:\d\d experiments: 1 submitted \| .*; tasks: .*run_experiment", out, flags=re.M), out
    # then the deployment the run's asset event started, and the closed loop (stack.deploy, stack.closed_loop)
    for step in ("[6/8]", "[7/8]", "[8/8]"):
        assert step in out, out
    assert "the retrain decided by the gate alone (--no-ab-test)" in out
    assert re.search(r"→ deploy_best_model run \S+[^\n]* → (a new champion deployed|the champion kept): ", out), out
    assert "A/B traffic" not in out and "closed loop closed after" in out
    assert "Where to look:" in out and shared_stack.api in out
    assert "Traceback" not in out
    assert_still_up(shared_stack, before)
    # nothing of the deployments is left deferred for a later triggerer to resume (issue 22's
    # fault 2: a one-shot runner's orphaned deploy trigger, resumed by make up's triggerer,
    # stopped the live deployment)
    db = sqlite3.connect(stack_paths(shared_stack.var).airflow_home / "airflow.db")
    try:
        (left,) = db.execute("SELECT count(*) FROM task_instance WHERE dag_id = 'deploy_best_model' "
                             "AND (state = 'deferred' OR trigger_id IS NOT NULL)").fetchone()
    finally:
        db.close()
    assert left == 0


@pytest.mark.timeout(900)
def test_ctrl_c_during_the_experiments_stops_this_runs_cml_runs(shared_stack: Stack, tmp_path):
    from stack.run import experiment_runs

    before = recorded(shared_stack.var)
    grid = tmp_path / "grid.yaml"
    grid.write_text(SETTINGS % 5 + SLOW_FOREST)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stack", "run", "--grid", str(grid), "--rows", str(ROWS)],
        cwd=REPO, env=stack_env(shared_stack.var), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # a terminal's foreground job: Ctrl-C signals its whole process group
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any(re.search(r"\| [1-9]\d* running \|", line) for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no experiment was seen running:\n" + "".join(lines)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    out = "".join(lines)
    print(out)
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    run_id = re.search(r"\[4/8\] model_factory triggered over REST: run (\S+) ", out).group(1)
    tail = out.strip().splitlines()[-2:]
    assert tail[0].startswith(f"Interrupted (Ctrl-C): factory run {run_id} marked failed, "), out
    assert re.search(r", [1-9]\d* experiment runs? of it stopped; the stack keeps running\.$", tail[0]), out
    assert "make run" in tail[1], out

    stack = shared_stack.running()
    assert stack.api.dag_run("model_factory", run_id)["state"] == "failed"
    runs = experiment_runs(stack.cml_hook(), run_id)
    assert runs, "the workspace recorded no run of this factory run"
    assert {r.status.value for r in runs} <= {"ENGINE_STOPPED", "ENGINE_STOPPING"}, [(r.id, r.status) for r in runs]
    time.sleep(3)  # a stop that takes effect later still ends the run
    runs = experiment_runs(stack.cml_hook(), run_id)
    assert all(r.status.is_terminal for r in runs), [(r.id, r.status) for r in runs]
    assert_still_up(shared_stack, before)


@pytest.mark.timeout(900)
def test_on_a_fresh_folder_it_starts_the_stack_and_a_bad_grid_stops_it_again(tmp_path):
    var = tmp_path / "var"
    seed_older_run(var)
    grid = tmp_path / "grid.yaml"
    grid.write_text(SETTINGS % 1 + LOGISTIC)  # one fold: invalid
    ports = {"MODEL_FACTORY_API_PORT": str(free_port()), "MODEL_FACTORY_DASHBOARD_PORT": str(free_port())}
    try:
        proc = make_run(var, grid, timeout=600, **ports)
        left = processes_of(var)
        state_file = (var / "stack-up.json").exists()
    finally:
        Stack(var, int(ports["MODEL_FACTORY_API_PORT"]), int(ports["MODEL_FACTORY_DASHBOARD_PORT"])).kill_everything()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "[1/8] no stack is up under" in out
    assert "pool model_factory_experiments: 4 slots" in out  # make up's machinery made the pool
    assert "task plan_experiments failed:" in out
    # the error names the grid the user named, not its copy under var/config
    assert f"GridError: invalid grid config {grid} (1 problem):" in out, out
    assert re.search(rf"{re.escape(str(grid))}:\d+: cv\.folds: Input should be greater than or equal to 2", out), out
    assert "Traceback" not in out
    assert "Top " not in out  # no leaderboard at all
    assert_no_older_run(out)
    assert re.search(r"No outcomes were recorded for factory run manual__\S+\.", out), out
    assert out.index("Stopping the stack make run started") > out.index("task plan_experiments failed:"), out
    assert not state_file and left == [], left
