"""Metric registry: the names a grid may ask for, whether higher is better, and how to compute them.

The computations live beside the names so an experiment and a validator agree on one list:
:func:`compute_metric` for any name, :func:`policy_value` for the off-policy (inverse
propensity weighted, with per-offer or per-row logging propensities) value per customer of a
model's next-best-action decisions, :func:`choose_offers` for the decisions themselves, and
:func:`fold_intervals` for a metric's mean with its interval across cross-validation folds.
``sklearn.metrics`` (``scipy``) is imported only when a metric (an interval) is computed, so
importing the registry stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import OFFERS, expected_values, offer_cost_vector, offer_indices


@dataclass(frozen=True)
class Metric:
    name: str
    greater_is_better: bool
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("roc_auc", True, "area under the ROC curve of P(conversion)"),
        Metric("log_loss", False, "log loss of P(conversion)"),
        Metric("average_precision", True, "area under the precision-recall curve"),
        Metric("accuracy", True, "accuracy at threshold 0.5 (misleading on imbalanced data)"),
        Metric("brier_score", False, "mean squared error of P(conversion)"),
        Metric(
            "policy_value",
            True,
            "IPW estimate of value per customer of the model's next-best-action policy",
        ),
        Metric(
            "policy_uplift",
            True,
            "policy_value minus the value of the best single offer sent to everyone (blast), same rows",
        ),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        valid = ", ".join(METRICS)
        raise ValueError(f"{name!r} is not a valid metric. Valid options are: {valid}.") from None


# --------------------------------------------------------------------------------------------
# Computations
# --------------------------------------------------------------------------------------------
#
# ``proba`` is always P(conversion = 1) for each row (a 1-D array). ``policy_value`` also needs
# the model's *counterfactual* probabilities: P(conversion | x, offer = o) for each of the three
# offers, an (n, 3) array with columns in ``schema.OFFERS`` order. Experiments compute that
# matrix once per fold and take ``proba`` from it (the column of each row's logged offer).


def choose_offers(offer_proba: np.ndarray, economics: Mapping) -> np.ndarray:
    """The next best action per row: index into OFFERS maximising ``p * value - offer_cost``.

    Ties go to the first offer in OFFERS order.
    """
    offer_proba = np.asarray(offer_proba, dtype=np.float64)
    if offer_proba.ndim != 2 or offer_proba.shape[1] != len(OFFERS):
        raise ValueError(
            f"offer_proba must have shape (n, {len(OFFERS)}) (columns {list(OFFERS)}), "
            f"got {offer_proba.shape}"
        )
    return np.argmax(expected_values(offer_proba, economics), axis=1)


#: how the logging propensities are given: None (the randomized campaign, 1/3 each), a
#: ``{offer: probability}`` mapping, ``"empirical"``, or one value per row — the probability
#: with which that row's logged offer was made (e.g. an ε-greedy production policy's log)
Propensities = Mapping[str, float] | str | np.ndarray | pd.Series | None


def _per_row(propensities: Propensities) -> bool:
    return isinstance(propensities, (np.ndarray, pd.Series, list, tuple))


def _propensity_vector(propensities: Propensities, logged_idx: np.ndarray) -> np.ndarray:
    """Propensity of each offer in OFFERS order, shape (3,) — or, for per-row propensities,
    the propensity of each row's logged offer, shape (n,), checked to lie in (0, 1]."""
    if _per_row(propensities):
        prop = np.asarray(propensities, dtype=np.float64)
        if prop.shape != logged_idx.shape:
            raise ValueError(f"per-row propensities must have one value per row: got shape {prop.shape} "
                             f"for {len(logged_idx)} rows")
        if not np.all((prop > 0) & (prop <= 1)):  # NaN fails too
            raise ValueError("per-row propensities must lie in (0, 1]: a logged offer was made with "
                             "positive probability")
        return prop
    if propensities is None:
        return np.full(len(OFFERS), 1.0 / len(OFFERS))
    if isinstance(propensities, str):
        if propensities != "empirical":
            raise ValueError(
                f"propensities must be a mapping, None, 'empirical' or one value per row, got {propensities!r}"
            )
        counts = np.bincount(logged_idx, minlength=len(OFFERS)).astype(np.float64)
        return counts / max(len(logged_idx), 1)
    unknown = set(propensities) - set(OFFERS)
    if unknown:
        raise ValueError(f"propensities name unknown offer(s) {sorted(unknown)}")
    vec = np.array([float(propensities.get(o, 0.0)) for o in OFFERS])
    if np.any(vec < 0) or np.any(vec > 1):
        raise ValueError("propensities must lie in [0, 1]")
    return vec


def _logged_propensities(propensities: Propensities, logged_idx: np.ndarray) -> np.ndarray:
    """P(the logged offer | row) for each row, shape (n,)."""
    vec = _propensity_vector(propensities, logged_idx)
    return vec if _per_row(propensities) else vec[logged_idx]


def policy_value(
    y_true: np.ndarray,
    logged_offers: np.ndarray | pd.Series,
    offer_proba: np.ndarray,
    economics: Mapping,
    propensities: Propensities = None,
) -> float:
    """Inverse-propensity-weighted value per customer of the model's next-best-action policy.

    For each held-out row the policy picks ``chosen = argmax_o p(x, o) * conversion_value -
    cost(o)`` from the model's counterfactual probabilities ``offer_proba`` (n, 3). Because the
    logged offers were assigned with known propensities, the value the policy would have earned
    is estimated without bias by

        mean_i  1[chosen_i == logged_i] / propensity_i(logged_i)
                * (conversion_i * conversion_value - cost(logged_i))

    ``propensities`` (see :data:`Propensities`): None for the randomized campaign (1/3 each), a
    ``{offer: probability}`` mapping when known otherwise, ``"empirical"`` to estimate them from
    the logged offer frequencies of these rows, or one value per row: the probability with which
    that row's logged offer was made (rows logged by an ε-greedy policy: ``1 - ε + ε/3`` for the
    model's own pick, ``ε/3`` for an explored one; randomized history rows: 1/3). Rows whose
    logged offer has propensity 0 cannot be matched and are an error if the policy picks that offer.
    """
    y = np.asarray(y_true, dtype=np.float64)
    logged_idx = offer_indices(logged_offers)
    if len(y) != len(logged_idx) or len(y) != len(offer_proba):
        raise ValueError("y_true, logged_offers and offer_proba must have the same length")
    if len(y) == 0:
        return float("nan")
    chosen = choose_offers(offer_proba, economics)
    costs = offer_cost_vector(economics)
    prop = _logged_propensities(propensities, logged_idx)
    match = chosen == logged_idx
    if np.any(match & (prop <= 0)):
        raise ValueError("the policy picks an offer whose logging propensity is 0")
    reward = y * float(economics["conversion_value"]) - costs[logged_idx]
    weights = np.divide(match.astype(np.float64), prop, out=np.zeros_like(prop), where=match)
    return float(np.mean(weights * reward))


def blast_values(
    y_true: np.ndarray,
    logged_offers: np.ndarray | pd.Series,
    economics: Mapping,
    propensities: Propensities = None,
) -> np.ndarray:
    """IPW value per customer of sending each single offer to everyone ("blast"), OFFERS order.

    With per-row propensities an offer no row was logged with has no estimate (NaN): nothing
    says it could have been made.
    """
    y = np.asarray(y_true, dtype=np.float64)
    logged_idx = offer_indices(logged_offers)
    reward = y * float(economics["conversion_value"]) - offer_cost_vector(economics)[logged_idx]
    values = np.full(len(OFFERS), np.nan)
    if _per_row(propensities):
        prop = _propensity_vector(propensities, logged_idx)
        for j in range(len(OFFERS)):
            arm = logged_idx == j
            if arm.any():
                values[j] = float(np.mean(np.divide(reward, prop, out=np.zeros_like(prop), where=arm)))
        return values
    prop = _propensity_vector(propensities, logged_idx)
    for j in range(len(OFFERS)):
        if prop[j] > 0 and len(y):
            values[j] = float(np.mean((logged_idx == j) / prop[j] * reward))
    return values


def policy_uplift(
    y_true: np.ndarray,
    logged_offers: np.ndarray | pd.Series,
    offer_proba: np.ndarray,
    economics: Mapping,
    propensities: Propensities = None,
) -> float:
    """How much the model's decisions beat the obvious campaign: :func:`policy_value` minus the
    best :func:`blast_values` entry, both estimated on the same rows (positive = worth a model)."""
    blast = blast_values(y_true, logged_offers, economics, propensities)
    if np.all(np.isnan(blast)):
        return float("nan")
    return policy_value(y_true, logged_offers, offer_proba, economics, propensities) - float(np.nanmax(blast))


# sklearn.metrics is imported on first use: this module is imported where only the names matter.
def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, proba))


def _log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y_true, proba, labels=[0, 1]))


def _average_precision(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y_true, proba))


def _accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    return float(np.mean((proba >= 0.5).astype(np.int64) == y_true)) if len(y_true) else float("nan")


def _brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(y_true, proba))


_PROBA_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": _roc_auc,
    "log_loss": _log_loss,
    "average_precision": _average_precision,
    "accuracy": _accuracy,
    "brier_score": _brier_score,
}


_POLICY_METRICS = {"policy_value": policy_value, "policy_uplift": policy_uplift}
#: metrics that need the model's counterfactual probabilities for every offer
COUNTERFACTUAL_METRICS = frozenset(_POLICY_METRICS)


def compute_metric(
    name: str,
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    logged_offers: np.ndarray | pd.Series | None = None,
    offer_proba: np.ndarray | None = None,
    economics: Mapping | None = None,
    propensities: Propensities = None,
) -> float:
    """Compute metric ``name`` for labels ``y_true`` and predicted P(conversion) ``proba``.

    ``policy_value`` and ``policy_uplift`` additionally need ``logged_offers``, ``offer_proba``
    (n, 3) and ``economics`` (and optionally ``propensities``, :data:`Propensities`: e.g. one value
    per row, the logged offer's propensity); the other metrics ignore them.
    """
    get_metric(name)  # a helpful error for unknown names
    if name in _POLICY_METRICS:
        if logged_offers is None or offer_proba is None or economics is None:
            raise ValueError(f"{name} needs logged_offers, offer_proba and economics")
        return _POLICY_METRICS[name](y_true, logged_offers, offer_proba, economics, propensities)
    return _PROBA_METRICS[name](np.asarray(y_true), np.asarray(proba, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# Uncertainty across folds
# --------------------------------------------------------------------------------------------

#: shown beside a score whose interval across folds includes 0: for ``policy_uplift``, "not
#: distinguishable from sending everyone the best offer"
INCLUDES_ZERO_MARK = "≈0"


@dataclass(frozen=True)
class FoldIntervals:
    """A metric's mean over its folds with a two-sided interval, one entry per experiment.

    Arrays of the folds' leading shape; ``low``/``high`` are NaN where fewer than two folds
    have a finite score (no spread to go by), ``mean`` only where none has.
    """

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_folds: np.ndarray  # finite folds per experiment

    @property
    def includes_zero(self) -> np.ndarray:
        """True where the interval includes 0 (False where there is no interval)."""
        with np.errstate(invalid="ignore"):
            return (self.low <= 0.0) & (self.high >= 0.0)


def fold_intervals(folds: np.ndarray, confidence: float = 0.95, corrected: bool = True) -> FoldIntervals:
    """Mean and ``confidence`` interval of each row of ``folds`` (experiments × folds; NaN for a
    fold without a score, which is left out): ``mean ± t_{(1+confidence)/2, k-1} · se`` with
    ``k`` the row's finite folds and ``s`` their standard deviation (ddof 1).

    The folds of k-fold cross-validation are not independent samples: their training sets
    overlap, so the naive ``se = s / √k`` is too small and the interval too narrow. With
    ``corrected`` (the default) ``se² = (1/k + n_test/n_train) · s²``, Nadeau and Bengio's
    corrected resampled variance (Machine Learning 52, 2003), with ``n_test/n_train = 1/(k-1)``
    for k-fold; that makes the interval 1.5 times wider than the naive one at k = 5. It is still
    a rough guide, not an exact 95% coverage: a decision that matters should compare the models
    on the same rows (a paired bootstrap) rather than read two intervals side by side.
    """
    from scipy.special import stdtrit  # the t quantile; scipy.stats costs more to import

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    scores = np.asarray(folds, dtype=np.float64)
    if scores.ndim == 0:
        raise ValueError("folds must have at least one dimension: the folds of one experiment")
    scores = np.where(np.isfinite(scores), scores, np.nan)
    finite = ~np.isnan(scores)
    k = finite.sum(axis=-1)
    total = np.where(finite, scores, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(k > 0, total / np.maximum(k, 1), np.nan)
        squares = np.where(finite, (scores - mean[..., None]) ** 2, 0.0).sum(axis=-1)
        var = np.where(k > 1, squares / np.maximum(k - 1, 1), np.nan)
        factor = 1.0 / k + (1.0 / (k - 1) if corrected else 0.0)
        se = np.sqrt(factor * var)
        t = stdtrit(np.maximum(k - 1, 1), (1.0 + confidence) / 2.0)
        half = np.where(k > 1, t * se, np.nan)
    mean, half = np.asarray(mean), np.asarray(half)
    return FoldIntervals(mean=mean, low=mean - half, high=mean + half, n_folds=np.asarray(k))
