"""Metric computations, policy value by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from factory_tasks.core.metrics import (
    METRICS,
    blast_values,
    choose_offers,
    compute_metric,
    fold_intervals,
    policy_uplift,
    policy_value,
)

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
        ({"name": "policy_value", "propensities": np.array([0.5])}, "one value per row"),
        ({"name": "policy_value", "propensities": np.array([0.5, 0.0])}, r"must lie in \(0, 1\]"),
        ({"name": "policy_uplift", "propensities": np.array([1.5, 0.5])}, r"must lie in \(0, 1\]"),
        ({"name": "policy_uplift", "propensities": np.array([np.nan, 0.5])}, r"must lie in \(0, 1\]"),
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


def test_per_row_propensities_by_hand():
    proba, logged, y = FIVE_ROWS
    # rows 0, 1, 4 match the policy (rewards 9, -2, 8); each row's own logged propensity
    prop = np.array([0.9, 0.5, 0.1, 0.25, 1 / 3])
    expected = (9 / 0.9 - 2 / 0.5 + 8 / (1 / 3)) / 5
    assert policy_value(y, logged, proba, ECON, prop) == pytest.approx(expected)
    # blast BOGO: row 0 (9 / 0.9); Discount: rows 1, 2, 4 (-2 / 0.5 + 8 / 0.1 + 8 * 3); No Offer: row 3 (10 / 0.25)
    blast = [9 / 0.9 / 5, (-2 / 0.5 + 8 / 0.1 + 8 * 3) / 5, 10 / 0.25 / 5]
    assert blast_values(y, logged, ECON, prop).tolist() == pytest.approx(blast)
    assert policy_uplift(y, logged, proba, ECON, prop) == pytest.approx(expected - max(blast))
    assert compute_metric("policy_value", y, proba[:, 0], logged_offers=logged, offer_proba=proba,
                          economics=ECON, propensities=prop) == pytest.approx(expected)
    # 1/3 for every row is the randomized campaign: the same numbers as the default
    thirds = np.full(5, 1 / 3)
    assert policy_value(y, logged, proba, ECON, thirds) == pytest.approx(policy_value(y, logged, proba, ECON))
    assert blast_values(y, logged, ECON, list(thirds)).tolist() == pytest.approx(blast_values(y, logged, ECON).tolist())


def test_an_offer_never_logged_has_no_blast_value_under_per_row_propensities():
    logged = np.array(["Discount", "No Offer"], dtype=object)
    values = blast_values(np.array([1, 0]), logged, ECON, np.array([0.9, 0.05]))
    assert np.isnan(values[0]) and values[1:].tolist() == pytest.approx([8 / 0.9 / 2, 0.0])


def test_per_row_propensities_recover_the_true_value_of_an_epsilon_greedy_log():
    """Known answer: customers logged by an ε-greedy production policy (its pick with
    1 - ε + ε/3, each other offer with ε/3); the simulator knows every policy's true value."""
    from factory_tasks.core.schema import DEFAULT_ECONOMICS, OFFERS, expected_values, offer_cost_vector
    from factory_tasks.loop.simulator import (
        offer_probabilities,
        simulate_customers,
        simulate_responses,
        true_policy_value,
    )

    n, eps = 100_000, 0.2
    customers = simulate_customers(n, seed=3)
    rng = np.random.default_rng(4)
    truth = offer_probabilities(customers)  # the true response model as the "model"
    optimal = np.argmax(expected_values(truth, DEFAULT_ECONOMICS), axis=1)
    production = np.where(np.arange(n) % 2 == 0, optimal, 1)  # optimal for half, Discount for the rest
    explored = rng.random(n) < eps
    logged_idx = np.where(explored, rng.integers(0, 3, n), production)
    propensity = np.where(logged_idx == production, 1 - eps + eps / 3, eps / 3)
    logged = np.asarray(OFFERS, dtype=object)[logged_idx]
    y = simulate_responses(customers, logged, rng)
    reward = y * DEFAULT_ECONOMICS["conversion_value"] - offer_cost_vector(DEFAULT_ECONOMICS)[logged_idx]

    def standard_error(target_idx: np.ndarray) -> float:
        return float(((target_idx == logged_idx) / propensity * reward).std() / np.sqrt(n))

    true_value = true_policy_value(customers, np.asarray(OFFERS, dtype=object)[optimal], DEFAULT_ECONOMICS)
    estimate = policy_value(y, logged, truth, DEFAULT_ECONOMICS, propensity)
    se = standard_error(optimal)
    assert abs(estimate - true_value) < 4 * se, (estimate, true_value, se)
    # assuming the offers were uniformly random (1/3) is far off on this log
    assert abs(policy_value(y, logged, truth, DEFAULT_ECONOMICS) - true_value) > 20 * se
    blast = blast_values(y, logged, DEFAULT_ECONOMICS, propensity)
    for j, offer in enumerate(OFFERS):
        se_j = standard_error(np.full(n, j))
        assert abs(blast[j] - true_policy_value(customers, offer, DEFAULT_ECONOMICS)) < 4 * se_j, offer


# -- intervals across folds -------------------------------------------------------------------


def test_fold_interval_is_the_t_interval_with_k_minus_1_degrees_of_freedom():
    folds = np.array([0.1, 0.2, 0.3, 0.4, 0.5])  # mean 0.3, sd 0.1581
    naive = fold_intervals(folds, corrected=False)
    # t_{0.975, 4} = 2.776445; sd / sqrt(5) = 0.0707107
    assert float(naive.mean) == pytest.approx(0.3)
    assert (float(naive.low), float(naive.high)) == pytest.approx((0.3 - 0.196324, 0.3 + 0.196324), abs=1e-6)
    # Nadeau-Bengio: se² = (1/k + 1/(k-1)) s², 1.5 times the naive se at k = 5
    corrected = fold_intervals(folds)
    assert float(corrected.high) - 0.3 == pytest.approx(1.5 * 0.196324, abs=1e-6)
    assert int(corrected.n_folds) == 5 and not bool(corrected.includes_zero)
    assert fold_intervals(folds, confidence=0.9, corrected=False).high == pytest.approx(0.3 + 2.131847 * 0.0707107)


def test_an_interval_across_zero_is_marked_and_one_above_it_is_not():
    rows = fold_intervals(np.array([[0.5, -0.4, 0.3, -0.1, 0.2],    # mean 0.1, wide: includes 0
                                    [0.50, 0.52, 0.48, 0.51, 0.49],  # clearly above 0
                                    [-0.5, -0.52, -0.48, -0.51, -0.49]]))
    assert rows.includes_zero.tolist() == [True, False, False]
    assert rows.low[1] > 0 and rows.high[2] < 0
    # each row on its own gives the same as the vectorised call
    for i, row in enumerate([[0.5, -0.4, 0.3, -0.1, 0.2], [0.50, 0.52, 0.48, 0.51, 0.49]]):
        one = fold_intervals(np.array(row))
        assert (float(one.low), float(one.high)) == pytest.approx((rows.low[i], rows.high[i]))


def test_missing_folds_are_left_out_and_fewer_than_two_give_no_interval():
    rows = fold_intervals(np.array([[0.1, np.nan, 0.3, np.inf, 0.5],
                                    [0.2, np.nan, np.nan, np.nan, np.nan],
                                    [np.nan] * 5]))
    assert rows.n_folds.tolist() == [3, 1, 0]
    three = fold_intervals(np.array([0.1, 0.3, 0.5]))
    assert (rows.mean[0], rows.low[0], rows.high[0]) == pytest.approx(
        (0.3, float(three.low), float(three.high)))
    assert rows.mean[1] == pytest.approx(0.2) and np.isnan(rows.low[1]) and np.isnan(rows.high[1])
    assert np.isnan(rows.mean[2]) and np.isnan(rows.low[2])
    # three folds: a wide interval (t_{0.975,2} = 4.30), across 0; without one, no claim either way
    assert rows.includes_zero.tolist() == [True, False, False]


def test_fold_intervals_refuses_a_confidence_outside_0_1():
    with pytest.raises(ValueError, match="confidence"):
        fold_intervals(np.array([0.1, 0.2]), confidence=95)
