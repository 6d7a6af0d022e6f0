"""Pipeline construction: named steps, parameter routing, counterfactual predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import PolynomialFeatures

from factory_tasks.core.estimators import ESTIMATORS, get_estimator
from factory_tasks.core.schema import OFFERS, offer_indices
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.training.features import (
    build_pipeline,
    counterfactual_proba,
    feature_frame,
    positive_proba,
)


@pytest.fixture(scope="module")
def data():
    return simulate_interactions(600, seed=21)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_named_steps_and_thread_and_seed_routing(name):
    entry = get_estimator(name)
    pipe = build_pipeline(name, {}, random_state=7, n_threads=3)
    assert list(pipe.named_steps)[0] == "preprocess"
    assert list(pipe.named_steps)[-1] == "classifier"
    assert isinstance(pipe.named_steps["preprocess"], ColumnTransformer)
    assert isinstance(pipe.named_steps["classifier"], entry.cls)
    params = pipe.get_params()
    if "random_state" in entry.parameter_names():
        assert params["classifier__random_state"] == 7
    if entry.thread_param:
        assert params[f"classifier__{entry.thread_param}"] == 3


def test_params_are_routed_to_the_classifier():
    pipe = build_pipeline("RandomForestClassifier", {"n_estimators": 7, "max_depth": 3}, random_state=0)
    clf = pipe.named_steps["classifier"]
    assert (clf.n_estimators, clf.max_depth, clf.random_state, clf.n_jobs) == (7, 3, 0, 1)
    assert pipe.get_params()["classifier__n_estimators"] == 7


def test_an_explicit_random_state_param_wins_but_threads_follow_the_budget():
    pipe = build_pipeline("RandomForestClassifier", {"random_state": 5, "n_jobs": 8}, random_state=0, n_threads=2)
    clf = pipe.named_steps["classifier"]
    assert (clf.random_state, clf.n_jobs) == (5, 2)


def test_unknown_param_and_unknown_estimator_fail_with_the_valid_options():
    with pytest.raises(ValueError, match="no parameter.*'n_trees'.*Valid parameters are:.*n_estimators"):
        build_pipeline("RandomForestClassifier", {"n_trees": 10})
    with pytest.raises(ValueError, match="'SVC' is not a known estimator. Valid options are:"):
        build_pipeline("SVC", {})


def test_linear_model_gets_offer_by_segment_interactions(data):
    pipe = build_pipeline("LogisticRegression", {}, random_state=0)
    assert list(pipe.named_steps) == ["preprocess", "interactions", "classifier"]
    assert isinstance(pipe.named_steps["interactions"], PolynomialFeatures)
    pipe.fit(feature_frame(data), data["conversion"])
    names = list(pipe[:-1].get_feature_names_out())
    assert any("offer_Buy One Get One" in n and "used_bogo" in n for n in names)
    assert any("offer_Discount" in n and "used_discount" in n for n in names)
    assert any("offer_Discount" in n and "is_referral" in n for n in names)
    # scale-sensitive: log1p + standardized history
    history = pipe.named_steps["preprocess"].named_transformers_["history"]
    assert [s for s, _ in history.steps] == ["log1p", "scale"]


def test_trees_get_plain_encoding(data):
    pipe = build_pipeline("HistGradientBoostingClassifier", {"max_iter": 5}, random_state=0)
    assert "interactions" not in pipe.named_steps
    pipe.fit(feature_frame(data), data["conversion"])
    names = list(pipe[:-1].get_feature_names_out())
    assert len(names) == 3 + 3 + 3 + 5  # offers, channels, zips, numeric customer features
    assert "numeric__history" in names


def test_counterfactual_proba_matches_plain_predictions(data):
    pipe = build_pipeline("LogisticRegression", {"C": 0.5}, random_state=0)
    X = feature_frame(data)
    pipe.fit(X, data["conversion"])
    cf = counterfactual_proba(pipe, X)
    assert cf.shape == (len(X), len(OFFERS))
    observed = cf[np.arange(len(X)), offer_indices(X["offer"])]
    np.testing.assert_allclose(observed, positive_proba(pipe, X), rtol=1e-10)
    for j, offer in enumerate(OFFERS):
        np.testing.assert_allclose(cf[:, j], positive_proba(pipe, X.assign(offer=offer)), rtol=1e-10)


def test_unseen_segment_values_are_ignored_not_fatal(data):
    pipe = build_pipeline("LogisticRegression", {}, random_state=0)
    pipe.fit(feature_frame(data), data["conversion"])
    odd = feature_frame(data.head(3)).assign(channel="Carrier Pigeon")
    assert positive_proba(pipe, odd).shape == (3,)
