"""Customer interaction simulator with a known ground-truth response model.

No real data ships with the factory, so this module writes rows in exactly the schema of the
``historical_customer_interactions`` table, drawn from a response model whose conversion
probabilities are known. Because the truth is known, the optimal next-best-action policy and
the true value of *any* policy can be computed (:func:`optimal_offers`,
:func:`true_policy_value`) and compared with what the factory's models find.

Schema (:data:`INTERACTION_COLUMNS`, in this order; dtypes in :data:`INTERACTION_DTYPES`):

=============== ========= =============================================================
column          dtype     values
=============== ========= =============================================================
recency         int64     months since last purchase, 1..12 (more mass at low values)
history         float64   past spend, 29.99..3345.93, heavy right tail, 2 decimals
used_discount   int64     0/1
used_bogo       int64     0/1 (every customer used at least one of the two)
zip_code        str       ``Surburban`` 45% (sic), ``Urban`` 40%, ``Rural`` 15%
is_referral     int64     0/1 (~50%)
channel         str       ``Web`` 44%, ``Phone`` 44%, ``Multichannel`` 12%
offer           str       ``Buy One Get One`` / ``Discount`` / ``No Offer``, 1/3 each at random
conversion      int64     0/1, ~14.7% overall (Discount ~18%, BOGO ~15%, No Offer ~11%)
=============== ========= =============================================================

Ground truth (:func:`conversion_probability`, coefficients in :data:`RESPONSE_MODEL`): a
logistic link over effects shaped like real response data, so that none of the factory's model
families is the true model:

- **saturating spend**: ``history`` enters as ``1 - exp(-(history - 29.99) / 200)``; the effect
  rises steeply up to a few hundred and is flat above ~1,000 (not linear in ``log(history)``);
  BOGO's pull weakens with spend;
- **a recency step**: customers lapsed 10+ months (:data:`LAPSED_MONTHS`) convert much less,
  respond much better to Discount and worse to BOGO than those at 9 months (a step, beside a
  small monthly slope of the base rate);
- **a backfiring offer**: for recent (<= 3 months) customers with history >= 300 (~9% of
  customers) Discount *lowers* conversion below No Offer (it cheapens the brand), an
  interaction of two customer thresholds with an offer;
- offer x segment effects: past BOGO users respond to BOGO about as well as to Discount,
  discount-only users barely respond to BOGO, referred customers are price sensitive,
  multichannel customers like BOGO and phone customers like discounts.

A least-squares fit of the true log-odds on the logistic regression's own design (its
preprocessing + pairwise products) explains only ~86% of their variance, so no model family is
the true model. With the default grid (fit on 64,000 rows of seed 7, scored on 20,000 fresh
rows, :data:`DEFAULT_ECONOMICS`) the decisions reach 96.5% of the oracle's value
(85% of the possible gain over the best single offer) for logistic regression (C=1), 97.5% (89%)
for a random forest (depth 8, leaf 20) and for HistGradientBoosting (lr 0.05, 15 leaves).

:class:`Drift` changes the world for the closed loop: an offer's log-odds shift for a segment
(concept drift) and a new channel mix for new customers (covariate drift); every truth function
takes it as ``drift=`` (None: the base world). :func:`response_delays_minutes` draws the
log-normal delays after which conversions are reported.

Everything is vectorised numpy and seeded: the same ``(n_rows, seed)`` gives the identical
frame. The draws of customers, offers and responses use independent child streams of one
``numpy.random.SeedSequence``, so :func:`simulate_customers` returns the customer part of
:func:`simulate_interactions` for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import (
    CHANNELS,
    CUSTOMER_COLUMNS,
    INTERACTION_COLUMNS,
    OFFER_BOGO,
    OFFER_DISCOUNT,
    OFFER_NONE,
    OFFERS,
    TARGET_COLUMN,
    ZIP_CODES,
    expected_values,
    offer_indices,
)

ZIP_CODE_SHARES: tuple[float, ...] = (0.45, 0.40, 0.15)
CHANNEL_SHARES: tuple[float, ...] = (0.44, 0.44, 0.12)
#: Shares of recency 1..12 months: recent customers are more common, with a bump at 10.
RECENCY_SHARES: tuple[float, ...] = (
    0.140, 0.118, 0.093, 0.090, 0.080, 0.072, 0.069, 0.068, 0.064, 0.108, 0.052, 0.046,
)
HISTORY_MIN = 29.99
HISTORY_MAX = 3345.93
# history = HISTORY_MIN + lognormal(mu, sigma) - shift, clipped to [HISTORY_MIN, HISTORY_MAX]:
# ~2% of customers sit at the 29.99 floor, median ~158, mean ~240, max reached rarely.
_HISTORY_LOG_MU = 4.96
_HISTORY_LOG_SIGMA = 1.0
_HISTORY_SHIFT = 15.0
#: P(used_discount only), P(used_bogo only), P(both): nobody used neither.
PAST_OFFER_USE_SHARES: tuple[float, ...] = (0.445, 0.445, 0.11)
REFERRAL_SHARE = 0.50

#: The ground-truth response model (log-odds scale). It is *not* linear in the model's features:
#: spend enters through a saturating curve, recency through a step at :data:`LAPSED_MONTHS`, and
#: Discount backfires on recent big spenders (a product of two customer thresholds and an offer).
#: ``spend = 1 - exp(-(history - HISTORY_MIN) / SPEND_SCALE)`` runs from 0 at the floor to ~0.95
#: at ~630 and is flat above; ``lapsed`` is recency >= LAPSED_MONTHS; ``loyal_big_spender`` is
#: recency <= RECENT_MONTHS and history >= BIG_SPEND.
RESPONSE_MODEL: dict[str, float] = {
    "intercept": -2.30,
    # offer main effects
    "offer_bogo": 0.53,
    "offer_discount": 0.28,
    # segment main effects (apply whatever the offer)
    "recency": -0.04,  # per month: recent customers buy a little more...
    "lapsed": -0.35,  # ...and lapsed customers a lot less (a step, not a slope)
    "spend": 0.65,  # per unit of the saturating spend curve: big spenders buy more, up to a point
    "is_referral": -0.40,
    "channel_phone": -0.15,
    "channel_multichannel": 0.20,
    "zip_urban": 0.05,
    "zip_rural": 0.40,
    "used_both": 0.15,  # used discount and BOGO before: engaged customers
    # offer x segment interactions
    "bogo_x_used_bogo": 0.27,  # past BOGO users respond to BOGO ~ as well as to Discount
    "bogo_x_discount_only": -0.30,  # discount-only users barely respond to BOGO
    "bogo_x_referral": 0.10,
    "bogo_x_multichannel": 0.25,
    "bogo_x_lapsed": -0.55,  # BOGO asks for a purchase: lapsed customers ignore it
    "bogo_x_spend": -0.40,  # "buy one more" means less to those who already buy a lot
    "discount_x_used_discount": 0.15,
    "discount_x_referral": 0.30,  # referred customers are price sensitive
    "discount_x_phone": 0.15,
    "discount_x_lapsed": 0.70,  # a discount wins lapsed customers back (a step at LAPSED_MONTHS)
    "discount_x_loyal_big_spender": -1.00,  # ...and cheapens the brand for recent big spenders
    "none_x_rural": 0.15,  # rural customers convert without an offer more often
}
#: Scale (in currency) of the saturating spend curve.
SPEND_SCALE = 200.0
#: Customers whose last purchase is at least this many months ago are lapsed.
LAPSED_MONTHS = 10
#: Recent (recency <= RECENT_MONTHS) customers with history >= BIG_SPEND: Discount backfires.
RECENT_MONTHS = 3
BIG_SPEND = 300.0


@dataclass(frozen=True)
class Drift:
    """A change in the simulated world (the closed loop's ``drift`` section, as plain values).

    ``segment`` maps customer columns to values (a customer is in the segment when all match);
    ``log_odds_change`` is added to the log-odds of ``offer`` for those customers (concept
    drift); ``channel_shares`` (Web, Phone, Multichannel; a ``{channel: share}`` mapping is
    accepted too) replaces :data:`CHANNEL_SHARES` for new customers (covariate drift), None keeps
    them. An empty segment is everybody.
    """

    segment: Mapping[str, str | int]
    offer: str
    log_odds_change: float
    channel_shares: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        segment = dict(self.segment)
        unknown = sorted(set(segment) - set(CUSTOMER_COLUMNS))
        if unknown:
            raise ValueError(
                f"drift segment names unknown column(s) {unknown}; valid: {list(CUSTOMER_COLUMNS)}"
            )
        if self.offer not in OFFERS:
            raise ValueError(f"drift offer {self.offer!r} is not one of {list(OFFERS)}")
        if not np.isfinite(float(self.log_odds_change)):
            raise ValueError(f"drift log_odds_change must be finite, got {self.log_odds_change}")
        object.__setattr__(self, "segment", MappingProxyType(segment))
        object.__setattr__(self, "log_odds_change", float(self.log_odds_change))
        shares = self.channel_shares
        if shares is not None:
            if isinstance(shares, Mapping):
                if set(shares) != set(CHANNELS):
                    raise ValueError(
                        f"drift channel_shares needs exactly {list(CHANNELS)}, got {sorted(shares)}"
                    )
                shares = [shares[c] for c in CHANNELS]
            shares = tuple(float(s) for s in shares)
            if len(shares) != len(CHANNELS) or min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
                raise ValueError(
                    f"drift channel_shares must be {len(CHANNELS)} non-negative shares of {list(CHANNELS)} "
                    f"summing to 1, got {shares}"
                )
            object.__setattr__(self, "channel_shares", shares)

    def in_segment(self, features: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of ``features`` in the drift's segment."""
        mask = np.ones(len(features), dtype=bool)
        for column, value in self.segment.items():
            mask &= features[column].to_numpy(dtype=object) == value
        return mask


def _child_rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _customers_from_rng(
    n_rows: int, rng: np.random.Generator, channel_shares: tuple[float, ...] = CHANNEL_SHARES
) -> pd.DataFrame:
    recency = rng.choice(np.arange(1, 13, dtype=np.int64), size=n_rows, p=RECENCY_SHARES)
    history = (
        HISTORY_MIN + rng.lognormal(_HISTORY_LOG_MU, _HISTORY_LOG_SIGMA, size=n_rows) - _HISTORY_SHIFT
    )
    history = np.round(np.clip(history, HISTORY_MIN, HISTORY_MAX), 2)
    past_use = rng.choice(3, size=n_rows, p=PAST_OFFER_USE_SHARES)  # 0 disc, 1 bogo, 2 both
    zip_code = np.asarray(ZIP_CODES, dtype=object)[rng.choice(3, size=n_rows, p=ZIP_CODE_SHARES)]
    is_referral = (rng.random(n_rows) < REFERRAL_SHARE).astype(np.int64)
    channel = np.asarray(CHANNELS, dtype=object)[rng.choice(3, size=n_rows, p=channel_shares)]
    return pd.DataFrame(
        {
            "recency": recency,
            "history": history.astype(np.float64),
            "used_discount": (past_use != 1).astype(np.int64),
            "used_bogo": (past_use != 0).astype(np.int64),
            "zip_code": pd.array(zip_code, dtype="str"),
            "is_referral": is_referral,
            "channel": pd.array(channel, dtype="str"),
        },
        columns=list(CUSTOMER_COLUMNS),
    )


def _channel_shares(drift: Drift | None) -> tuple[float, ...]:
    return CHANNEL_SHARES if drift is None or drift.channel_shares is None else drift.channel_shares


def simulate_customers(n_rows: int, seed: int, *, drift: Drift | None = None) -> pd.DataFrame:
    """Draw ``n_rows`` customers (the :data:`CUSTOMER_COLUMNS`), reproducibly from ``seed``.

    With a ``drift`` that has ``channel_shares`` the channels follow those shares; every other
    column is the same as without it (the channel draw uses the same random numbers).
    """
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    return _customers_from_rng(n_rows, _child_rngs(seed, 3)[0], _channel_shares(drift))


def random_offers(n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Offers assigned uniformly at random (propensity 1/3 each), as an object array."""
    return np.asarray(OFFERS, dtype=object)[rng.integers(0, len(OFFERS), size=n_rows)]


def response_delays_minutes(
    n: int, rng: np.random.Generator, *, median_minutes: float, sigma: float
) -> np.ndarray:
    """How long after the offer each of ``n`` conversions arrives: float64 minutes, log-normal
    with median ``median_minutes`` and log-scale spread ``sigma`` (0: always the median)."""
    if not (np.isfinite(median_minutes) and median_minutes > 0):
        raise ValueError(f"median_minutes must be > 0, got {median_minutes}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return float(median_minutes) * np.exp(float(sigma) * rng.standard_normal(int(n)))


def _offer_array(offer: str | np.ndarray | pd.Series, n: int) -> np.ndarray:
    if isinstance(offer, str):
        offers = np.full(n, offer, dtype=object)
    else:
        offers = np.asarray(offer, dtype=object)
        if offers.shape != (n,):
            raise ValueError(f"offer must be one string or {n} values, got shape {offers.shape}")
    unknown = set(pd.unique(offers)) - set(OFFERS)
    if unknown:
        raise ValueError(f"unknown offer(s) {sorted(map(str, unknown))}; valid: {list(OFFERS)}")
    return offers


def conversion_log_odds(
    features: pd.DataFrame,
    offer: str | np.ndarray | pd.Series | None = None,
    *,
    drift: Drift | None = None,
) -> np.ndarray:
    """The log-odds of :func:`conversion_probability` (same arguments)."""
    n = len(features)
    offers = _offer_array(features["offer"] if offer is None else offer, n)
    c = RESPONSE_MODEL
    recency = features["recency"].to_numpy(dtype=np.float64)
    history = features["history"].to_numpy(dtype=np.float64)
    spend = 1.0 - np.exp(-np.maximum(history - HISTORY_MIN, 0.0) / SPEND_SCALE)
    lapsed = (recency >= LAPSED_MONTHS).astype(np.float64)
    loyal_big_spender = ((recency <= RECENT_MONTHS) & (history >= BIG_SPEND)).astype(np.float64)
    used_discount = features["used_discount"].to_numpy(dtype=np.float64)
    used_bogo = features["used_bogo"].to_numpy(dtype=np.float64)
    referral = features["is_referral"].to_numpy(dtype=np.float64)
    channel = features["channel"].to_numpy(dtype=object)
    zip_code = features["zip_code"].to_numpy(dtype=object)
    phone = (channel == "Phone").astype(np.float64)
    multi = (channel == "Multichannel").astype(np.float64)
    rural = (zip_code == "Rural").astype(np.float64)
    urban = (zip_code == "Urban").astype(np.float64)
    bogo = (offers == OFFER_BOGO).astype(np.float64)
    discount = (offers == OFFER_DISCOUNT).astype(np.float64)
    none = (offers == OFFER_NONE).astype(np.float64)

    logit = (
        c["intercept"]
        + c["recency"] * (recency - 6.0)
        + c["lapsed"] * lapsed
        + c["spend"] * spend
        + c["is_referral"] * referral
        + c["channel_phone"] * phone
        + c["channel_multichannel"] * multi
        + c["zip_urban"] * urban
        + c["zip_rural"] * rural
        + c["used_both"] * used_discount * used_bogo
        + bogo
        * (
            c["offer_bogo"]
            + c["bogo_x_used_bogo"] * used_bogo
            + c["bogo_x_discount_only"] * used_discount * (1.0 - used_bogo)
            + c["bogo_x_referral"] * referral
            + c["bogo_x_multichannel"] * multi
            + c["bogo_x_lapsed"] * lapsed
            + c["bogo_x_spend"] * spend
        )
        + discount
        * (
            c["offer_discount"]
            + c["discount_x_used_discount"] * used_discount
            + c["discount_x_referral"] * referral
            + c["discount_x_phone"] * phone
            + c["discount_x_lapsed"] * lapsed
            + c["discount_x_loyal_big_spender"] * loyal_big_spender
        )
        + none * c["none_x_rural"] * rural
    )
    if drift is not None:
        logit = logit + drift.log_odds_change * ((offers == drift.offer) & drift.in_segment(features))
    return logit


def conversion_probability(
    features: pd.DataFrame,
    offer: str | np.ndarray | pd.Series | None = None,
    *,
    drift: Drift | None = None,
) -> np.ndarray:
    """True P(conversion | customer, offer) under :data:`RESPONSE_MODEL`.

    ``features`` needs the :data:`CUSTOMER_COLUMNS`; ``offer`` is one offer for every row, an
    array of per-row offers, or None to use the frame's own ``offer`` column. ``drift`` adds its
    ``log_odds_change`` to the log-odds of its offer for the customers in its segment.
    """
    return 1.0 / (1.0 + np.exp(-conversion_log_odds(features, offer, drift=drift)))


def offer_probabilities(features: pd.DataFrame, *, drift: Drift | None = None) -> np.ndarray:
    """True conversion probabilities for every offer: an (n, 3) array, columns in OFFERS order."""
    return np.column_stack([conversion_probability(features, o, drift=drift) for o in OFFERS])


def optimal_offers(features: pd.DataFrame, economics: Mapping, *, drift: Drift | None = None) -> np.ndarray:
    """The truly best offer for each customer (ties go to the first offer in OFFERS order)."""
    ev = expected_values(offer_probabilities(features, drift=drift), economics)
    return np.asarray(OFFERS, dtype=object)[np.argmax(ev, axis=1)]


def true_policy_value(
    features: pd.DataFrame, offers: str | np.ndarray, economics: Mapping, *, drift: Drift | None = None
) -> float:
    """True expected value per customer of making ``offers`` (one offer or one per row)."""
    idx = offer_indices(_offer_array(offers, len(features)))
    ev = expected_values(offer_probabilities(features, drift=drift), economics)
    return float(ev[np.arange(len(features)), idx].mean()) if len(features) else float("nan")


def simulate_responses(
    features: pd.DataFrame, offers: str | np.ndarray, rng: np.random.Generator, *, drift: Drift | None = None
) -> np.ndarray:
    """Draw conversions (int64 0/1) for customers given the offers they received."""
    p = conversion_probability(features, offers, drift=drift)
    return (rng.random(len(features)) < p).astype(np.int64)


def simulate_interactions(n_rows: int, seed: int, *, drift: Drift | None = None) -> pd.DataFrame:
    """``n_rows`` historical interactions in the exact table schema, reproducible from ``seed``.

    Offers are assigned uniformly at random (propensity 1/3), as in the original campaign.
    ``drift`` (default none) changes the channel mix and the responses as described at :class:`Drift`.
    """
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    customer_rng, offer_rng, response_rng = _child_rngs(seed, 3)
    frame = _customers_from_rng(n_rows, customer_rng, _channel_shares(drift))
    offers = random_offers(n_rows, offer_rng)
    frame["offer"] = pd.array(offers, dtype="str")
    frame[TARGET_COLUMN] = simulate_responses(frame, offers, response_rng, drift=drift)
    return frame[list(INTERACTION_COLUMNS)]


