"""The live A/B test's statistics against simulated traffic with a known truth.

Customers are drawn uniformly from a fixed pool of simulated customers, so the true value of a
policy is exactly its mean expected reward over the pool. Every seed of a simulation is one row
of an (seeds, decisions) matrix: the policy assigns the arm (P(challenger) = share), the arm's
greedy pick, ε-greedy exploration with the exact propensity, and the conversion drawn from the
simulator's true probability of the offer made. ``pytest -s`` prints the measured rates
(``docs/ab-test.md`` quotes them).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from factory_tasks.core.metrics import choose_offers
from factory_tasks.core.schema import ARM_CHALLENGER, ARM_CHAMPION, OFFERS, expected_values, offer_cost_vector
from factory_tasks.core.schema import DEFAULT_ECONOMICS as ECON
from factory_tasks.loop.ab_test import (
    AbInterval,
    AbVerdict,
    arm_scores,
    arm_test,
    boundary_rho,
    confidence_sequence,
    difference_terms,
    verdict,
)
from factory_tasks.loop.off_policy import ESTIMATORS, estimate_policy_value
from factory_tasks.loop.simulator import offer_probabilities, simulate_customers

EPS = 0.1
ALPHA = 0.05
Z = NormalDist().inv_cdf(1 - ALPHA / 2)


class World:
    """A pool of customers with their true conversion probabilities, a model's q̂ and policies."""

    def __init__(self, n: int = 100_000, seed: int = 11):
        customers = simulate_customers(n, seed)
        rng = np.random.default_rng(seed)
        self.n = n
        self.p = offer_probabilities(customers)
        self.ev = expected_values(self.p, ECON)
        self.q_hat = expected_values(self.p * np.exp(rng.normal(0.0, 0.2, self.p.shape)), ECON)  # a model's error
        self.costs = offer_cost_vector(ECON)
        self.optimal = self.ev.argmax(axis=1)
        self.model = self.noisy(0.3, seed=1)  # ~13.1 per customer (optimal ~14.4)
        self.weak = self.noisy(0.6, seed=2)  # ~12.3: ~15% below optimal

    def noisy(self, sd: float, seed: int) -> np.ndarray:
        """The greedy picks of a model whose probabilities are the truth times log-normal noise."""
        noise = np.exp(np.random.default_rng(seed).normal(0.0, sd, self.p.shape))
        return choose_offers(self.p * noise, ECON)

    def value(self, picks: np.ndarray) -> float:
        return float(self.ev[np.arange(self.n), picks].mean())

    def simulate(self, seeds: int, decisions: int, champion: np.ndarray, challenger: np.ndarray, share: float,
                 seed: int) -> dict:
        """(seeds, decisions) matrices of the logged rows, in decision order along each row."""
        rng = np.random.default_rng(seed)
        shape = (seeds, decisions)
        cust = rng.integers(0, self.n, shape)
        ch = rng.random(shape) < share
        pick = np.where(ch, challenger[cust], champion[cust])
        logged = np.where(rng.random(shape) < EPS, rng.integers(0, len(OFFERS), shape), pick)
        propensity = np.where(logged == pick, 1 - EPS + EPS / 3, EPS / 3)
        conversion = rng.random(shape) < self.p[cust, logged]
        rewards = conversion * float(ECON["conversion_value"]) - self.costs[logged]
        return dict(cust=cust, ch=ch, pick=pick, logged=logged, propensity=propensity, rewards=rewards)

    def row(self, sim: dict, i: int) -> tuple:
        """Seed i's (rewards, logged, propensity, model_offer, q_hat, is_challenger)."""
        return (sim["rewards"][i], sim["logged"][i], sim["propensity"][i], sim["pick"][i],
                self.q_hat[sim["cust"][i]], sim["ch"][i])

    def terms(self, sim: dict, share: float) -> np.ndarray:
        """difference_terms of every seed: (seeds, decisions)."""
        out = np.empty(sim["rewards"].shape)
        for i in range(len(out)):
            r, logged, prop, pick, q, ch = self.row(sim, i)
            out[i] = difference_terms(arm_scores(r, logged, prop, pick, q), ch, share)
        return out


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_arm_scores_average_to_each_arms_dr_value(world):
    sim = world.simulate(1, 3_000, world.weak, world.optimal, 0.3, seed=5)
    r, logged, prop, pick, q, ch = world.row(sim, 0)
    scores = arm_scores(r, np.asarray(OFFERS, dtype=object)[logged], prop, pick, q)  # offer names work too
    for rows in (ch, ~ch):
        dr = estimate_policy_value(r[rows], logged[rows], prop[rows], pick[rows], q[rows], method="dr")
        assert scores[rows].mean() == pytest.approx(dr.value, rel=1e-12)
    # a greedy pick the log did not make scores q̂ of the pick; the logged pick adds w (r - q)
    i = int(np.flatnonzero(logged != pick)[0])
    assert scores[i] == pytest.approx(q[i, pick[i]])
    j = int(np.flatnonzero(logged == pick)[0])
    assert scores[j] == pytest.approx(q[j, pick[j]] + (r[j] - q[j, pick[j]]) / prop[j])


def test_difference_terms_by_hand_and_predictable():
    s = np.array([10.0, 4.0, 6.0, 20.0, 2.0])
    ch = np.array([True, False, True, False, True])
    p = 0.25
    # m1, m0 before each row: row 0 nothing (0, 0); row 1 m1=10, m0=pooled 10; row 2 m1=10, m0=4;
    # row 3 m1=(10+6)/2=8, m0=4; row 4 m1=8, m0=(4+20)/2=12
    expected = [
        0 + (10 - 0) / p,
        (10 - 10) - (4 - 10) / (1 - p),
        (10 - 4) + (6 - 10) / p,
        (8 - 4) - (20 - 4) / (1 - p),
        (8 - 12) + (2 - 8) / p,
    ]
    np.testing.assert_allclose(difference_terms(s, ch, p), expected)
    np.testing.assert_allclose(difference_terms(s, ch.astype(int), p), expected)  # the 0/1 arm index
    # predictable: a row's term never depends on later rows
    later = s.copy()
    later[3:] = [-50.0, 99.0]
    np.testing.assert_allclose(difference_terms(later, ch, p)[:3], expected[:3])
    # a per-row share (a ramp-up) enters row by row
    ramp = np.array([0.5, 0.5, 0.25, 0.25, 0.25])
    assert difference_terms(s, ch, ramp)[0] == pytest.approx(10 / 0.5)
    np.testing.assert_allclose(difference_terms(s, ch, ramp)[2:], expected[2:])


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_difference_terms_are_unbiased_and_tighter_than_horvitz_thompson(world, share):
    seeds, n = 400, 2_000
    sim = world.simulate(seeds, n, world.weak, world.optimal, share, seed=int(share * 100))
    truth = world.value(world.optimal) - world.value(world.weak)
    terms = world.terms(sim, share)
    means = terms.mean(axis=1)
    se = means.std(ddof=1) / math.sqrt(seeds)
    assert abs(means.mean() - truth) < 3.5 * se
    # the same rows by plain Horvitz-Thompson: also unbiased, but a noisier stream (its sd is what
    # scales the confidence sequence)
    ht = np.empty_like(terms)
    for i in range(seeds):
        r, logged, prop, pick, q, ch = world.row(sim, i)
        ht[i] = np.where(ch, 1 / share, -1 / (1 - share)) * arm_scores(r, logged, prop, pick, q)
    ht_means = ht.mean(axis=1)
    assert abs(ht_means.mean() - truth) < 3.5 * ht_means.std(ddof=1) / math.sqrt(seeds)
    print(f"\nshare {share}: mean of difference_terms over {seeds} seeds of {n:,} {means.mean():+.3f} ± {se:.3f}, "
          f"truth {truth:+.3f}; sd of the stream {terms.std():.1f}, Horvitz-Thompson's {ht.std():.1f}")
    assert terms.std() < 0.97 * ht.std()


def test_per_arm_intervals_cover_the_true_values(world):
    seeds, n, share = 200, 4_000, 0.3
    sim = world.simulate(seeds, n, world.weak, world.optimal, share, seed=7)
    truth = {ARM_CHAMPION: world.value(world.weak), ARM_CHALLENGER: world.value(world.optimal)}
    hits = {(arm, m): 0 for arm in truth for m in ESTIMATORS}
    for i in range(seeds):
        arms, outcome = arm_test(*world.row(sim, i), share, alpha=ALPHA, min_decisions=1_000, max_decisions=n)
        assert isinstance(outcome, AbVerdict) and outcome.interval.n == n
        assert arms[ARM_CHAMPION]["dr"].n + arms[ARM_CHALLENGER]["dr"].n == n
        for (arm, m) in hits:
            est = arms[arm][m]
            hits[arm, m] += est.lower <= truth[arm] <= est.upper
    rates = {f"{arm} {m}": h / seeds for (arm, m), h in hits.items()}
    print("\nper-arm 95% interval coverage over", seeds, "seeds:", rates)
    assert rates[f"{ARM_CHAMPION} dr"] >= 0.88 and rates[f"{ARM_CHALLENGER} dr"] >= 0.88, rates
    assert min(rates.values()) >= 0.85, rates


def _false_conclusions(terms: np.ndarray, looks: np.ndarray, **rule) -> float:
    """Share of seeds that ever get promote or end at the looks (a seed stops at its first)."""
    ever = 0
    for row in terms:
        for t in looks:
            if verdict(row[:t], **rule).state in ("promote", "end"):
                ever += 1
                break
    return ever / len(terms)


def test_the_rule_rarely_declares_a_winner_between_equal_arms_and_the_naive_interval_often_does(world):
    seeds, max_decisions, step, min_decisions, share = 1_000, 6_000, 250, 500, 0.2
    sim = world.simulate(seeds, max_decisions, world.model, world.model, share, seed=1)  # no difference
    terms = world.terms(sim, share)
    looks = np.arange(step, max_decisions + 1, step)
    looks = looks[looks >= min_decisions]
    rule = _false_conclusions(terms, looks, alpha=ALPHA, min_decisions=min_decisions, max_decisions=max_decisions)
    # the fixed-n 95% normal interval of the same running mean, checked at the same looks
    total, squares = np.cumsum(terms, axis=1)[:, looks - 1], np.cumsum(terms**2, axis=1)[:, looks - 1]
    mean = total / looks
    sd = np.sqrt((squares - looks * mean**2) / (looks - 1))
    rejects = np.abs(mean) > Z * sd / np.sqrt(looks)
    naive, last_look_only = rejects.any(axis=1).mean(), rejects[:, -1].mean()
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) / seeds)
    print(f"\nequal arms, share {share}, {len(looks)} looks every {step} from {min_decisions:,} to "
          f"{max_decisions:,}, {seeds} seeds: always-valid rule ever concludes {rule:.3f}; naive 95% interval "
          f"{naive:.3f} (at the last look alone {last_look_only:.3f})")
    assert rule <= ALPHA + slack
    assert naive > ALPHA + slack  # why the rule exists
    assert last_look_only <= ALPHA + slack  # one look is fine: it is the repeated looking


@pytest.mark.parametrize("better", [True, False], ids=["better challenger", "worse challenger"])
def test_a_real_difference_concludes_before_max_decisions(world, better):
    seeds, max_decisions, step, share = 100, 30_000, 1_000, 0.5
    good, bad = world.optimal, world.weak  # 14.4 vs 12.3 per customer: a gap of ~15%
    champion, challenger = (bad, good) if better else (good, bad)
    sim = world.simulate(seeds, max_decisions, champion, challenger, share, seed=3 if better else 4)
    terms = world.terms(sim, share)
    states, when = [], []
    for row in terms:
        for t in range(step, max_decisions + 1, step):
            outcome = verdict(row[:t], alpha=ALPHA, min_decisions=step, max_decisions=max_decisions)
            if outcome.concluded:
                break
        states.append(outcome.state)
        when.append(t)
    states = np.array(states)
    expected, wrong = ("promote", "end") if better else ("end", "promote")
    print(f"\n{'better' if better else 'worse'} challenger, share {share}, {seeds} seeds: "
          f"{expected} {np.mean(states == expected):.2f}, expired {np.mean(states == 'expired'):.2f}, "
          f"median decisions to the verdict {np.median(when):,.0f}")
    assert np.mean(states == expected) >= 0.9
    assert not (states == wrong).any()


def test_no_verdict_below_min_decisions_however_large_the_effect():
    rng = np.random.default_rng(0)
    ch = rng.random(2_000) < 0.5
    scores = np.where(ch, 100.0, 0.0) + rng.normal(0, 1, 2_000)  # the challenger is far better
    terms = difference_terms(scores, ch, 0.5)
    early = verdict(terms[:999], alpha=ALPHA, min_decisions=1_000, max_decisions=2_000)
    assert early.state == "continue" and not early.concluded
    assert early.interval.lower > 0  # the evidence is there, the rule waits anyway
    assert "no verdict before 1,000 matured decisions" in early.reason
    assert verdict(terms[:1_000], alpha=ALPHA, min_decisions=1_000, max_decisions=2_000).state == "promote"
    assert verdict(-terms[:1_000], alpha=ALPHA, min_decisions=1_000, max_decisions=2_000).state == "end"
    assert verdict(terms[:1], alpha=ALPHA, min_decisions=0, max_decisions=2_000).state == "continue"  # too few


def test_max_decisions_expires_a_test_with_zero_inside():
    rng = np.random.default_rng(1)
    terms = rng.normal(0.0, 30.0, 4_000)
    terms -= terms.mean()  # exactly 0 inside
    kw = dict(alpha=ALPHA, min_decisions=500, max_decisions=3_000)
    assert verdict(terms[:2_999], **kw).state == "continue"
    for n in (3_000, 4_000):
        outcome = verdict(terms[:n], **kw)
        assert outcome.state == "expired" and outcome.concluded
        assert outcome.interval.lower < 0 < outcome.interval.upper
        assert "not distinguishable by the 3,000-decision limit" in outcome.reason
        assert "champion stays" in outcome.reason
    # a clear difference at the limit is a conclusion, not an expiry
    assert verdict(terms[:3_000] + 10.0, **kw).state == "promote"


def test_reason_states_the_numbers():
    terms = np.tile([0.0, 2.46], 2_000)  # mean 1.23
    outcome = verdict(terms, alpha=ALPHA, min_decisions=100, max_decisions=10_000, planned_n=4_000)
    ci = outcome.interval
    assert outcome.state == "promote"
    assert outcome.reason == (f"challenger − champion +1.23 [{ci.lower:+.2f}, {ci.upper:+.2f}] per customer on 4,000 "
                              "matured decisions (95% always-valid): the challenger is better")
    assert "not distinguishable yet" in verdict(terms - 1.23, alpha=ALPHA, min_decisions=100,
                                                max_decisions=10_000).reason


def test_no_matured_rows_yet_is_no_verdict_and_empty_arms():
    arms, outcome = arm_test(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64),
                             np.zeros((0, 3)), np.zeros(0, dtype=bool), 0.2, min_decisions=0, max_decisions=100)
    assert outcome.state == "continue" and outcome.interval.n == 0
    assert outcome.reason.startswith("challenger − champion n/a [-inf, +inf] per customer on 0 matured decisions")
    assert all(est.n == 0 and math.isnan(est.value) for methods in arms.values() for est in methods.values())


def test_confidence_sequence_is_the_robbins_mixture_wider_than_the_fixed_interval_everywhere():
    planned = 6_000
    rho2 = boundary_rho(ALPHA, planned) ** 2
    assert rho2 * planned == pytest.approx(-2 * math.log(ALPHA) + math.log(1 - 2 * math.log(ALPHA)))
    for t in np.unique(np.logspace(np.log10(2), 6, 120).astype(int)):
        terms = np.resize([3.0, -1.0], t)
        ci = confidence_sequence(terms, ALPHA, planned_n=planned)
        assert isinstance(ci, AbInterval) and ci.n == t and ci.alpha == ALPHA
        sd = terms.std(ddof=1)
        boundary = sd * math.sqrt(2 * (t * rho2 + 1) / (t**2 * rho2) * math.log(math.sqrt(t * rho2 + 1) / ALPHA))
        assert ci.half_width == pytest.approx(boundary)
        assert ci.lower == pytest.approx(ci.estimate - boundary) and ci.upper == pytest.approx(ci.estimate + boundary)
        assert ci.half_width > 1.5 * Z * sd / math.sqrt(t)  # always wider than the fixed-n interval
    # tightest near the planned size: planning for another size widens it there
    terms = np.random.default_rng(2).normal(0, 1, planned)
    at_plan = confidence_sequence(terms, ALPHA, planned_n=planned).half_width
    for other in (planned // 4, planned * 4):
        assert confidence_sequence(terms, ALPHA, planned_n=other).half_width > 1.02 * at_plan
    assert confidence_sequence(terms[:1], ALPHA, planned_n=planned).upper == math.inf  # one term says nothing


@pytest.mark.parametrize("call, name", [
    (lambda: difference_terms([1.0, 2.0], [True, False], 0.0), "share"),
    (lambda: difference_terms([1.0, 2.0], [True, False], 1.0), "share"),
    (lambda: difference_terms([1.0, 2.0], [True, False], [0.5, 1.2]), "share"),
    (lambda: difference_terms([1.0, 2.0], [True, False, True], 0.5), "is_challenger"),
    (lambda: difference_terms([1.0, 2.0], [0.5, 1.0], 0.5), "is_challenger"),
    (lambda: difference_terms([1.0, 2.0], [2, 1], 0.5), "is_challenger"),
    (lambda: difference_terms([1.0, 2.0], ["challenger", "champion"], 0.5), "is_challenger"),
    (lambda: difference_terms([1.0, float("nan")], [True, False], 0.5), "scores"),
    (lambda: confidence_sequence([1.0, 2.0], 0.0, planned_n=100), "alpha"),
    (lambda: confidence_sequence([1.0, 2.0], 1.5, planned_n=100), "alpha"),
    (lambda: confidence_sequence([1.0, 2.0], 0.05, planned_n=0), "planned_n"),
    (lambda: confidence_sequence([1.0, float("inf")], 0.05, planned_n=10), "terms"),
    (lambda: verdict([1.0, 2.0], alpha=0.05, min_decisions=500, max_decisions=100), "min_decisions"),
    (lambda: verdict([1.0, 2.0], alpha=0.05, min_decisions=10, max_decisions=100, planned_n=-5), "planned_n"),
    (lambda: verdict([1.0, 2.0], alpha=0.05, min_decisions=2.5, max_decisions=100), "min_decisions"),
    (lambda: arm_scores([1.0, 2.0], [0, 1, 2], [0.9, 0.9], [0, 1], np.zeros((2, 3))), "logged_idx"),
    (lambda: arm_scores([1.0, 2.0], [0, 1], [0.9, 0.9], [0, 1], None), "q_hat"),
    (lambda: arm_test([1.0, 2.0], [0, 1], [0.9, 0.9], [0, 1], np.zeros((2, 3)), [True], 0.5,
                      min_decisions=1, max_decisions=10), "is_challenger"),
    (lambda: arm_test([1.0, 2.0], [0, 1], [0.9, 0.9], [0, 1], np.zeros((2, 3)), [True, False], 0.5, alpha=-1,
                      min_decisions=1, max_decisions=10), "alpha"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
