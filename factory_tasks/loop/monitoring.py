"""Monitoring one window of the closed loop: predictions ⨝ delayed responses → ``model_monitoring`` rows.

A monitoring run for the data interval ``[start, end)`` looks at **cohorts**: the predictions
decided in one interval-long window (hourly). The cohort ``[start, end)`` is new; an earlier
cohort can still change while some of its response windows (``responses.window_minutes``, W)
are open, i.e. while ``cohort_end + W > start`` (it had not closed at the previous run, as of
``start``). So a run reads the ``ceil(W / L) + 1`` newest cohorts (``L = end - start``) and the
``attached`` responses that arrived before ``end``, and writes every value of each cohort and
model version *as of* ``end`` into the partition ``as_of_window = start`` (a rerun replaces it).

A prediction decided at ``t`` is **matured** at ``end`` when its response window has closed,
``t + W <= end``; its label is 1 when an attached response arrived within the window, else 0.
Open predictions are left out of every label metric (early conversions alone would read high).
Labels are taken as of the response feed's watermark when it is earlier than ``end``
(:func:`~factory_tasks.loop.cohorts.responses_ingested_through`): a missing window's conversions are never read as
non-conversions. A ``prediction_log`` row that breaks its schema (a propensity outside
``(0, 1]``, a non-numeric feature, an unknown offer, ...) is left out, counted and named
(:class:`~factory_tasks.loop.cohorts.Rejected`); the rest of the window is monitored.

| metric | dimension | on | maturity |
| --- | --- | --- | --- |
| ``volume``, ``score_mean``, ``score_p10/p50/p90`` | "" | every prediction (score: the model's P for the offer made) | final |
| ``offer_share`` | ``offer=<o>`` | the model's choice (``model_offer``) | final |
| ``label_completeness`` | "" and ``offer=<o>`` (offer made) | share of matured predictions | final when 1 |
| ``conversion_rate``, ``roc_auc`` (Hanley-McNeil CI), ``log_loss``, ``calibration_error`` | "" | matured labels, at least ``monitoring.min_labels`` | final / immature |
| ``calibration_expected`` / ``calibration_observed`` | ``decile=<k>`` | matured labels | final / immature |
| ``estimate_reliable`` (1/0: matured calibration error within the ceiling plus its noise) | "" | matured labels | final / immature |
| ``estimated_roc_auc``, ``estimated_conversion_rate`` | "" | scores alone (CBPE) | estimate |
| ``policy_value_ipw/snipw/dr`` | "" | matured rows: target ``model_offer``, logged ``offer`` with ``propensity`` | final / immature |
| ``blast_value_dr`` | ``offer=<o>`` | matured rows, everyone gets ``o`` | final / immature |
| ``exploration_value`` | "" | matured rows, the uniform random policy (DR) | final / immature |
| ``policy_vs_best_blast_dr``, ``policy_vs_exploration_dr`` | "" | paired differences (DR) | final / immature |
| ``drift_psi`` or ``drift_js`` | ``feature=<c>`` | the cohort's customers against the model's training snapshot | final |

Rewards are ``conversion * conversion_value - cost(offer made)`` under the grid's economics;
``q_hat`` is the model's expected value per offer from ``p_bogo/p_discount/p_none``. Values
with a confidence interval fill ``lower``/``upper`` (``monitoring.policy_confidence``).

The alert decisions on these rows are in :mod:`factory_tasks.loop.alerts`.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import CUSTOMER_COLUMNS, OFFERS, expected_values
from factory_tasks.loop import off_policy
from factory_tasks.loop.cohorts import (
    CohortData,
)
from factory_tasks.loop.config import LoopConfig
from factory_tasks.loop.drift import feature_drift
from factory_tasks.loop.performance_estimate import (
    calibration_by_decile,
    calibration_noise,
    expected_conversion_rate,
    expected_roc_auc,
    realised_log_loss,
    realised_roc_auc,
)
from factory_tasks.loop.windows import MonitoringWindow, iso
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import (
    MODEL_MONITORING,
    MODEL_MONITORING_SCHEMA,
)

log = logging.getLogger(__name__)

DRIFT_METRIC_NAMES = {"psi": "drift_psi", "jensen_shannon": "drift_js"}
MONITORING_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in MODEL_MONITORING_SCHEMA)


# --------------------------------------------------------------------------- metrics


def _hanley_mcneil(auc: float, positives: int, negatives: int, confidence: float) -> tuple[float, float]:
    """A normal interval for an AUC (Hanley & McNeil 1982)."""
    if not np.isfinite(auc) or positives < 1 or negatives < 1:
        return float("nan"), float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) \
        / (positives * negatives)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


class MonitoringRows:
    """Collects the rows of one (cohort, model version)."""

    def __init__(self, window: MonitoringWindow, cohort: tuple[int, int], model_version: str):
        self.base = {"as_of_window": window.as_of_window, "as_of_ms": window.end_ms,
                     "cohort_start": iso(cohort[0]), "cohort_end": iso(cohort[1]), "model_version": model_version}
        self.rows: list[dict] = []

    def add(self, metric: str, value: float, n: int, maturity: str, dimension: str = "",
            lower: float | None = None, upper: float | None = None) -> None:
        self.rows.append({**self.base, "metric": metric, "dimension": dimension, "value": value,
                          "lower": lower, "upper": upper, "n": int(n), "maturity": maturity})

    def estimate(self, metric: str, est: off_policy.PolicyEstimate, maturity: str, dimension: str = "") -> None:
        self.add(metric, est.value, est.n, maturity, dimension, est.lower, est.upper)


def _group_rows(data: CohortData, idx: np.ndarray, out: MonitoringRows, config: LoopConfig, economics: Mapping,
                reference: pd.DataFrame | None) -> None:
    mon = config.monitoring
    n = len(idx)
    p = data.proba[idx]
    offer, model_offer = data.offer[idx], data.model_offer[idx]
    score = p[np.arange(n), offer]
    out.add("volume", n, n, "final")
    shares = np.bincount(model_offer, minlength=len(OFFERS)) / n
    for j, name in enumerate(OFFERS):
        out.add("offer_share", shares[j], n, "final", f"offer={name}")
    out.add("score_mean", float(score.mean()), n, "final")
    for q, value in zip((10, 50, 90), np.percentile(score, (10, 50, 90))):
        out.add(f"score_p{q}", float(value), n, "final")

    matured = data.matured[idx]
    n_matured = int(matured.sum())
    maturity = "final" if n_matured == n else "immature"
    out.add("label_completeness", n_matured / n, n, maturity)
    made = np.bincount(offer, minlength=len(OFFERS))
    done = np.bincount(offer, weights=matured, minlength=len(OFFERS))
    for j, name in enumerate(OFFERS):
        if made[j]:
            out.add("label_completeness", done[j] / made[j], made[j], "final" if done[j] == made[j] else "immature",
                    f"offer={name}")

    out.add("estimated_roc_auc", expected_roc_auc(score), n, "estimate")
    out.add("estimated_conversion_rate", expected_conversion_rate(score), n, "estimate")

    if reference is not None:
        current = data.customers.iloc[idx] if n < len(data) else data.customers
        drift = feature_drift(reference, current, CUSTOMER_COLUMNS, metric=mon.drift_metric, bins=mon.drift_bins)
        name = DRIFT_METRIC_NAMES[mon.drift_metric]
        for feature, value in zip(drift["feature"], drift["value"]):
            out.add(name, float(value), n, "final", f"feature={feature}")

    if n_matured < mon.min_labels:
        return
    m = matured if n_matured < n else slice(None)
    pm, ym = score[m], data.conversion[idx][m].astype(np.float64)
    out.add("conversion_rate", float(ym.mean()), n_matured, maturity)
    auc = realised_roc_auc(pm, ym)
    positives = int(ym.sum())
    lower, upper = _hanley_mcneil(auc, positives, n_matured - positives, mon.policy_confidence)
    out.add("roc_auc", auc, n_matured, maturity, lower=lower, upper=upper)
    out.add("log_loss", realised_log_loss(pm, ym), n_matured, maturity)
    table = calibration_by_decile(pm, ym)
    for decile, count, expected, observed in table.itertuples(index=False):
        out.add("calibration_expected", float(expected), count, maturity, f"decile={decile}")
        out.add("calibration_observed", float(observed), count, maturity, f"decile={decile}")
    error = float((table["n"] * (table["expected"] - table["observed"]).abs()).sum() / table["n"].sum())
    out.add("calibration_error", error, n_matured, maturity)
    # estimate_is_reliable(..., allow_noise=True) on the table already computed
    reliable = error <= mon.calibration_error_ceiling + calibration_noise(pm)
    out.add("estimate_reliable", float(reliable), n_matured, maturity)

    logged, target, prop = offer[m], model_offer[m], data.propensity[idx][m]
    rewards = off_policy.logged_rewards(ym, logged, economics)
    q_hat = expected_values(p[m], economics)
    kw = {"q_hat": q_hat, "confidence": mon.policy_confidence}
    for method in off_policy.ESTIMATORS:
        out.estimate(f"policy_value_{method}",
                     off_policy.estimate_policy_value(rewards, logged, prop, target, method=method, **kw), maturity)
    blasts = [off_policy.estimate_policy_value(rewards, logged, prop, np.int64(j), method="dr", **kw)
              for j in range(len(OFFERS))]
    for j, est in enumerate(blasts):
        out.estimate("blast_value_dr", est, maturity, f"offer={OFFERS[j]}")
    uniform = off_policy.uniform_policy(n_matured)
    out.estimate("exploration_value", off_policy.estimate_policy_value(
        rewards, logged, prop, target_proba=uniform, method="dr", **kw), maturity)
    best = int(np.argmax([b.value for b in blasts]))
    out.estimate("policy_vs_best_blast_dr", off_policy.compare_policies(
        rewards, logged, prop, target, np.int64(best), method="dr", **kw), maturity)
    out.estimate("policy_vs_exploration_dr", off_policy.compare_policies(
        rewards, logged, prop, target, baseline_proba=uniform, method="dr", **kw), maturity)


def monitoring_rows(data: CohortData, window: MonitoringWindow, config: LoopConfig, economics: Mapping,
                    references: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The ``model_monitoring`` rows of every (cohort, model version) in ``data``, as of the
    window's end. ``references``: the training snapshot's customer columns per model version
    (a version without one gets no drift rows)."""
    references = references or {}
    rows: list[dict] = []
    if len(data):
        cohorts = window.cohorts()
        first = cohorts[0][0]
        cohort_no = (data.decided_ms - first) // window.length_ms
        version_no, versions = pd.factorize(data.model_version, sort=True)
        key = cohort_no * len(versions) + version_no
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for group in np.split(order, bounds):
            k, v = divmod(int(key[group[0]]), len(versions))
            out = MonitoringRows(window, cohorts[k], str(versions[v]))
            _group_rows(data, np.sort(group), out, config, economics, references.get(str(versions[v])))
            rows.extend(out.rows)
    frame = pd.DataFrame(rows, columns=list(MONITORING_COLUMN_NAMES))
    return frame


def record_rows(hook: Any, window: MonitoringWindow, rows: pd.DataFrame) -> int:
    """Replace the partition ``as_of_window`` of ``model_monitoring`` with ``rows`` (idempotent)."""
    dialect = dialect_for(hook)
    dialect.create_table(hook, MODEL_MONITORING, MODEL_MONITORING_SCHEMA, partition_by="as_of_window")
    records = rows.to_dict("records")
    dialect.replace_partition(hook, MODEL_MONITORING, MODEL_MONITORING_SCHEMA, "as_of_window",
                              window.as_of_window, records)
    return len(records)


def read_rows(hook: Any, as_of_window: str) -> pd.DataFrame:
    """One run's ``model_monitoring`` rows (empty when the table does not exist yet)."""
    dialect = dialect_for(hook)
    if not dialect.table_exists(hook, MODEL_MONITORING):
        return pd.DataFrame(columns=list(MONITORING_COLUMN_NAMES))
    return dialect.read_frame(hook, MODEL_MONITORING, MODEL_MONITORING_SCHEMA, where={"as_of_window": as_of_window})


# --------------------------------------------------------------------------- the training snapshot


def reference_frame(snapshot_hash: str, fetch: Callable[[], bytes], cache_dir: Path | None = None) -> pd.DataFrame:
    """The customer columns of the training snapshot with content hash ``snapshot_hash`` (the
    parquet ``fetch()`` returns, e.g. ``snapshots/...parquet`` from the CML project), cached in
    ``cache_dir`` by that hash so an hourly run downloads it once."""
    cached = Path(cache_dir) / f"reference-{snapshot_hash}.parquet" if cache_dir else None
    if cached is not None and cached.exists():
        return pd.read_parquet(cached)
    frame = pd.read_parquet(io.BytesIO(fetch()), columns=list(CUSTOMER_COLUMNS))
    if cached is not None:
        from factory_tasks.core.atomic import write_atomic

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        write_atomic(cached, buffer.getvalue())
    log.info("training snapshot %s: %d rows as the drift reference", snapshot_hash, len(frame))
    return frame


def snapshot_path(metadata: bytes, snapshot_hash: str) -> str:
    """The training snapshot's project path from a deployed model's metadata file (its lineage),
    checked against the deployment's ``data_snapshot_hash``."""
    import json

    lineage = json.loads(metadata)["lineage"]
    if lineage["data_snapshot_hash"] != snapshot_hash:
        raise ValueError(f"the model's metadata names snapshot {lineage['data_snapshot_hash']!r}, "
                         f"the deployment record {snapshot_hash!r}")
    return str(lineage["data_snapshot_path"])


def grid_economics(grid_path: str | Path) -> dict:
    """The grid's economics (``conversion_value``, ``offer_costs``) as a plain dict."""
    from factory_tasks.training.grid import load_grid

    return load_grid(grid_path, check_fit=False).economics.model_dump(mode="json")
