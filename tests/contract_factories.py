"""Valid contract documents for tests: an :class:`ExperimentSpec` whose id matches its content,
a complete :class:`ExperimentResult` for it, a :class:`DeploymentRecord`. Override any field by
keyword."""

from __future__ import annotations

from typing import Any

from factory_tasks.core.config_types import Economics
from factory_tasks.core.contracts import (
    RESULT_SHAPING_LIBRARIES,
    DeploymentRecord,
    ExperimentResult,
    ExperimentSpec,
    compute_experiment_id,
)
from factory_tasks.core.metrics import METRICS
from factory_tasks.core.schema import DEFAULT_ECONOMICS

LIBRARIES = {lib: "1.0" for lib in RESULT_SHAPING_LIBRARIES}


def make_spec(estimator: str = "LogisticRegression", params: dict | None = None, **over: Any) -> ExperimentSpec:
    fields: dict[str, Any] = {
        "family": "test",
        "estimator": estimator,
        "params": {"C": 0.5} if params is None and estimator == "LogisticRegression" else (params or {}),
        "cv_folds": 3,
        "metrics": list(METRICS),
        "ranking_metric": "roc_auc",
        "resources": {"cpu": 1.0, "memory_gb": 1.0},
        "economics": DEFAULT_ECONOMICS,
        "random_state": 0,
        "data_snapshot": {"path": "snapshots/x.parquet", "hash": "ab" * 32},
    }
    fields.update(over)
    fields.setdefault("experiment_id", compute_experiment_id(
        estimator=fields["estimator"], params=fields["params"], cv_folds=fields["cv_folds"],
        metrics=fields["metrics"], random_state=fields["random_state"],
        economics=Economics.model_validate(fields["economics"]),
        data_snapshot_hash=fields["data_snapshot"]["hash"]))
    return ExperimentSpec.model_validate(fields, strict=False)


def result_fields(spec: ExperimentSpec, auc: float = 0.7, **over: Any) -> dict[str, Any]:
    """The fields of a succeeded result of ``spec`` (a dict, to break on purpose)."""
    folds = [auc - 0.01, auc, auc + 0.01][: spec.cv_folds] + [auc] * max(0, spec.cv_folds - 3)
    fields: dict[str, Any] = {
        "experiment_id": spec.experiment_id,
        "status": "succeeded",
        "family": spec.family,
        "estimator": spec.estimator,
        "params": dict(spec.params),
        "cv_folds": spec.cv_folds,
        "ranking_metric": spec.ranking_metric,
        "metrics": {name: {"mean": auc, "std": 0.01, "folds": folds} for name in spec.metrics},
        "fit_time": {"mean": 0.5, "std": 0.1, "total": 0.5 * spec.cv_folds},
        "score_time": {"mean": 0.1, "std": 0.0, "total": 0.1 * spec.cv_folds},
        "wall_time_s": 2.0,
        "n_rows": 600,
        "threads": 1,
        "artifact_path": f"experiments/{spec.experiment_id}/model.skops",
        "metadata_path": f"experiments/{spec.experiment_id}/model.metadata.json",
        "data_snapshot_hash": spec.data_snapshot.hash,
        "code_version": "0.1.0+test",
        "library_versions": dict(LIBRARIES),
        "started_at": "2026-11-27T10:00:00+00:00",
        "finished_at": "2026-11-27T10:00:02+00:00",
    }
    fields.update(over)
    return fields


def make_result(spec: ExperimentSpec, auc: float = 0.7, **over: Any) -> ExperimentResult:
    return ExperimentResult.model_validate(result_fields(spec, auc, **over))


def make_deployment(version: str, deployed_at: str, **over: Any) -> DeploymentRecord:
    """A deployment record of ``version`` (first deployment, chosen automatically)."""
    fields: dict[str, Any] = dict(
        model_version=version, model_name="next-best-offer", model_id="m1", build_id=f"b-{version}",
        deployment_id=f"d-{version}", access_key_ref="CML model m1: access_key (read from the CML API)",
        artifact_path=f"models/{version}/model.skops", metadata_path=f"models/{version}/model.metadata.json",
        experiment_id="0123456789abcdef", factory_run_id="manual__1", grid_hash="g", data_snapshot_hash="h",
        code_version="0.1.0+x", chosen_by="automatic", choice_reason="best", gate_reason="first deployment",
        gate_override=False, deployed_at=deployed_at)
    return DeploymentRecord(**{**fields, **over})
