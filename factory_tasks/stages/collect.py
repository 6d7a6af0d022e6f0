"""Turning a run plan, its job runs and their result files into outcome rows.

The orchestrator passes in a ``read_result`` callable (experiment id -> parsed
:class:`~factory_tasks.core.contracts.ExperimentResult` or None, raising ContractError for a file
that breaks the contract) so this module stays free of HTTP and Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory_tasks.core.contracts import REUSED_RUN_STATUS, ContractError, RunPlan
from factory_tasks.stages.fanout import ResultReader
from factory_tasks.warehouse.outcomes import RunContext, outcome_row


@dataclass(frozen=True)
class JobRunRef:
    experiment_id: str
    job_id: str | None
    run_id: str | None
    status: str | None


def outcome_rows(
    plan: RunPlan,
    runs: dict[str, JobRunRef],
    read_result: ResultReader,
    *,
    recorded_at: str,
) -> list[dict[str, Any]]:
    """One row per spec of the plan; a result that is missing or breaks the contract is
    recorded as failed with a reason naming the file and the field."""
    rows = []
    for spec in plan.specs:
        run = runs.get(spec.experiment_id)
        reused = spec.experiment_id in plan.reused
        try:
            result, invalid = read_result(spec.experiment_id), None
        except ContractError as exc:
            result, invalid = None, str(exc)
        if reused:
            reason = "reused: same experiment, code and library versions"
        else:
            reason = plan.to_run.get(spec.experiment_id, "not in the plan's runs")
        context = RunContext(
            factory_run_id=plan.factory_run_id,
            grid_hash=plan.grid.grid_hash,
            recorded_at=recorded_at,
            job_id=run.job_id if run else None,
            job_run_id=run.run_id if run else None,
            run_status=run.status if run else (REUSED_RUN_STATUS if reused else None),
            run_reason=reason,
            invalid_result=invalid,
        )
        rows.append(outcome_row(spec, result, context))
    return rows
