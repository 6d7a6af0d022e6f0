"""Shadow evaluation of a challenger on the champion's logged traffic, against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core.contracts import PairedDifference
from factory_tasks.core.metrics import choose_offers
from factory_tasks.core.schema import DEFAULT_ECONOMICS as ECON
from factory_tasks.core.schema import OFFERS, offer_indices
from factory_tasks.loop.shadow import TRAFFIC_REQUIRED, logging_propensities, shadow_difference, unseen_traffic
from factory_tasks.loop.simulator import conversion_log_odds, offer_probabilities, simulate_customers, true_policy_value
from factory_tasks.training.features import counterfactual_proba

OFFER_NAMES = np.asarray(OFFERS, dtype=object)


class KnownModel:
    """A fitted-pipeline stand-in: the simulator's true log-odds shifted per offer (a biased model
    whose decisions and q̂ are wrong in a known way)."""

    classes_ = np.array([0, 1])

    def __init__(self, shift=(0.0, 0.0, 0.0)):
        self.shift = np.asarray(shift, dtype=np.float64)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        offers = X["offer"].to_numpy(dtype=object)
        logit = conversion_log_odds(X, offers) + self.shift[offer_indices(offers)]
        p = 1.0 / (1.0 + np.exp(-logit))
        return np.column_stack([1.0 - p, p])


def logged_traffic(n: int, seed: int, champion: KnownModel, epsilon: float = 0.10) -> pd.DataFrame:
    """The champion's ε-greedy decisions with their propensities and conversions drawn from the truth."""
    rng = np.random.default_rng(seed)
    customers = simulate_customers(n, seed)
    model_idx = choose_offers(counterfactual_proba(champion, customers.assign(offer=OFFERS[0])), ECON)
    explored = rng.random(n) < epsilon
    offer_idx = np.where(explored, rng.integers(0, len(OFFERS), n), model_idx)
    truth = offer_probabilities(customers)
    return customers.assign(
        offer=OFFER_NAMES[offer_idx], model_offer=OFFER_NAMES[model_idx],
        propensity=np.where(offer_idx == model_idx, 1 - epsilon + epsilon / 3, epsilon / 3),
        conversion=(rng.random(n) < truth[np.arange(n), offer_idx]).astype(np.int64))


def true_difference(challenger: KnownModel, traffic: pd.DataFrame) -> float:
    """The exact value difference of the two greedy policies on these customers."""
    picks = OFFER_NAMES[choose_offers(counterfactual_proba(challenger, traffic), ECON)]
    customers = traffic.drop(columns=["offer"])
    return true_policy_value(customers, picks, ECON) - true_policy_value(customers, traffic["model_offer"], ECON)


CHAMPION = KnownModel((0.35, -0.30, 0.0))  # over-rates BOGO, under-rates Discount
CHALLENGER = KnownModel((0.0, 0.15, -0.10))  # nearer the truth, and miscalibrated (its q̂ is biased)


def test_the_interval_covers_the_true_difference_over_seeds():
    covered, errors, std_errors, truths = 0, [], [], []
    for seed in range(40):
        traffic = logged_traffic(8_000, seed, CHAMPION)
        truth = true_difference(CHALLENGER, traffic)
        result = shadow_difference(CHALLENGER, traffic, ECON)
        covered += result.low <= truth <= result.high
        errors.append(result.difference - truth)
        std_errors.append((result.high - result.low) / (2 * 1.959964))
        truths.append(truth)
    assert min(truths) > 0  # the challenger is truly better here, by ~0.8 per customer
    assert covered >= 36, f"covered the true difference in {covered} of 40 seeds at nominal 95%"
    # not by being wide: the stated standard error is the spread of the estimates over seeds...
    spread = float(np.std(errors, ddof=1))
    assert 0.7 < spread / np.mean(std_errors) < 1.3, (spread, np.mean(std_errors))
    # ...and DR is unbiased although the challenger's q̂ is miscalibrated
    assert abs(np.mean(errors)) < 2.5 * spread / np.sqrt(40), np.mean(errors)


def test_a_large_difference_has_the_right_sign_in_every_seed():
    # Off-policy evidence is expensive: where the two differ, the challenger's offer was logged with
    # probability ε/3 only, so a difference of ~3.3 per customer (a quarter of the value) needs
    # tens of thousands of rows (half-width ~2.7 at 20,000 rows and ε = 0.1; ~1.4 at 40,000 and 0.2).
    bad = KnownModel((-2.0, -2.0, 0.0))  # thinks offers never work: No Offer for everyone
    decided = 0
    for seed in range(8):
        traffic = logged_traffic(40_000, 100 + seed, bad, epsilon=0.2)
        truth = true_difference(KnownModel(), traffic)
        forward = shadow_difference(KnownModel(), traffic, ECON)  # the oracle challenging the bad champion
        assert truth > 3.0 and forward.difference > 0, (seed, truth, forward)
        assert forward.difference == pytest.approx(forward.challenger - forward.champion)
        decided += forward.low > 0
    assert decided >= 7, f"the interval excluded 0 in {decided} of 8 seeds"
    # the other way round: the oracle serving, the bad model challenging; the difference is negative
    traffic = logged_traffic(40_000, 7, KnownModel(), epsilon=0.2)
    backward = shadow_difference(bad, traffic, ECON)
    assert true_difference(bad, traffic) < -3.0 and backward.high < 0, backward


def test_the_champion_challenging_itself_differs_by_exactly_zero():
    traffic = logged_traffic(3_000, 1, CHAMPION)
    same = shadow_difference(CHAMPION, traffic, ECON)
    assert same.difference == 0.0 and same.low == 0.0 and same.high == 0.0
    assert same.challenger == same.champion and same.n_rows == 3_000
    # the champion's value is its greedy policy's, not the realised mean reward of the ε-greedy log
    realised = float((traffic["conversion"] * ECON["conversion_value"]
                      - traffic["offer"].map(ECON["offer_costs"])).mean())
    assert same.champion != pytest.approx(realised, abs=1e-9)


def test_the_result_is_the_gate_contract_and_names_how_it_was_computed():
    traffic = logged_traffic(2_000, 2, CHAMPION)
    result = shadow_difference(CHALLENGER, traffic, ECON, method="snipw", confidence=0.9)
    assert PairedDifference.parse(result.to_json(), "round trip") == result
    assert (result.measure, result.source, result.confidence, result.greater_is_better) == \
        ("policy_value", "live", 0.9, True)
    assert "SNIPW" in result.method and "paired" in result.method
    assert result.low < result.difference < result.high
    dr = shadow_difference(CHALLENGER, traffic, ECON)
    assert dr.difference != result.difference  # the method is really used
    dr90 = shadow_difference(CHALLENGER, traffic, ECON, confidence=0.9)
    assert (dr.high - dr.low) / (dr90.high - dr90.low) == pytest.approx(1.959964 / 1.644854, rel=1e-5)


def test_no_matured_traffic_is_no_live_evidence_not_an_error():
    empty = logged_traffic(0, 0, CHAMPION)
    result = shadow_difference(CHALLENGER, empty, ECON)
    assert result.n_rows == 0 and result.difference is None and result.low is None and result.high is None
    assert result.challenger is None and result.champion is None and "no live evidence" in result.method


def test_rows_logged_without_exploration_are_left_out():
    traffic = logged_traffic(4_000, 3, CHAMPION)
    greedy = logged_traffic(1_000, 4, CHAMPION, epsilon=0.0)
    assert (greedy["propensity"] == 1.0).all()
    result = shadow_difference(CHALLENGER, greedy, ECON)
    assert result.n_rows == 0 and result.difference is None and "without exploration" in result.method
    mixed = shadow_difference(CHALLENGER, pd.concat([traffic, greedy], ignore_index=True), ECON)
    alone = shadow_difference(CHALLENGER, traffic, ECON)
    assert mixed.n_rows == 4_000 and mixed.difference == pytest.approx(alone.difference)
    assert "1000 row(s) logged without exploration left out" in mixed.method


def test_logging_propensities_recover_every_offer_of_an_epsilon_greedy_policy():
    model = np.array([0, 0, 1, 2, 2])
    logged = np.array([0, 1, 1, 0, 2])
    eps = np.array([0.1, 0.3, 1.0, 0.6, 0.0])
    p = np.where(logged == model, 1 - eps + eps / 3, eps / 3)
    full = logging_propensities(model, logged, p)
    expected = np.repeat(eps[:, None] / 3, 3, axis=1)
    expected[np.arange(5), model] += 1 - eps
    np.testing.assert_allclose(full, expected, atol=1e-12)
    np.testing.assert_allclose(full.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="not that of an ε-greedy policy on 1 row.*row 1, propensity 0.5"):
        logging_propensities(model, logged, np.array([0.9, 0.5, 1.0, 0.2, 1.0]))  # 0.5 for an explored offer
    with pytest.raises(ValueError, match="row 0"):
        logging_propensities(model, logged, np.array([0.2, 0.1, 1.0, 0.2, 1.0]))  # below 1/3 for the model's


@pytest.mark.parametrize("column", TRAFFIC_REQUIRED)
def test_traffic_without_a_required_column_is_an_error_naming_it(column):
    traffic = logged_traffic(50, 5, CHAMPION).drop(columns=[column])
    with pytest.raises(ValueError, match=f"lacks column.*'{column}'"):
        shadow_difference(CHALLENGER, traffic, ECON)


def test_an_unknown_method_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="'mean' is not a valid method. Valid options are: ipw, snipw, dr"):
        shadow_difference(CHALLENGER, logged_traffic(50, 5, CHAMPION), ECON, method="mean")


def test_a_fitted_pipeline_is_a_challenger():
    from factory_tasks.loop.simulator import simulate_interactions
    from factory_tasks.training.features import build_pipeline, feature_frame

    history = simulate_interactions(6_000, seed=11)
    model = build_pipeline("LogisticRegression", {"C": 1.0}, random_state=0).fit(
        feature_frame(history), history["conversion"].to_numpy())
    traffic = logged_traffic(40_000, 12, KnownModel((-2.0, -2.0, 0.0)), epsilon=0.2)
    picks = OFFER_NAMES[choose_offers(counterfactual_proba(model, traffic), ECON)]
    truth = true_policy_value(traffic, picks, ECON) - true_policy_value(traffic, traffic["model_offer"], ECON)
    result = shadow_difference(model, traffic, ECON)
    assert result.n_rows == 40_000 and result.low <= truth <= result.high and result.low > 0, (truth, result)


def test_unseen_traffic_leaves_out_the_decisions_the_challenger_was_fitted_on():
    traffic = logged_traffic(300, 6, CHAMPION).assign(prediction_uuid=[f"req-{i // 10}:{i % 10}" for i in range(300)])
    fitted = [f"req-{i // 10}:{i % 10}" for i in range(0, 300, 3)]
    unseen, dropped = unseen_traffic(traffic, set(fitted) | {"req-99:0"})  # a fit row not in this traffic
    assert dropped == 100 and len(unseen) == 200
    pd.testing.assert_frame_equal(unseen, traffic[traffic.index % 3 != 0].reset_index(drop=True))  # order kept
    # the fit rows' uuid column of a snapshot as it is: a str Series, null for the history rows
    snapshot_uuids = pd.Series([None, *fitted[:5], np.nan], dtype="str")
    assert unseen_traffic(traffic, snapshot_uuids)[1] == 5
    same, none = unseen_traffic(traffic, [])
    assert none == 0 and same.equals(traffic)
    assert unseen_traffic(traffic.iloc[:0], fitted)[1] == 0
    assert shadow_difference(CHALLENGER, unseen, ECON).n_rows == 200


def test_unseen_traffic_needs_every_rows_uuid():
    traffic = logged_traffic(20, 7, CHAMPION)
    with pytest.raises(ValueError, match="lacks column 'prediction_uuid'"):
        unseen_traffic(traffic, ["a"])
    anonymous = traffic.assign(prediction_uuid=[None, *(f"u{i}" for i in range(19))])
    with pytest.raises(ValueError, match="1 traffic row.* have no prediction_uuid"):
        unseen_traffic(anonymous, [None])  # a null is no identity: not "fitted on", not "unseen"
