"""The customer interaction simulator and its ground-truth response model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_tasks import simulator as sim
from factory_tasks.simulator import (
    DEFAULT_ECONOMICS,
    INTERACTION_COLUMNS,
    INTERACTION_DTYPES,
    OFFERS,
    conversion_probability,
    offer_probabilities,
    optimal_offers,
    simulate_customers,
    simulate_interactions,
    true_policy_value,
    validate_interactions,
)


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    return simulate_interactions(50_000, seed=11)


def test_schema_column_order_and_dtypes():
    df = simulate_interactions(500, seed=1)
    assert tuple(df.columns) == INTERACTION_COLUMNS
    assert {c: str(t) for c, t in df.dtypes.items()} == INTERACTION_DTYPES
    assert len(df) == 500
    validate_interactions(df)


def test_zero_rows_keep_the_schema():
    df = simulate_interactions(0, seed=1)
    assert tuple(df.columns) == INTERACTION_COLUMNS and len(df) == 0


def test_value_ranges(big):
    assert big["recency"].between(1, 12).all()
    assert set(big["recency"].unique()) == set(range(1, 13))
    assert big["history"].min() >= 29.99 and big["history"].max() <= 3345.93
    assert (big["history"] == big["history"].round(2)).all()
    for col in ("used_discount", "used_bogo", "is_referral", "conversion"):
        assert set(big[col].unique()) == {0, 1}
    assert ((big["used_discount"] + big["used_bogo"]) >= 1).all()
    assert set(big["zip_code"].unique()) == {"Surburban", "Urban", "Rural"}
    assert set(big["channel"].unique()) == {"Web", "Phone", "Multichannel"}
    assert set(big["offer"].unique()) == set(OFFERS)


def test_history_has_a_heavy_right_tail(big):
    h = big["history"]
    assert h.mean() > 1.3 * h.median()
    assert 120 < h.median() < 200
    assert h.quantile(0.99) > 5 * h.median()


def test_marginals(big):
    def shares(col):
        return big[col].value_counts(normalize=True)

    zip_shares, channel_shares, offer_shares = shares("zip_code"), shares("channel"), shares("offer")
    assert zip_shares["Surburban"] == pytest.approx(0.45, abs=0.01)
    assert zip_shares["Urban"] == pytest.approx(0.40, abs=0.01)
    assert zip_shares["Rural"] == pytest.approx(0.15, abs=0.01)
    assert channel_shares["Web"] == pytest.approx(0.44, abs=0.01)
    assert channel_shares["Phone"] == pytest.approx(0.44, abs=0.01)
    assert channel_shares["Multichannel"] == pytest.approx(0.12, abs=0.01)
    for offer in OFFERS:
        assert offer_shares[offer] == pytest.approx(1 / 3, abs=0.01)
    assert big["is_referral"].mean() == pytest.approx(0.5, abs=0.015)
    rates = big.groupby("offer")["conversion"].mean()
    assert big["conversion"].mean() == pytest.approx(0.147, abs=0.006)
    assert rates["Discount"] == pytest.approx(0.18, abs=0.01)
    assert rates["Buy One Get One"] == pytest.approx(0.15, abs=0.01)
    assert rates["No Offer"] == pytest.approx(0.11, abs=0.01)


def test_same_seed_same_frame_other_seed_other_frame():
    a, b = simulate_interactions(2_000, seed=5), simulate_interactions(2_000, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(simulate_interactions(2_000, seed=6))


def test_customers_are_the_customer_part_of_the_interactions():
    inter = simulate_interactions(300, seed=9)
    cust = simulate_customers(300, seed=9)
    pd.testing.assert_frame_equal(inter[list(sim.CUSTOMER_COLUMNS)], cust)


def test_truth_past_bogo_users_like_bogo_as_much_as_discount(big):
    p = offer_probabilities(big)
    bogo_users = big["used_bogo"].to_numpy() == 1
    bogo, discount, none = p[bogo_users].mean(axis=0)
    assert bogo == pytest.approx(discount, rel=0.10)
    assert min(bogo, discount) > none * 1.3
    # ...while discount-only users barely respond to BOGO
    discount_only = (big["used_discount"].to_numpy() == 1) & ~bogo_users
    d_bogo, d_discount, d_none = p[discount_only].mean(axis=0)
    assert d_discount > 1.4 * d_bogo and d_bogo < 1.1 * d_none


def test_truth_discount_beats_no_offer_and_segments_matter(big):
    p_discount = conversion_probability(big, "Discount")
    p_none = conversion_probability(big, "No Offer")
    assert p_discount.mean() > 1.4 * p_none.mean()
    referral = big["is_referral"].to_numpy() == 1
    lift = p_discount - p_none
    assert lift[referral].mean() > lift[~referral].mean()  # referred customers are price sensitive
    recent, lapsed = big["recency"].to_numpy() <= 3, big["recency"].to_numpy() >= 10
    assert p_none[recent].mean() > p_none[lapsed].mean()
    assert lift[lapsed].mean() > lift[recent].mean()


def test_conversion_probability_uses_the_frame_offer_by_default(big):
    head = big.head(100)
    expected = np.array([conversion_probability(head.iloc[[i]], o)[0] for i, o in enumerate(head["offer"])])
    np.testing.assert_allclose(conversion_probability(head), expected)
    with pytest.raises(ValueError, match="unknown offer"):
        conversion_probability(head, "Free Lunch")


def test_optimal_policy_is_mixed_and_beats_every_constant_policy(big):
    best = optimal_offers(big, DEFAULT_ECONOMICS)
    shares = pd.Series(best).value_counts(normalize=True)
    assert set(shares.index) == set(OFFERS) and shares.min() > 0.1
    optimum = true_policy_value(big, best, DEFAULT_ECONOMICS)
    for offer in OFFERS:
        assert optimum > true_policy_value(big, offer, DEFAULT_ECONOMICS) + 1.0


def test_true_policy_value_by_hand():
    df = simulate_customers(3, seed=2)
    economics = {"conversion_value": 10.0, "offer_costs": {"Discount": 1.0, "Buy One Get One": 0.5}}
    offers = np.array(["Discount", "No Offer", "Buy One Get One"], dtype=object)
    p = conversion_probability(df, offers)
    expected = np.mean(p * 10.0 - np.array([1.0, 0.0, 0.5]))
    assert true_policy_value(df, offers, economics) == pytest.approx(expected)


def test_100k_rows_are_cheap():
    # not a benchmark, a guard against accidental per-row Python loops (generous bound)
    import time

    t0 = time.perf_counter()
    simulate_interactions(100_000, seed=3)
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.drop(columns=["channel"]), "lacks required column"),
        (lambda d: d.assign(used_bogo=2), "used_bogo must be 0/1"),
        (lambda d: d.assign(conversion=d["conversion"].astype(float) * 0.5), "conversion must be 0/1"),
        (lambda d: d.assign(offer="Free Lunch"), "offer has unknown value"),
        (lambda d: d.assign(zip_code=1), "zip_code must hold strings"),
        (lambda d: d.assign(history="a lot"), "history must be numeric"),
        (lambda d: d.assign(recency=1.5), "recency must be a non-negative whole number"),
        (lambda d: d.assign(history=np.where(d.index == 0, np.nan, d["history"])), "history has 1 missing"),
    ],
)
def test_validate_interactions_rejects(mutate, message):
    df = simulate_interactions(50, seed=4)
    with pytest.raises(ValueError, match=message):
        validate_interactions(mutate(df))


def test_validate_interactions_accepts_warehouse_types():
    df = simulate_interactions(50, seed=4)
    loose = df.astype({"recency": "float64", "used_bogo": "int32"}).assign(
        channel=df["channel"].astype(object), extra=1
    )
    validate_interactions(loose)


def test_schema_agrees_with_the_training_table():
    from factory_tasks.training_data import INTERACTION_COLUMNS as TABLE_COLUMNS

    assert TABLE_COLUMNS == INTERACTION_COLUMNS
