"""The model_factory DAG's stages as plain functions.

Each takes what it needs (a grid file, a DB-API hook for the warehouse, a
:class:`~factory_tasks.stages.cml_client.CmlClient` for the project files and job runs) and
returns small JSON-able values — ids and paths, never frames. The hooks are passed in, so this
module never imports Airflow.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from factory_tasks.core.contracts import (
    ContractError,
    ExperimentResult,
    GridRef,
    RunPlan,
    SnapshotRef,
)
from factory_tasks.core.limits import MAX_PARALLEL
from factory_tasks.core.names import EXPERIMENT_ID_ENV, EXPERIMENT_SCRIPT, FACTORY_RUN_ENV
from factory_tasks.core.versions import current_provenance
from factory_tasks.stages.cml_client import CmlClient
from factory_tasks.stages.collect import JobRunRef, outcome_rows
from factory_tasks.stages.errors import in_range
from factory_tasks.stages.fanout import ResultReader, run_request, split_long_first, split_reusable
from factory_tasks.stages.paths import config_path
from factory_tasks.training.grid import expand_grid, grid_hash, load_grid
from factory_tasks.training.leaderboard import format_leaderboard
from factory_tasks.warehouse.outcomes import OutcomeStore
from factory_tasks.warehouse.training_data import snapshot_parquet, training_frame

log = logging.getLogger(__name__)


def validate_grid_file(grid_path: str, max_parallel: int | None = None) -> dict[str, Any]:
    """Load and validate the grid; raises GridError naming file, key and problem (and
    ConfigPathError / ParamError for a path outside the config folders or a cap out of range)."""
    path = config_path(grid_path, "grid_path")
    if max_parallel is not None:
        in_range("max_parallel", max_parallel, 1, MAX_PARALLEL, whole=True)
    config = load_grid(path)
    ref = GridRef(grid_path=str(path), grid_hash=grid_hash(config), table=config.data.table,
                  interactions_table=config.data.interactions_table,
                  max_parallel=int(max_parallel or config.max_parallel))
    log.info("grid %s is valid (hash %s, parallelism cap %d)", path, ref.grid_hash, ref.max_parallel)
    return ref.model_dump(mode="json")


def snapshot_to_project(
    warehouse: Any, cml: CmlClient, table: str, *, interactions_table: str | None = None
) -> dict[str, Any]:
    """Snapshot the training table into the CML project (content-addressed: kept if present).

    With ``interactions_table`` the snapshot also holds that table's matured rows, each with its
    logged propensity (history rows 1/3); a missing or empty interactions table gives the
    history-only snapshot, with a warning. Without it the snapshot is the history's, unchanged.
    """
    frame, interaction_rows = training_frame(warehouse, table, interactions_table)
    ref, data = snapshot_parquet(frame, table, interactions_table=interactions_table,
                                 interaction_rows=interaction_rows)
    if interactions_table and not interaction_rows:
        log.warning("include_interactions: no matured rows in %s, so this run trains on %s only "
                    "(the same snapshot as without interactions)", interactions_table, table)
    if cml.file_exists(ref.project_path):
        log.info("snapshot %s already in the project", ref.project_path)
    else:
        cml.upload_file(ref.project_path, data)
        log.info("uploaded snapshot %s (%d rows, %d of them interactions, %.1f MB)", ref.project_path, ref.n_rows,
                 ref.interaction_rows, len(data) / 1e6)
    return ref.model_dump(mode="json")


def result_reader(cml: CmlClient) -> ResultReader:
    """A cached reader of experiments' result files: each is fetched at most once per stage.

    Raises :class:`ContractError` naming the file and the field for a file that does not
    satisfy :class:`ExperimentResult`, or that belongs to another experiment.
    """

    @lru_cache(maxsize=None)
    def read(experiment_id: str) -> ExperimentResult | None:
        path = ExperimentResult.path_for(experiment_id)
        data = cml.download_file_if_exists(path)
        if data is None:
            return None
        result = ExperimentResult.parse(data, f"result file {path}")
        if result.experiment_id != experiment_id:
            raise ContractError(f"result file {path}", [
                f"experiment_id: is {result.experiment_id}, the file belongs to experiment {experiment_id}"])
        return result

    return read


def _put(cml: CmlClient, path: str, data: bytes) -> str:
    """Store a factory run's document in the project, replacing an earlier attempt's."""
    return cml.upload_file(path, data, overwrite=True)


def plan_experiments(
    grid: dict[str, Any],
    snapshot: dict[str, Any],
    cml: CmlClient,
    *,
    factory_run_id: str,
    job_timeout_s: int,
    reuse_results: bool = True,
) -> list[dict[str, Any]]:
    """Expand the grid, store the :class:`RunPlan` in the project, create the CML jobs the runs
    need (one per resource profile, killed after ``job_timeout_s``), and return the runs to
    start: one ``run_experiment`` kwargs dict each (:func:`run_request`), long ones first
    (:func:`split_long_first`).

    The kwargs carry the project and job ids, so that a submission looks nothing up (API
    calls per experiment are what a large grid pays for), and concurrent submissions cannot
    each create the same missing job."""
    grid_ref = GridRef.from_data(grid, "the validated grid")
    snap = SnapshotRef.from_data(snapshot, "the training snapshot")
    # validate_grid_file already ran the fit check on this file; the hash proves it is unchanged.
    config = load_grid(grid_ref.grid_path, check_fit=False)
    if grid_hash(config) != grid_ref.grid_hash:
        raise RuntimeError(
            f"{grid_ref.grid_path} changed while this factory run was in progress; trigger a new run"
        )
    specs = expand_grid(config, {"path": snap.project_path, "hash": snap.hash})
    provenance = current_provenance()
    if reuse_results:
        to_run, reused = split_reusable(specs, result_reader(cml), provenance)
    else:
        to_run, reused = {s.experiment_id: "reuse_results is off" for s in specs}, []
    plan = RunPlan(factory_run_id=factory_run_id, grid=grid_ref, snapshot=snap, provenance=provenance,
                   specs=specs, to_run=to_run, reused=reused)
    _put(cml, RunPlan.path_for(factory_run_id), plan.to_json())

    project_id = cml.get_project_id()
    profiles = {s.job_name: s.resources for s in specs if s.experiment_id in to_run}
    job_ids = {
        name: cml.get_or_create_job(name, EXPERIMENT_SCRIPT, r.cpu, r.memory_gb, timeout_s=job_timeout_s,
                                    project_id=project_id).id
        for name, r in sorted(profiles.items())
    }

    long, short = split_long_first(s for s in specs if s.experiment_id in to_run)
    runs = [run_request(spec, factory_run_id=factory_run_id, code_version=provenance.code_version,
                        project_id=project_id, job_ids=job_ids) for spec in long + short]
    reasons: dict[str, int] = {}
    for why in to_run.values():
        reasons[why] = reasons.get(why, 0) + 1
    log.info("%d experiments: %d to run (%d long ones first), %d reused from identical earlier experiments "
             "(code %s); why they run: %s", len(specs), len(to_run), len(long), len(reused),
             provenance.code_version, "; ".join(f"{n} {why}" for why, n in reasons.items()) or "-")
    return runs


def _runs_of_factory_run(cml: CmlClient, job_names: set[str], factory_run_id: str) -> dict[str, JobRunRef]:
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


def load_plan(cml: CmlClient, factory_run_id: str) -> RunPlan:
    """The factory run's plan from the project; ContractError when there is none (planning
    never finished: nothing was submitted) or it does not parse."""
    path = RunPlan.path_for(factory_run_id)
    data = cml.download_file_if_exists(path)
    if data is None:
        raise ContractError(f"run plan {path}", [
            f"missing: plan_experiments did not finish for factory run {factory_run_id}, so nothing ran"])
    return RunPlan.parse(data, f"run plan {path}")


def record_outcomes(warehouse: Any, cml: CmlClient, *, factory_run_id: str, recorded_at: str) -> dict[str, Any]:
    """Turn every spec of the plan into an outcome row (failed and never-finished ones too),
    replace this factory run's rows in experiment_outcomes with them, and log the leaderboard."""
    plan = load_plan(cml, factory_run_id)
    runs = _runs_of_factory_run(cml, {s.job_name for s in plan.specs}, factory_run_id)
    rows = outcome_rows(plan, runs, result_reader(cml), recorded_at=recorded_at)
    failed = [r for r in rows if r["status"] != "succeeded"]
    for row in failed:
        log.warning("experiment %s (%s) failed: %s", row["experiment_id"], row["family"], row["error"])
    store = OutcomeStore(warehouse)
    store.replace_run(factory_run_id, rows)
    frame = store.read(factory_run_id)
    log.info("recorded %d outcome rows for %s (%d failed)\n%s", len(frame), factory_run_id, len(failed),
             format_leaderboard(frame))
    return {
        "factory_run_id": factory_run_id,
        "recorded": len(frame),
        "failed": int((frame["status"] != "succeeded").sum()),
    }
