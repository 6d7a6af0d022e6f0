"""The ``experiment_outcomes`` table: one row per experiment per factory run.

The store speaks to any DB-API hook (Airflow's ``SqliteHook``, ``HiveServer2Hook`` ...) passed
in by the caller; it never imports Airflow. Every SQL difference between warehouses lives in
the engine modules (:mod:`factory_tasks.warehouse.sqlite`, :mod:`factory_tasks.warehouse.hive`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

from factory_tasks.core.contracts import ExperimentResult, ExperimentSpec
from factory_tasks.core.metrics import METRICS
from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES, OUTCOME_COLUMN_TYPES
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.sql import Column

OUTCOMES_TABLE = "experiment_outcomes"

# Column order is the documented order of the table and of experiments_summary.csv.
OUTCOME_COLUMNS: tuple[Column, ...] = tuple(Column(name, type_) for name, type_ in OUTCOME_COLUMN_TYPES)


class OutcomeSchemaError(RuntimeError):
    """The outcome table exists with another layout than this code writes."""


@dataclass(frozen=True)
class RunContext:
    """What the orchestrator knows about one experiment's run, beside its result file."""

    factory_run_id: str
    grid_hash: str
    recorded_at: str
    job_id: str | None = None
    job_run_id: str | None = None
    run_status: str | None = None
    #: why the experiment ran in this factory run, or why its earlier result was reused
    run_reason: str | None = None
    #: the contract error of a result file that does not parse (the row is then failed)
    invalid_result: str | None = None


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _missing_result_error(spec: ExperimentSpec, run: RunContext) -> str:
    if run.invalid_result:
        return run.invalid_result
    if run.job_run_id is None:
        return "no job run was found for it: its submission failed (see the submit task's log)"
    return (f"the job run {run.job_run_id} ended {run.run_status or 'without a status'} and left no result file "
            f"{spec.result_path}: the job never got to run the experiment (it asked for "
            f"{spec.resources.cpu:g} CPU and {spec.resources.memory_gb:g} GB; a run that asks for more than "
            "the workspace can give fails so)")


def outcome_row(spec: ExperimentSpec, result: ExperimentResult | None, run: RunContext) -> dict[str, Any]:
    """Flatten an experiment spec and its result (None if the run left none) into a row."""
    ranking_metric = spec.ranking_metric
    metrics = result.metrics if result else {}
    ranking = metrics.get(ranking_metric)
    row: dict[str, Any] = {
        "factory_run_id": run.factory_run_id,
        "experiment_id": spec.experiment_id,
        "family": spec.family,
        "estimator": spec.estimator,
        "params_json": json.dumps(spec.params, sort_keys=True),
        "status": result.status if result else "failed",
        "error": result.error if result else _missing_result_error(spec, run),
        "cv_folds": spec.cv_folds,
        "ranking_metric": ranking_metric,
        "ranking_score": _finite_or_none(ranking.mean if ranking else None),
        "fit_time_mean": _finite_or_none(result.fit_time.mean if result and result.fit_time else None),
        "score_time_mean": _finite_or_none(result.score_time.mean if result and result.score_time else None),
        "wall_time_s": _finite_or_none(result.wall_time_s if result else None),
        "cpu": spec.resources.cpu,
        "memory_gb": spec.resources.memory_gb,
        "job_id": run.job_id,
        "job_run_id": run.job_run_id,
        "run_status": run.run_status,
        "artifact_path": result.artifact_path if result else None,
        "data_snapshot_hash": spec.data_snapshot.hash,
        "grid_hash": run.grid_hash,
        "code_version": result.code_version if result else None,
        "library_versions": json.dumps(result.library_versions, sort_keys=True) if result else None,
        "run_reason": run.run_reason,
        "started_at": result.started_at if result else None,
        "finished_at": result.finished_at if result else None,
        "recorded_at": run.recorded_at,
    }
    for name in METRICS:
        scores = metrics.get(name)
        row[f"{name}_mean"] = _finite_or_none(scores.mean if scores else None)
        row[f"{name}_std"] = _finite_or_none(scores.std if scores else None)
        row[f"{name}_folds"] = json.dumps([_finite_or_none(v) for v in scores.folds]) if scores else None
    return {name: row[name] for name in OUTCOME_COLUMN_NAMES}


class OutcomeStore:
    """Reads and writes ``experiment_outcomes`` through a DB-API hook."""

    def __init__(self, hook: Any, table: str = OUTCOMES_TABLE):
        self.hook = hook
        self.table = table
        self.dialect = dialect_for(hook)
        self._schema_checked = False

    def ensure_schema(self) -> None:
        """Create the table if it is absent; never drop or alter what exists. A table of an
        older layout is an error saying which columns it lacks."""
        if self._schema_checked:
            return
        self.dialect.create_table(self.hook, self.table, OUTCOME_COLUMNS, partition_by="factory_run_id")
        missing = [c for c in OUTCOME_COLUMNS if c.name not in set(self.dialect.columns(self.hook, self.table))]
        if missing:
            added = ", ".join(f"{c.name} {c.type}" for c in missing)
            raise OutcomeSchemaError(
                f"table {self.table} was created by an older Model Factory and lacks column(s) "
                f"{', '.join(c.name for c in missing)}. On the embedded default, `make clean` starts afresh; "
                f"on Hive, add them: ALTER TABLE {self.table} ADD COLUMNS ({added})")
        self._schema_checked = True

    def replace_run(self, factory_run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        """Make the table hold exactly ``rows`` for this factory run (idempotent, atomic)."""
        rows = list(rows)
        stray = {r["factory_run_id"] for r in rows} - {factory_run_id}
        if stray:
            raise ValueError(f"rows for other factory runs passed to replace_run: {sorted(stray)}")
        self.ensure_schema()
        self.dialect.replace_partition(
            self.hook, self.table, OUTCOME_COLUMNS, "factory_run_id", factory_run_id, rows
        )
        return len(rows)

    def read(self, factory_run_id: str | None = None) -> pd.DataFrame:
        """All outcome rows (or one run's) as a frame with the documented column order."""
        self.ensure_schema()
        records = self.dialect.select(
            self.hook, self.table, OUTCOME_COLUMN_NAMES, where={"factory_run_id": factory_run_id}
            if factory_run_id is not None else None,
        )
        return pd.DataFrame.from_records(records, columns=list(OUTCOME_COLUMN_NAMES))
