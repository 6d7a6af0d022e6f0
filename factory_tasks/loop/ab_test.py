"""The statistics of a live champion/challenger A/B test that concludes itself.

The endpoint serves a *policy*: each customer is the challenger's with a probability ``share``
known by design (a hash of the customer id, or a per-request draw; ``docs/deploy.md``), and
within its arm the arm's model makes its greedy offer, or with probability ε a uniformly random
one, logged with its exact propensity. Monitoring looks at the matured rows of the test every
hour and must be allowed to stop it as soon as the evidence is clear, so:

1. each row gets the doubly-robust score of *its own arm's* greedy policy (:func:`arm_scores`;
   the mean over an arm's rows is that arm's DR value, as ``off_policy`` computes it);
2. the scores of both arms become one stream whose mean is ``V_challenger - V_champion``
   (:func:`difference_terms`: augmented IPW over the randomised arm, with predictable means);
3. its running mean gets an *always-valid* confidence sequence (:func:`confidence_sequence`:
   the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-
   uniform central limit theory and asymptotic confidence sequences", Annals of Statistics 2024),
   which covers the difference at every look at once with probability about ``1 - alpha``;
   a fixed-n normal interval checked hourly would declare a winner between two equal arms far
   more often than ``alpha`` (``docs/ab-test.md`` has the measured rates);
4. :func:`verdict` turns the interval into ``promote`` / ``end`` / ``expired`` / ``continue``,
   and :func:`arm_test` does all of it, plus per-arm values, on the test's matured rows.

Rows must be in decision-time order: the confidence sequence and the predictable means are
statements about the stream as it grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from factory_tasks.core.schema import ARM_CHALLENGER, ARM_CHAMPION
from factory_tasks.loop import off_policy
from factory_tasks.loop.off_policy import PolicyEstimate

#: the states of :class:`AbVerdict`
STATES: tuple[str, ...] = ("promote", "end", "expired", "continue")


@dataclass(frozen=True)
class AbInterval:
    """The running mean of a stream with its ``1 - alpha`` always-valid confidence sequence at ``n``.

    Fewer than two terms say nothing: ``lower``/``upper`` are ``-inf``/``+inf``."""

    estimate: float
    lower: float
    upper: float
    n: int
    half_width: float
    alpha: float


@dataclass(frozen=True)
class AbVerdict:
    """Where the test stands: ``state`` is one of :data:`STATES`; ``reason`` says it with the numbers."""

    state: str
    reason: str
    interval: AbInterval
    min_decisions: int
    max_decisions: int

    @property
    def concluded(self) -> bool:
        """True when the test is over (promote, end or expired)."""
        return self.state != "continue"


def arm_scores(rewards, logged_idx, logged_propensity, target_idx, q_hat) -> np.ndarray:
    """Per-row doubly-robust score of the greedy policy ``target_idx``:
    ``sum_a pi(a|x) q(x,a) + w (r - q(x, a_logged))`` with ``w = pi(a_logged|x) / propensity``.

    Give each row its own arm's greedy offer (``model_offer``) and the mean of an arm's scores is
    the DR value of that arm's policy (:func:`off_policy.estimate_policy_value` with ``"dr"``).
    ``q_hat`` (n, 3) may come from either model: the propensities are exact, so the score is
    unbiased for any q̂ not fitted on these rows; a good q̂ only lowers the variance. Arguments
    and their checks are ``off_policy``'s.
    """
    r, n, logged, prop, q, _ = off_policy._prepare(rewards, logged_idx, logged_propensity, q_hat, "dr", 0.5)
    target = off_policy._target(target_idx, None, "target", n)
    if n == 0:
        return np.zeros(0)
    w = off_policy._weights(target, logged, prop, "target")
    value, centred = off_policy._influence("dr", r, logged, w, target, q)
    return centred + value


def _flags(is_challenger, n: int | None = None) -> np.ndarray:
    arr = np.asarray(is_challenger)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise ValueError(f"is_challenger must be one flag per row ({n} rows), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iu" and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)  # the 0/1 arm index of schema.ARMS
    raise ValueError(f"is_challenger must be booleans (or 0/1, the arm index of schema.ARMS), got dtype "
                     f"{arr.dtype}" + (" with values other than 0/1" if arr.dtype.kind in "iu" else "")
                     + f"; arm names convert with arm == {ARM_CHALLENGER!r}")


def _share(share, n: int) -> np.ndarray:
    arr = np.asarray(share, dtype=np.float64)
    if arr.ndim not in (0, 1) or (arr.ndim == 1 and len(arr) != n):
        raise ValueError(f"share must be one number or one per row ({n} rows), got shape {arr.shape}")
    if not ((arr > 0) & (arr < 1)).all():  # NaN fails too
        raise ValueError(f"share (the design probability of the challenger arm) must lie strictly between 0 and 1, "
                         f"got {arr if arr.ndim == 0 else arr[~((arr > 0) & (arr < 1))][:3]}")
    return np.broadcast_to(arr, (n,))


def _mean_before(values: np.ndarray, mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """For each row, the mean of ``values`` over the earlier rows in ``mask`` (``fallback`` if none)."""
    sums, counts = np.zeros(len(values)), np.zeros(len(values), dtype=np.int64)
    sums[1:] = np.cumsum(np.where(mask, values, 0.0))[:-1]
    counts[1:] = np.cumsum(mask)[:-1]
    return np.divide(sums, counts, out=fallback.copy(), where=counts > 0)


def difference_terms(scores, is_challenger, share) -> np.ndarray:
    """A stream ``psi`` whose mean is ``V_challenger - V_champion``: augmented IPW over the arm.

    ``psi_i = (m1 - m0) + 1[challenger] (s_i - m1) / share - 1[champion] (s_i - m0) / (1 - share)``
    where ``m1``, ``m0`` are the means of the *earlier* rows' scores of each arm (rows in decision
    order; before an arm's first row, the mean of all earlier rows; before any, 0). ``share``:
    P(challenger), one number or one per row (a ramp-up), known by design.

    *Why it is unbiased.* The arm is drawn independently of the past with the known probability
    ``share``, so given everything before row i, ``E[psi_i] = (m1 - m0) + (V1 - m1) - (V0 - m0) =
    V1 - V0`` whatever ``m1`` and ``m0`` are, as long as they are fixed before row i's arm is drawn.

    *Why predictable means* (each row's from earlier rows only): then ``psi_i - (V1 - V0)`` is a
    martingale difference sequence, which is what the time-uniform central limit theory behind
    :func:`confidence_sequence` needs. Means over *all* rows would put row i's own score into
    its adjustment, and the terms would no longer be a martingale.

    *Why not plain Horvitz-Thompson* (``m1 = m0 = 0``: ``1[ch] s/share - 1[cp] s/(1-share)``):
    its variance carries the squared arm *means*, ``V1^2/share + V0^2/(1-share)``, on top of the
    scores' own variance; centring each arm at its running mean removes that part, so the same
    evidence gives a narrower interval and sooner a verdict. With values of ~13 per customer next
    to a score spread of ~39 the stream's sd drops ~5% (100 vs 106 at share 0.2,
    ``tests/unit/loop/test_ab_test.py``); more where values are large next to their noise.
    """
    s = off_policy._vector(scores, "scores")
    n = len(s)
    ch = _flags(is_challenger, n)
    p = _share(share, n)
    pooled = _mean_before(s, np.ones(n, dtype=bool), np.zeros(n))
    m1 = _mean_before(s, ch, pooled)
    m0 = _mean_before(s, ~ch, pooled)
    return (m1 - m0) + np.where(ch, (s - m1) / p, -(s - m0) / (1.0 - p))


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:  # NaN fails too
        raise ValueError(f"alpha must lie in (0, 1) (e.g. 0.05 for 95%), got {alpha}")
    return float(alpha)


def _check_count(value, name: str, minimum: int) -> int:
    try:
        whole = not isinstance(value, bool) and float(value).is_integer() and value >= minimum
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def boundary_rho(alpha: float, planned_n: int) -> float:
    """The mixture's ``rho`` that makes the boundary tightest at ``planned_n`` terms:
    ``sqrt((-2 log alpha + log(-2 log alpha + 1)) / planned_n)``.

    (The width at ``t*`` is smallest where ``u = t* rho^2`` solves ``u = log(1 + u) - 2 log alpha``;
    this is its first-order (Lambert W) solution, as the authors' ``best_rho2_approx``; the width at
    ``t*`` is within 0.003% of the optimum for alpha = 0.05.) Fix it before the first look: a ``rho``
    that moves with ``n`` is no longer one mixture martingale and the guarantee is lost.
    """
    alpha = _check_alpha(alpha)
    planned_n = _check_count(planned_n, "planned_n", 1)
    log_a = -2.0 * math.log(alpha)
    return math.sqrt((log_a + math.log(log_a + 1.0)) / planned_n)


def confidence_sequence(terms, alpha: float = 0.05, *, planned_n: int) -> AbInterval:
    """The ``1 - alpha`` asymptotic confidence sequence (AsympCS) for the running mean of ``terms``,
    valid however often it is looked at (Waudby-Smith et al. 2024, Robbins' normal mixture):

        mean ± sigma * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

    at ``t = len(terms)``, ``sigma`` the terms' sample standard deviation, ``rho`` from
    :func:`boundary_rho` (tightest at ``planned_n``). With probability about ``1 - alpha`` the
    interval covers the mean at *every* t at once, so a decision may be taken at any look.
    "About": the guarantee is asymptotic (it holds as the first look's size grows), which is one
    reason :func:`verdict` never decides below ``min_decisions``. At every t it is wider than the
    fixed-n normal interval (at least 1.548x for alpha = 0.05, the least near ``planned_n``):
    the price of peeking.
    """
    x = off_policy._vector(terms, "terms")
    rho2 = boundary_rho(alpha, planned_n) ** 2
    t = len(x)
    if t < 2:
        estimate = float(x[0]) if t else float("nan")
        return AbInterval(estimate, -math.inf, math.inf, t, math.inf, float(alpha))
    estimate = float(x.mean())
    sigma = float(x.std(ddof=1))
    half = sigma * math.sqrt(2.0 * (t * rho2 + 1.0) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1.0) / alpha))
    return AbInterval(estimate, estimate - half, estimate + half, t, half, float(alpha))


def _number(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:+,.2f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def verdict(terms, *, alpha: float = 0.05, min_decisions: int, max_decisions: int,
            planned_n: int | None = None) -> AbVerdict:
    """The test's state on the ``terms`` of its matured decisions so far (:func:`difference_terms`).

    ``promote``: the lower bound is above 0, the challenger is better. ``end``: the upper bound is
    below 0, the champion is better. ``expired``: ``max_decisions`` reached with 0 inside: the test
    ends and the champion stays (not distinguishable: any remaining difference is too small to
    matter at this size). ``continue``: not distinguishable yet, or fewer than ``min_decisions``
    terms, below which no verdict is ever given (early terms are few, noisy and the normal
    approximation is not there yet). ``planned_n`` tunes the boundary (:func:`boundary_rho`);
    None: ``max_decisions``, the size at which the test must end anyway.
    """
    alpha = _check_alpha(alpha)
    min_decisions = _check_count(min_decisions, "min_decisions", 0)
    max_decisions = _check_count(max_decisions, "max_decisions", 2)
    if min_decisions > max_decisions:
        raise ValueError(f"min_decisions ({min_decisions}) must not exceed max_decisions ({max_decisions})")
    ci = confidence_sequence(terms, alpha, planned_n=max_decisions if planned_n is None else planned_n)
    head = (f"challenger − champion {_number(ci.estimate)} [{_number(ci.lower)}, {_number(ci.upper)}] per "
            f"customer on {ci.n:,} matured decisions ({(1 - alpha) * 100:g}% always-valid)")
    if ci.n < min_decisions:
        state, tail = "continue", f"no verdict before {min_decisions:,} matured decisions"
    elif ci.lower > 0:
        state, tail = "promote", "the challenger is better"
    elif ci.upper < 0:
        state, tail = "end", "the champion is better"
    elif ci.n >= max_decisions:
        state, tail = "expired", (f"not distinguishable by the {max_decisions:,}-decision limit: the test ends, "
                                  "the champion stays")
    else:
        state, tail = "continue", "not distinguishable yet"
    return AbVerdict(state, f"{head}: {tail}", ci, min_decisions, max_decisions)


def arm_test(rewards, logged_idx, logged_propensity, model_offer, q_hat, is_challenger, share, *,
             alpha: float = 0.05, min_decisions: int, max_decisions: int, planned_n: int | None = None,
             ) -> tuple[dict[str, dict[str, PolicyEstimate]], AbVerdict]:
    """Per-arm values and the verdict of the test on its matured rows so far (decision order).

    ``model_offer``: each row's greedy offer of the arm that served it; ``q_hat`` (n, 3): the
    expected reward per offer (e.g. ``schema.expected_values`` of the serving model's
    probabilities); ``is_challenger``: the arm of each row; ``share``: P(challenger) by design.
    Returns ``({arm: {method: PolicyEstimate}}, verdict)``: the IPW, SNIPW and DR values of each
    arm's greedy policy on that arm's own rows, with fixed-n normal ``1 - alpha`` intervals (a
    per-arm picture, not the decision), and the always-valid :func:`verdict` on the difference.
    """
    scores = arm_scores(rewards, logged_idx, logged_propensity, model_offer, q_hat)
    r, n, logged, prop, q, _ = off_policy._prepare(rewards, logged_idx, logged_propensity, q_hat, "dr", 0.5)
    greedy = off_policy._target(model_offer, None, "model_offer", n).argmax(axis=1) if n else np.zeros(0, int)
    ch = _flags(is_challenger, n)
    outcome = verdict(difference_terms(scores, ch, share), alpha=_check_alpha(alpha), min_decisions=min_decisions,
                      max_decisions=max_decisions, planned_n=planned_n)
    arms = {}
    for arm, rows in ((ARM_CHAMPION, ~ch), (ARM_CHALLENGER, ch)):
        arms[arm] = {method: off_policy.estimate_policy_value(r[rows], logged[rows], prop[rows], greedy[rows], q[rows],
                                                              method=method, confidence=1.0 - alpha)
                     for method in off_policy.ESTIMATORS}
    return arms, outcome
