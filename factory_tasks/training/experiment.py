"""One experiment: stratified k-fold cross-validation of a whole pipeline on interaction data.

:func:`run_experiment` takes an :class:`~factory_tasks.core.contracts.ExperimentSpec`
and the interactions frame, refits the full pipeline (preprocessing included) on every training
split, and scores every metric the spec asks for on the held-out split. It returns the
``result.json`` fields of docs/architecture.md except the file paths (``artifact_path``,
``metadata_path``) and ``code_version``, which the job adds — plus, under :data:`MODEL_KEY`, the
pipeline fitted on the first fold's training split and, under :data:`FITTED_ON_KEY`, a
description of that split. Those two keys are not JSON; :func:`json_result` drops them.

When the data has a ``propensity`` column (a snapshot that includes the closed loop's
interactions, whose offers an ε-greedy policy chose), the policy metrics weight each held-out
row by it; it is never a model input (:func:`~factory_tasks.training.features.feature_frame`).

Per fold the model is asked for P(conversion | x, offer = o) for all three offers in one call
(only when ``policy_value`` or ``policy_uplift`` is requested); the probabilities for the logged offers — what every
other metric needs — are read from that matrix instead of predicting again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.clock import utc_now
from factory_tasks.core.contracts import ExperimentSpec
from factory_tasks.core.metrics import COUNTERFACTUAL_METRICS, compute_metric
from factory_tasks.core.schema import (
    PROPENSITY_COLUMN,
    TARGET_COLUMN,
    check_propensity,
    offer_indices,
    validate_interactions,
)
from factory_tasks.training.features import (
    build_pipeline,
    counterfactual_proba,
    feature_frame,
    positive_proba,
)

log = logging.getLogger(__name__)

MODEL_KEY = "model"
FITTED_ON_KEY = "model_fitted_on"
def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "total": float(arr.sum())}


def logged_propensities(data: pd.DataFrame) -> np.ndarray | None:
    """The snapshot's per-row propensity of the logged offer (:data:`PROPENSITY_COLUMN`, present
    when it includes interactions), checked to lie in (0, 1]; None for randomized history only."""
    if PROPENSITY_COLUMN not in data.columns:
        return None
    check_propensity(data[PROPENSITY_COLUMN], "the training data")
    return data[PROPENSITY_COLUMN].to_numpy(dtype=np.float64)


def score_model(
    model: Any, X: pd.DataFrame, y: np.ndarray, metric_names: list[str], economics: Mapping[str, Any],
    propensity: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of ``metric_names`` for a fitted pipeline on held-out rows ``X``, ``y``.

    The counterfactual probabilities (every offer for every row) are predicted once, only when
    a policy metric is asked for; the logged offers' probabilities are read from that matrix.
    ``propensity``: the probability with which each row's logged offer was made (one per row of
    ``X``); None when every offer was made at random, 1/3 each.
    """
    return score_predictions(predictions_for(model, X, metric_names), y, metric_names, economics, propensity)


def score_predictions(predictions: tuple[np.ndarray, np.ndarray, np.ndarray | None], y: np.ndarray,
                      metric_names: list[str], economics: Mapping[str, Any],
                      propensity: np.ndarray | None = None) -> dict[str, float]:
    """:func:`score_model` from predictions already made (:func:`predictions_for`)."""
    logged, proba, offer_proba = predictions
    return {name: compute_metric(name, y, proba, logged_offers=logged, offer_proba=offer_proba,
                                 economics=economics, propensities=propensity) for name in metric_names}


def predictions_for(model: Any, X: pd.DataFrame, metric_names: list[str]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What the metrics of ``metric_names`` need of a fitted pipeline on ``X``: the logged
    offers, the probability of conversion under them, and (for policy metrics only) under
    every offer."""
    logged = X["offer"].to_numpy(dtype=object)
    if COUNTERFACTUAL_METRICS & set(metric_names):
        offer_proba = counterfactual_proba(model, X)
        return logged, offer_proba[np.arange(len(X)), offer_indices(logged)], offer_proba
    return logged, positive_proba(model, X), None


def run_experiment(
    spec: ExperimentSpec,
    data: pd.DataFrame,
    *,
    n_threads: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate the spec's pipeline on ``data``; return the result dict (see module doc).

    Stratified k-fold with shuffling seeded by ``spec["random_state"]``; the pipeline is rebuilt
    and refitted on every training split. Per metric: ``mean``, ``std`` (population, ddof=0)
    and the ``folds`` list. BLAS/OpenMP pools are limited to ``n_threads`` for the whole run and
    the estimator's own thread parameter is set to it. ``progress`` receives one line per fold
    (default: the module logger).
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    if not isinstance(spec, ExperimentSpec):
        raise TypeError(f"run_experiment needs an ExperimentSpec, got {type(spec).__name__}")
    validate_interactions(data)
    n_threads = int(n_threads)
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    say = progress or log.info
    started_at = utc_now()
    wall_start = time.perf_counter()

    metric_names: list[str] = list(spec.metrics)
    k = spec.cv_folds
    economics = spec.economics.model_dump(mode="json")
    X = feature_frame(data).reset_index(drop=True)  # the model's inputs: never the propensity
    y = data[TARGET_COLUMN].to_numpy(dtype=np.int64)
    propensity = logged_propensities(data)
    n_classes_min = int(np.bincount(y, minlength=2).min())
    if n_classes_min < k:
        raise ValueError(
            f"cannot make {k} stratified folds: the rarer conversion class has only "
            f"{n_classes_min} row(s) among {len(y)}"
        )

    scores: dict[str, list[float]] = {name: [] for name in metric_names}
    fit_times: list[float] = []
    score_times: list[float] = []
    first_model = None
    fitted_on: dict[str, Any] = {}
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=spec.random_state)
    say(
        f"experiment {spec.experiment_id}: {spec.estimator} {dict(spec.params)} on "
        f"{len(X)} rows, {k}-fold CV, {n_threads} thread(s)"
        + ("; policy metrics weight each row by its logged propensity" if propensity is not None else "")
    )
    with threadpool_limits(limits=n_threads):
        for fold, (train_idx, test_idx) in enumerate(cv.split(X, y), start=1):
            pipeline = build_pipeline(
                spec.estimator,
                spec.params,
                random_state=spec.random_state,
                n_threads=n_threads,
            )
            t0 = time.perf_counter()
            pipeline.fit(X.iloc[train_idx], y[train_idx])
            fit_times.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            fold_scores = score_model(pipeline, X.iloc[test_idx], y[test_idx], metric_names, economics,
                                      None if propensity is None else propensity[test_idx])
            for name in metric_names:
                scores[name].append(fold_scores[name])
            score_times.append(time.perf_counter() - t0)
            if first_model is None:
                first_model = pipeline
                fitted_on = {
                    "split": "training split of CV fold 1",
                    "fold": 1,
                    "cv_folds": k,
                    "n_rows": int(len(train_idx)),
                    "random_state": spec.random_state,
                    "data_snapshot_hash": spec.data_snapshot.hash,
                }
            shown = ", ".join(f"{name}={scores[name][-1]:.4f}" for name in metric_names)
            say(
                f"fold {fold}/{k} done: fit {fit_times[-1]:.2f}s, score {score_times[-1]:.2f}s, "
                f"{shown}"
            )

    result: dict[str, Any] = {
        "experiment_id": spec.experiment_id,
        "status": "succeeded",
        "error": None,
        "traceback": None,
        "family": spec.family,
        "estimator": spec.estimator,
        "params": dict(spec.params),
        "cv_folds": k,
        "ranking_metric": spec.ranking_metric,
        "metrics": {
            name: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "folds": [float(v) for v in values],
            }
            for name, values in scores.items()
        },
        "fit_time": _summary(fit_times),
        "score_time": _summary(score_times),
        "wall_time_s": time.perf_counter() - wall_start,
        "n_rows": int(len(X)),
        "threads": n_threads,
        "data_snapshot_hash": spec.data_snapshot.hash,
        "started_at": started_at,
        "finished_at": utc_now(),
        MODEL_KEY: first_model,
        FITTED_ON_KEY: fitted_on,
    }
    ranking = result["metrics"][spec.ranking_metric]["mean"]
    say(
        f"experiment {spec.experiment_id} done in {result['wall_time_s']:.1f}s: "
        f"{spec.ranking_metric}={ranking:.4f}"
    )
    return result


def json_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a result: drops the model; non-finite floats become None."""
    return _finite({k: v for k, v in result.items() if k not in (MODEL_KEY, FITTED_ON_KEY)})


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


__all__ = [
    "FITTED_ON_KEY",
    "MODEL_KEY",
    "json_result",
    "run_experiment",
]
