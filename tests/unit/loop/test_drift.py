"""Drift metrics on simulated customers (same mix, shifted mix) and on hand-computed shares."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core.schema import CHANNELS, CUSTOMER_COLUMNS
from factory_tasks.loop.drift import EPSILON, feature_drift, jensen_shannon, psi, shares
from factory_tasks.loop.simulator import simulate_customers

COLUMNS = list(CUSTOMER_COLUMNS)


@pytest.fixture(scope="module")
def reference():
    return simulate_customers(20_000, seed=1)


@pytest.fixture(scope="module")
def current():
    return simulate_customers(20_000, seed=2)


@pytest.mark.parametrize("metric", ["psi", "jensen_shannon"])
def test_the_same_distribution_does_not_drift(reference, current, metric):
    table = feature_drift(reference, current, COLUMNS, metric=metric)
    assert table["feature"].tolist() == COLUMNS and set(table["metric"]) == {metric}
    assert table["value"].dtype == np.float64
    assert (table["value"] < 0.02).all(), table


def test_a_shifted_channel_mix_drifts_on_channel_only(reference, current):
    shifted = current.copy()
    rng = np.random.default_rng(0)
    shifted["channel"] = pd.array(np.asarray(CHANNELS, dtype=object)[rng.choice(3, len(shifted), p=[0.70, 0.22, 0.08])],
                                  dtype="str")
    table = feature_drift(reference, shifted, COLUMNS).set_index("feature")["value"]
    assert table["channel"] > 0.25  # by hand: 0.26 ln(70/44) + 0.22 ln(44/22) + 0.04 ln(12/8) = 0.289
    assert table.drop("channel").max() < 0.02, table
    js = feature_drift(reference, shifted, COLUMNS, metric="jensen_shannon").set_index("feature")["value"]
    assert js.idxmax() == "channel" and 0 < js["channel"] < math.log(2)


def test_shifted_recency_drifts_on_recency_only(reference, current):
    shifted = current.assign(recency=np.minimum(current["recency"] + 3, 12))
    table = feature_drift(reference, shifted, COLUMNS).set_index("feature")["value"]
    assert table["recency"] > 0.25
    assert table.drop("recency").max() < 0.02, table


def test_known_answers_by_hand():
    ref, cur = ["a", "a", "b", "b"], ["a", "b", "b", "b"]  # shares (1/2, 1/2) and (1/4, 3/4)
    assert psi(ref, cur) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))  # 0.274653
    m = (0.375, 0.625)
    kl_r = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_c = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert jensen_shannon(ref, cur) == pytest.approx((kl_r + kl_c) / 2)  # 0.033822
    # numeric: bins=2 puts the one edge at the reference median 5.5; outer bins are open-ended
    r, c = shares(np.arange(1, 11), [-100, 2, 3, 8, 9, 10, 11, 120], bins=2)
    assert r.tolist() == [0.5, 0.5, 0.0] and c.tolist() == [3 / 8, 5 / 8, 0.0]  # last bin: missing values
    assert psi(np.arange(1, 11), [-100, 2, 3, 8, 9, 10, 11, 120], bins=2) == pytest.approx(
        (3 / 8 - 0.5) * math.log(0.75) + (5 / 8 - 0.5) * math.log(1.25))


def test_an_empty_bin_is_floored_at_epsilon():
    value = psi(["a"] * 4, ["a", "a", "b", "b"])  # "b" never seen in the reference
    assert value == pytest.approx((0.5 - 1) * math.log(0.5) + (0.5 - EPSILON) * math.log(0.5 / EPSILON))
    assert jensen_shannon(["a"] * 4, ["b"] * 4) == pytest.approx(math.log(2))  # disjoint: the maximum
    assert jensen_shannon([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0


def test_missing_values_count_as_their_own_bin():
    ref = pd.Series(np.arange(100, dtype=np.float64))
    cur = ref.where(ref % 3 != 0)  # a third missing
    assert psi(ref, cur) > 0.25 and psi(ref, ref) == 0.0
    cat = pd.Series(["Web", "Phone"] * 50, dtype="str")
    assert psi(cat, cat.where(cat != "Web")) > 0.25


def test_empty_input_is_nan_and_bad_input_is_named():
    assert math.isnan(psi([], [1.0, 2.0])) and math.isnan(jensen_shannon(["a"], []))
    frame = pd.DataFrame({"recency": [1, 2], "history": [30.0, 40.0]})
    with pytest.raises(ValueError, match=r"current lacks column\(s\) \['history'\]; it has \['recency'\]"):
        feature_drift(frame, frame[["recency"]], ["recency", "history"])
    with pytest.raises(ValueError, match="'kl' is not a valid drift metric. Valid options are: psi, jensen_shannon."):
        feature_drift(frame, frame, ["recency"], metric="kl")
    with pytest.raises(ValueError, match="bins must be >= 2"):
        psi([1.0], [1.0], bins=1)
    with pytest.raises(ValueError, match="must both be numeric or both not"):
        psi([1.0, 2.0], ["a", "b"])
    with pytest.raises(ValueError, match="reference must be one-dimensional"):
        psi(np.zeros((2, 2)), [1.0])
