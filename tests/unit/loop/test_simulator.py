"""The customer interaction simulator and its ground-truth response model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core import schema
from factory_tasks.core.schema import (
    DEFAULT_ECONOMICS,
    INTERACTION_COLUMNS,
    INTERACTION_DTYPES,
    OFFERS,
    validate_interactions,
)
from factory_tasks.loop import simulator as sim
from factory_tasks.loop.simulator import (
    conversion_probability,
    offer_probabilities,
    optimal_offers,
    simulate_customers,
    simulate_interactions,
    true_policy_value,
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
    pd.testing.assert_frame_equal(inter[list(schema.CUSTOMER_COLUMNS)], cust)


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
    from factory_tasks.warehouse.training_data import INTERACTION_COLUMNS as TABLE_COLUMNS

    assert TABLE_COLUMNS == INTERACTION_COLUMNS


# --------------------------------------------------------------------------------------------
# The truth is not linear in what the models see (each of these fails on a logistic truth)


def _log_odds(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def _one_customer(n: int, **columns) -> pd.DataFrame:
    base = {"recency": 5, "history": 200.0, "used_discount": 1, "used_bogo": 1, "zip_code": "Urban",
            "is_referral": 0, "channel": "Web"}
    frame = pd.DataFrame({k: [v] * n for k, v in base.items()})
    for column, values in columns.items():
        frame[column] = values
    return frame.astype({"recency": "int64", "history": "float64"})


def test_truth_is_outside_the_logistic_regressions_model_class(big):
    # the best least-squares fit of the true log-odds on the logistic regression's own design
    # (preprocessing + pairwise products) leaves a lot unexplained; a logistic truth with offer x
    # segment terms in log(history) and recency would be fitted almost exactly (residual ~0.0004)
    from factory_tasks.training.features import build_pipeline

    frame = big.head(20_000)
    design = build_pipeline("LogisticRegression", {"C": 1.0})[:-1].fit_transform(frame[list(schema.FEATURE_COLUMNS)])
    design = np.column_stack([np.ones(len(frame)), design])
    logit = _log_odds(conversion_probability(frame))
    coef, *_ = np.linalg.lstsq(design, logit, rcond=None)
    assert (logit - design @ coef).std() > 0.1


def test_truth_discount_backfires_on_recent_big_spenders(big):
    p = offer_probabilities(big)
    recency, history = big["recency"].to_numpy(), big["history"].to_numpy()
    segment = (recency <= sim.RECENT_MONTHS) & (history >= sim.BIG_SPEND)
    assert 0.05 < segment.mean() < 0.15
    assert (p[segment, 1] < p[segment, 2]).all()  # Discount below No Offer for every one of them
    assert p[segment, 1].mean() < 0.8 * p[segment, 2].mean()
    # just outside the segment (a month later, or spending less) Discount works again
    for neighbours in ((recency == sim.RECENT_MONTHS + 1) & (history >= sim.BIG_SPEND),
                       (recency <= sim.RECENT_MONTHS) & (history < sim.BIG_SPEND)):
        assert p[neighbours, 1].mean() > 1.2 * p[neighbours, 2].mean()


def test_truth_spend_effect_saturates():
    history = np.array([30.0, 100.0, 300.0, 1000.0, 3000.0])
    for offer in OFFERS:
        logit = _log_odds(conversion_probability(_one_customer(5, history=history), offer))
        steps = np.diff(logit)  # equal-ish steps in log(history)
        assert steps[0] > 0 and steps[1] > 0
        # the effect flattens: above 1,000 it has all but stopped (a log-linear effect would not)
        assert abs(steps[3]) < 0.05 * (logit[2] - logit[0])


def test_truth_lapsed_customers_are_a_step_not_a_slope():
    recency = np.arange(1, 13)
    customers = _one_customer(12, recency=recency, history=np.full(12, 200.0))
    none, discount, bogo = (_log_odds(conversion_probability(customers, o)) for o in ("No Offer", "Discount",
                                                                                       "Buy One Get One"))
    jump = sim.LAPSED_MONTHS - 2  # index of the step from LAPSED_MONTHS - 1 to LAPSED_MONTHS
    steps = np.abs(np.diff(none))
    assert steps[jump] > 5 * np.delete(steps, jump).max()
    for lift in (discount - none, bogo - none):
        lift_steps = np.abs(np.diff(lift))
        assert lift_steps[jump] > 0.3 and np.delete(lift_steps, jump).max() < 1e-9
    assert (discount - none)[jump + 1] > (discount - none)[jump] + 0.5  # a discount wins the lapsed back
    assert (bogo - none)[jump + 1] < (bogo - none)[jump] - 0.3  # BOGO does not


# --------------------------------------------------------------------------------------------
# Drift


WEB_DISCOUNT = sim.Drift(segment={"channel": "Web"}, offer="Discount", log_odds_change=-1.2,
                         channel_shares=(0.70, 0.22, 0.08))


def test_drift_shifts_the_log_odds_of_the_offer_in_the_segment_only(big):
    web = big["channel"].to_numpy() == "Web"
    for offer in OFFERS:
        before = conversion_probability(big, offer)
        after = conversion_probability(big, offer, drift=WEB_DISCOUNT)
        if offer == "Discount":
            np.testing.assert_allclose(_log_odds(after[web]) - _log_odds(before[web]), -1.2, atol=1e-9)
            assert (after[web] < before[web]).all()
        else:
            np.testing.assert_array_equal(after[web], before[web])
        np.testing.assert_array_equal(after[~web], before[~web])
    p, q = offer_probabilities(big), offer_probabilities(big, drift=WEB_DISCOUNT)
    np.testing.assert_array_equal(np.delete(q, 1, axis=1), np.delete(p, 1, axis=1))
    # the frame's own offers, and the policy functions, see it too
    logged = big["offer"].to_numpy() == "Discount"
    changed = conversion_probability(big, drift=WEB_DISCOUNT) != conversion_probability(big)
    np.testing.assert_array_equal(changed, logged & web)
    best, drifted_best = optimal_offers(big, DEFAULT_ECONOMICS), optimal_offers(big, DEFAULT_ECONOMICS, drift=WEB_DISCOUNT)
    assert not (drifted_best[web] == "Discount").any() and (drifted_best[~web] == best[~web]).all()
    assert true_policy_value(big, best, DEFAULT_ECONOMICS, drift=WEB_DISCOUNT) < true_policy_value(
        big, best, DEFAULT_ECONOMICS)


def test_drift_segment_needs_every_column_to_match(big):
    drift = sim.Drift(segment={"channel": "Web", "is_referral": 1}, offer="Buy One Get One", log_odds_change=0.5)
    members = (big["channel"].to_numpy() == "Web") & (big["is_referral"].to_numpy() == 1)
    diff = _log_odds(conversion_probability(big, "Buy One Get One", drift=drift)) - _log_odds(
        conversion_probability(big, "Buy One Get One"))
    np.testing.assert_allclose(diff[members], 0.5, atol=1e-9)
    assert (diff[~members] == 0).all()


def test_drift_channel_shares_move_the_customer_mix_only():
    base = simulate_customers(40_000, seed=3)
    drifted = simulate_customers(40_000, seed=3, drift=WEB_DISCOUNT)
    shares = drifted["channel"].value_counts(normalize=True)
    for channel, share in zip(schema.CHANNELS, (0.70, 0.22, 0.08)):
        assert shares[channel] == pytest.approx(share, abs=0.01)
    others = [c for c in schema.CUSTOMER_COLUMNS if c != "channel"]
    pd.testing.assert_frame_equal(drifted[others], base[others])
    # without channel shares (or without a drift) the customers are exactly the base ones
    concept_only = sim.Drift(segment={"channel": "Web"}, offer="Discount", log_odds_change=-1.2)
    pd.testing.assert_frame_equal(simulate_customers(40_000, seed=3, drift=concept_only), base)
    inter = simulate_interactions(2_000, seed=3, drift=WEB_DISCOUNT)
    pd.testing.assert_frame_equal(inter[list(schema.CUSTOMER_COLUMNS)], simulate_customers(2_000, seed=3, drift=WEB_DISCOUNT))


def test_drift_responses_follow_the_drifted_truth(big):
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    offers = np.full(len(big), "Discount", dtype=object)
    base = sim.simulate_responses(big, offers, rng_a)
    drifted = sim.simulate_responses(big, offers, rng_b, drift=WEB_DISCOUNT)
    web = big["channel"].to_numpy() == "Web"
    assert (drifted[~web] == base[~web]).all() and (drifted[web] <= base[web]).all()
    assert drifted[web].mean() < 0.55 * base[web].mean()


def test_drift_accepts_the_loop_configs_mapping_and_rejects_nonsense():
    drift = sim.Drift(segment={"channel": "Web"}, offer="Discount", log_odds_change=-1.2,
                      channel_shares={"Multichannel": 0.08, "Web": 0.70, "Phone": 0.22})
    assert drift.channel_shares == (0.70, 0.22, 0.08)
    assert drift == WEB_DISCOUNT
    with pytest.raises(ValueError, match="unknown column"):
        sim.Drift(segment={"colour": "red"}, offer="Discount", log_odds_change=-1.0)
    with pytest.raises(ValueError, match="not one of"):
        sim.Drift(segment={}, offer="Free Lunch", log_odds_change=-1.0)
    with pytest.raises(ValueError, match="finite"):
        sim.Drift(segment={}, offer="Discount", log_odds_change=float("nan"))
    with pytest.raises(ValueError, match="summing to 1"):
        sim.Drift(segment={}, offer="Discount", log_odds_change=-1.0, channel_shares=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="needs exactly"):
        sim.Drift(segment={}, offer="Discount", log_odds_change=-1.0, channel_shares={"Web": 1.0})


def test_no_drift_is_the_base_world(big):
    np.testing.assert_array_equal(conversion_probability(big, drift=None), conversion_probability(big))
    pd.testing.assert_frame_equal(simulate_interactions(1_000, seed=8, drift=None), simulate_interactions(1_000, seed=8))


# --------------------------------------------------------------------------------------------
# Response delays


def test_response_delays_are_log_normal_around_the_median():
    delays = sim.response_delays_minutes(40_000, np.random.default_rng(4), median_minutes=35.0, sigma=0.9)
    assert delays.dtype == np.float64 and delays.shape == (40_000,) and (delays > 0).all()
    assert np.median(delays) == pytest.approx(35.0, rel=0.03)
    logs = np.log(delays)
    assert logs.std() == pytest.approx(0.9, rel=0.03)
    assert np.quantile(logs, 0.8413) - np.log(35.0) == pytest.approx(0.9, rel=0.05)  # +1 sigma
    again = sim.response_delays_minutes(40_000, np.random.default_rng(4), median_minutes=35.0, sigma=0.9)
    np.testing.assert_array_equal(delays, again)


def test_response_delays_without_spread_are_the_median():
    delays = sim.response_delays_minutes(7, np.random.default_rng(0), median_minutes=12.5, sigma=0.0)
    np.testing.assert_array_equal(delays, np.full(7, 12.5))
    assert sim.response_delays_minutes(0, np.random.default_rng(0), median_minutes=1.0, sigma=1.0).shape == (0,)
    with pytest.raises(ValueError, match="median_minutes"):
        sim.response_delays_minutes(3, np.random.default_rng(0), median_minutes=0.0, sigma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        sim.response_delays_minutes(3, np.random.default_rng(0), median_minutes=1.0, sigma=-0.1)
