"""Score-based performance estimates against labels drawn from the scores, and by brute force."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from factory_tasks.loop.performance_estimate import (
    calibration_by_decile,
    calibration_error,
    calibration_noise,
    estimate_is_reliable,
    expected_conversion_rate,
    expected_log_loss,
    expected_roc_auc,
    realised_log_loss,
    realised_roc_auc,
)
from factory_tasks.loop.simulator import conversion_probability, simulate_interactions


def _brute_force_auc(p: np.ndarray) -> float:
    pi, pj = p[:, None], p[None, :]
    pairs = pi * (1 - pj)
    np.fill_diagonal(pairs, 0.0)
    order = (pi > pj) + 0.5 * (pi == pj)
    return float((pairs * order).sum() / pairs.sum())


@pytest.fixture(scope="module")
def scored():
    """True probabilities of 20k logged interactions and labels drawn from them."""
    data = simulate_interactions(20_000, seed=7)
    p = conversion_probability(data)
    y = (np.random.default_rng(1).random(len(p)) < p).astype(np.int64)
    return p, y


def test_expected_auc_equals_the_pairwise_formula_exactly():
    rng = np.random.default_rng(0)
    for p in (rng.random(7), np.round(rng.random(300), 1), np.array([0.2, 0.2, 0.7]), np.array([0.0, 1.0, 0.5])):
        assert expected_roc_auc(p) == pytest.approx(_brute_force_auc(p), rel=1e-12, abs=1e-15)
    assert expected_roc_auc([0.0, 1.0]) == 1.0  # the labels are certain and ordered
    assert expected_roc_auc(np.full(5, 0.3)) == 0.5  # all tied


def test_calibrated_estimates_match_the_realised_metrics(scored):
    p, y = scored
    # the label draw alone moves the realised AUC by sd ~0.005 at n = 20k
    assert abs(expected_roc_auc(p) - realised_roc_auc(p, y)) < 0.015
    assert abs(expected_conversion_rate(p) - y.mean()) < 0.01
    assert abs(expected_log_loss(p) - realised_log_loss(p, y)) < 0.01
    assert calibration_error(p, y) < 0.01
    assert estimate_is_reliable(p, y, ceiling=0.05)


@pytest.mark.parametrize("distort", [lambda p: p**2, lambda p: np.clip(p + 0.1, 0, 1), np.sqrt])
def test_a_miscalibrated_model_is_off_and_flagged(scored, distort):
    p, y = scored
    s = distort(p)
    assert realised_roc_auc(s, y) == pytest.approx(realised_roc_auc(p, y))  # same ranking...
    assert abs(expected_roc_auc(s) - realised_roc_auc(s, y)) > 0.03  # ...but the estimate is off
    assert abs(expected_conversion_rate(s) - y.mean()) > 0.05
    assert calibration_error(s, y) > 0.09
    assert not estimate_is_reliable(s, y, ceiling=0.05)
    assert not estimate_is_reliable(s, y, ceiling=0.05, allow_noise=True)


def test_few_labels_look_miscalibrated_unless_the_noise_is_allowed(scored):
    p, y = scored
    p, y = p[:200], y[:200]
    noise = calibration_noise(p)
    assert 0.04 < noise < 0.08  # at 200 labels chance alone is above a 0.05 ceiling
    assert estimate_is_reliable(p, y, ceiling=0.05, allow_noise=True)
    assert not estimate_is_reliable(p, y, ceiling=0.0)


def test_calibration_table_by_hand():
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.7])
    y = np.array([1, 0, 1, 1, 0, 0])
    table = calibration_by_decile(p, y, bins=3)
    expected = pd.DataFrame({"decile": [1, 2, 3], "n": [2, 2, 2], "expected": [0.15, 0.5, 0.85],
                             "observed": [0.5, 0.0, 1.0]})
    pd.testing.assert_frame_equal(table, expected)
    assert calibration_error(p, y, bins=3) == pytest.approx((0.35 + 0.5 + 0.15) / 3)
    assert calibration_by_decile(p, y)["n"].tolist() == [1] * 6  # fewer rows than bins: fewer bins


def test_known_log_losses():
    assert expected_log_loss([0.5, 0.5]) == pytest.approx(math.log(2))
    assert expected_log_loss([0.0, 1.0]) == 0.0
    assert realised_log_loss([0.8, 0.4], [1, 0]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_empty_and_one_class_input_is_nan():
    for value in (expected_roc_auc([]), expected_roc_auc([0.4]), expected_conversion_rate([]), expected_log_loss([]),
                  calibration_error([], []), realised_roc_auc([0.2, 0.3], [0, 0]), realised_log_loss([], []),
                  calibration_noise([])):
        assert math.isnan(value)
    assert list(calibration_by_decile([], [])) == ["decile", "n", "expected", "observed"]
    assert not estimate_is_reliable([], [], ceiling=0.05)


def test_inputs_are_checked_with_the_argument_named():
    with pytest.raises(ValueError, match=r"y must have one label per score \(3 rows\)"):
        calibration_error([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="scores first, then labels"):
        realised_roc_auc([0, 1, 1], [0.2, 0.7, 0.4])  # swapped
    with pytest.raises(ValueError, match=r"p must hold probabilities in \[0, 1\]"):
        expected_roc_auc([0.2, 1.3])
    with pytest.raises(ValueError, match=r"p must hold probabilities"):
        expected_log_loss([0.2, np.nan])
    with pytest.raises(ValueError, match=r"p_matured must be one probability per row"):
        estimate_is_reliable(np.zeros((2, 2)), [0, 1], ceiling=0.05)
    with pytest.raises(ValueError, match="y_matured must hold 0/1 labels"):
        estimate_is_reliable([0.1, 0.2], [0, 2], ceiling=0.05)
