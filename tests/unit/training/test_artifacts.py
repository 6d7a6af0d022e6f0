"""Model files: skops round trip, metadata beside the model, refusal of untrusted types."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skops.io as sio
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from factory_tasks.core.estimators import ESTIMATORS
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.training.artifacts import (
    METADATA_FILENAME,
    MODEL_FILENAME,
    UntrustedModelError,
    load_metadata,
    load_model,
    save_model,
)
from factory_tasks.training.features import build_pipeline, feature_frame, positive_proba

SMALL = {
    "LogisticRegression": {},
    "HistGradientBoostingClassifier": {"max_iter": 5},
    "GradientBoostingClassifier": {"n_estimators": 5},
    "RandomForestClassifier": {"n_estimators": 5},
}


@pytest.fixture(scope="module")
def data():
    return simulate_interactions(400, seed=41)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_round_trip_predicts_the_same(name, data, tmp_path):
    pipe = build_pipeline(name, SMALL.get(name, {}), random_state=0)
    X = feature_frame(data)
    pipe.fit(X, data["conversion"])
    model_path, metadata_path = save_model(
        pipe, tmp_path / "exp", {"estimator": name, "params": SMALL.get(name, {}), "fitted_on": {"n_rows": 400}}
    )
    assert (model_path.name, metadata_path.name) == (MODEL_FILENAME, METADATA_FILENAME)
    assert model_path.parent == metadata_path.parent == tmp_path / "exp"
    loaded = load_model(model_path)
    np.testing.assert_array_equal(positive_proba(loaded, X), positive_proba(pipe, X))


def test_metadata_records_versions_and_the_callers_facts(data, tmp_path):
    pipe = build_pipeline("LogisticRegression", {}, random_state=0).fit(feature_frame(data), data["conversion"])
    facts = {
        "params": {"C": 1.0},
        "cv_scores": {"roc_auc": {"mean": 0.6, "std": 0.01, "folds": [0.59, 0.61]}},
        "data_snapshot_hash": "feed",
        "fitted_on": {"split": "training split of CV fold 1", "n_rows": 266},
    }
    model_path, metadata_path = save_model(pipe, tmp_path, facts)
    meta = json.loads(metadata_path.read_text())
    assert meta == load_metadata(model_path)
    for key, value in facts.items():
        assert meta[key] == value
    assert set(meta["libraries"]) == {"python", "sklearn", "numpy", "pandas", "skops"}
    assert meta["format"] == "skops" and meta["model_file"] == MODEL_FILENAME
    assert meta["created_at"].endswith("+00:00")
    assert meta["model_class"] == "sklearn.pipeline.Pipeline"
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def _not_from_sklearn(x):
    return x


def test_untrusted_types_are_refused(tmp_path):
    rogue = Pipeline([("f", FunctionTransformer(_not_from_sklearn))]).fit(np.ones((3, 1)))
    path = tmp_path / MODEL_FILENAME
    sio.dump(rogue, path)
    with pytest.raises(UntrustedModelError, match="_not_from_sklearn") as info:
        load_model(path)
    assert any("_not_from_sklearn" in t for t in info.value.untrusted)
    assert all(not t.startswith(("sklearn.", "numpy.")) for t in info.value.untrusted)


def test_builtins_outside_the_allow_list_are_refused(tmp_path):
    path = tmp_path / MODEL_FILENAME
    sio.dump(FunctionTransformer(eval), path)
    with pytest.raises(UntrustedModelError, match="eval"):
        load_model(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_model(tmp_path / MODEL_FILENAME)


def test_non_finite_metadata_is_refused_and_nothing_is_left_behind(tmp_path, data):
    pipe = build_pipeline("LogisticRegression", {}, random_state=0).fit(feature_frame(data), data["conversion"])
    with pytest.raises(ValueError):
        save_model(pipe, tmp_path, {"cv_scores": {"roc_auc": float("nan")}})
    assert not list(tmp_path.iterdir())  # neither a model without metadata nor temp files
