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
(:func:`responses_ingested_through`): a missing window's conversions are never read as
non-conversions. A ``prediction_log`` row that breaks its schema (a propensity outside
``(0, 1]``, a non-numeric feature, an unknown offer, ...) is left out, counted and named
(:class:`Rejected`); the rest of the window is monitored.

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import CUSTOMER_COLUMNS, OFFERS, expected_values
from factory_tasks.loop import off_policy
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
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import (
    CUSTOMER_RESPONSES,
    MODEL_MONITORING,
    MODEL_MONITORING_SCHEMA,
    OFFER_PROBA_COLUMNS,
    PREDICTION_LOG,
    RESPONSE_FEED,
)

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
DRIFT_METRIC_NAMES = {"psi": "drift_psi", "jensen_shannon": "drift_js"}
#: the prediction_log columns a run reads (nothing else)
PREDICTION_COLUMNS: tuple[str, ...] = (
    "prediction_uuid", "decided_at_ms", "model_version", *CUSTOMER_COLUMNS,
    "model_offer", "offer", "propensity", *OFFER_PROBA_COLUMNS,
)
MONITORING_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in MODEL_MONITORING_SCHEMA)


def iso(ms: int) -> str:
    """Epoch milliseconds as the tables' ISO-8601 UTC text (``2026-12-01T06:00:00Z``)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def epoch_ms(moment: datetime | str) -> int:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone")
    return int(round(moment.timestamp() * 1000))


@dataclass(frozen=True)
class MonitoringWindow:
    """A monitoring run's data interval ``[start_ms, end_ms)`` and the response window W."""

    start_ms: int
    end_ms: int
    response_window_ms: int

    @classmethod
    def from_interval(cls, start: datetime | str, end: datetime | str, response_window_minutes: float):
        window = cls(epoch_ms(start), epoch_ms(end), int(round(response_window_minutes * MINUTE_MS)))
        if window.end_ms <= window.start_ms:
            raise ValueError(f"the data interval must not be empty: {iso(window.start_ms)} .. {iso(window.end_ms)}")
        return window

    @property
    def length_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def as_of_window(self) -> str:
        return iso(self.start_ms)

    def cohorts(self) -> list[tuple[int, int]]:
        """The cohorts that can still change, oldest first: ``[start - kL, start - (k-1)L)`` for
        ``k = ceil(W / L) .. 1`` (``cohort_end + W > start``) and ``[start, end)`` itself."""
        back = math.ceil(self.response_window_ms / self.length_ms)
        return [(self.start_ms - k * self.length_ms, self.start_ms - (k - 1) * self.length_ms)
                for k in range(back, -1, -1)]

    def judged_cohorts(self) -> list[tuple[int, int]]:
        """The cohorts whose last response window closes in this run (``cohort_end + W`` in
        ``(start, end]``): their labels became final here, so they are judged here, once."""
        return [(s, e) for s, e in self.cohorts() if self.start_ms < e + self.response_window_ms <= self.end_ms]


def label_state(decided_ms: np.ndarray, responded_ms: np.ndarray, end_ms: int,
                window_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """``(matured, conversion)`` per prediction as of ``end_ms``.

    ``responded_ms`` is the first attached response's time, NaN when none arrived before ``end``.
    Matured: the response window has closed (``decided + W <= end``). Conversion: a response
    within the window (it is only a label on matured rows).
    """
    decided = np.asarray(decided_ms, dtype=np.int64)
    responded = np.asarray(responded_ms, dtype=np.float64)
    matured = decided + window_ms <= end_ms
    with np.errstate(invalid="ignore"):
        converted = (responded < end_ms) & (responded <= decided + window_ms) & (responded >= decided)
    return matured, converted.astype(np.int64)


# --------------------------------------------------------------------------- reading


#: at most this many rejected rows are named one by one (the counts cover all of them)
REJECTED_SHOWN = 20


@dataclass
class Rejected:
    """Rows left out of a run because a value breaks the table's schema: counted per
    ``table.column``, the first :data:`REJECTED_SHOWN` named (table, uuid or row, column, value)."""

    count: int = 0
    by_column: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "by_column": dict(self.by_column), "examples": list(self.examples)}


@dataclass
class CohortData:
    """The predictions a run reads, column arrays in one row order, and their labels as of end."""

    decided_ms: np.ndarray  # int64
    model_version: np.ndarray  # object
    customers: pd.DataFrame  # CUSTOMER_COLUMNS
    model_offer: np.ndarray  # int64 indices into OFFERS
    offer: np.ndarray  # int64
    propensity: np.ndarray  # float64
    proba: np.ndarray  # (n, 3) float64, OFFERS order
    matured: np.ndarray  # bool
    conversion: np.ndarray  # int64
    rejected: Rejected = field(default_factory=Rejected)  # rows left out of the run
    labels_as_of_ms: int | None = None  # the instant the labels hold for (end, or the feed's watermark)

    def __len__(self) -> int:
        return len(self.decided_ms)


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NULL"
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def _numbers(values: np.ndarray) -> np.ndarray:
    """Object values as float64, anything not a number (text, NULL) as NaN."""
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)


_Check = tuple[str, np.ndarray, str]  # (column, mask of the bad rows, what a value must be)


def _screen(table: str, col: Mapping[str, np.ndarray], checks: list[_Check],
            ids: np.ndarray, id_column: str) -> tuple[np.ndarray, Rejected]:
    """The rows passing every check, and the others counted and named (and logged)."""
    n = len(ids)
    bad_any = np.zeros(n, dtype=bool)
    by_column: dict[str, int] = {}
    examples: list[str] = []
    for column, bad, rule in checks:
        if not bad.any():
            continue
        bad_any |= bad
        by_column[f"{table}.{column}"] = int(bad.sum())
        for i in np.flatnonzero(bad)[:REJECTED_SHOWN - len(examples)]:
            uid = ids[i]
            where = (f"{id_column} {uid}" if isinstance(uid, str) and uid
                     else f"row {i + 1} of those read (no {id_column})")
            examples.append(f"{table} {where}: {column} = {_shown(col[column][i])} ({rule})")
    rejected = Rejected(int(bad_any.sum()), by_column, examples)
    if rejected.count:
        more = sum(by_column.values()) - len(examples)
        log.warning("%s: %d row(s) left out of monitoring, their values break the table's schema (%s):\n  %s%s",
                    table, rejected.count, ", ".join(f"{c} {k}" for c, k in by_column.items()),
                    "\n  ".join(examples), f"\n  ... and {more} more" if more else "")
    return ~bad_any, rejected


def _prediction_checks(col: Mapping[str, np.ndarray]) -> tuple[list[_Check], dict[str, np.ndarray]]:
    """The checks of the prediction_log columns a run reads, and the numeric columns as float64."""
    from factory_tasks.core.schema import INTERACTION_DTYPES

    numbers: dict[str, np.ndarray] = {}
    checks: list[_Check] = []

    def text(name: str) -> None:
        values = col[name]
        checks.append((name, pd.isna(values) | (values == ""), "must be non-empty text"))

    def number(name: str, rule: str, ok: Callable[[np.ndarray], np.ndarray]) -> None:
        x = numbers[name] = _numbers(col[name])
        with np.errstate(invalid="ignore"):
            checks.append((name, ~(np.isfinite(x) & ok(x)), rule))

    text("prediction_uuid")
    number("decided_at_ms", "must be an integer (epoch ms)", lambda x: x == np.round(x))
    text("model_version")
    for c in CUSTOMER_COLUMNS:
        kind = INTERACTION_DTYPES[c]
        if kind == "int64":
            number(c, "must be an integer", lambda x: x == np.round(x))
        elif kind == "float64":
            number(c, "must be a number", lambda x: np.ones(len(x), dtype=bool))
        else:
            text(c)
    for name in ("model_offer", "offer"):
        checks.append((name, ~pd.Series(col[name], dtype=object).isin(OFFERS).to_numpy(),
                       f"must be one of {', '.join(OFFERS)}"))
    number("propensity", "must lie in (0, 1]: the probability with which the offer was made",
           lambda x: (x > 0) & (x <= 1))
    for c in OFFER_PROBA_COLUMNS:
        number(c, "must be a probability in [0, 1]", lambda x: (x >= 0) & (x <= 1))
    return checks, numbers


def _offer_codes(values: np.ndarray, name: str) -> np.ndarray:
    codes, uniques = pd.factorize(values)
    lookup = np.empty(len(uniques), dtype=np.int64)
    for i, value in enumerate(uniques):
        if value not in OFFERS:
            raise ValueError(f"prediction_log.{name} holds an unknown offer {value!r}; valid: {list(OFFERS)}")
        lookup[i] = OFFERS.index(value)
    return lookup[codes] if len(codes) else np.empty(0, dtype=np.int64)


def _table(rows: list[tuple], width: int) -> np.ndarray:
    """Rows as one 2-D object array (one C pass; columns are then converted at C speed too)."""
    return np.array(rows, dtype=object).reshape(len(rows), width)


_NUMERIC = {"int64": np.int64, "float64": np.float64}


def cohort_frame(prediction_rows: list[tuple], response_rows: list[tuple], window: MonitoringWindow,
                 labels_as_of_ms: int | None = None) -> CohortData:
    """Column arrays from the raw rows of :data:`PREDICTION_COLUMNS` and ``(prediction_uuid,
    responded_at_ms)`` of the attached responses; the labels as of ``labels_as_of_ms`` (default
    ``window.end_ms``). Rows that break the schema are left out and reported (``rejected``)."""
    from factory_tasks.core.schema import INTERACTION_DTYPES

    as_of = window.end_ms if labels_as_of_ms is None else min(int(labels_as_of_ms), window.end_ms)
    table = _table(prediction_rows, len(PREDICTION_COLUMNS))
    col = {name: table[:, i] for i, name in enumerate(PREDICTION_COLUMNS)}
    checks, numbers = _prediction_checks(col)
    keep, rejected = _screen(PREDICTION_LOG, col, checks, col["prediction_uuid"], "prediction_uuid")
    if rejected.count:
        col = {name: values[keep] for name, values in col.items()}
        numbers = {name: values[keep] for name, values in numbers.items()}
    n = len(col["prediction_uuid"])
    responded = np.full(n, np.nan)
    if response_rows and n:
        uuids = pd.Index(col["prediction_uuid"], dtype=object)  # no string inference: a hash lookup only
        responses = _table(response_rows, 2)
        # a response without a usable time is no label (it cannot be placed in a window)
        r_uuid, r_at = responses[:, 0], _numbers(responses[:, 1])
        if uuids.is_unique:
            position = uuids.get_indexer(r_uuid)
        else:  # a uuid logged twice: its label goes to its first decision
            first = np.flatnonzero(~uuids.duplicated())
            found = uuids[first].get_indexer(r_uuid)
            position = np.where(found >= 0, first[found], -1)
        known = position >= 0
        # the first attached response per prediction (a duplicate delivery is not a second label)
        np.fmin.at(responded, position[known], r_at[known])
    decided = numbers["decided_at_ms"].astype(np.int64)
    matured, conversion = label_state(decided, responded, as_of, window.response_window_ms)
    customers = pd.DataFrame({c: numbers[c].astype(_NUMERIC[INTERACTION_DTYPES[c]]) if c in numbers else col[c]
                              for c in CUSTOMER_COLUMNS}, columns=list(CUSTOMER_COLUMNS))
    proba = np.column_stack([numbers[c] for c in OFFER_PROBA_COLUMNS]) if n else np.empty((0, len(OFFERS)))
    return CohortData(
        decided_ms=decided, model_version=col["model_version"], customers=customers,
        model_offer=_offer_codes(col["model_offer"], "model_offer"), offer=_offer_codes(col["offer"], "offer"),
        propensity=numbers["propensity"], proba=proba,
        matured=matured, conversion=conversion, rejected=rejected, labels_as_of_ms=as_of,
    )


def feed_runs(hook: Any, table: str = RESPONSE_FEED) -> list[tuple[int, int]]:
    """The windows the response feed has delivered, merged into contiguous runs ``[start, end)``
    (epoch ms), oldest first; empty before the feed's first window."""
    dialect = dialect_for(hook)
    if not dialect.table_exists(hook, table):
        return []
    spans = []
    for start, end in dialect.select(hook, table, ["window_start", "window_end_ms"]):
        try:
            spans.append((epoch_ms(start), int(end)))
        except (TypeError, ValueError):  # not a window: it delivers nothing
            log.warning("%s: a row with window_start %r, window_end_ms %r is not a window; ignored", table, start, end)
    runs: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end))
        else:
            runs.append((start, end))
    return runs


def watermark(runs: list[tuple[int, int]], since_ms: int | None = None) -> int | None:
    """The end of the contiguous run of delivered windows that covers ``since_ms`` (the feed's
    first run when ``since_ms`` is None or before it): the first missing window stops it, however
    many later windows were delivered. Below ``since_ms`` itself when the window at ``since_ms``
    is missing. None before the feed's first window."""
    if not runs:
        return None
    if since_ms is None or since_ms < runs[0][0]:
        return runs[0][1]
    return [end for start, end in runs if start <= since_ms][-1]


def responses_ingested_through(hook: Any, since_ms: int | None = None, table: str = RESPONSE_FEED) -> int | None:
    """The response feed's watermark (epoch ms): every response received from ``since_ms`` (or
    the feed's first window) up to it is in ``customer_responses`` (:func:`watermark`)."""
    return watermark(feed_runs(hook, table), since_ms)


def read_cohorts(hook: Any, window: MonitoringWindow, *, predictions: str = PREDICTION_LOG,
                 responses: str = CUSTOMER_RESPONSES) -> CohortData:
    """The predictions of :meth:`MonitoringWindow.cohorts` and their attached responses before
    ``end`` (only the needed columns and rows, range-filtered in the warehouse); labels as of
    the response feed's watermark when it is earlier than ``end`` (no feed: no label matured)."""
    dialect = dialect_for(hook)
    low, high = window.cohorts()[0][0], window.end_ms
    if not dialect.table_exists(hook, predictions):
        log.warning("%s does not exist (yet): nothing to monitor", predictions)
        return cohort_frame([], [], window)
    through = responses_ingested_through(hook, low)
    labels_as_of = high if through is not None and through >= high else (low if through is None else through)
    if labels_as_of < high:
        log.warning("the response feed has delivered the responses through %s only, not through %s: labels are "
                    "taken as of %s (immature), missing conversions are not read as non-conversions",
                    iso(through) if through is not None else "nothing yet", iso(high), iso(labels_as_of))
    prediction_rows = dialect.select_between(hook, predictions, PREDICTION_COLUMNS, "decided_at_ms", low, high)
    response_rows: list[tuple] = []
    if prediction_rows and dialect.table_exists(hook, responses):
        response_rows = dialect.select_between(hook, responses, ("prediction_uuid", "responded_at_ms"),
                                               "responded_at_ms", low, high, where={"status": "attached"})
    log.info("read %d predictions decided in %s .. %s and %d attached responses",
             len(prediction_rows), iso(low), iso(high), len(response_rows))
    return cohort_frame(prediction_rows, response_rows, window, labels_as_of)


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


class _Rows:
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


def _group_rows(data: CohortData, idx: np.ndarray, out: _Rows, config: LoopConfig, economics: Mapping,
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
            out = _Rows(window, cohorts[k], str(versions[v]))
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
