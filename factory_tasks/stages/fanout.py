"""Planning the fan-out: which experiments need a CML job run, and with what request.

CPU and memory are properties of a CML *job*, not of a run, so experiments are grouped into
one job per resource profile and the spec travels in each run's environment.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from factory_tasks.core.contracts import (
    ContractError,
    ExperimentResult,
    ExperimentSpec,
    Provenance,
    reuse_blocker,
)
from factory_tasks.core.names import (
    CODE_VERSION_ENV,
    EXPERIMENT_ID_ENV,
    EXPERIMENT_SCRIPT,
    FACTORY_RUN_ENV,
)

#: experiment id -> its result in the project (None: there is none); raises ContractError
#: for a result file that does not satisfy the contract
ResultReader = Callable[[str], "ExperimentResult | None"]


def split_long_first(specs: Iterable[ExperimentSpec]) -> tuple[list[ExperimentSpec], list[ExperimentSpec]]:
    """(long, short): experiments whose estimator's cost hint is at least half the heaviest's,
    and the rest. The plan lists the long ones first, so that the short ones fill the cores
    while the long ones finish instead of one long experiment running alone at the end (the
    scheduler hands out the pool's slots to mapped task instances in map index order).
    """
    from factory_tasks.core.estimators import get_estimator

    specs = list(specs)
    costs = [get_estimator(s.estimator).relative_cost for s in specs]
    cut = max(costs, default=0.0) / 2
    return ([s for s, c in zip(specs, costs) if c >= cut], [s for s, c in zip(specs, costs) if c < cut])


def split_reusable(
    specs: Iterable[ExperimentSpec], read_result: ResultReader, current: Provenance
) -> tuple[dict[str, str], list[str]]:
    """Which experiments run now and why (id -> reason), and which earlier results are reused.

    An experiment id covers what is computed (estimator, params, CV, metrics, economics, data);
    a succeeded result under that id is reused only if the same code and the same versions of
    the result-shaping libraries computed it (:func:`~factory_tasks.core.contracts.reuse_blocker`).
    A result file that does not satisfy the contract is never reused: the experiment runs again.
    """
    to_run: dict[str, str] = {}
    reused: list[str] = []
    for spec in specs:
        try:
            blocker = reuse_blocker(read_result(spec.experiment_id), current)
        except ContractError as exc:
            blocker = f"the earlier result is invalid ({exc})"
        if blocker is None:
            reused.append(spec.experiment_id)
        else:
            to_run[spec.experiment_id] = blocker
    return to_run, reused


def run_request(
    spec: ExperimentSpec, *, factory_run_id: str, code_version: str, project_id: str, job_ids: dict[str, str],
) -> dict[str, Any]:
    """Keyword arguments of one mapped ``run_experiment`` instance (all JSON-serialisable).
    ``job_ids`` maps the job name of every profile of the plan to its CML job id, created by
    the plan: a submission looks nothing up. ``result_file`` explains a failed run."""
    return {
        "project_id": project_id,
        "job_id": job_ids[spec.job_name],
        "job_name": spec.job_name,
        "script": EXPERIMENT_SCRIPT,
        "cpu": spec.resources.cpu,
        "memory_gb": spec.resources.memory_gb,
        "environment": {
            ExperimentSpec.ENV: spec.model_dump_json(),
            EXPERIMENT_ID_ENV: spec.experiment_id,
            FACTORY_RUN_ENV: factory_run_id,
            CODE_VERSION_ENV: code_version,
        },
        "result_file": spec.result_path,
    }
