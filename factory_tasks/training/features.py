"""The model pipeline: preprocessing of interaction rows plus one registered classifier.

``build_pipeline`` returns an unfitted :class:`sklearn.pipeline.Pipeline` whose input is a frame
with the :data:`~factory_tasks.core.schema.FEATURE_COLUMNS` (customer features + ``offer``) and
whose ``predict_proba(X)[:, 1]`` is P(conversion | customer, offer). Named steps:

``preprocess``
    a ``ColumnTransformer``: one-hot ``offer`` (its three categories fixed, so every fitted
    pipeline can score every counterfactual offer) and ``channel``, ``zip_code`` (unseen values
    are ignored) and the numeric customer
    features ``recency``, ``history``, ``used_discount``, ``used_bogo``, ``is_referral``.
    For scale-sensitive models (``needs_scaling``) ``recency`` is standardized and ``history``
    log1p-transformed then standardized; the 0/1 flags pass through. Trees get raw values.
``interactions`` (models that need them only: linear models)
    ``PolynomialFeatures(degree=2, interaction_only=True)`` over the encoded features: every
    pairwise product, which includes every offer one-hot x customer feature (offer x used_bogo,
    offer x used_discount, offer x is_referral, offer x recency, offer x channel ...). That lets
    a logistic regression give each offer its own slope per segment — the structure the
    next-best-action decision depends on. (Products within one one-hot group are constant 0 and
    harmless under regularisation.) Only built-in sklearn transformers are used, so a saved
    pipeline loads with skops without trusting any custom code.
``classifier``
    the registry's estimator; hyperparameters are routed as ``classifier__<name>``.

Only plain sklearn/numpy objects end up in the pipeline (see :mod:`factory_tasks.training.artifacts`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    PolynomialFeatures,
    StandardScaler,
)

from factory_tasks.core.estimators import EstimatorEntry, get_estimator
from factory_tasks.core.schema import FEATURE_COLUMNS, OFFERS

CATEGORICAL_FEATURES: tuple[str, ...] = ("channel", "offer", "zip_code")
SEGMENT_CATEGORICALS: tuple[str, ...] = ("channel", "zip_code")
FLAG_FEATURES: tuple[str, ...] = ("used_discount", "used_bogo", "is_referral")
NUMERIC_FEATURES: tuple[str, ...] = ("recency", "history", *FLAG_FEATURES)


def needs_interactions(entry: EstimatorEntry) -> bool:
    """Whether an estimator gets explicit pairwise interaction features.

    An entry may say so itself (``needs_interactions``); otherwise the scale-sensitive models of
    the registry are the linear ones, and those need them.
    """
    return bool(getattr(entry, "needs_interactions", entry.needs_scaling))


def build_preprocessor(*, scale: bool) -> ColumnTransformer:
    """The ``preprocess`` step (see the module docstring)."""
    transformers: list[tuple[str, Any, list[str]]] = [
        (
            "offer",
            OneHotEncoder(categories=[list(OFFERS)], sparse_output=False, dtype=np.float64),
            ["offer"],
        ),
        (
            "segment",
            OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64),
            list(SEGMENT_CATEGORICALS),
        ),
    ]
    if scale:
        transformers += [
            ("recency", StandardScaler(), ["recency"]),
            (
                "history",
                Pipeline(
                    [
                        ("log1p", FunctionTransformer(np.log1p, feature_names_out="one-to-one")),
                        ("scale", StandardScaler()),
                    ]
                ),
                ["history"],
            ),
            ("flags", "passthrough", list(FLAG_FEATURES)),
        ]
    else:
        transformers.append(("numeric", "passthrough", list(NUMERIC_FEATURES)))
    return ColumnTransformer(transformers, remainder="drop")


def classifier_params(
    entry: EstimatorEntry, params: Mapping[str, Any], *, random_state: int | None, n_threads: int
) -> dict[str, Any]:
    """The classifier's constructor arguments: ``params`` plus random_state and the thread count.

    ``random_state`` is set where the estimator accepts it unless ``params`` sets it; the
    estimator's ``thread_param`` always follows ``n_threads`` (the run's CPU request decides
    parallelism, not the grid). Unknown parameter names are a ``ValueError`` naming the valid ones.
    """
    valid = entry.parameter_names()
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(
            f"{entry.cls.__name__} has no parameter(s) {unknown}. "
            f"Valid parameters are: {', '.join(sorted(valid))}."
        )
    out = dict(params)
    if random_state is not None and "random_state" in valid and "random_state" not in out:
        out["random_state"] = int(random_state)
    if entry.thread_param is not None:
        out[entry.thread_param] = int(n_threads)
    return out


def build_pipeline(
    estimator_name: str,
    params: Mapping[str, Any] | None = None,
    *,
    random_state: int | None = None,
    n_threads: int = 1,
) -> Pipeline:
    """An unfitted preprocessing + classifier pipeline for a registered estimator."""
    entry = get_estimator(estimator_name)
    if int(n_threads) < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    steps: list[tuple[str, Any]] = [("preprocess", build_preprocessor(scale=entry.needs_scaling))]
    if needs_interactions(entry):
        steps.append(
            ("interactions", PolynomialFeatures(degree=2, interaction_only=True, include_bias=False))
        )
    steps.append(("classifier", entry.cls()))
    pipeline = Pipeline(steps)
    routed = classifier_params(
        entry, params or {}, random_state=random_state, n_threads=int(n_threads)
    )
    pipeline.set_params(**{f"classifier__{k}": v for k, v in routed.items()})
    return pipeline


def feature_frame(data: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns of an interactions frame, in the canonical order."""
    return data.loc[:, list(FEATURE_COLUMNS)]


def counterfactual_proba(model: Any, features: pd.DataFrame) -> np.ndarray:
    """P(conversion | x, offer=o) for every row and offer: (n, 3), columns in OFFERS order.

    One ``predict_proba`` call on the rows stacked three times with the offer swapped.
    """
    n = len(features)
    if n == 0:
        return np.empty((0, len(OFFERS)))
    base = feature_frame(features)
    stacked = pd.concat([base.assign(offer=offer) for offer in OFFERS], ignore_index=True)
    stacked["offer"] = stacked["offer"].astype(base["offer"].dtype)
    proba = positive_proba(model, stacked)
    return proba.reshape(len(OFFERS), n).T.copy()


def positive_proba(model: Any, features: pd.DataFrame) -> np.ndarray:
    """P(conversion = 1) from a fitted classifier pipeline."""
    proba = model.predict_proba(features)
    classes = list(model.classes_)
    if 1 not in classes:
        return np.zeros(len(features))
    return np.asarray(proba[:, classes.index(1)], dtype=np.float64)
