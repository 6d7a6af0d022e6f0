"""Off-policy estimators against the simulator's known truth, and by hand on a few rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from factory_tasks.core.metrics import choose_offers, policy_value
from factory_tasks.core.schema import DEFAULT_ECONOMICS as ECON
from factory_tasks.core.schema import OFFERS, expected_values
from factory_tasks.loop.off_policy import (
    PolicyEstimate,
    compare_policies,
    estimate_policy_value,
    logged_rewards,
    uniform_policy,
)
from factory_tasks.loop.simulator import (
    offer_probabilities,
    optimal_offers,
    simulate_customers,
    simulate_interactions,
    true_policy_value,
)

EPS = 0.1


def _logged(n: int, seed: int):
    """Rows logged by an ε-greedy policy around a model-like (noisy truth) pick."""
    rng = np.random.default_rng(seed)
    customers = simulate_customers(n, seed)
    true_p = offer_probabilities(customers)
    model_pick = choose_offers(true_p * np.exp(rng.normal(0.0, 0.3, true_p.shape)), ECON)
    explored = rng.random(n) < EPS
    logged = np.where(explored, rng.integers(0, 3, n), model_pick)
    propensity = np.where(logged == model_pick, 1 - EPS + EPS / 3, EPS / 3)
    conversion = (rng.random(n) < true_p[np.arange(n), logged]).astype(np.int64)
    return dict(customers=customers, true_p=true_p, model_pick=model_pick, logged=logged,
                propensity=propensity, rewards=logged_rewards(conversion, logged, ECON))


def _targets(d):
    """(name, kwargs for the target, true value) for each target policy tested."""
    ev = expected_values(d["true_p"], ECON)
    oracle = optimal_offers(d["customers"], ECON)
    return [
        ("oracle", {"target_idx": oracle}, true_policy_value(d["customers"], oracle, ECON)),
        ("blast Discount", {"target_idx": "Discount"}, true_policy_value(d["customers"], "Discount", ECON)),
        ("blast No Offer", {"target_idx": 2}, true_policy_value(d["customers"], "No Offer", ECON)),
        ("uniform", {"target_proba": uniform_policy(len(ev))}, float(ev.mean())),
    ]


@pytest.fixture(scope="module")
def logged20k():
    return _logged(20_000, seed=3)


@pytest.mark.parametrize("method", ["ipw", "snipw", "dr"])
def test_each_estimator_is_within_three_standard_errors_of_the_truth(logged20k, method):
    d = logged20k
    q_hat = expected_values(d["true_p"], ECON)
    for name, target, truth in _targets(d):
        est = estimate_policy_value(d["rewards"], d["logged"], d["propensity"], q_hat=q_hat, method=method,
                                    **target)
        assert isinstance(est, PolicyEstimate) and est.method == method and est.n == 20_000
        assert abs(est.value - truth) < 3 * est.std_error, (name, est, truth)
        assert est.lower < est.value < est.upper


def test_intervals_cover_the_truth_in_most_seeds():
    hits = {m: 0 for m in ("ipw", "snipw", "dr", "dr_diff", "ipw_diff")}
    seeds = range(40)
    for seed in seeds:
        d = _logged(4_000, seed=100 + seed)
        q_hat = expected_values(d["true_p"] * np.exp(np.random.default_rng(seed).normal(0, 0.2, (4_000, 3))), ECON)
        oracle = optimal_offers(d["customers"], ECON)
        truth = true_policy_value(d["customers"], oracle, ECON)
        for method in ("ipw", "snipw", "dr"):
            est = estimate_policy_value(d["rewards"], d["logged"], d["propensity"], oracle, q_hat, method=method)
            hits[method] += est.lower <= truth <= est.upper
        gain = truth - true_policy_value(d["customers"], "Discount", ECON)
        for method in ("ipw", "dr"):
            diff = compare_policies(d["rewards"], d["logged"], d["propensity"], oracle, "Discount", q_hat,
                                    method=method)
            hits[f"{method}_diff"] += diff.lower <= gain <= diff.upper
    rates = {m: h / len(seeds) for m, h in hits.items()}
    assert all(rate >= 0.85 for rate in rates.values()), rates


def test_doubly_robust_with_a_correct_model_has_a_narrower_interval(logged20k):
    d = logged20k
    q_hat = expected_values(d["true_p"], ECON)
    args = (d["rewards"], d["logged"], d["propensity"])
    for name, target, _ in _targets(d):
        ipw = estimate_policy_value(*args, **target)
        dr = estimate_policy_value(*args, q_hat=q_hat, **target)
        assert ipw.method == "ipw" and dr.method == "dr"  # the default follows q_hat
        # a 0/1 conversion worth 100 is mostly noise that no q_hat can explain: DR saves ~3-7 %
        assert dr.std_error < 0.98 * ipw.std_error, name
    # what DR removes is the part of the reward that q_hat predicts: all of it here
    noiseless = q_hat[np.arange(len(q_hat)), d["logged"]]
    oracle = optimal_offers(d["customers"], ECON)
    ipw = estimate_policy_value(noiseless, d["logged"], d["propensity"], oracle)
    dr = estimate_policy_value(noiseless, d["logged"], d["propensity"], oracle, q_hat)
    assert (dr.upper - dr.lower) < 0.2 * (ipw.upper - ipw.lower)
    assert dr.value == pytest.approx(true_policy_value(d["customers"], oracle, ECON))


def test_a_difference_is_paired_and_its_interval_is_of_the_difference(logged20k):
    d = logged20k
    q_hat = expected_values(d["true_p"], ECON)
    model, args = d["model_pick"], (d["rewards"], d["logged"], d["propensity"])
    for method in ("ipw", "snipw", "dr"):
        a = estimate_policy_value(*args, model, q_hat, method=method)
        b = estimate_policy_value(*args, q_hat=q_hat, target_proba=uniform_policy(20_000), method=method)
        diff = compare_policies(*args, model, q_hat=q_hat, baseline_proba=uniform_policy(20_000), method=method)
        assert diff.value == pytest.approx(a.value - b.value, abs=1e-9)
        assert diff.std_error < math.hypot(a.std_error, b.std_error)  # shared rows: positively correlated
    same = compare_policies(*args, model, model, q_hat)
    assert same.value == 0 and same.std_error == 0


def test_known_answer_on_four_rows():
    rewards = np.array([96.0, -8.0, 0.0, 100.0])
    logged = np.array([0, 1, 2, 2])
    mu = np.array([0.5, 0.25, 0.5, 0.25])
    target = np.array([0, 1, 0, 2])  # w = 2, 4, 0, 4
    q_hat = np.array([[10.0, 5, 0], [1, 2, 3], [4, 0, 0], [0, 0, 20]])
    assert estimate_policy_value(rewards, logged, mu, target).value == pytest.approx((192 - 32 + 400) / 4)
    assert estimate_policy_value(rewards, logged, mu, target, method="snipw").value == pytest.approx(560 / 10)
    dr = (10 + 2 * 86) + (2 + 4 * -10) + 4 + (20 + 4 * 80)
    assert estimate_policy_value(rewards, logged, mu, target, q_hat).value == pytest.approx(dr / 4)
    ipw_terms = np.array([192.0, -32, 0, 400])
    se = np.std(ipw_terms, ddof=1) / 2
    est = estimate_policy_value(rewards, logged, mu, target, confidence=0.9)
    assert est.std_error == pytest.approx(se) and est.upper - est.value == pytest.approx(1.6448536 * se)


def test_ipw_agrees_exactly_with_metrics_policy_value_on_randomised_data():
    data = simulate_interactions(3_000, seed=5)
    offer_proba = offer_probabilities(data) * np.exp(np.random.default_rng(0).normal(0, 0.3, (3_000, 3)))
    logged = data["offer"].to_numpy()
    rewards = logged_rewards(data["conversion"], logged, ECON)
    est = estimate_policy_value(rewards, logged, np.full(3_000, 1 / 3), choose_offers(offer_proba, ECON))
    assert est.value == policy_value(data["conversion"], logged, offer_proba, ECON)


def test_a_target_offer_with_zero_logging_propensity_is_an_error_naming_it():
    rewards, logged = np.array([1.0, 2.0, 3.0]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="takes 'Discount'.*propensity is 0.*first row 2"):
        estimate_policy_value(rewards, logged, np.array([0.5, 0.5, 0.0]), target_idx=[1, 1, 1])
    # a logged offer of propensity 0 the target does not take is harmless
    assert estimate_policy_value(rewards, logged, np.array([0.5, 0.5, 0.0]), target_idx=[0, 1, 0]).value == 2.0
    # with the whole logging distribution, an offer never logged is caught too
    mu = np.array([[0.5, 0.5, 0.0]] * 3)
    with pytest.raises(ValueError, match="baseline policy takes 'No Offer'"):
        compare_policies(rewards, logged, mu, target_idx=0, baseline_proba=uniform_policy(3))


def test_inputs_are_checked_with_the_argument_named():
    r, a, mu = np.zeros(4), np.zeros(4, dtype=int), np.full(4, 0.5)
    cases = [
        (dict(rewards=np.zeros(3)), "logged_idx must be one offer per row"),
        (dict(logged_propensity=np.full(3, 0.5)), "logged_propensity must have shape"),
        (dict(logged_propensity=np.full(4, 1.5)), r"logged_propensity must lie in \[0, 1\]"),
        (dict(target_idx=[0, 1]), "target_idx must be one offer per row"),
        (dict(target_idx=[0, 1, 2, 3]), "target_idx must index OFFERS"),
        (dict(target_idx=["Coupon"] * 4), r"target_idx: unknown offer\(s\) \['Coupon'\]"),
        (dict(target_proba=uniform_policy(4)), "give exactly one of target_idx"),
        (dict(target_idx=None, target_proba=np.ones((4, 3))), "target_proba rows must be probabilities"),
        (dict(q_hat=np.zeros((4, 2))), r"q_hat must have shape \(4, 3\)"),
        (dict(method="dm"), "'dm' is not a valid method. Valid options are: ipw, snipw, dr."),
        (dict(method="dr"), "method 'dr' needs q_hat"),
        (dict(rewards=[0, 0, np.nan, 0]), "rewards must be finite"),
    ]
    for override, message in cases:
        kwargs = dict(rewards=r, logged_idx=a, logged_propensity=mu, target_idx=0) | override
        with pytest.raises(ValueError, match=message):
            estimate_policy_value(**kwargs)


def test_empty_input_is_nan():
    est = estimate_policy_value([], [], [], target_idx=[])
    assert est.n == 0 and math.isnan(est.value) and math.isnan(est.lower) and math.isnan(est.upper)
    assert len(OFFERS) == 3
