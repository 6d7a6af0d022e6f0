"""Fan-out cost: the default grid through ``model_factory`` under the scheduler vs scikit-learn's GridSearchCV.

Both sides do the same work on the same machine, back to back: the same pipelines (one per
family), hyperparameter grid, data, stratified folds and metrics (policy value included).

* baseline: ``GridSearchCV(n_jobs=<cores>, refit=False)`` per family, timed in-process, before
  the first factory run and after each; a run's ratio uses the mean of the two on either side,
  so that a machine that gets faster or slower during the benchmark (these are shared) biases
  neither side.
* trials: ``--trials`` factory runs (default 3), each on the stack started afresh after the
  baseline before it and stopped before the baseline after it. The same fits vary by more than
  the target's margin between runs minutes apart on a shared machine, so each verdict takes
  the median of its figure over the trials; the median trial is shown in full.
* factory: as users of ``make up`` (and production) run it. The stack of ``make up``
  (api-server, scheduler with LocalExecutor, dag-processor, triggerer, the local CML workspace
  running each experiment as its own process, budgeted to this machine's cores) is started in
  the benchmark's ``var/`` after each baseline but the last, every other DAG paused; a one-experiment
  warm-up run goes first (a long-running stack pays its start-up once, not per run; ``--cold``
  measures the fresh stack's first run instead); then ``model_factory`` is triggered over REST
  and timed from the DAG run's start to its end as Airflow recorded them; the stack is stopped
  before the next baseline (``benchmarks/grid_scale.py`` starts, measures and stops it).

Prints the per-task timeline (and one line per experiment: its task instance, its CML run),
then the split: wall; the runs' own time per core (the CML runs' ``finished_at - running_at``
summed, over the cores) against GridSearchCV's; the fixed orchestration (wall minus the runs'
time per core: before the first run, cores left idle between, after the last); and the
experiment job's profile (process start, snapshot load, fitting, scoring, artifact save, exit),
summed over the runs from the timings each job records in its ``result.json``, beside
GridSearchCV's own fit and score times.

Targets (issue #19): ratio factory / GridSearchCV <= 1.20; fixed orchestration <= 5 s; the
runs' own time per core <= 1.10 x GridSearchCV's.

    .venv/bin/python benchmarks/grid_throughput.py [--trials 3] [--rows 64000] [--grid config/grid.yaml]
        [--cold] [--var DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_RATIO = 1.20
TARGET_FIXED_S = 5.0
TARGET_RUNS_PER_CORE = 1.10


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


def gridsearch(config, data, n_jobs: int) -> dict[str, float]:
    """One GridSearchCV pass per family: wall seconds, fits, and the fit and score seconds its
    workers spent, summed over candidates and folds (``cv_results_``)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from factory_tasks.training.features import build_pipeline, feature_frame
    from factory_tasks.training.grid import expand_grid

    specs = [s.model_dump(mode="json") for s in expand_grid(config, {"path": "-", "hash": "-"})]
    X, y = feature_frame(data), data["conversion"].to_numpy()
    started = time.perf_counter()
    fits, fit_s, score_s = 0, 0.0, 0.0
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
        folds = first["cv_folds"]
        fits += len(search.cv_results_["params"]) * folds
        fit_s += float(search.cv_results_["mean_fit_time"].sum()) * folds
        score_s += float(search.cv_results_["mean_score_time"].sum()) * folds
    return {"seconds": time.perf_counter() - started, "fits": fits, "fit": fit_s, "score": score_s}


def _baseline(config, data, cores: int, when: str) -> dict[str, float]:
    """One timed GridSearchCV pass (the baseline is taken before and after the factory)."""
    measured = gridsearch(config, data, n_jobs=cores)
    print(f"GridSearchCV(n_jobs={cores}, refit=False), {measured['fits']} fits, {when + ':':7s} "
          f"{measured['seconds']:6.1f} s (fit {measured['fit']:.1f} s, score {measured['score']:.1f} s summed over "
          f"the fits; load {os.getloadavg()[0]:.1f})", flush=True)
    return measured


def _require_all_succeeded(warehouse, factory_run_id: str) -> None:
    """Stop the benchmark unless every experiment succeeded: a failed one would time nothing."""
    from factory_tasks.warehouse.outcomes import OutcomeStore

    outcomes = OutcomeStore(warehouse).read(factory_run_id)
    failed = outcomes[outcomes.status != "succeeded"]
    if len(failed) or not len(outcomes):
        raise SystemExit(f"{len(failed)} of {len(outcomes)} experiments failed: {failed.error.tolist()}")


def measure(config, grid_path: Path, rows: int, var: Path, cores: int, *, warm: bool, trials: int):
    """Baseline, then ``trials`` times: the factory under the scheduler, baseline; on the same
    data. Each trial starts the stack and stops it before the baseline that follows, so every
    baseline runs on a machine without the stack, and each factory run is bracketed by two."""
    from stack.env import DEFAULT_SEED, sqlite_connection, stack_paths

    paths = stack_paths(var).make()
    os.environ["AIRFLOW_HOME"] = str(paths.airflow_home)  # before Airflow is imported
    os.environ["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] = sqlite_connection(paths.warehouse_db)
    from airflow.sdk import BaseHook

    from benchmarks.grid_scale import measure_run, run_to_end, scheduler_stack, write_grid
    from factory_tasks.core.names import WAREHOUSE_CONN_ID
    from factory_tasks.loop.history import ensure_training_table
    from factory_tasks.warehouse.training_data import read_training_frame

    def say(msg: str) -> None:
        print(msg, flush=True)

    warehouse = BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()
    ensure_training_table(warehouse, n_rows=rows, seed=DEFAULT_SEED)  # what `make up` would make, made first
    data = read_training_frame(warehouse)
    baselines, runs = [_baseline(config, data, cores, "before")], []
    for trial in range(1, trials + 1):
        say(f"\ntrial {trial} of {trials}")
        with scheduler_stack(var, rows=rows, say=say) as stack:
            if warm:
                grid = write_grid(paths.config / "grid-warm-up.yaml", 1, folds=2, max_parallel=1)
                started = time.perf_counter()
                warm_run = run_to_end(stack.api, {"grid_path": str(grid), "reuse_results": False}, timeout_s=600)
                say(f"warm-up run {warm_run['dag_run_id']} {warm_run['state']} "
                    f"in {time.perf_counter() - started:.0f} s")
            run = measure_run(stack, {"grid_path": str(grid_path), "reuse_results": False}, timeout_s=3600,
                              sample_s=2.0, follow=False, say=say)
            if run.state != "success":
                raise SystemExit(f"the factory run ended {run.state}; logs under {paths.logs}")
            _require_all_succeeded(stack.warehouse_hook(), run.run_id)
        runs.append(run)
        baselines.append(_baseline(config, data, cores, "after"))
    return runs, baselines


def split(run, baseline_s: float, cores: int) -> dict[str, float]:
    """Wall = the runs' own time per core + the fixed orchestration (before the first run,
    cores left idle while the runs went, after the last)."""
    from benchmarks.grid_scale import run_spans

    spans = run_spans(run.runs)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    runs_s = sum(e - s for s, e in spans)
    runs_per_core = runs_s / cores
    wall = run.wall_s
    return {"wall_s": wall, "runs_s": runs_s, "runs_per_core_s": runs_per_core, "fixed_s": wall - runs_per_core,
            "before_first_run_s": first - run.dag_start.timestamp(),
            "idle_cores_s": (last - first) - runs_per_core, "after_last_run_s": run.dag_end.timestamp() - last,
            "gridsearch_s": baseline_s, "ratio": wall / baseline_s, "runs_ratio": runs_per_core / baseline_s}


def _met(value: float, target: float) -> str:
    return f"(target <= {target:g}: {'met' if value <= target else 'NOT met'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=REPO / "config" / "grid.yaml")
    parser.add_argument("--rows", type=int, default=64_000)
    parser.add_argument("--var", type=Path, default=None, help="stack folder (default: a fresh temp dir)")
    parser.add_argument("--cold", action="store_true",
                        help="measure the freshly started stack's first run (no warm-up run)")
    parser.add_argument("--trials", type=int, default=3,
                        help="factory runs, each on a freshly started stack between two baselines (default 3)")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")

    from benchmarks.grid_scale import (
        experiment_timeline,
        format_profile,
        format_timeline,
        job_profile,
        pool_check,
        task_timeline,
    )
    from factory_tasks.training.grid import load_grid

    cores = os.cpu_count() or 1
    config = load_grid(args.grid)
    var = (args.var or Path(tempfile.mkdtemp(prefix="mf-bench-"))).resolve()
    which = "cold: the fresh stack's first run" if args.cold else "warm: after a one-experiment run"
    print(f"grid {args.grid} ({config.size} experiments, {config.cv.folds} folds, max_parallel "
          f"{config.max_parallel}), {args.rows} rows, {cores} cores, factory under the scheduler ({which}); "
          f"load {os.getloadavg()[0]:.1f} at the start", flush=True)
    runs, baselines = measure(config, args.grid.resolve(), args.rows, var, cores, warm=not args.cold,
                              trials=args.trials)
    trials = [(run, before, after, split(run, (before["seconds"] + after["seconds"]) / 2, cores))
              for run, before, after in zip(runs, baselines, baselines[1:])]
    # the trial whose ratio is the median is shown in full; each verdict takes its figure's median
    run, before, after, parts = sorted(trials, key=lambda t: t[3]["ratio"])[(len(trials) - 1) // 2]
    baseline_s = parts["gridsearch_s"]
    print(f"\n{run.run_id} (the median trial): per-task timeline")
    print("\n".join(format_timeline(task_timeline(run.tis, run.dag_start))))
    print("one line per experiment (its task instance and its CML run):")
    print("\n".join(experiment_timeline(run.tis, run.runs, run.dag_start)))
    pool = pool_check(run.runs, config.max_parallel)
    print(f"CML runs in flight at once at most: {pool['runs_in_flight_max']} (pool of {config.max_parallel}: "
          f"{'respected' if pool['respected'] else 'EXCEEDED'})")

    print(f"\nfactory, DAG run as Airflow records it:      {parts['wall_s']:8.1f} s   (trigger to end seen over "
          f"REST: {run.trigger_to_end_s:.1f} s)")
    print(f"  the runs' own time per core:               {parts['runs_per_core_s']:8.1f} s   "
          f"({parts['runs_s']:.1f} s over {cores} cores)")
    print(f"  fixed orchestration (wall - that):         {parts['fixed_s']:8.1f} s   "
          "(the median trial's)")
    print(f"    before the first CML run starts:         {parts['before_first_run_s']:8.1f} s   "
          "(plan_experiments, the hand-off to run_experiment, the submit, the workspace's fork)")
    print(f"    cores left idle between first and last:  {parts['idle_cores_s']:8.1f} s")
    print(f"    after the last CML run ends:             {parts['after_last_run_s']:8.1f} s   "
          "(the trigger sees the end, the task resumes, record_outcomes)")
    print(f"GridSearchCV, mean of before and after:     {baseline_s:8.1f} s")
    print(f"runs' own time per core / GridSearchCV: {parts['runs_ratio']:.2f}")
    profile = job_profile(run.runs, run.results)
    gs = {"fit": (before["fit"] + after["fit"]) / 2, "score": (before["score"] + after["score"]) / 2}
    print(f"the experiment job, summed over the runs (GridSearchCV's workers: fit {gs['fit']:.1f} s, score "
          f"{gs['score']:.1f} s, the rest of its {baseline_s * cores:.1f} core-s "
          f"{baseline_s * cores - gs['fit'] - gs['score']:.1f} s):")
    print("\n".join(format_profile(profile, cores, gs)))
    stack_cpu = {name: tree for name, (_, tree) in run.cpu.items() if name != "workspace"}
    own_loop = run.cpu.get("scheduler", (0.0, 0.0))[0]
    print(f"CPU the stack's own processes took from the runs while they went ({run.trigger_to_end_s:.0f} s): "
          + ", ".join(f"{name} {cpu:.1f} s" for name, cpu in sorted(stack_cpu.items(), key=lambda kv: -kv[1]))
          + f"; workspace server {run.cpu.get('workspace', (0.0, 0.0))[0]:.1f} s (scheduler: its own loop "
          f"{own_loop:.1f} s, its LocalExecutor workers and their task processes "
          f"{stack_cpu.get('scheduler', 0.0) - own_loop:.1f} s)")
    print(f"load average (1 min): {run.load_before:.1f} at the trigger, {run.load_after:.1f} at the end")
    print(f"ratio factory DAG run / GridSearchCV: {parts['ratio']:.2f}")
    medians = {key: statistics.median(t[3][key] for t in trials) for key in ("ratio", "fixed_s", "runs_ratio")}
    print(f"\n{len(trials)} trial(s), each factory run against the mean of the baselines on either side:")
    print("  trial  DAG run s  GridSearchCV s  ratio  fixed s  runs per core / GS")
    for n, (*_, t_parts) in enumerate(trials, 1):
        print(f"  {n:5d}  {t_parts['wall_s']:9.1f}  {t_parts['gridsearch_s']:14.1f}  "
              f"{t_parts['ratio']:5.2f}  {t_parts['fixed_s']:7.1f}  {t_parts['runs_ratio']:18.2f}")
    print(f"median ratio factory DAG run / GridSearchCV: {medians['ratio']:.2f}  "
          f"{_met(medians['ratio'], TARGET_RATIO)}")
    print(f"median fixed orchestration: {medians['fixed_s']:.1f} s  {_met(medians['fixed_s'], TARGET_FIXED_S)}")
    print(f"median runs' own time per core / GridSearchCV: {medians['runs_ratio']:.2f}  "
          f"{_met(medians['runs_ratio'], TARGET_RUNS_PER_CORE)}")
    figures: dict[str, Any] = {
        "benchmark": "grid_throughput", "mode": "scheduler-cold" if args.cold else "scheduler",
        **{k: round(v, 3 if "ratio" in k else 2) for k, v in parts.items()},
        "dag_run_s": round(run.wall_s, 2), "command_s": round(run.trigger_to_end_s, 2),
        "gridsearch_before_s": round(before["seconds"], 2),
        "gridsearch_after_s": round(after["seconds"], 2), "gridsearch_fit_s": round(gs["fit"], 2),
        "gridsearch_score_s": round(gs["score"], 2), "profile_s": {k: round(v, 2) for k, v in profile.items()},
        "stack_cpu_s": {k: round(v, 1) for k, v in stack_cpu.items()}, **pool,
        "load": [round(run.load_before, 2), round(run.load_after, 2)],
        "rows": args.rows, "experiments": config.size, "cores": cores,
        "median": {k: round(v, 3) for k, v in medians.items()},
        "trials": [{k: round(t[3][k], 3) for k in ("ratio", "fixed_s", "runs_ratio", "wall_s")} for t in trials],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
