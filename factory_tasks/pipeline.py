"""The model_factory DAG's stages as plain functions.

Each takes what it needs (a grid file, a DB-API hook for the warehouse, a CML hook for the
project files and job runs) and returns small JSON-able values — ids and paths, never frames.
The hooks are passed in, so this module never imports Airflow.
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from factory_tasks.collect import JobRunRef, outcome_rows, read_rows_file, write_rows_file
from factory_tasks.fanout import (
    EXPERIMENT_ID_ENV,
    FACTORY_RUN_ENV,
    job_name,
    result_path,
    run_request,
    split_long_first,
    split_reusable,
)
from factory_tasks.grid import expand_grid, grid_hash, load_grid
from factory_tasks.leaderboard import format_leaderboard
from factory_tasks.outcome_store import OutcomeStore
from factory_tasks.settings import REPO_ROOT, artifacts_dir
from factory_tasks.training_data import read_training_frame, write_snapshot
from factory_tasks.versioning import code_version

log = logging.getLogger(__name__)


def run_dir(factory_run_id: str) -> Path:
    """Orchestrator-side folder of one factory run (plan and collected outcomes)."""
    return artifacts_dir() / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", factory_run_id)


def _plan_path(factory_run_id: str) -> Path:
    return run_dir(factory_run_id) / "plan.json"


def _resolve(grid_path: str) -> Path:
    path = Path(grid_path)
    return path if path.is_absolute() else REPO_ROOT / path


def validate_grid_file(grid_path: str, max_parallel: int | None = None) -> dict[str, Any]:
    """Load and validate the grid; raises GridError naming file, key and problem."""
    path = _resolve(grid_path)
    config = load_grid(path)
    cap = int(max_parallel or config.max_parallel)
    summary = {
        "grid_path": str(path),
        "grid_hash": grid_hash(config),
        "table": config.data.table,
        "max_parallel": cap,
    }
    log.info("grid %s is valid (hash %s, parallelism cap %d)", path, summary["grid_hash"], cap)
    return summary


def snapshot_to_project(warehouse: Any, cml: Any, table: str) -> dict[str, Any]:
    """Snapshot the training table and make it available in the CML project (content-addressed)."""
    frame = read_training_frame(warehouse, table)
    snap = write_snapshot(frame, artifacts_dir() / "snapshots", table)
    if cml.file_exists(snap.project_path):
        log.info("snapshot %s already in the project", snap.project_path)
    else:
        cml.upload_file(snap.project_path, Path(snap.local_path).read_bytes())
        log.info("uploaded snapshot %s (%d rows)", snap.project_path, snap.n_rows)
    return snap.to_dict()


def _result_reader(cml: Any):
    """A cached result.json reader: each file is fetched at most once per stage."""

    @lru_cache(maxsize=None)
    def read(experiment_id: str) -> dict[str, Any] | None:
        path = result_path(experiment_id)
        if not cml.file_exists(path):
            return None
        return json.loads(cml.download_file(path))

    return read


def plan_experiments(
    grid: dict[str, Any],
    snapshot: dict[str, Any],
    cml: Any,
    *,
    factory_run_id: str,
    reuse_results: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Expand the grid into specs, write the plan file, and return the runs to submit, long
    ones first (:func:`split_long_first`): ``{"long": [...], "short": [...]}``, each entry
    ``{"request": <submit operator kwargs>, "result_file": <project path>}``."""
    # validate_grid already ran the fit check on this file; the hash proves it is unchanged.
    config = load_grid(grid["grid_path"], check_fit=False)
    if grid_hash(config) != grid["grid_hash"]:
        raise RuntimeError(
            f"{grid['grid_path']} changed while this factory run was in progress; trigger a new run"
        )
    specs = [s.model_dump(mode="json") for s in expand_grid(config, {"path": snapshot["project_path"], "hash": snapshot["hash"]})]
    to_run, reused = split_reusable(specs, _result_reader(cml)) if reuse_results else (specs, [])
    version = code_version()

    def entry(spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "request": run_request(spec, factory_run_id=factory_run_id, code_version=version,
                                   max_active=grid["max_parallel"]),
            "result_file": result_path(spec["experiment_id"]),
        }

    # waves are the grid's, whatever is reused: the same experiment is always in the same wave
    long_ids = {s["experiment_id"] for s in split_long_first(specs)[0]}
    waves: dict[str, list[dict[str, Any]]] = {"long": [], "short": []}
    for spec in to_run:
        waves["long" if spec["experiment_id"] in long_ids else "short"].append(entry(spec))
    plan_path = _plan_path(factory_run_id)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps({"factory_run_id": factory_run_id, "grid": grid, "snapshot": snapshot,
                                     "specs": specs, "reused": reused}, indent=1, sort_keys=True))
    log.info("%d experiments: %d to run (%d long ones first), %d reused from identical earlier experiments",
             len(specs), len(to_run), len(waves["long"]), len(reused))
    return waves


def _runs_of_factory_run(cml: Any, job_names: set[str], factory_run_id: str) -> dict[str, JobRunRef]:
    """The latest job run of each experiment submitted by this factory run."""
    runs: dict[str, JobRunRef] = {}
    for name in sorted(job_names):
        job = cml.find_job(name)
        if job is None:
            continue
        for run in cml.list_job_runs(job.id):  # newest first
            if run.environment.get(FACTORY_RUN_ENV) != factory_run_id:
                continue
            experiment_id = run.environment.get(EXPERIMENT_ID_ENV)
            if experiment_id and experiment_id not in runs:
                runs[experiment_id] = JobRunRef(experiment_id, job.id, run.id, run.status.value)
    return runs


def collect_outcomes(grid: dict[str, Any], cml: Any, *, factory_run_id: str, recorded_at: str) -> str:
    """Turn every spec of the plan into an outcome row (failed and never-finished ones too)."""
    plan = json.loads(_plan_path(factory_run_id).read_text())
    specs = plan["specs"]
    runs = _runs_of_factory_run(cml, {job_name(s["resources"]) for s in specs}, factory_run_id)
    rows = outcome_rows(
        specs,
        runs,
        _result_reader(cml),
        factory_run_id=factory_run_id,
        grid_hash=grid["grid_hash"],
        recorded_at=recorded_at,
    )
    failed = [r for r in rows if r["status"] != "succeeded"]
    for row in failed:
        log.warning("experiment %s (%s) failed: %s", row["experiment_id"], row["family"], row["error"])
    log.info("collected %d outcomes: %d succeeded, %d failed", len(rows), len(rows) - len(failed), len(failed))
    return str(write_rows_file(rows, run_dir(factory_run_id) / "outcomes.jsonl"))


def record_outcomes(warehouse: Any, rows_path: str, *, factory_run_id: str) -> dict[str, Any]:
    """Replace this factory run's rows in experiment_outcomes and log the leaderboard."""
    rows = read_rows_file(Path(rows_path))
    store = OutcomeStore(warehouse)
    store.replace_run(factory_run_id, rows)
    frame = store.read(factory_run_id)
    log.info("recorded %d outcome rows for %s\n%s", len(frame), factory_run_id, format_leaderboard(frame))
    return {
        "factory_run_id": factory_run_id,
        "recorded": len(frame),
        "failed": int((frame["status"] != "succeeded").sum()),
    }
