"""Fan-out overhead: the default grid through the factory vs scikit-learn's GridSearchCV.

Both sides do the same work on the same machine, back to back: the same pipelines (one per
family), hyperparameter grid, data, stratified folds and metrics (policy value included).

* factory: the ``model_factory`` DAG (``airflow dags test``) on the embedded stack — the local
  CML workspace runs every experiment as its own subprocess, budgeted to this machine's cores;
  timed from DAG start to outcomes recorded (one-time set-up — venv, Airflow DB, training
  table — is excluded).
* baseline: ``GridSearchCV(n_jobs=<cores>, refit=False)`` per family, timed in-process,
  once before and once after the factory; the ratio uses their mean, so that a machine that
  gets faster or slower during the benchmark (these are shared) biases neither side.

With ``--scheduler`` the factory side runs under the real scheduler instead, as users of ``make
up`` (and production) run it: the stack of ``make up`` (api-server, scheduler with LocalExecutor,
dag-processor, triggerer, workspace, dashboards) is started in the benchmark's ``var/`` after the
first baseline, a one-experiment warm-up run goes first (a long-running stack pays its start-up
once, not per run; ``--cold`` measures the first run instead), then ``model_factory`` is triggered
through the REST API and timed from the DAG run's start to its end as Airflow recorded them, and
the stack is stopped before the second baseline (``benchmarks/grid_scale.py`` does the starting,
measuring and stopping). It also prints each task's first start and last end in the DAG run.

Prints the wall times, where the factory's time went, and the ratio factory / GridSearchCV.
Target: ratio <= 1.25.

    .venv/bin/python benchmarks/grid_throughput.py [--rows 20000] [--grid config/grid.yaml] [--scheduler [--cold]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _scorer(spec: dict):
    """A multi-metric scorer computing exactly the factory's metrics for one fold."""
    import numpy as np

    from factory_tasks.core.metrics import compute_metric
    from factory_tasks.core.schema import offer_indices
    from factory_tasks.training.features import counterfactual_proba

    def score(estimator, X, y):
        offer_proba = counterfactual_proba(estimator, X)
        logged = X["offer"].to_numpy(dtype=object)
        proba = offer_proba[np.arange(len(X)), offer_indices(logged)]
        return {
            name: compute_metric(name, y, proba, logged_offers=logged, offer_proba=offer_proba,
                                 economics=spec["economics"])
            for name in spec["metrics"]
        }

    return score


def gridsearch_seconds(config, data, n_jobs: int) -> tuple[float, int]:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from factory_tasks.training.features import build_pipeline, feature_frame
    from factory_tasks.training.grid import expand_grid

    specs = [s.model_dump(mode="json") for s in expand_grid(config, {"path": "-", "hash": "-"})]
    X, y = feature_frame(data), data["conversion"].to_numpy()
    started = time.perf_counter()
    fits = 0
    for family in dict.fromkeys(s["family"] for s in specs):
        family_specs = [s for s in specs if s["family"] == family]
        first = family_specs[0]
        grid = {}
        for spec in family_specs:
            for key, value in spec["params"].items():
                grid.setdefault(f"classifier__{key}", []).append(value)
        grid = {k: list(dict.fromkeys(v)) for k, v in grid.items()}
        cv = StratifiedKFold(n_splits=first["cv_folds"], shuffle=True, random_state=first["random_state"])
        search = GridSearchCV(
            build_pipeline(first["estimator"], {}, random_state=first["random_state"], n_threads=1),
            grid, scoring=_scorer(first), cv=cv, n_jobs=n_jobs, refit=False, error_score="raise",
        )
        search.fit(X, y)
        fits += len(search.cv_results_["params"]) * first["cv_folds"]
    return time.perf_counter() - started, fits


def _dag_run_window(env: dict) -> tuple["datetime", "datetime"]:
    """Start and end of the latest model_factory run as Airflow recorded them."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "airflow", "dags", "list-runs", "model_factory", "-o", "json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    runs = next(json.loads(line) for line in out.splitlines() if line.startswith("[{"))
    run = max(runs, key=lambda r: r["start_date"])
    start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
    return start, end


def _breakdown(hook, dag_start: "datetime", dag_end: "datetime", cores: int) -> dict[str, float]:
    """Where the DAG run's time went, from the CML runs' own timestamps (API v2 fields)."""
    runs = [r.raw for job in hook.list_jobs() for r in hook.list_job_runs(job.id)]
    return _breakdown_of(runs, dag_start, dag_end, cores)


def _breakdown_of(runs: list[dict], dag_start: "datetime", dag_end: "datetime", cores: int) -> dict[str, float]:
    spans = [(datetime.fromisoformat(r["running_at"].replace("Z", "+00:00")),
              datetime.fromisoformat(r["finished_at"].replace("Z", "+00:00")), float(r["cpu"]))
             for r in runs if r.get("running_at") and r.get("finished_at")]
    first, last = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
    busy = sum((e - s).total_seconds() * cpu for s, e, cpu in spans)
    span = (last - first).total_seconds()
    return {"before_first_run_s": (first - dag_start).total_seconds(), "runs_span_s": span,
            "runs_ideal_span_s": busy / cores, "after_last_run_s": (dag_end - last).total_seconds()}


def _baseline(config, data, cores: int, when: str) -> float:
    """One timed GridSearchCV pass (the baseline is taken before and after the factory)."""
    seconds, fits = gridsearch_seconds(config, data, n_jobs=cores)
    print(f"GridSearchCV(n_jobs={cores}, refit=False), {fits} fits, {when + ':':7s} {seconds:6.1f} s", flush=True)
    return seconds


def _require_all_succeeded(warehouse) -> None:
    """Stop the benchmark unless every experiment succeeded: a failed one would time nothing."""
    from factory_tasks.warehouse.outcomes import OutcomeStore

    outcomes = OutcomeStore(warehouse).read()
    failed = outcomes[outcomes.status != "succeeded"]
    if len(failed):
        raise SystemExit(f"{len(failed)} experiments failed: {failed.error.tolist()}")


def measure(config, grid_path: Path, rows: int, var: Path, cores: int) -> dict[str, Any]:
    """Baseline, factory, baseline on the same data, back to back."""
    from factory_tasks.loop.history import ensure_training_table
    from factory_tasks.warehouse.training_data import read_training_frame
    from stack.airflow_cli import dags_test
    from stack.env import stack_paths
    from stack.local import local_stack

    paths = stack_paths(var)
    with local_stack(paths) as stack:
        warehouse = stack.warehouse_hook()
        ensure_training_table(warehouse, n_rows=rows, seed=7)
        data = read_training_frame(warehouse)
        before_s = _baseline(config, data, cores, "before")
        log = paths.logs / "benchmark-model_factory.log"
        started = time.perf_counter()
        rc = dags_test("model_factory", {"grid_path": str(grid_path), "reuse_results": False},
                       stack.env, log, timeout_s=3600)
        elapsed = time.perf_counter() - started
        if rc != 0:
            raise SystemExit(f"the factory run failed (exit {rc}); see {log}")
        _require_all_succeeded(warehouse)
        dag_start, dag_end = _dag_run_window(stack.env)
        parts = _breakdown(stack.cml_hook(), dag_start, dag_end, int(stack.workspace.cpus))
        print(f"factory, DAG run:                             {(dag_end - dag_start).total_seconds():6.1f} s", flush=True)
        after_s = _baseline(config, data, cores, "after")
    return {"command_s": elapsed, "dag_run_s": (dag_end - dag_start).total_seconds(), "parts": parts,
            "gridsearch_before_s": before_s, "gridsearch_after_s": after_s}


def measure_scheduler(config, grid_path: Path, rows: int, var: Path, cores: int, *, warm: bool = True) -> dict[str, Any]:
    """Baseline, factory under the real scheduler (``make up``'s stack, started and stopped here),
    baseline, on the same data. ``warm``: a one-experiment run goes first, unmeasured, so that
    the measured run is what a long-running stack pays per run, not its start-up."""
    from stack.env import sqlite_connection, stack_paths

    paths = stack_paths(var).make()
    os.environ["AIRFLOW_HOME"] = str(paths.airflow_home)  # before Airflow is imported
    os.environ["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] = sqlite_connection(paths.warehouse_db)
    from airflow.sdk import BaseHook

    from benchmarks.grid_scale import format_timeline, run_under_scheduler, task_timeline
    from factory_tasks.core.names import WAREHOUSE_CONN_ID
    from factory_tasks.loop.history import ensure_training_table
    from factory_tasks.warehouse.training_data import read_training_frame

    warehouse = BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()
    ensure_training_table(warehouse, n_rows=rows, seed=7)  # what `make up` would make, made first
    data = read_training_frame(warehouse)
    before_s = _baseline(config, data, cores, "before")
    warm_up = None
    if warm:
        from benchmarks.grid_scale import write_grid

        warm_up = {"grid_path": str(write_grid(var / "config" / "grid-warm-up.yaml", 1, folds=2, max_parallel=1)),
                   "reuse_results": False}
    run = run_under_scheduler(var, {"grid_path": str(grid_path), "reuse_results": False}, rows=rows,
                              timeout_s=3600, warm_up=warm_up, say=lambda msg: print(msg, flush=True))
    if run.state != "success":
        raise SystemExit(f"the factory run ended {run.state}; logs under {paths.logs}")
    _require_all_succeeded(warehouse)
    parts = _breakdown_of(run.runs, run.dag_start, run.dag_end, cores)
    print(f"factory, DAG run under the scheduler:         {run.wall_s:6.1f} s", flush=True)
    print("\n".join(format_timeline(task_timeline(run.tis, run.dag_start))), flush=True)
    after_s = _baseline(config, data, cores, "after")
    return {"command_s": run.trigger_to_end_s, "dag_run_s": run.wall_s, "parts": parts,
            "gridsearch_before_s": before_s, "gridsearch_after_s": after_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=REPO / "config" / "grid.yaml")
    parser.add_argument("--rows", type=int, default=64_000)
    parser.add_argument("--var", type=Path, default=None, help="stack folder (default: a fresh temp dir)")
    parser.add_argument("--scheduler", action="store_true",
                        help="run the factory under the real scheduler (make up's stack), not `airflow dags test`")
    parser.add_argument("--cold", action="store_true",
                        help="with --scheduler: measure the freshly started stack's first run (no warm-up run)")
    args = parser.parse_args()

    from factory_tasks.training.grid import load_grid

    cores = os.cpu_count() or 1
    config = load_grid(args.grid)
    var = args.var or Path(tempfile.mkdtemp(prefix="mf-bench-"))
    mode = "the real scheduler (make up's stack)" if args.scheduler else "`airflow dags test`"
    print(f"grid {args.grid} ({config.size} experiments, {config.cv.folds} folds), {args.rows} rows, "
          f"{cores} cores, factory under {mode}", flush=True)
    if args.scheduler:
        measured = measure_scheduler(config, args.grid.resolve(), args.rows, var, cores, warm=not args.cold)
    else:
        measured = measure(config, args.grid.resolve(), args.rows, var, cores)
    command_s, dag_run_s, parts = measured["command_s"], measured["dag_run_s"], measured["parts"]
    baseline_s = (measured["gridsearch_before_s"] + measured["gridsearch_after_s"]) / 2
    print(f"factory, DAG run as Airflow records it:      {dag_run_s:8.1f} s")
    print(f"  before the first CML run starts:           {parts['before_first_run_s']:8.1f} s  "
          f"({'' if args.scheduler else 'dags-test start-up, '}validate, snapshot, plan)")
    print(f"  first run start to last run end:           {parts['runs_span_s']:8.1f} s  "
          f"(run time / cores: {parts['runs_ideal_span_s']:.1f} s; the rest is cores left idle)")
    print(f"  after the last run ends:                   {parts['after_last_run_s']:8.1f} s  "
          "(wait, collect, record)", flush=True)
    print(f"factory, {'trigger to end seen over REST' if args.scheduler else 'whole `airflow dags test` command'}:"
          f"  {command_s:8.1f} s", flush=True)
    print(f"GridSearchCV, mean of before and after:     {baseline_s:8.1f} s")
    ratio, command_ratio = dag_run_s / baseline_s, command_s / baseline_s
    print(f"ratio factory DAG run / GridSearchCV: {ratio:.2f}  "
          f"(target <= 1.25: {'met' if ratio <= 1.25 else 'NOT met'})")
    if args.scheduler:
        print(f"ratio trigger-to-end / GridSearchCV: {command_ratio:.2f}  (adds the wait for the scheduler to "
              "start the run and this script's 5-s polling)")
    else:
        print(f"ratio whole dags-test command / GridSearchCV: {command_ratio:.2f}  "
              "(adds `airflow dags test` start-up, which a running scheduler does not pay per run)")
    print(json.dumps({"benchmark": "grid_throughput", "dag_run_s": round(dag_run_s, 2),
                      "command_s": round(command_s, 2), "gridsearch_s": round(baseline_s, 2),
                      "gridsearch_before_s": round(measured["gridsearch_before_s"], 2),
                      "gridsearch_after_s": round(measured["gridsearch_after_s"], 2),
                      "ratio": round(ratio, 3), "command_ratio": round(command_ratio, 3),
                      **{k: round(v, 2) for k, v in parts.items()},
                      "rows": args.rows, "experiments": config.size, "cores": cores,
                      "mode": ("scheduler-cold" if args.cold else "scheduler") if args.scheduler else "dags-test"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
