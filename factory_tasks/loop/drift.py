"""Feature drift of current rows against a reference sample (the training snapshot).

Both samples are reduced to shares over the same bins, ``r_k`` (reference) and ``c_k`` (current):

* numeric columns: interior edges at the reference's ``1/bins, ..., (bins-1)/bins`` quantiles
  (repeated edges merged, so a column of few distinct values gets fewer bins); the outer bins
  are open-ended, so current values beyond the reference range land in them. Bin ``k`` is
  ``edge_k <= x < edge_k+1``.
* other columns (strings, booleans, categoricals): one bin per category of the union of both
  samples.
* a missing value (NaN/None) counts in a bin of its own, so a rise in missing values drifts too.

Then, with natural logarithms:

    PSI = sum_k (c_k - r_k) ln(c_k / r_k)          population stability index (Yurdakul 2018);
          shares floored at EPSILON = 1e-4 first so an empty bin gives a large finite value.
          Rules of thumb: < 0.10 stable, 0.10-0.25 some shift, > 0.25 a major shift.
    JS  = 1/2 KL(r || m) + 1/2 KL(c || m),  m = (r + c) / 2
          the Jensen-Shannon divergence (Lin 1991; not its square root, the distance), in nats:
          bounded in [0, ln 2], ln 2 for disjoint samples. Needs no floor (0 ln 0 = 0).
          For small shifts JS ~ PSI / 8 (PSI is the symmetrised KL), so PSI's thresholds do not
          carry over: the Web 44% -> 70% channel shift is PSI 0.28 but JS 0.034.

Either sample empty: NaN.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

EPSILON = 1e-4
DRIFT_METRICS: tuple[str, ...] = ("psi", "jensen_shannon")


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _series(values, name: str) -> pd.Series:
    if isinstance(values, pd.Series):
        return values
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return pd.Series(array)


def shares(reference, current, *, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The share of each sample in each common bin (module docstring): ``(r, c)``, each summing to 1."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    ref, cur = _series(reference, "reference"), _series(current, "current")
    kinds = {_is_numeric(s) for s in (ref, cur) if len(s)}  # an empty sample has no kind
    if len(kinds) > 1:
        raise ValueError(f"reference ({ref.dtype}) and current ({cur.dtype}) must both be numeric or both not")
    if kinds == {True}:
        r, c = ref.to_numpy(dtype=np.float64, na_value=np.nan), cur.to_numpy(dtype=np.float64, na_value=np.nan)
        known = r[~np.isnan(r)]
        edges = np.unique(np.quantile(known, np.arange(1, bins) / bins)) if known.size else np.empty(0)
        missing = len(edges) + 1

        def codes(x: np.ndarray) -> np.ndarray:
            return np.where(np.isnan(x), missing, np.searchsorted(edges, x, side="right"))

    else:
        categories = pd.Index(pd.unique(pd.concat([ref.dropna(), cur.dropna()], ignore_index=True)))
        missing = len(categories)

        def codes(x: pd.Series) -> np.ndarray:
            code = np.asarray(categories.get_indexer(x), dtype=np.int64)
            return np.where(code < 0, missing, code)  # only missing values are not in the union

        r, c = ref, cur
    counts = [np.bincount(codes(x), minlength=missing + 1).astype(np.float64) for x in (r, c)]
    return counts[0] / max(len(ref), 1), counts[1] / max(len(cur), 1)


def psi(reference, current, *, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (module docstring)."""
    r, c = shares(reference, current, bins=bins)
    if r.sum() == 0 or c.sum() == 0:
        return float("nan")
    r, c = np.maximum(r, EPSILON), np.maximum(c, EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def _kl(a: np.ndarray, m: np.ndarray) -> float:
    return float(np.sum(a * np.log(np.divide(a, m, out=np.ones_like(a), where=a > 0))))


def jensen_shannon(reference, current, *, bins: int = 10) -> float:
    """Jensen-Shannon divergence in nats, in [0, ln 2], of ``current`` and ``reference``."""
    r, c = shares(reference, current, bins=bins)
    if r.sum() == 0 or c.sum() == 0:
        return float("nan")
    m = (r + c) / 2
    return min(max(0.5 * _kl(r, m) + 0.5 * _kl(c, m), 0.0), float(np.log(2)))  # rounding stays in range


_METRIC_FUNCTIONS = {"psi": psi, "jensen_shannon": jensen_shannon}


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: Iterable[str], *,
                  metric: str = "psi", bins: int = 10) -> pd.DataFrame:
    """One row per column: ``feature``, ``metric`` and its ``value`` for current against reference."""
    if metric not in _METRIC_FUNCTIONS:
        raise ValueError(f"{metric!r} is not a valid drift metric. Valid options are: {', '.join(DRIFT_METRICS)}.")
    columns = list(columns)
    for name, frame in (("reference", reference), ("current", current)):
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ValueError(f"{name} lacks column(s) {absent}; it has {list(frame.columns)}")
    values = [_METRIC_FUNCTIONS[metric](reference[c], current[c], bins=bins) for c in columns]
    return pd.DataFrame({
        "feature": pd.Series(columns, dtype="str"),
        "metric": pd.Series([metric] * len(columns), dtype="str"),
        "value": pd.Series(values, dtype="float64"),
    })
