"""Model performance before the labels arrive, and whether to trust that estimate.

If the model is calibrated, its probability ``p_i`` for the offer actually made is the chance
that customer converts, so the expected confusion structure is known from the scores alone —
the idea of confidence-based performance estimation (CBPE, NannyML). With ``y_i ~ Bernoulli(p_i)``
independent:

    expected AUC       = sum_{i != j} p_i (1 - p_j) (1[p_i > p_j] + 1/2 1[p_i = p_j])
                         / sum_{i != j} p_i (1 - p_j)
    expected rate      = mean_i p_i
    expected log loss  = mean_i H(p_i),   H(p) = -p ln p - (1 - p) ln(1 - p)

The AUC is the ratio of the expected count of correctly ordered (positive, negative) pairs to
the expected count of such pairs (a ratio of expectations; at monitoring sizes it is within
sampling noise of the expected ratio). It is computed in O(n log n): sort the distinct scores,
accumulate ``sum (1 - p_j)`` over strictly lower scores, and count pairs inside a tie block at
one half, less the pairs of a row with itself.

The estimate is only as good as the calibration, checked on the labels that have matured:
:func:`calibration_by_decile` (equal-count bins of the sorted scores), :func:`calibration_error`
= ``sum_k n_k |expected_k - observed_k| / n`` (the expected calibration error, Naeini et al.
2015) and :func:`estimate_is_reliable`. Even a perfectly calibrated model shows an error of
about :func:`calibration_noise` = ``sum_k n_k sqrt(2/pi) sd_k / n`` on few labels
(``sd_k^2 = sum_{i in k} p_i (1 - p_i) / n_k^2``): about 0.06 at 200 labels and p ~ 0.15.

Scores come first everywhere (``p, y``); labels must be 0/1, which also catches swapped
arguments. Empty input gives NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CALIBRATION_COLUMNS: tuple[str, ...] = ("decile", "n", "expected", "observed")


def _proba(p, name: str = "p") -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one probability per row (1-D), got shape {arr.shape}")
    if not ((arr >= 0) & (arr <= 1)).all():  # NaN fails too
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    return arr


def _labels(y, n: int, name: str = "y") -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one label per score ({n} rows), got shape {arr.shape}")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0/1 labels (the arguments are scores first, then labels)")
    return arr


def expected_roc_auc(p) -> float:
    """ROC AUC expected if each label were drawn from its own score (module docstring)."""
    p = _proba(p)
    q = 1.0 - p
    denominator = p.sum() * q.sum() - (p * q).sum()
    if len(p) < 2 or denominator <= 0:
        return float("nan")
    _, block = np.unique(p, return_inverse=True)  # sorted distinct scores; O(n log n)
    pos, neg, self_pairs = (np.bincount(block, weights=w) for w in (p, q, p * q))
    neg_below = np.cumsum(neg) - neg  # sum of (1 - p_j) over strictly lower scores
    numerator = (pos * neg_below).sum() + 0.5 * (pos * neg - self_pairs).sum()
    return float(numerator / denominator)


def expected_conversion_rate(p) -> float:
    """Mean score: the conversion rate expected of a calibrated model."""
    p = _proba(p)
    return float(p.mean()) if len(p) else float("nan")


def expected_log_loss(p) -> float:
    """Log loss expected if each label were drawn from its own score: the mean binary entropy."""
    p = _proba(p)
    if not len(p):
        return float("nan")
    q = 1.0 - p
    entropy = -(np.log(p, out=np.zeros_like(p), where=p > 0) * p + np.log(q, out=np.zeros_like(q), where=q > 0) * q)
    return float(entropy.mean())


def _bins(n: int, p: np.ndarray, bins: int) -> np.ndarray:
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(p, kind="stable")] = np.arange(n)
    return rank * bins // n + 1  # 1..bins, equal counts (ties split by position)


def calibration_by_decile(p, y, *, bins: int = 10) -> pd.DataFrame:
    """Per equal-count bin of the sorted scores: ``decile`` (1 = lowest), ``n``, mean score
    (``expected``) and mean label (``observed``). Fewer rows than bins: fewer bins."""
    p = _proba(p)
    y = _labels(y, len(p))
    if not len(p):
        return pd.DataFrame({"decile": pd.Series(dtype="int64"), "n": pd.Series(dtype="int64"),
                             "expected": pd.Series(dtype="float64"), "observed": pd.Series(dtype="float64")})
    frame = pd.DataFrame({"decile": _bins(len(p), p, bins), "p": p, "y": y})
    table = frame.groupby("decile", sort=True).agg(n=("p", "size"), expected=("p", "mean"), observed=("y", "mean"))
    return table.reset_index().astype({"decile": "int64", "n": "int64"})[list(CALIBRATION_COLUMNS)]


def calibration_error(p, y, *, bins: int = 10) -> float:
    """n-weighted mean of ``|expected - observed|`` over the bins of :func:`calibration_by_decile`."""
    table = calibration_by_decile(p, y, bins=bins)
    if table.empty:
        return float("nan")
    return float((table["n"] * (table["expected"] - table["observed"]).abs()).sum() / table["n"].sum())


def calibration_noise(p, *, bins: int = 10) -> float:
    """The calibration error a perfectly calibrated model shows on these scores by chance alone."""
    p = _proba(p)
    if not len(p):
        return float("nan")
    frame = pd.DataFrame({"decile": _bins(len(p), p, bins), "var": p * (1.0 - p)})
    per_bin = frame.groupby("decile")["var"].agg(["size", "sum"])
    sd = np.sqrt(per_bin["sum"]) / per_bin["size"]
    return float(np.sqrt(2.0 / np.pi) * (per_bin["size"] * sd).sum() / len(p))


def estimate_is_reliable(p_matured, y_matured, ceiling: float, *, bins: int = 10,
                         allow_noise: bool = False) -> bool:
    """Whether the score-based estimates can be trusted: the calibration error on the matured
    labels is at most ``ceiling`` (plus :func:`calibration_noise` when ``allow_noise``, so that
    few labels do not by themselves flag a calibrated model). No matured labels: False."""
    p = _proba(p_matured, "p_matured")
    y = _labels(y_matured, len(p), "y_matured")
    error = calibration_error(p, y, bins=bins)
    if not np.isfinite(error):
        return False
    return bool(error <= ceiling + (calibration_noise(p, bins=bins) if allow_noise else 0.0))


def realised_roc_auc(p, y) -> float:
    """ROC AUC on matured labels; NaN when they hold one class only (or none)."""
    from sklearn.metrics import roc_auc_score

    p = _proba(p)
    y = _labels(y, len(p))
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def realised_log_loss(p, y) -> float:
    """Log loss on matured labels (scores clipped as sklearn does); NaN when empty."""
    from sklearn.metrics import log_loss

    p = _proba(p)
    y = _labels(y, len(p))
    return float(log_loss(y, p, labels=[0, 1])) if len(y) else float("nan")
