"""The retrain job: refit the chosen experiment's exact pipeline on the full training snapshot.

What ``jobs/retrain_model.py`` runs inside a CML job run (project root as working directory),
configured by a :class:`~factory_tasks.core.contracts.RetrainRequest` in ``MF_RETRAIN_REQUEST``:

1. read the snapshot named by the spec (content hash checked); a snapshot that includes the
   closed loop's interactions has a per-row ``propensity``, which weights the policy metrics
   of step 2 and 3 (never a model input);
2. hold out a stratified slice (``holdout_fraction``, seeded by the spec's ``random_state``),
   fit the spec's pipeline — same estimator, same hyperparameters — on the rest and score the
   slice; the refit is *consistent* when its ranking score lies within
   ``max(tolerance_std × spread, tolerance_floor)`` of the experiment's CV mean, the spread
   being the larger of the CV std (scaled to the slice's size) and the score's bootstrap
   standard error on the slice — three folds alone often agree by chance far more closely than
   a held-out slice can;
3. refit the *champion's recipe* (``champion``: the estimator, hyperparameters and seed of the
   model now serving) on exactly the same fit rows and score it on the same slice — never the
   served artifact, whose final fit used its own snapshot's rows, which overlap this slice (a
   flexible champion would win by memory). When the recipes are equal the refit is reused
   (the difference is exactly 0). Then the paired differences challenger − champion of the
   ranking metric and ``policy_value`` with percentile intervals, by one bootstrap of the
   slice (the same resampled rows for both models, predictions made once) that also gives
   step 2's standard error;
4. fit the final model on every row and save it with skops (``models/<version>/model.skops``)
   with its metadata and lineage, plus a compiled ONNX copy when it reproduces the skops
   pipeline's probabilities on the slice;
5. write the :class:`~factory_tasks.core.contracts.RetrainResult` last, atomically. Any error is a
   failed result naming it, and exit code 1.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

from factory_tasks.core.atomic import write_atomic
from factory_tasks.core.clock import utc_now
from factory_tasks.core.contracts import (
    ContractError,
    HoldoutScores,
    PairedDifference,
    RetrainRequest,
    RetrainResult,
)

log = logging.getLogger("factory_tasks.jobs.retrain")

#: scored on the held-out slice whatever the grid asked for: the gate needs them
GATE_METRICS: tuple[str, ...] = ("policy_value", "policy_uplift")
#: resamples of the held-out slice, for its score's standard error and the paired intervals: enough
#: for steady 2.5% and 97.5% percentiles, few enough to stay small next to the refit
BOOTSTRAP_RESAMPLES = 400
#: the paired intervals' confidence
CONFIDENCE = 0.95


def consistency(request: RetrainRequest, holdout_score: float | None, n_holdout: int, n_rows: int,
                holdout_se: float | None = None) -> tuple[bool, str]:
    """Whether the refit's held-out score agrees with the experiment's CV estimate.

    The CV std is the spread of scores on folds of ``n_rows / cv_folds`` rows; a held-out slice
    of another size spreads by the square root of the size ratio, so it is scaled by it.
    ``holdout_se``: the score's bootstrap standard error on the slice; the larger of the two
    spreads sets the tolerance (a CV std from three folds is itself a noisy estimate).
    """
    metric = request.spec.ranking_metric
    mean, std = request.cv_estimate.mean, request.cv_estimate.std or 0.0
    if holdout_score is None or mean is None or not math.isfinite(holdout_score):
        return False, f"no finite {metric} on the held-out slice or in the CV estimate"
    scale = math.sqrt((n_rows / request.spec.cv_folds) / max(n_holdout, 1))
    se = holdout_se if holdout_se is not None and math.isfinite(holdout_se) else 0.0
    spread = max(std * scale, se)
    tolerance = max(request.tolerance_std * spread, request.tolerance_floor)
    gap = abs(holdout_score - mean)
    which = (f"the slice's bootstrap SE {se:.4f}" if se > std * scale
             else f"CV std × {scale:.2f} for the slice's size")
    note = (f"held-out {metric} {holdout_score:.4f} on {n_holdout} rows vs CV {mean:.4f} ± {std:.4f}: off by "
            f"{gap:.4f}, tolerance {tolerance:.4f} (max({request.tolerance_std:g} × {which}, "
            f"{request.tolerance_floor:g}))")
    return gap <= tolerance, note


def resampled_scores(models: Sequence[Any], X: Any, y: Any, metrics: Sequence[str], economics: Mapping[str, Any],
                     propensity: Any = None, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int | None = 0) -> list[dict[str, Any]]:
    """Each model's ``metrics`` on the same bootstrap resamples of the rows ``X``, ``y`` (paired:
    one set of resampled row indices for every model; each model's predictions made once).

    One array per model and metric, one entry per resample; nan where a resample holds one
    class only or the score is not finite. ``propensity`` (one per row) weights the policy
    metrics, as in :func:`~factory_tasks.training.experiment.score_model`."""
    from factory_tasks.training.experiment import predictions_for

    return _resampled([predictions_for(model, X, list(metrics)) for model in models], y, metrics, economics,
                      propensity, resamples=resamples, seed=seed)


def _resampled(predictions: Sequence[Any], y: Any, metrics: Sequence[str], economics: Mapping[str, Any],
               propensity: Any, *, resamples: int, seed: int | None) -> list[dict[str, Any]]:
    """:func:`resampled_scores` from each model's predictions already made."""
    import numpy as np

    from factory_tasks.core.metrics import compute_metric

    out = [{metric: np.full(resamples, np.nan) for metric in metrics} for _ in predictions]
    rng = np.random.default_rng(seed)
    for r in range(resamples):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        weights = None if propensity is None else propensity[i]
        for scores, (logged, proba, offer_proba) in zip(out, predictions):
            for metric in metrics:
                score = compute_metric(metric, y[i], proba[i], logged_offers=logged[i],
                                       offer_proba=None if offer_proba is None else offer_proba[i],
                                       economics=economics, propensities=weights)
                if score is not None and math.isfinite(score):
                    scores[metric][r] = score
    return out


def _spread(samples: Any, resamples: int) -> float | None:
    """The standard error from one metric's resampled scores; None when fewer than half are finite."""
    import numpy as np

    finite = samples[np.isfinite(samples)]
    return float(np.std(finite, ddof=1)) if len(finite) >= max(resamples // 2, 2) else None


def bootstrap_se(model: Any, X: Any, y: Any, metric: str, economics: Mapping[str, Any], propensity: Any = None,
                 *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int | None = 0) -> float | None:
    """The standard error of ``metric`` on the rows ``X``, ``y`` by resampling them (predictions
    made once); None when too few resamples give a finite score."""
    samples = resampled_scores([model], X, y, [metric], economics, propensity, resamples=resamples, seed=seed)
    return _spread(samples[0][metric], resamples)


def paired_difference(measure: str, challenger: float | None, champion: float | None, challenger_samples: Any,
                      champion_samples: Any, *, n_rows: int, method: str,
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """challenger − champion on the same rows, with the percentile interval of the paired
    resampled differences (None bounds when fewer than half the resamples give both scores)."""
    import numpy as np

    from factory_tasks.core.metrics import get_metric

    def finite(value: float | None) -> float | None:
        return float(value) if value is not None and math.isfinite(value) else None

    challenger, champion = finite(challenger), finite(champion)
    differences = np.asarray(challenger_samples) - np.asarray(champion_samples)
    differences = differences[np.isfinite(differences)]
    low = high = None
    if len(differences) >= max(len(challenger_samples) // 2, 2):
        tail = (1.0 - confidence) / 2.0
        low, high = (float(v) for v in np.quantile(differences, [tail, 1.0 - tail]))
    return PairedDifference(
        measure=measure, source="holdout", challenger=challenger, champion=champion,
        difference=challenger - champion if challenger is not None and champion is not None else None,
        low=low, high=high, confidence=confidence, greater_is_better=get_metric(measure).greater_is_better,
        n_rows=n_rows, method=method)


def refit(request: RetrainRequest, data: Any, *, n_threads: int = 1, live_traffic: Any = None) -> dict[str, Any]:
    """Steps 2–4 on an interactions frame; returns the models and scores (no files written)."""
    import numpy as np
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    from factory_tasks.core.schema import TARGET_COLUMN
    from factory_tasks.training.experiment import logged_propensities, predictions_for, score_predictions
    from factory_tasks.training.features import build_pipeline, feature_frame

    spec, champion = request.spec, request.champion
    metrics = list(dict.fromkeys([*spec.metrics, *GATE_METRICS]))
    compared = list(dict.fromkeys([spec.ranking_metric, "policy_value"]))
    economics = spec.economics.model_dump(mode="json")
    X = feature_frame(data).reset_index(drop=True)  # the model's inputs: never the propensity
    y = data[TARGET_COLUMN].to_numpy(dtype=np.int64)
    propensity = logged_propensities(data)  # per row, when the snapshot includes interactions
    # the same split whether or not there is a propensity column (it only rides along)
    X_fit, X_hold, y_fit, y_hold, _, p_hold, rows_fit, _ = train_test_split(
        X, y, np.zeros(len(y)) if propensity is None else propensity, np.arange(len(y)),
        test_size=request.holdout_fraction, stratify=y, random_state=spec.random_state)
    p_hold = None if propensity is None else p_hold

    def pipeline(estimator: str, params: Mapping[str, Any], random_state: int):
        return build_pipeline(estimator, params, random_state=random_state, n_threads=n_threads)

    with threadpool_limits(limits=n_threads):
        check_model = pipeline(spec.estimator, spec.params, spec.random_state).fit(X_fit, y_fit)
        # each model's predictions on the slice made once: its scores and the resamples read them
        predictions = [predictions_for(check_model, X_hold, metrics)]
        holdout = score_predictions(predictions[0], y_hold, metrics, economics, p_hold)
        champion_model = champion_scores = None
        if champion is not None:
            # the champion's recipe on exactly the challenger's fit rows: both judged on rows neither saw
            champion_model = (check_model if champion.same_recipe(spec) else
                              pipeline(champion.estimator, champion.params, champion.random_state).fit(X_fit, y_fit))
            if champion_model is check_model:
                champion_scores = holdout
            else:
                predictions.append(predictions_for(champion_model, X_hold, metrics))
                champion_scores = score_predictions(predictions[1], y_hold, metrics, economics, p_hold)
        final = pipeline(spec.estimator, spec.params, spec.random_state).fit(X, y)
        # one resampling pass: the refit's standard error and, paired, the differences to the champion
        samples = _resampled(predictions, y_hold, compared, economics, p_hold, resamples=BOOTSTRAP_RESAMPLES,
                             seed=spec.random_state)
    holdout_se = _spread(samples[0][spec.ranking_metric], BOOTSTRAP_RESAMPLES)
    ok, note = consistency(request, holdout.get(spec.ranking_metric), len(X_hold), len(X), holdout_se)
    log.info("refit of %s: %s (%s)", spec.experiment_id, "consistent" if ok else "INCONSISTENT", note)
    comparison: list[PairedDifference] = []
    if champion is not None:
        method = (f"paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples, percentile interval; champion "
                  + ("= the challenger's recipe (the same refit)" if champion_model is check_model else
                     f"recipe ({champion.estimator} of {champion.experiment_id}) refitted on the same rows")
                  + ("; policy metrics propensity-weighted" if p_hold is not None else ""))
        comparison = [paired_difference(measure, holdout.get(measure), champion_scores.get(measure),
                                        samples[0][measure], samples[-1][measure], n_rows=len(X_hold),
                                        method=method)
                      for measure in compared]
        for diff in comparison:
            log.info("%s vs champion %s on %d held-out rows: %s", spec.experiment_id, champion.model_version,
                     diff.n_rows, diff.model_dump_json())
    live = None
    if champion is not None:
        live = _shadow(check_model, live_traffic, data, rows_fit, economics)
        log.info("%s vs champion %s on its live traffic: %s", spec.experiment_id, champion.model_version,
                 live.model_dump_json())
    return {"final": final, "check_model": check_model, "holdout_rows": X_hold, "holdout": holdout,
            "champion_model": champion_model, "champion_holdout": champion_scores, "comparison": comparison,
            "live": live, "consistent": ok, "note": note, "n_rows": len(X)}


def _shadow(check_model: Any, traffic: Any, data: Any, rows_fit: Any, economics: Mapping[str, Any]) -> PairedDifference:
    """The refit's decisions on the champion's live traffic that it was not fitted on (its own
    held-out interaction rows and any decision newer than its snapshot), valued off-policy
    against the champion's (:func:`factory_tasks.loop.shadow.shadow_difference`). The check
    model stands for the final one, as on the held-out slice: the final fit has seen every
    snapshot row."""
    from factory_tasks.core.schema import PREDICTION_UUID_COLUMN
    from factory_tasks.loop.shadow import no_evidence, shadow_difference, unseen_traffic

    if traffic is None:
        return no_evidence("dr", CONFIDENCE, "no matured decisions of the champion")
    fit_uuids = (data[PREDICTION_UUID_COLUMN].iloc[rows_fit].dropna().tolist()
                 if PREDICTION_UUID_COLUMN in data.columns else [])
    unseen, dropped = unseen_traffic(traffic, fit_uuids)
    if unseen.empty:
        return no_evidence("dr", CONFIDENCE, f"all {dropped} matured decisions of the champion are among the "
                                             "challenger's fit rows")
    live = shadow_difference(check_model, unseen, economics, confidence=CONFIDENCE)
    if dropped:
        live = live.model_copy(update={"method": f"{live.method}; {dropped} decision(s) it was fitted on left out"})
    return live


def _finite(scores: Mapping[str, float] | None, n_rows: int) -> HoldoutScores | None:
    if scores is None:
        return None
    return HoldoutScores(metrics={k: (float(v) if v is not None and math.isfinite(v) else None)
                                  for k, v in scores.items()}, n_rows=n_rows)


def run_retrain(project_root: Path, environ: Mapping[str, str]) -> int:
    """Run the retrain job (see the module doc); returns the exit code."""
    from factory_tasks.core.versions import library_versions
    from factory_tasks.jobs.experiment import (
        error_line,
        read_snapshot,
        running_code_version,
        snapshot_path,
        thread_count,
    )
    from factory_tasks.training.artifacts import save_model

    started_at = utc_now()
    request: RetrainRequest | None = None
    try:
        raw = environ.get(RetrainRequest.ENV) or ""
        if not raw.strip():
            raise ContractError(RetrainRequest.ENV, ["not set: the job needs the retrain request as JSON"])
        request = RetrainRequest.parse(raw, f"the job's {RetrainRequest.ENV}")
        code_version = running_code_version(environ)
        spec = request.spec
        data = read_snapshot(snapshot_path(project_root, spec), spec.data_snapshot.hash)
        traffic = _read_live_traffic(project_root, request)
        fitted = refit(request, data, n_threads=thread_count(environ), live_traffic=traffic)
        out_dir = project_root / request.output_dir
        model_path, metadata_path = save_model(fitted["final"], out_dir, {
            "model_version": request.model_version,
            "experiment_id": spec.experiment_id,
            "family": spec.family,
            "estimator": spec.estimator,
            "params": dict(spec.params),
            "random_state": spec.random_state,
            "economics": spec.economics.model_dump(mode="json"),
            "ranking_metric": spec.ranking_metric,
            "cv_estimate": request.cv_estimate.model_dump(mode="json"),
            "holdout_scores": fitted["holdout"],
            "fitted_on": {"split": "every row of the training snapshot", "n_rows": fitted["n_rows"],
                          "data_snapshot": spec.data_snapshot.model_dump(mode="json")},
            "lineage": request.lineage.model_dump(mode="json"),
            "code_version": code_version,
        })
        onnx_path, compiled_note = _compile(fitted, out_dir, request)
        rel = lambda path: Path(path).relative_to(project_root).as_posix()  # noqa: E731
        result = RetrainResult(
            model_version=request.model_version, status="succeeded", ranking_metric=spec.ranking_metric,
            holdout=_finite(fitted["holdout"], len(fitted["holdout_rows"])),
            champion_holdout=_finite(fitted["champion_holdout"], len(fitted["holdout_rows"])),
            live=fitted["live"],
            comparison=fitted["comparison"],
            consistent=fitted["consistent"], consistency_note=fitted["note"],
            artifact_path=rel(model_path), metadata_path=rel(metadata_path),
            onnx_path=rel(onnx_path) if onnx_path else None, compiled_note=compiled_note,
            n_rows=fitted["n_rows"], code_version=code_version, library_versions=library_versions(),
            started_at=started_at, finished_at=utc_now())
        write_atomic(project_root / request.result_path, result.to_json())
        log.info("retrained %s on %d rows; wrote %s", request.model_version, fitted["n_rows"], request.result_path)
        return 0
    except Exception as exc:  # the failure is the result: the DAG reads it and says why
        log.error("retrain failed: %s", error_line(exc))
        print(traceback.format_exc(), file=sys.stderr)
        if request is None:
            return 1
        failed = RetrainResult(model_version=request.model_version, status="failed", error=error_line(exc),
                               traceback=traceback.format_exc(), started_at=started_at, finished_at=utc_now())
        write_atomic(project_root / request.result_path, failed.to_json())
        return 1


def _read_live_traffic(project_root: Path, request: RetrainRequest) -> Any:
    """The champion's live traffic the deploy run exported (hash checked), or None."""
    import hashlib
    import io

    import pandas as pd

    ref = request.live_traffic
    if ref is None:
        return None
    data = (project_root / ref.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != ref.hash:
        raise ContractError(f"live traffic {ref.path}", ["its content is not what the deploy run exported (hash)"])
    return pd.read_parquet(io.BytesIO(data))


def _compile(fitted: Mapping[str, Any], out_dir: Path, request: RetrainRequest) -> tuple[Path | None, str]:
    """A compiled ONNX copy of the final model, checked against it on the held-out rows."""
    from factory_tasks.serving.compiled import save_compiled

    path, note = save_compiled(fitted["final"], out_dir, fitted["holdout_rows"])
    if path is None:
        log.warning("%s will be served from the skops pipeline: %s", request.model_version, note)
    return path, note


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/retrain_model.py`` (configuration is the environment)."""
    from factory_tasks.jobs.experiment import configure_logging

    if argv if argv is not None else sys.argv[1:]:
        print(f"retrain_model takes no arguments; set {RetrainRequest.ENV}", file=sys.stderr)
        return 2
    configure_logging()
    return run_retrain(Path.cwd(), os.environ)


__all__ = ["GATE_METRICS", "bootstrap_se", "consistency", "main", "paired_difference", "refit", "resampled_scores",
           "run_retrain"]
