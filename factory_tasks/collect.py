"""Turning experiment specs, job runs and result files into outcome rows.

The orchestrator passes in a ``read_result`` callable (experiment id -> parsed result.json or
None) so this module stays free of HTTP and Airflow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from factory_tasks.fanout import ResultReader
from factory_tasks.outcome_store import RunContext, outcome_row


@dataclass(frozen=True)
class JobRunRef:
    experiment_id: str
    job_id: str | None
    run_id: str | None
    status: str | None


def outcome_rows(
    specs: Iterable[dict[str, Any]],
    runs: dict[str, JobRunRef],
    read_result: ResultReader,
    *,
    factory_run_id: str,
    grid_hash: str,
    recorded_at: str,
) -> list[dict[str, Any]]:
    """One row per spec; a spec whose run left no result is recorded as failed with a reason."""
    rows = []
    for spec in specs:
        run = runs.get(spec["experiment_id"])
        result = read_result(spec["experiment_id"])
        context = RunContext(
            factory_run_id=factory_run_id,
            grid_hash=grid_hash,
            recorded_at=recorded_at,
            job_id=run.job_id if run else None,
            job_run_id=run.run_id if run else None,
            run_status=run.status if run else ("REUSED" if result else None),
        )
        rows.append(outcome_row(spec, result, context))
    return rows


def write_rows_file(rows: list[dict[str, Any]], path: Path) -> Path:
    """JSON-lines file of outcome rows, written atomically (the record step reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def read_rows_file(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
