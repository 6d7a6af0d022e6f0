"""The experiment job: what ``jobs/run_experiment.py`` runs inside a CML job run.

Runs with the CML project root as the working directory. Reads:

- ``MF_EXPERIMENT_SPEC``: the :class:`~factory_tasks.core.contracts.ExperimentSpec` as JSON;
- ``MF_THREADS``, else ``OMP_NUM_THREADS``, else 1: the thread budget;
- ``MF_CODE_VERSION`` (optional): the code version the orchestrator planned with; the job
  records the content hash of the code it actually runs and warns when the two differ;
- ``MF_EXPERIMENT_ID`` (optional): where to report a failure when the spec itself is unreadable;
- ``MF_FACTORY_RUN_ID`` (optional): recorded in the model metadata.

Writes under ``experiments/<experiment_id>/``: ``model.skops`` + ``model.metadata.json`` and,
last and atomically, the :class:`~factory_tasks.core.contracts.ExperimentResult` (``result.json``)
with status ``succeeded`` and the job's ``timings`` (:data:`TIMING_KEYS`: where its time went
besides fitting and scoring, which the CML run's record cannot tell). On any error it writes a
``failed`` result (``error``: one line, exception type and message; ``traceback``) and exits 1.
Without any usable experiment id it can only log the error and exit 1.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

from factory_tasks.core.atomic import write_atomic
from factory_tasks.core.clock import utc_now
from factory_tasks.core.contracts import ExperimentResult, ExperimentSpec
from factory_tasks.core.names import CODE_VERSION_ENV, EXPERIMENT_ID_ENV, FACTORY_RUN_ENV
from factory_tasks.core.text import shorten

log = logging.getLogger("factory_tasks.jobs.experiment")

THREADS_ENV = "MF_THREADS"
_SAFE_ID = re.compile(r"^[0-9a-f]{16}$")
_MAX_ERROR_CHARS = 2000
#: ``timings`` of a succeeded result: ``entered_at_unix`` is the wall clock (seconds since the
#: epoch) when the job's code took over from the interpreter's start; the rest are seconds
#: spent in each phase, ``job_s`` all of them and what lies between, up to the result's write
TIMING_KEYS = ("entered_at_unix", "code_version_s", "imports_s", "snapshot_s", "cv_s", "save_s", "job_s")


class JobConfigError(ValueError):
    """The job's environment is unusable."""


def thread_count(environ: Mapping[str, str]) -> int:
    """Threads from ``MF_THREADS``, else ``OMP_NUM_THREADS`` (first level), else 1."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        raw = environ.get(name)
        if raw is None or not raw.strip():
            continue
        text = raw.split(",")[0].strip() if name == "OMP_NUM_THREADS" else raw.strip()
        try:
            value = int(text)
        except ValueError:
            raise JobConfigError(f"{name} must be a positive integer, got {raw!r}") from None
        if value < 1:
            raise JobConfigError(f"{name} must be a positive integer, got {raw!r}")
        return value
    return 1


def snapshot_path(project_root: Path, spec: ExperimentSpec) -> Path:
    """The snapshot file named by the spec's ``data_snapshot.path``, inside the project."""
    raw = spec.data_snapshot.path
    rel = PurePosixPath(raw.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise JobConfigError(f"data_snapshot.path must be relative to the project and stay inside it, got {raw!r}")
    path = project_root / Path(*rel.parts)
    if not path.is_file():
        raise FileNotFoundError(f"data snapshot {raw!r} not found in the project ({project_root})")
    return path


def read_snapshot(path: Path, expected_hash: str | None) -> Any:
    """Read the snapshot, check its schema and that its content hash matches the spec.

    Returns the interaction columns, plus the per-row ``propensity`` of a snapshot that includes
    the closed loop's interactions (the experiment weights its policy metrics by it) and its
    ``prediction_uuid`` (null for history rows; a snapshot written before it existed has none).
    Neither is a model input.
    """
    import pandas as pd

    from factory_tasks.core.schema import (
        INTERACTION_COLUMNS,
        PREDICTION_UUID_COLUMN,
        PROPENSITY_COLUMN,
        check_prediction_uuids,
        check_propensity,
        validate_interactions,
    )
    from factory_tasks.warehouse.training_data import conform, content_hash

    frame = pd.read_parquet(path)
    validate_interactions(frame)
    columns = list(INTERACTION_COLUMNS)
    if PROPENSITY_COLUMN in frame.columns:
        check_propensity(frame[PROPENSITY_COLUMN], f"data snapshot {path.name}")
        columns.append(PROPENSITY_COLUMN)
    if PREDICTION_UUID_COLUMN in frame.columns:
        check_prediction_uuids(frame[PREDICTION_UUID_COLUMN], f"data snapshot {path.name}")
        columns.append(PREDICTION_UUID_COLUMN)
    if expected_hash:
        actual = content_hash(conform(frame, f"snapshot {path.name}"))
        if actual != expected_hash:
            raise ValueError(
                f"data snapshot {path.name} has content hash {actual[:16]}..., "
                f"the spec expects {str(expected_hash)[:16]}...: the file changed since the "
                "experiment was planned"
            )
    return frame.loc[:, columns]


def running_code_version(environ: Mapping[str, str]) -> str:
    """The content hash of the code this job runs (warns if the orchestrator planned with another)."""
    from factory_tasks.core.versions import code_version

    version = code_version()
    planned = environ.get(CODE_VERSION_ENV)
    if planned and planned != version:
        log.warning("this job runs code %s, the factory run planned with %s: the result records %s",
                    version, planned, version)
    return version


def error_line(exc: BaseException) -> str:
    """``Type: message`` on one line (whitespace collapsed), bounded in length."""
    message = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return shorten(line, _MAX_ERROR_CHARS)


def failed_result(
    spec: ExperimentSpec | None,
    experiment_id: str,
    exc: BaseException,
    *,
    started_at: str,
    code_version: str | None,
    threads: int | None,
) -> ExperimentResult:
    described: dict[str, Any] = {}
    if spec is not None:
        described = {"family": spec.family, "estimator": spec.estimator, "params": dict(spec.params),
                     "cv_folds": spec.cv_folds, "ranking_metric": spec.ranking_metric,
                     "data_snapshot_hash": spec.data_snapshot.hash}
    return ExperimentResult(
        experiment_id=experiment_id,
        status="failed",
        error=error_line(exc),
        traceback="".join(traceback.format_exception(exc)),
        threads=threads,
        code_version=code_version,
        started_at=started_at,
        finished_at=utc_now(),
        **described,
    )


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - started


def configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def run_job(project_root: Path, environ: Mapping[str, str]) -> int:
    """Run one experiment job; returns the process exit code (0 succeeded, 1 failed)."""
    started_at = utc_now()
    timings: dict[str, float] = {"entered_at_unix": time.time()}
    entered = time.perf_counter()
    spec: ExperimentSpec | None = None
    experiment_id: str | None = None
    code_version: str | None = None
    threads: int | None = None
    try:
        with _timed(timings, "code_version_s"):
            code_version = running_code_version(environ)
        spec = ExperimentSpec.from_env(environ)
        experiment_id = spec.experiment_id
        log.info("experiment %s: code %s, project %s", experiment_id, code_version, project_root)
        threads = thread_count(environ)

        with _timed(timings, "imports_s"):  # already imported in a run forked from a warm engine
            from factory_tasks.core.versions import library_versions
            from factory_tasks.training.artifacts import save_model
            from factory_tasks.training.experiment import FITTED_ON_KEY, MODEL_KEY, json_result, run_experiment

        with _timed(timings, "snapshot_s"):
            path = snapshot_path(project_root, spec)
            data = read_snapshot(path, spec.data_snapshot.hash)
        log.info("read %d rows from %s in %.2fs", len(data), spec.data_snapshot.path, timings["snapshot_s"])

        with _timed(timings, "cv_s"):
            outcome = run_experiment(spec, data, n_threads=threads)
        out_dir_rel = PurePosixPath(spec.result_path).parent
        scores = json_result(outcome)
        save_started = time.perf_counter()
        model_path, metadata_path = save_model(
            outcome[MODEL_KEY],
            project_root / out_dir_rel,
            {
                "experiment_id": experiment_id,
                "factory_run_id": environ.get(FACTORY_RUN_ENV),
                "family": spec.family,
                "estimator": spec.estimator,
                "params": dict(spec.params),
                "random_state": spec.random_state,
                "economics": spec.economics.model_dump(mode="json"),
                "cv_folds": spec.cv_folds,
                "ranking_metric": spec.ranking_metric,
                "cv_scores": scores["metrics"],
                "data_snapshot": spec.data_snapshot.model_dump(mode="json"),
                "data_snapshot_hash": spec.data_snapshot.hash,
                "fitted_on": outcome[FITTED_ON_KEY],
                "threads": threads,
                "code_version": code_version,
            },
        )
        timings["save_s"] = time.perf_counter() - save_started
        timings["job_s"] = time.perf_counter() - entered
        result = ExperimentResult(
            **scores,
            artifact_path=f"{out_dir_rel}/{model_path.name}",
            metadata_path=f"{out_dir_rel}/{metadata_path.name}",
            code_version=code_version,
            library_versions=library_versions(),
            timings=timings,
        )
        write_atomic(project_root / spec.result_path, result.to_json())
        log.info("experiment %s succeeded; wrote %s", experiment_id, spec.result_path)
        return 0
    except Exception as exc:  # one failing experiment must be recorded, never lost
        log.error("experiment failed: %s", error_line(exc))
        log.debug("traceback", exc_info=exc)
        if experiment_id is None:
            candidate = environ.get(EXPERIMENT_ID_ENV) or ""
            if not _SAFE_ID.match(candidate):
                log.error("no usable experiment id (spec or %s=%r): cannot write a result file",
                          EXPERIMENT_ID_ENV, candidate)
                print(traceback.format_exc(), file=sys.stderr)
                return 1
            experiment_id = candidate
        failed = failed_result(spec, experiment_id, exc, started_at=started_at, code_version=code_version,
                               threads=threads)
        print(failed.traceback, file=sys.stderr)
        try:
            target = project_root / ExperimentResult.path_for(experiment_id)
            write_atomic(target, failed.to_json())
            log.info("wrote failed result to %s", target.relative_to(project_root))
        except Exception as write_exc:  # noqa: BLE001 - report both, exit non-zero
            log.error("could not write the failed result: %s", error_line(write_exc))
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/run_experiment.py`` (takes no arguments: config is environment)."""
    if argv is None:
        argv = sys.argv[1:]
    if argv:
        print(
            f"run_experiment takes no arguments; set {ExperimentSpec.ENV} (and optionally {THREADS_ENV})",
            file=sys.stderr,
        )
        return 2
    configure_logging()
    return run_job(Path.cwd(), os.environ)
