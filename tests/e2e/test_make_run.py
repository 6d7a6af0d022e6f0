"""`make run` (``python -m stack run``) as a user sees it: a real subprocess on a tmp
``MODEL_FACTORY_VAR`` with the real workspace, Airflow and SQLite warehouse. It reports
*this* DAG run — its leaderboard or the failing task's error — never an older run's, exits
non-zero when the run failed, and a refusal or Ctrl-C is a short message, not a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stack.env import REPO, stack_paths

pytestmark = pytest.mark.e2e

ROWS = 4000  # enough for a refit to agree with its CV estimate (the deploy gate checks it)
#: an older factory run already in the warehouse, recorded "later" than anything real, so a
#: driver that picked the newest recorded run would print it
OLD_RUN = "manual__2020-01-01T00:00:00+00:00"
OLD_EXPERIMENT = "0123456789abcdef"
OLD_FAMILY = "seeded_older_family"

SETTINGS = """
cv: {folds: %d, random_state: 0}
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


def stack_env(var: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["MODEL_FACTORY_VAR"] = str(var)
    return env


def make_run(var: Path, grid: Path, timeout: float = 540) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stack", "run", "--grid", str(grid), "--rows", str(ROWS)],
        cwd=REPO, env=stack_env(var), capture_output=True, text=True, timeout=timeout,
    )


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


@pytest.fixture(scope="module")
def var(tmp_path_factory) -> Path:
    """One stack folder for the module (Airflow's DB is migrated once), with an older run."""
    var = tmp_path_factory.mktemp("make-run") / "var"
    seed_older_run(var)
    return var


def test_an_invalid_grid_prints_the_grid_error_and_no_older_leaderboard(var, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SETTINGS % 1 + LOGISTIC)  # one fold: invalid
    proc = make_run(var, grid)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "task validate_grid failed:" in out
    assert f"GridError: invalid grid config {grid} (1 problem):" in out
    assert re.search(rf"{re.escape(str(grid))}:\d+: cv\.folds: Input should be greater than or equal to 2", out), out
    assert "Traceback" not in out
    assert "Top " not in out  # no leaderboard at all
    assert_no_older_run(out)
    assert re.search(r"No outcomes were recorded for factory run manual__\S+\.", out), out


def test_a_successful_run_prints_its_own_leaderboard(var, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SETTINGS % 2 + LOGISTIC)
    proc = make_run(var, grid, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    run_id = re.search(r"\[5/8\] DAG run (manual__\S+): success after", out).group(1)
    assert f"Factory run {run_id}: 1 experiments" in out
    assert "Top 1 of 1 experiments, ranked by roc_auc" in out
    assert "logistic_regression" in out
    assert_no_older_run(out)
    # then the deploy, and the endpoint's answers for five simulated customers
    assert "gate: first deployment: no model is serving yet" in out
    assert re.search(rf"Serving model \S+ \(experiment [0-9a-f]{{16}} of {re.escape(run_id)}, chosen automatic\)", out), out
    assert len(re.findall(r"^  sim-\d ", out, flags=re.M)) == 5
    assert re.search(r"worth \S+ per customer, \d+\.\d% of the optimal policy", out), out
    # then the closed loop: three windows of traffic, the drift seen by monitoring, the retrain queued
    assert "[8/8] closed-loop demo: 3 hourly windows of traffic" in out
    assert re.search(r"traffic: 6,000 decisions \(\d+ explored\), responses: \d+ attached, \d+ duplicate", out), out
    cohorts = re.findall(r"^  (\d\d:\d\d)  +2,000 .*  (\w+) (\d\.\d\d)$", out, flags=re.M)
    assert len(cohorts) == 3, out
    assert float(cohorts[0][2]) < 0.10  # before the drift: no feature moved
    assert cohorts[1][1] == "channel" and float(cohorts[1][2]) >= 0.25  # the customer mix moved
    assert re.search(r"^  ALERT \d\d:\d\d feature_drift: channel: drift_psi 0\.\d+ >= 0\.25", out, flags=re.M), out
    assert re.search(r"retrain queued: model_factory run monitoring__\d{8}T\d{6} \(include_interactions=true\)", out), out


def _descendants_of(var: Path) -> list[int]:
    """Processes whose environment holds this MODEL_FACTORY_VAR (all that the run started)."""
    marker = f"MODEL_FACTORY_VAR={var}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _until_an_experiment_runs(var: Path, grid: Path, then) -> tuple[int, str]:
    """Start `make run` as a terminal's foreground job (its own process group: Ctrl-C signals
    the whole group), call ``then(proc)`` once an experiment is seen running; returns the exit
    code and the output once everything the run started has ended."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stack", "run", "--grid", str(grid), "--rows", str(ROWS)],
        cwd=REPO, env=stack_env(var), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
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
        started = _descendants_of(var)
        assert len(started) >= 3, started  # the workspace server, airflow dags test, the experiment run
        then(proc)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    deadline = time.monotonic() + 15
    while _descendants_of(var):
        assert time.monotonic() < deadline, f"still running after make run ended: {_descendants_of(var)}"
        time.sleep(0.2)
    return code, "".join(lines)


def test_ctrl_c_stops_everything_and_says_so(var, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SETTINGS % 5 + SLOW_FOREST)
    code, out = _until_an_experiment_runs(var, grid, lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    tail = out.strip().splitlines()[-2:]
    assert tail[0].startswith("Interrupted (Ctrl-C): the DAG run, the local CML workspace and its experiment runs"), out
    assert "make run" in tail[1], out


def test_a_workspace_that_dies_ends_the_run_with_that_reason(var, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SETTINGS % 4 + SLOW_FOREST)  # not the Ctrl-C test's experiment: no reuse

    def kill_the_workspace(_proc):
        holder = (stack_paths(var).workspace_root / "server.lock").read_text()
        os.kill(int(re.match(r"pid (\d+)", holder).group(1)), signal.SIGKILL)

    code, out = _until_an_experiment_runs(var, grid, kill_the_workspace)
    assert code == 1, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith(
        "make run failed: the local CML workspace stopped during the run (killed by SIGKILL)"), out
    assert_no_older_run(out)


def test_a_second_make_run_on_the_same_folder_is_refused_in_two_lines(tmp_path):
    from stack.local import stack_lock

    paths = stack_paths(tmp_path / "var")
    with stack_lock(paths):  # what a running `make run` holds
        proc = make_run(paths.var, REPO / "config" / "grid.yaml", timeout=120)
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 75, out
    assert len(out) == 3, out  # the banner, then the refusal in two lines
    assert out[1].startswith(f"make run refused: {paths.var} is in use by another stack command (pid {os.getpid()}")
    assert "MODEL_FACTORY_VAR" in out[2]
    assert not paths.workspace_root.exists()  # refused before starting anything


def test_a_workspace_server_already_on_the_folder_is_refused_in_two_lines(tmp_path):
    from cml_workspace.server_process import running_workspace

    paths = stack_paths(tmp_path / "var")
    with running_workspace(paths.workspace_root, project="") as other:
        holder = f"pid {other.pid} on {other.url}"
        proc = make_run(paths.var, REPO / "config" / "grid.yaml", timeout=120)
        assert other.is_running()  # and unharmed
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 75, out
    assert len(out) == 3, out  # the banner, then the refusal in two lines
    assert out[1] == f"make run refused: another workspace server ({holder}) is using {paths.workspace_root}."
    assert "MODEL_FACTORY_VAR" in out[2]
