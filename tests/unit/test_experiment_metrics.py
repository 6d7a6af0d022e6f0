"""Metric computations, policy value by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from factory_tasks.metrics import METRICS, blast_values, choose_offers, compute_metric, policy_uplift, policy_value

ECON = {"conversion_value": 10.0, "offer_costs": {"Buy One Get One": 1.0, "Discount": 2.0, "No Offer": 0.0}}


def test_every_registered_metric_is_computable():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.8, 0.3, 0.6])
    offer_proba = np.column_stack([p, p, p])
    offers = np.array(["No Offer"] * 4, dtype=object)
    for name in METRICS:
        value = compute_metric(name, y, p, logged_offers=offers, offer_proba=offer_proba, economics=ECON)
        assert math.isfinite(value), name


def test_proba_metrics_on_known_inputs():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert compute_metric("roc_auc", y, p) == pytest.approx(0.75)
    assert compute_metric("accuracy", y, p) == pytest.approx(0.75)  # 0.35 < 0.5 is a miss
    assert compute_metric("brier_score", y, p) == pytest.approx(np.mean((p - y) ** 2))
    expected_ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert compute_metric("log_loss", y, p) == pytest.approx(expected_ll)
    assert compute_metric("average_precision", y, p) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_always_no_conversion_is_accurate_but_useless():
    y = np.array([0] * 85 + [1] * 15)
    p = np.full(100, 0.01)
    assert compute_metric("accuracy", y, p) == pytest.approx(0.85)
    assert compute_metric("roc_auc", y, p) == pytest.approx(0.5)


def test_choose_offers_maximises_expected_value():
    #              BOGO  Disc  None
    proba = np.array([
        [0.30, 0.30, 0.10],  # EV 2.0, 1.0, 1.0 -> BOGO
        [0.10, 0.50, 0.10],  # EV 0.0, 3.0, 1.0 -> Discount
        [0.15, 0.25, 0.20],  # EV 0.5, 0.5, 2.0 -> No Offer
        [0.20, 0.30, 0.10],  # EV 1.0, 1.0, 1.0 -> tie: first (BOGO)
    ])
    assert choose_offers(proba, ECON).tolist() == [0, 1, 2, 0]


#: five held-out rows: the model's counterfactual probabilities, the logged offers, conversions
FIVE_ROWS = (
    np.array([
        [0.30, 0.30, 0.10],  # chooses BOGO
        [0.10, 0.50, 0.10],  # chooses Discount
        [0.15, 0.25, 0.20],  # chooses No Offer
        [0.30, 0.30, 0.10],  # chooses BOGO
        [0.10, 0.50, 0.10],  # chooses Discount
    ]),
    np.array(["Buy One Get One", "Discount", "Discount", "No Offer", "Discount"], dtype=object),
    np.array([1, 0, 1, 1, 1]),
)


def test_policy_value_by_hand():
    proba, logged, y = FIVE_ROWS
    # matches: rows 0 (BOGO, converted: 10 - 1 = 9), 1 (Discount, no conversion: -2),
    #          4 (Discount, converted: 10 - 2 = 8); weight 1 / (1/3) = 3; mean over 5 rows
    expected = 3 * (9 - 2 + 8) / 5
    assert policy_value(y, logged, proba, ECON) == pytest.approx(expected)
    assert compute_metric(
        "policy_value", y, proba[np.arange(5), [0, 1, 1, 2, 1]],
        logged_offers=logged, offer_proba=proba, economics=ECON,
    ) == pytest.approx(expected)


def test_policy_uplift_is_the_policy_value_over_the_best_blast_on_the_same_rows():
    proba, logged, y = FIVE_ROWS
    # blast BOGO: row 0 converts (9) -> 3 * 9 / 5; blast Discount: rows 1, 2, 4 -> 3 * (-2 + 8 + 8) / 5;
    # blast No Offer: row 3 converts (10 - 0) -> 3 * 10 / 5
    assert blast_values(y, logged, ECON).tolist() == pytest.approx([27 / 5, 42 / 5, 30 / 5])
    assert policy_uplift(y, logged, proba, ECON) == pytest.approx(3 * (9 - 2 + 8) / 5 - 42 / 5)
    assert compute_metric("policy_uplift", y, proba[:, 0], logged_offers=logged, offer_proba=proba,
                          economics=ECON) == pytest.approx(3 / 5)
    # a policy that is the best blast has uplift 0
    always_discount = np.tile([0.0, 1.0, 0.0], (5, 1))
    assert policy_uplift(y, logged, always_discount, ECON) == pytest.approx(0.0)
    assert METRICS["policy_uplift"].greater_is_better


def test_policy_value_with_known_and_estimated_propensities():
    proba = np.array([[0.3, 0.3, 0.1], [0.1, 0.5, 0.1], [0.1, 0.5, 0.1], [0.15, 0.25, 0.2]])
    logged = np.array(["Buy One Get One", "Discount", "Discount", "No Offer"], dtype=object)
    y = np.array([1, 1, 0, 0])
    props = {"Buy One Get One": 0.25, "Discount": 0.5, "No Offer": 0.25}
    expected = (9 / 0.25 + 8 / 0.5 + (-2) / 0.5 + 0 / 0.25) / 4
    assert policy_value(y, logged, proba, ECON, props) == pytest.approx(expected)
    # empirical: BOGO 1/4, Discount 2/4, No Offer 1/4 -> the same numbers here
    assert policy_value(y, logged, proba, ECON, "empirical") == pytest.approx(expected)


def test_policy_value_of_a_constant_policy_is_the_mean_reward_of_its_arm():
    rng = np.random.default_rng(0)
    n = 30_000
    logged = np.array(["Buy One Get One", "Discount", "No Offer"], dtype=object)[rng.integers(0, 3, n)]
    y = (rng.random(n) < np.where(logged == "Discount", 0.3, 0.1)).astype(int)
    always_discount = np.tile([0.0, 1.0, 0.0], (n, 1))
    arm = logged == "Discount"
    assert policy_value(y, logged, always_discount, ECON) == pytest.approx(
        np.mean(y[arm] * 10.0 - 2.0), abs=0.15
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "f1"}, "not a valid metric"),
        ({"name": "policy_value", "economics": None}, "policy_value needs"),
        ({"name": "policy_value", "economics": {"offer_costs": {}}}, "conversion_value"),
        ({"name": "policy_value", "economics": {"conversion_value": 1, "offer_costs": {"Free": 1}}}, "unknown offer"),
        ({"name": "policy_value", "offer_proba": np.ones((2, 2))}, r"shape \(n, 3\)"),
        ({"name": "policy_value", "propensities": "guess"}, "propensities must be"),
    ],
)
def test_metric_errors(kwargs, message):
    args = {
        "y_true": np.array([0, 1]),
        "proba": np.array([0.2, 0.7]),
        "logged_offers": np.array(["Discount", "No Offer"], dtype=object),
        "offer_proba": np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]),
        "economics": ECON,
    }
    args.update(kwargs)
    name = args.pop("name")
    with pytest.raises(ValueError, match=message):
        compute_metric(name, **args)
