"""The ``experiment_outcomes`` table: one row per experiment per factory run.

The store speaks to any DB-API hook (Airflow's ``SqliteHook``, ``HiveServer2Hook`` ...) passed
in by the caller; it never imports Airflow. Every SQL difference between warehouses lives in
:mod:`factory_tasks.sql_dialects`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

from factory_tasks.metrics import METRICS
from factory_tasks.sql_dialects import Column, dialect_for

OUTCOMES_TABLE = "experiment_outcomes"

# Column order is the documented order of the table and of experiments_summary.csv.
OUTCOME_COLUMNS: tuple[Column, ...] = (
    Column("factory_run_id", "string"),
    Column("experiment_id", "string"),
    Column("family", "string"),
    Column("estimator", "string"),
    Column("params_json", "string"),
    Column("status", "string"),
    Column("error", "string"),
    Column("cv_folds", "bigint"),
    Column("ranking_metric", "string"),
    Column("ranking_score", "double"),
    *(
        col
        for name in METRICS
        for col in (
            Column(f"{name}_mean", "double"),
            Column(f"{name}_std", "double"),
            Column(f"{name}_folds", "string"),
        )
    ),
    Column("fit_time_mean", "double"),
    Column("score_time_mean", "double"),
    Column("wall_time_s", "double"),
    Column("cpu", "double"),
    Column("memory_gb", "double"),
    Column("job_id", "string"),
    Column("job_run_id", "string"),
    Column("run_status", "string"),
    Column("artifact_path", "string"),
    Column("data_snapshot_hash", "string"),
    Column("grid_hash", "string"),
    Column("code_version", "string"),
    Column("started_at", "string"),
    Column("finished_at", "string"),
    Column("recorded_at", "string"),
)
OUTCOME_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in OUTCOME_COLUMNS)


@dataclass(frozen=True)
class RunContext:
    """What the orchestrator knows about one experiment's run, beside its result file."""

    factory_run_id: str
    grid_hash: str
    recorded_at: str
    job_id: str | None = None
    job_run_id: str | None = None
    run_status: str | None = None


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def outcome_row(spec: dict, result: dict | None, run: RunContext) -> dict[str, Any]:
    """Flatten an experiment spec and its result file (None if the run left none) into a row."""
    result = result or {}
    metrics = result.get("metrics") or {}
    ranking_metric = spec["ranking_metric"]
    status = result.get("status") or "failed"
    error = result.get("error")
    if not result:
        error = f"the job run ended {run.run_status or 'without a status'} and left no result file"
    row: dict[str, Any] = {
        "factory_run_id": run.factory_run_id,
        "experiment_id": spec["experiment_id"],
        "family": spec["family"],
        "estimator": spec["estimator"],
        "params_json": json.dumps(spec["params"], sort_keys=True),
        "status": status,
        "error": error,
        "cv_folds": int(spec["cv_folds"]),
        "ranking_metric": ranking_metric,
        "ranking_score": _finite_or_none((metrics.get(ranking_metric) or {}).get("mean")),
        "fit_time_mean": _finite_or_none((result.get("fit_time") or {}).get("mean")),
        "score_time_mean": _finite_or_none((result.get("score_time") or {}).get("mean")),
        "wall_time_s": _finite_or_none(result.get("wall_time_s")),
        "cpu": float(spec["resources"]["cpu"]),
        "memory_gb": float(spec["resources"]["memory_gb"]),
        "job_id": run.job_id,
        "job_run_id": run.job_run_id,
        "run_status": run.run_status,
        "artifact_path": result.get("artifact_path"),
        "data_snapshot_hash": spec["data_snapshot"]["hash"],
        "grid_hash": run.grid_hash,
        "code_version": result.get("code_version"),
        "started_at": result.get("started_at"),
        "finished_at": result.get("finished_at"),
        "recorded_at": run.recorded_at,
    }
    for name in METRICS:
        scores = metrics.get(name) or {}
        row[f"{name}_mean"] = _finite_or_none(scores.get("mean"))
        row[f"{name}_std"] = _finite_or_none(scores.get("std"))
        folds = scores.get("folds")
        row[f"{name}_folds"] = (
            json.dumps([_finite_or_none(v) for v in folds]) if folds is not None else None
        )
    return {name: row[name] for name in OUTCOME_COLUMN_NAMES}


class OutcomeStore:
    """Reads and writes ``experiment_outcomes`` through a DB-API hook."""

    def __init__(self, hook: Any, table: str = OUTCOMES_TABLE):
        self.hook = hook
        self.table = table
        self.dialect = dialect_for(hook)

    def ensure_schema(self) -> None:
        """Create the table if it is absent; never drop or alter what exists."""
        self.dialect.create_table(self.hook, self.table, OUTCOME_COLUMNS, partition_by="factory_run_id")

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
