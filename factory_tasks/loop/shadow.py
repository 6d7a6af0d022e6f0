"""Shadow evaluation: a challenger judged on the champion's live traffic, without serving it.

The champion's matured decisions (:func:`factory_tasks.loop.live_traffic.matured_traffic`) are
logged bandit data: customer ``x_i``, the offer made ``a_i`` by the ε-greedy logging policy with
its propensity ``mu_i``, the realised conversion, and the champion's own greedy pick
``model_offer``. The challenger scores the same customers and picks its greedy offer; both
greedy policies are then valued off-policy by the *same* estimator on the *same* rows, and
:func:`~factory_tasks.loop.off_policy.compare_policies` gives challenger − champion with the
interval of the paired influence terms. A row where the two agree contributes exactly 0 to the
difference, so the interval reflects only where the policies differ.

**Which champion value.** The champion's greedy policy (``model_offer``) valued by the same DR,
not the realised mean reward of the log: the log's rewards include the exploration share's
random offers, which the challenger's greedy policy would not pay for, so "challenger (greedy)
− champion (realised)" would credit the challenger with the exploration cost; and only the
same estimator on the same rows gives the paired (shared-noise-cancelling) interval.

**q̂.** DR's direct-method part is the challenger's own expected value per offer
(``p * conversion_value - cost`` from its counterfactual probabilities, as
:func:`~factory_tasks.training.experiment.predictions_for` asks for them). DR is unbiased for
any fixed q̂ because the propensities are known exactly; a q̂ close to the truth only narrows
the interval. It must not have been fitted on these rows' outcomes, or the challenger's q̂ and
its greedy choice are fitted to the very noise they are judged on (optimistic): read traffic
decided after the challenger's training snapshot (``since`` of ``matured_traffic``), or, when
that snapshot included the loop's interactions, leave out the rows it was fitted on by their
``prediction_uuid`` (:func:`unseen_traffic`; the snapshot's interaction rows carry it).

**Propensities.** Every offer's logging probability is recovered from the logged one
(:func:`logging_propensities`: ``1 - ε + ε/3`` for the model's pick, ``ε/3`` otherwise), so a
challenger's offer is supported wherever ``ε > 0``. Rows logged without exploration (``ε = 0``)
say nothing about an offer the champion did not make; they are left out and counted in
``method``. No usable row (empty traffic, nothing matured, no exploration) gives a
:class:`PairedDifference` with ``n_rows = 0`` and no values: "no live evidence", not an error.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Collection, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.contracts import PairedDifference
from factory_tasks.core.metrics import choose_offers
from factory_tasks.core.schema import (
    CUSTOMER_COLUMNS,
    OFFERS,
    PREDICTION_UUID_COLUMN,
    epsilon_greedy_propensities,
    expected_values,
    offer_indices,
)
from factory_tasks.loop import off_policy
from factory_tasks.training.features import counterfactual_proba

log = logging.getLogger(__name__)

K = len(OFFERS)
MEASURE = "policy_value"
#: what :func:`shadow_difference` reads of ``traffic`` (``model_offer``: the champion's greedy pick)
TRAFFIC_REQUIRED: tuple[str, ...] = (*CUSTOMER_COLUMNS, "offer", "model_offer", "propensity", "conversion")
#: how far an ε recovered from a propensity may stray outside [0, 1] by rounding
_EPS_TOLERANCE = 1e-9


def logging_propensities(model_offer, logged_offer, propensity) -> np.ndarray:
    """Every offer's probability under the ε-greedy policy that logged each row: (n, 3).

    ``propensity`` is the logged offer's: ``1 - ε + ε/3`` when it is ``model_offer``, else
    ``ε/3``; ε is recovered per row (it may change over time). A propensity no ε in [0, 1]
    explains (e.g. 0.9 for an explored offer) is an error naming the rows.
    """
    model = np.asarray(model_offer, dtype=np.int64)
    logged = np.asarray(logged_offer, dtype=np.int64)
    p = np.asarray(propensity, dtype=np.float64)
    chose_model = logged == model
    eps = np.where(chose_model, (1.0 - p) * K / (K - 1), p * K)
    with np.errstate(invalid="ignore"):
        bad = ~((eps >= -_EPS_TOLERANCE) & (eps <= 1.0 + _EPS_TOLERANCE))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"propensity is not that of an ε-greedy policy on {len(rows)} row(s) (first: row {rows[0]}, "
            f"propensity {float(p[rows[0]])!r} for {'the model' if chose_model[rows[0]] else 'an explored'} offer): "
            f"the model's offer has 1 - ε + ε/{K} in [1/{K}, 1], any other ε/{K} in [0, 1/{K}]")
    return epsilon_greedy_propensities(model, np.clip(eps, 0.0, 1.0))


def unseen_traffic(traffic: pd.DataFrame, fit_uuids: Collection[str]) -> tuple[pd.DataFrame, int]:
    """The rows of ``traffic`` whose ``prediction_uuid`` is not among ``fit_uuids`` (the uuids of
    the rows the challenger was fitted on; nulls, i.e. history rows, are ignored), in their
    order, and how many were left out. A traffic row without a uuid cannot be placed: an error.
    """
    if PREDICTION_UUID_COLUMN not in traffic.columns:
        raise ValueError(f"traffic lacks column {PREDICTION_UUID_COLUMN!r}: it names the decisions to leave out")
    uuids = traffic[PREDICTION_UUID_COLUMN]
    missing = int(uuids.isna().sum())
    if missing:
        raise ValueError(f"{missing} traffic row(s) have no {PREDICTION_UUID_COLUMN}: whether the challenger was "
                         "fitted on them cannot be told")
    fitted = uuids.isin(pd.Series(list(fit_uuids), dtype=object).dropna()).to_numpy()
    dropped = int(fitted.sum())
    if dropped:
        log.info("%d of %d matured decision(s) are among the challenger's fit rows: left out of its shadow "
                 "evaluation", dropped, len(traffic))
        traffic = traffic.loc[~fitted].reset_index(drop=True)
    return traffic, dropped


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def no_evidence(method: str, confidence: float, why: str) -> PairedDifference:
    """The comparison when the live traffic holds nothing to judge by."""
    return PairedDifference(measure=MEASURE, source="live", challenger=None, champion=None, difference=None,
                            low=None, high=None, confidence=confidence, n_rows=0,
                            method=f"{method.upper()} on the champion's logged traffic: no live evidence ({why})")


def shadow_difference(challenger_model: Any, traffic: pd.DataFrame, economics: Mapping, *, method: str = "dr",
                      confidence: float = 0.95) -> PairedDifference:
    """The challenger's greedy policy minus the champion's, valued off-policy on ``traffic``.

    ``traffic``: the champion's matured logged decisions, columns :data:`TRAFFIC_REQUIRED`
    (offers by name; ``conversion`` 0/1). ``challenger_model``: a fitted pipeline with
    ``predict_proba`` on the model's feature columns. ``method``: ``dr`` (default), ``ipw`` or
    ``snipw``. ``challenger`` / ``champion`` are each policy's value per customer by the same
    estimator; ``difference`` with ``low``/``high`` is the paired estimate (see the module
    docstring).
    """
    if method not in off_policy.ESTIMATORS:
        raise ValueError(f"{method!r} is not a valid method. Valid options are: {', '.join(off_policy.ESTIMATORS)}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    missing = [c for c in TRAFFIC_REQUIRED if c not in traffic.columns]
    if missing:
        raise ValueError(f"traffic lacks column(s) {missing}; expected {list(TRAFFIC_REQUIRED)}")
    if len(traffic) == 0:
        return no_evidence(method, confidence, "no matured decisions of the champion")

    logged = offer_indices(traffic["offer"].to_numpy(dtype=object))
    champion = offer_indices(traffic["model_offer"].to_numpy(dtype=object))
    propensity = logging_propensities(champion, logged, traffic["propensity"].to_numpy(dtype=np.float64))
    explored = propensity.min(axis=1) > 0
    left_out = int((~explored).sum())
    if left_out:
        log.warning("%d of %d logged decision(s) were made without exploration (ε = 0): left out of the shadow "
                    "evaluation, they cannot value an offer the champion did not make", left_out, len(traffic))
    if not explored.any():
        return no_evidence(method, confidence, f"all {len(traffic)} decisions were logged without exploration")
    rows = traffic.loc[explored] if left_out else traffic
    logged, champion, propensity = logged[explored], champion[explored], propensity[explored]

    proba = counterfactual_proba(challenger_model, rows)
    challenger = choose_offers(proba, economics)
    q_hat = expected_values(proba, economics)
    rewards = off_policy.logged_rewards(rows["conversion"].to_numpy(dtype=np.float64), logged, economics)
    kw = {"q_hat": q_hat, "method": method, "confidence": confidence}
    diff = off_policy.compare_policies(rewards, logged, propensity, challenger, champion, **kw)
    value_c = off_policy.estimate_policy_value(rewards, logged, propensity, challenger, **kw)
    value_h = off_policy.estimate_policy_value(rewards, logged, propensity, champion, **kw)
    how = (f"{method.upper()} influence-function interval of the paired difference on the champion's logged "
           f"traffic (both greedy policies, the same rows; q̂: the challenger's expected values; "
           f"{float(np.mean(challenger != champion)):.1%} of rows with a different offer)")
    if left_out:
        how += f"; {left_out} row(s) logged without exploration left out"
    return PairedDifference(
        measure=MEASURE, source="live", challenger=_number(value_c.value), champion=_number(value_h.value),
        difference=_number(diff.value), low=_number(diff.lower), high=_number(diff.upper), confidence=confidence,
        greater_is_better=True, n_rows=int(diff.n), method=how)
