"""`make run`: the factory end to end on the embedded default.

Starts the local CML workspace, makes sure the Airflow metadata DB and the simulated training
table exist, runs the ``model_factory`` DAG with ``airflow dags test`` while showing the
experiments' progress, then prints the leaderboard and where everything is. Stops what it
started, also on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter

from stack.airflow_cli import dags_test
from stack.env import PROJECT_NAME, stack_paths
from stack.local import local_stack

DEFAULT_ROWS = 64_000
DEFAULT_SEED = 7
RUN_TIMEOUT_S = 45 * 60


def _say(msg: str = "") -> None:
    print(msg, flush=True)


class Progress:
    """Counts this factory run's experiment job runs by state, printing a line when it changes."""

    def __init__(self, cml, since: float):
        self.cml = cml
        self.since = since
        self.last = ""

    def __call__(self) -> None:
        try:
            counts = Counter(self._states())
        except Exception:  # the workspace is ours and local: a missed tick is harmless
            return
        if not counts:
            return
        done = counts["ENGINE_SUCCEEDED"]
        failed = sum(counts[s] for s in ("ENGINE_FAILED", "ENGINE_TIMEDOUT", "ENGINE_STOPPED", "ENGINE_SKIPPED"))
        waiting = counts["ENGINE_SCHEDULING"]
        running = counts["ENGINE_STARTING"] + counts["ENGINE_RUNNING"] + counts["ENGINE_STOPPING"]
        total = sum(counts.values())
        line = (f"  experiments: {total} submitted | {waiting} queued | {running} running | "
                f"{done} succeeded | {failed} failed")
        if line != self.last:
            self.last = line
            _say(f"{time.strftime('%H:%M:%S')} {line}")

    def _states(self):
        for job in self.cml.list_jobs():
            if not job.name.startswith("model-factory-experiment-"):
                continue
            for run in self.cml.list_job_runs(job.id, max_pages=20):
                if _epoch(run.created_at) >= self.since:
                    yield run.status.value


def _epoch(iso: str | None) -> float:
    from datetime import datetime

    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _latest_outcomes(warehouse):
    from factory_tasks.outcome_store import OutcomeStore

    frame = OutcomeStore(warehouse).read()
    if frame.empty:
        return frame, None
    latest = frame.sort_values("recorded_at")["factory_run_id"].iloc[-1]
    return frame[frame["factory_run_id"] == latest], latest


def run(grid_path: str = "config/grid.yaml", rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> int:
    from factory_tasks.leaderboard import format_leaderboard
    from factory_tasks.settings import summary_path
    from factory_tasks.summary import refresh_summary
    from factory_tasks.training_data import ensure_training_table

    logging.basicConfig(level=logging.WARNING)
    paths = stack_paths()
    started = time.time()
    _say(f"Model Factory — embedded default stack under {paths.var}")
    with local_stack(paths) as stack:
        _say(f"[1/5] local CML workspace up at {stack.workspace.url} "
             f"(project {PROJECT_NAME!r}, budget {stack.workspace.cpus} cores)")
        _say(f"[2/5] Airflow metadata DB {'created' if stack.migrated_now else 'ready'} in {paths.airflow_home}")
        os.environ["MODEL_FACTORY_ARTIFACTS"] = stack.env["MODEL_FACTORY_ARTIFACTS"]
        warehouse = stack.warehouse_hook()
        created = ensure_training_table(warehouse, n_rows=rows, seed=seed)
        _say(f"[3/5] training table historical_customer_interactions "
             f"{f'simulated ({rows} rows, seed {seed})' if created else 'already present'} in {paths.warehouse_db}")
        run_log = paths.logs / f"model_factory-{time.strftime('%Y%m%dT%H%M%S')}.log"
        _say(f"[4/5] running DAG model_factory (airflow dags test); log: {run_log}")
        rc = dags_test("model_factory", {"grid_path": grid_path}, stack.env, run_log,
                       timeout_s=RUN_TIMEOUT_S, on_tick=Progress(stack.cml_hook(), since=time.time() - 1))
        outcomes, run_id = _latest_outcomes(warehouse)
        summary = summary_path()
        refresh_summary(warehouse, summary)
    _say(f"[5/5] done in {time.time() - started:.0f}s (DAG exit code {rc})")
    _say()
    if run_id is None:
        _say(f"No outcomes were recorded. See {run_log}")
        return rc or 1
    reused = int((outcomes["run_status"] == "REUSED").sum())
    failed = int((outcomes["status"] != "succeeded").sum())
    _say(f"Factory run {run_id}: {len(outcomes)} experiments, {len(outcomes) - reused} run now, "
         f"{reused} reused from identical earlier experiments, {failed} failed")
    _say(format_leaderboard(outcomes))
    _say()
    _say("Where to look:")
    _say(f"  outcome table     experiment_outcomes in {paths.warehouse_db} (connection model_factory_warehouse)")
    _say(f"  summary CSV       {summary}")
    _say(f"  model artifacts   {paths.workspace_root}/projects/<project id>/files/experiments/<experiment id>/")
    _say(f"  DAG run log       {run_log}")
    _say("  Airflow UI        make airflow-ui, then open http://127.0.0.1:8080 → DAG model_factory")
    _say("  dashboard         make dashboard, then open http://127.0.0.1:5006/experiments_app")
    return rc


if __name__ == "__main__":
    sys.exit(run())
