"""Off-policy value of a target policy from logged bandit data, with confidence intervals.

Each logged row i has the offer made ``a_i`` (index into ``schema.OFFERS``), the
probability ``mu_i`` with which the logging policy made it (ε-greedy: ``1 - ε + ε/3`` for the
model's pick, ``ε/3`` for an explored one; the randomized campaign: 1/3) and the reward
``r_i = conversion_i * conversion_value - cost(a_i)`` (as :func:`metrics.policy_value`).
A target policy gives ``pi(a | x_i)``: one-hot for a deterministic target (``target_idx``), any
distribution for a stochastic one (``target_proba``, e.g. :func:`uniform_policy`, the
exploration group). With ``w_i = pi(a_i | x_i) / mu_i``:

    IPW    V = mean_i w_i r_i                                  (Horvitz & Thompson 1952)
    SNIPW  V = sum_i w_i r_i / sum_i w_i                        (Swaminathan & Joachims 2015)
    DR     V = mean_i [ sum_a pi(a|x_i) q(x_i,a) + w_i (r_i - q(x_i,a_i)) ]
                                                               (Dudík, Langford & Li 2011)

where ``q`` (``q_hat``, (n, 3)) is the model's expected reward per offer, ``p * value - cost``
(the direct method; ``schema.expected_values``). DR is unbiased when either the
propensities or ``q`` are right and has a small variance when ``q`` is close.

Intervals are normal approximations, ``V ± z * sd(phi) / sqrt(n)``, from per-row influence
terms ``phi_i``: the centred summands for IPW and DR, the linearised (delta-method) terms
``phi_i = w_i (r_i - V) / mean(w)`` for SNIPW. :func:`compare_policies` estimates a
*difference* of two targets on the same rows from the paired terms ``phi_i^A - phi_i^B``, so
its interval is that of the difference (shared noise cancels). Empty input gives NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping

import numpy as np

from factory_tasks.core.schema import OFFERS, offer_cost_vector, offer_indices

ESTIMATORS: tuple[str, ...] = ("ipw", "snipw", "dr")
K = len(OFFERS)


@dataclass(frozen=True)
class PolicyEstimate:
    """A policy value (or difference of values) per customer with its confidence interval."""

    value: float
    lower: float
    upper: float
    n: int
    method: str  # one of ESTIMATORS
    std_error: float


def uniform_policy(n: int) -> np.ndarray:
    """The exploration policy: every offer with probability 1/3, as ``target_proba`` (n, 3)."""
    return np.full((n, K), 1.0 / K)


def logged_rewards(conversion: np.ndarray, logged_idx: np.ndarray, economics: Mapping) -> np.ndarray:
    """``conversion * conversion_value - cost(offer made)`` per row (float64)."""
    idx = _offers(logged_idx, "logged_idx", len(np.asarray(logged_idx)))
    conversion = _vector(conversion, "conversion", len(idx))
    return conversion * float(economics["conversion_value"]) - offer_cost_vector(economics)[idx]


def _vector(values, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise ValueError(f"{name} must be one value per row ({n} rows), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    return arr


def _matrix(values, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n, K):
        raise ValueError(f"{name} must have shape ({n}, {K}) (columns {list(OFFERS)}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    return arr


def _offers(values, name: str, n: int) -> np.ndarray:
    """Offer indices from indices or offer names; one scalar applies to every row."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n, arr.item(), dtype=arr.dtype if arr.dtype.kind in "iu" else object)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be one offer per row ({n} rows), got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        if len(arr) and (arr.min() < 0 or arr.max() >= K):
            raise ValueError(f"{name} must index OFFERS (0..{K - 1}), got values outside")
        return arr.astype(np.int64)
    try:
        return offer_indices(arr)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _target(target_idx, target_proba, name: str, n: int) -> np.ndarray:
    if (target_idx is None) == (target_proba is None):
        raise ValueError(f"give exactly one of {name}_idx (a deterministic policy) and {name}_proba")
    if target_idx is not None:
        return np.eye(K)[_offers(target_idx, f"{name}_idx", n)]
    proba = _matrix(target_proba, f"{name}_proba", n)
    if (proba < 0).any() or not np.allclose(proba.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError(f"{name}_proba rows must be probabilities over {list(OFFERS)} summing to 1")
    return proba


def _weights(target: np.ndarray, logged: np.ndarray, propensity: np.ndarray, name: str) -> np.ndarray:
    """``pi(a_i|x_i) / mu_i``; an offer the target takes where it was never makeable is an error."""
    rows = np.arange(len(logged))
    if propensity.ndim == 2:  # the logging policy's probability of every offer
        blind = (target > 0) & (propensity == 0)
        mu = propensity[rows, logged]
    else:
        mu = propensity
        blind = np.zeros_like(target, dtype=bool)
        blind[rows, logged] = (target[rows, logged] > 0) & (mu == 0)
    if blind.any():
        offers = [OFFERS[j] for j in np.flatnonzero(blind.any(axis=0))]
        first = int(np.flatnonzero(blind.any(axis=1))[0])
        raise ValueError(
            f"the {name} policy takes {', '.join(map(repr, offers))} where the logging propensity is 0 "
            f"({int(blind.any(axis=1).sum())} row(s), first row {first}): its value there cannot be estimated")
    pi = target[rows, logged]
    return np.divide(pi, mu, out=np.zeros_like(mu), where=pi > 0)


def _influence(method: str, r: np.ndarray, logged: np.ndarray, w: np.ndarray, target: np.ndarray,
               q_hat: np.ndarray | None) -> tuple[float, np.ndarray]:
    """The estimate and its per-row influence terms (mean zero)."""
    if method == "ipw":
        terms = w * r
    elif method == "dr":
        terms = (target * q_hat).sum(axis=1) + w * (r - q_hat[np.arange(len(r)), logged])
    else:  # snipw
        mean_w = w.mean()
        if mean_w == 0:
            return float("nan"), np.full(len(r), np.nan)
        value = float((w * r).sum() / w.sum())
        return value, w * (r - value) / mean_w
    value = float(terms.mean())
    return value, terms - value


def _prepare(rewards, logged_idx, logged_propensity, q_hat, method, confidence):
    r = _vector(rewards, "rewards")
    n = len(r)
    logged = _offers(logged_idx, "logged_idx", n)
    prop = np.asarray(logged_propensity, dtype=np.float64)
    if prop.shape not in ((n,), (n, K)):
        raise ValueError(f"logged_propensity must have shape ({n},) (the logged offer's) or ({n}, {K}), "
                         f"got {prop.shape}")
    if not ((prop >= 0) & (prop <= 1)).all():  # NaN fails too
        raise ValueError("logged_propensity must lie in [0, 1]")
    method = method or ("ipw" if q_hat is None else "dr")
    if method not in ESTIMATORS:
        raise ValueError(f"{method!r} is not a valid method. Valid options are: {', '.join(ESTIMATORS)}.")
    if method == "dr" and q_hat is None:
        raise ValueError("method 'dr' needs q_hat, the (n, 3) expected reward per offer")
    q = None if q_hat is None else _matrix(q_hat, "q_hat", n)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return r, n, logged, prop, q, method


def _estimate(value: float, influence: np.ndarray, n: int, method: str, confidence: float) -> PolicyEstimate:
    se = float(np.std(influence, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return PolicyEstimate(value, value - z * se, value + z * se, n, method, se)


def estimate_policy_value(rewards, logged_idx, logged_propensity, target_idx=None, q_hat=None, *,
                          target_proba=None, method: str | None = None,
                          confidence: float = 0.95) -> PolicyEstimate:
    """Value per customer of a target policy from logged rows (see the module docstring).

    ``logged_propensity``: (n,) the probability of each row's logged offer, or (n, 3) the logging
    policy's probability of every offer. Target: ``target_idx`` (offer indices or names, or one
    offer for all rows: a blast) or ``target_proba`` (n, 3). ``method``: ``ipw``, ``snipw`` or
    ``dr``; by default ``dr`` when ``q_hat`` is given, else ``ipw``.
    """
    r, n, logged, prop, q, method = _prepare(rewards, logged_idx, logged_propensity, q_hat, method, confidence)
    if n == 0:
        return PolicyEstimate(*[float("nan")] * 3, 0, method, float("nan"))
    target = _target(target_idx, target_proba, "target", n)
    w = _weights(target, logged, prop, "target")
    return _estimate(*_influence(method, r, logged, w, target, q), n, method, confidence)


def compare_policies(rewards, logged_idx, logged_propensity, target_idx=None, baseline_idx=None,
                     q_hat=None, *, target_proba=None, baseline_proba=None, method: str | None = None,
                     confidence: float = 0.95) -> PolicyEstimate:
    """Value of the target policy minus the baseline's, on the same rows, with the interval of
    the difference (paired influence terms). Arguments as :func:`estimate_policy_value`; the
    baseline is ``baseline_idx`` (e.g. the best blast offer) or ``baseline_proba``
    (e.g. :func:`uniform_policy`, the exploration group)."""
    r, n, logged, prop, q, method = _prepare(rewards, logged_idx, logged_propensity, q_hat, method, confidence)
    if n == 0:
        return PolicyEstimate(*[float("nan")] * 3, 0, method, float("nan"))
    parts = []
    for name, idx, proba in (("target", target_idx, target_proba), ("baseline", baseline_idx, baseline_proba)):
        pi = _target(idx, proba, name, n)
        parts.append(_influence(method, r, logged, _weights(pi, logged, prop, name), pi, q))
    (va, ia), (vb, ib) = parts
    return _estimate(va - vb, ia - ib, n, method, confidence)
