"""The interaction schema every layer shares: the columns and dtypes of a customer interaction,
the offers, the offer economics (value of a conversion, cost of each offer) and the checks a
frame must pass to be training data. Real users' Hive tables and the simulator's rows both have
exactly this shape (see ``docs/architecture.md``)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

OFFER_BOGO = "Buy One Get One"
OFFER_DISCOUNT = "Discount"
OFFER_NONE = "No Offer"

#: The offers, in the column order used by every (n, 3) probability matrix in the factory.
OFFERS: tuple[str, ...] = (OFFER_BOGO, OFFER_DISCOUNT, OFFER_NONE)

ZIP_CODES: tuple[str, ...] = ("Surburban", "Urban", "Rural")  # "Surburban" is the real spelling
CHANNELS: tuple[str, ...] = ("Web", "Phone", "Multichannel")

CUSTOMER_COLUMNS: tuple[str, ...] = (
    "recency",
    "history",
    "used_discount",
    "used_bogo",
    "zip_code",
    "is_referral",
    "channel",
)

#: The model's inputs: the customer plus the offer made.
FEATURE_COLUMNS: tuple[str, ...] = (*CUSTOMER_COLUMNS, "offer")
TARGET_COLUMN = "conversion"
INTERACTION_COLUMNS: tuple[str, ...] = (*FEATURE_COLUMNS, TARGET_COLUMN)
INTERACTION_DTYPES: dict[str, str] = {
    "recency": "int64",
    "history": "float64",
    "used_discount": "int64",
    "used_bogo": "int64",
    "zip_code": "str",
    "is_referral": "int64",
    "channel": "str",
    "offer": "str",
    "conversion": "int64",
}

BINARY_COLUMNS: tuple[str, ...] = ("used_discount", "used_bogo", "is_referral", "conversion")
CATEGORICAL_COLUMNS: tuple[str, ...] = ("zip_code", "channel", "offer")

#: Example economics: a conversion is worth 100; BOGO costs 4 per customer offered, Discount 8.
#: Under these the three constant policies are worth about the same (~10-11 per customer) while
#: the optimal policy (BOGO ~45%, Discount ~33%, No Offer ~22% of customers) is worth ~14.3.
DEFAULT_ECONOMICS: dict = {
    "conversion_value": 100.0,
    "offer_costs": {OFFER_BOGO: 4.0, OFFER_DISCOUNT: 8.0, OFFER_NONE: 0.0},
}

#: the closed loop's matured decisions (``factory_tasks.warehouse.loop_tables.CUSTOMER_INTERACTIONS``)
DEFAULT_INTERACTIONS_TABLE = "customer_interactions"

TRAINING_TABLE = "historical_customer_interactions"
#: P(the logged offer was made | customer), in a snapshot that includes interactions
PROPENSITY_COLUMN = "propensity"
#: the randomized campaign's propensity of every offer: what history rows get beside interactions
HISTORY_PROPENSITY = 1.0 / len(OFFERS)
#: the logged decision an interaction row of such a snapshot came from (null for history rows):
#: never a model input; it tells which live traffic a model was fitted on
PREDICTION_UUID_COLUMN = "prediction_uuid"
#: the arms of the serving policy (docs/deploy.md, "The policy"): the model that decided a
#: customer's offer; ``prediction_log.arm`` holds one of these
ARM_CHAMPION = "champion"
ARM_CHALLENGER = "challenger"
#: the arms, in the order of the 0/1 arm index
ARMS: tuple[str, str] = (ARM_CHAMPION, ARM_CHALLENGER)


def offer_cost_vector(economics: Mapping) -> np.ndarray:
    """The cost of each offer in OFFERS order from an economics dict.

    ``economics`` is ``{"conversion_value": float, "offer_costs": {offer: cost}}``; an offer
    missing from ``offer_costs`` costs 0, an unknown offer name is an error.
    """
    if "conversion_value" not in economics:
        raise ValueError("economics lacks 'conversion_value'")
    costs = dict(economics.get("offer_costs") or {})
    unknown = set(costs) - set(OFFERS)
    if unknown:
        raise ValueError(
            f"economics.offer_costs names unknown offer(s) {sorted(unknown)}; valid: {list(OFFERS)}"
        )
    return np.array([float(costs.get(o, 0.0)) for o in OFFERS], dtype=np.float64)


def offer_indices(offers: np.ndarray | pd.Series) -> np.ndarray:
    """Positions of ``offers`` in OFFERS (int64); unknown offers are an error."""
    offers = np.asarray(offers, dtype=object)
    idx = np.full(offers.shape, -1, dtype=np.int64)
    for i, o in enumerate(OFFERS):
        idx[offers == o] = i
    if (idx < 0).any():
        unknown = sorted(map(str, set(offers[idx < 0])))
        raise ValueError(f"unknown offer(s) {unknown}; valid: {list(OFFERS)}")
    return idx


def epsilon_greedy_propensities(greedy: np.ndarray, epsilon: float | np.ndarray) -> np.ndarray:
    """``(n, 3)`` P(each offer is made | customer) in OFFERS order under ε-greedy: ``1 - ε`` on
    each customer's greedy pick (an index) plus ``ε / 3`` on every offer. ``epsilon``: one for
    all, or one per customer. The serving policy decides by it; the shadow evaluation
    rebuilds every offer's logging probability by it."""
    idx = np.asarray(greedy, dtype=np.int64)
    eps = np.broadcast_to(np.asarray(epsilon, dtype=np.float64), idx.shape)
    out = np.repeat((eps / len(OFFERS))[:, None], len(OFFERS), axis=1)
    out[np.arange(len(idx)), idx] += 1.0 - eps
    return out


def expected_values(proba: np.ndarray, economics: Mapping) -> np.ndarray:
    """Expected value per customer of each offer, ``p * conversion_value - offer_cost``: (n, 3)."""
    costs = offer_cost_vector(economics)  # validates the economics first
    return np.asarray(proba, dtype=np.float64) * float(economics["conversion_value"]) - costs


def validate_interactions(data: pd.DataFrame, *, require_target: bool = True) -> None:
    """Check that ``data`` has the interaction schema; raise ``ValueError`` saying what is wrong.

    Extra columns are allowed (ignored by the pipeline). Categorical columns must hold strings;
    unseen ``zip_code``/``channel`` values are tolerated (the encoder ignores them) but
    ``offer`` must be one of :data:`OFFERS`. Integer columns may arrive as floats (e.g. from a
    warehouse) as long as every value is integral.
    """
    required = INTERACTION_COLUMNS if require_target else FEATURE_COLUMNS
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise ValueError(
            f"data lacks required column(s) {missing}; expected columns {list(required)}"
        )
    problems: list[str] = []
    for col in required:
        s = data[col]
        nulls = int(s.isna().sum())
        if nulls:
            problems.append(f"{col} has {nulls} missing value(s)")
            continue
        if col in CATEGORICAL_COLUMNS:
            if not (pd.api.types.is_string_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype)):
                problems.append(f"{col} must hold strings, has dtype {s.dtype}")
            continue
        if not pd.api.types.is_numeric_dtype(s):
            problems.append(f"{col} must be numeric, has dtype {s.dtype}")
            continue
        values = s.to_numpy(dtype=np.float64)
        if col in BINARY_COLUMNS and not np.isin(values, (0.0, 1.0)).all():
            problems.append(f"{col} must be 0/1")
        elif col == "recency" and (np.any(values != np.round(values)) or np.any(values < 0)):
            problems.append("recency must be a non-negative whole number of months")
        elif col == "history" and not np.isfinite(values).all():
            problems.append("history must be finite")
    if not problems and "offer" in required:
        unknown = set(map(str, pd.unique(data["offer"]))) - set(OFFERS)
        if unknown:
            problems.append(f"offer has unknown value(s) {sorted(unknown)}; valid: {list(OFFERS)}")
    if problems:
        raise ValueError("data does not have the interaction schema: " + "; ".join(problems))


class TrainingDataError(ValueError):
    """The training table is missing, empty or does not have the expected schema."""


def check_propensity(values: pd.Series, source: str) -> None:
    """Raise :class:`TrainingDataError` naming ``source`` and the column unless every value is a
    number in (0, 1] (a logged offer was made with some positive probability)."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise TrainingDataError(f"{source}: column {PROPENSITY_COLUMN!r} must be numeric, has dtype {values.dtype}")
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~((numbers > 0) & (numbers <= 1))  # NaN compares False: it is bad too
    if bad.any():
        shown = ", ".join(map(repr, sorted({float(v) for v in numbers[bad]}, key=repr)[:5]))
        raise TrainingDataError(
            f"{source}: column {PROPENSITY_COLUMN!r} must lie in (0, 1] (the probability with which the "
            f"logged offer was made); {int(bad.sum())} row(s) do not: {shown}")


def check_prediction_uuids(values: pd.Series, source: str, *, allow_null: bool = True) -> None:
    """Raise :class:`TrainingDataError` naming ``source`` and the column unless every value of
    :data:`PREDICTION_UUID_COLUMN` is non-empty text, or null where ``allow_null`` (history rows)."""
    missing = values.isna().to_numpy()
    text = values[~missing]
    if len(text) and pd.api.types.infer_dtype(text, skipna=True) != "string":
        raise TrainingDataError(f"{source}: column {PREDICTION_UUID_COLUMN!r} must hold text, has dtype {values.dtype}")
    empty = int((text == "").sum())
    if empty:
        raise TrainingDataError(f"{source}: column {PREDICTION_UUID_COLUMN!r} has {empty} empty value(s)")
    if not allow_null and missing.any():
        raise TrainingDataError(f"{source}: column {PREDICTION_UUID_COLUMN!r} has {int(missing.sum())} missing "
                                "value(s): every interaction row names the decision it came from")
