"""The compiled (ONNX) scoring path: it converts every registered family and equals skops."""

from __future__ import annotations

import numpy as np
import pytest

from factory_tasks.core.estimators import ESTIMATORS
from factory_tasks.loop.simulator import simulate_customers, simulate_interactions
from factory_tasks.serving import compiled
from factory_tasks.serving.compiled import (
    ONNX_FILENAME,
    TOLERANCE,
    CompiledScorer,
    compile_pipeline,
    save_compiled,
)
from factory_tasks.training.features import (
    build_pipeline,
    counterfactual_proba,
    feature_frame,
    positive_proba,
)

TINY = {
    "LogisticRegression": {"C": 1.0, "max_iter": 1000},
    "HistGradientBoostingClassifier": {"max_iter": 15, "max_leaf_nodes": 15},
    "GradientBoostingClassifier": {"n_estimators": 10, "max_depth": 3},
    "RandomForestClassifier": {"n_estimators": 8, "max_depth": 8, "min_samples_leaf": 5},
}


@pytest.fixture(scope="module")
def data():
    return simulate_interactions(1500, seed=5)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = feature_frame(data), data["conversion"]
    return {name: build_pipeline(name, TINY[name], random_state=0).fit(X, y) for name in ESTIMATORS}


def test_every_registered_family_has_a_tiny_configuration():
    assert set(TINY) == set(ESTIMATORS)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_family_compiles_and_equals_the_pipeline(name, fitted, data):
    pipeline = fitted[name]
    onnx_bytes, reason = compile_pipeline(pipeline, data.head(300))
    assert onnx_bytes is not None, reason
    assert reason.startswith(f"{name}: compiled")

    scorer = CompiledScorer(onnx_bytes)
    unseen = simulate_customers(400, seed=99)  # other rows than the compile check used
    np.testing.assert_allclose(
        scorer.counterfactual_proba(unseen),
        counterfactual_proba(pipeline, unseen.assign(offer="No Offer")),
        rtol=0, atol=TOLERANCE,
    )
    rows = feature_frame(data.tail(200))
    np.testing.assert_allclose(scorer.positive_proba(rows), positive_proba(pipeline, rows), rtol=0, atol=TOLERANCE)


def test_an_unsupported_function_is_refused_with_the_reason(fitted, data):
    pipeline = build_pipeline("LogisticRegression", TINY["LogisticRegression"], random_state=0)
    pipeline.set_params(preprocess__history__log1p__func=np.sqrt)
    pipeline.fit(feature_frame(data), data["conversion"])

    onnx_bytes, reason = compile_pipeline(pipeline, data.head(50))

    assert onnx_bytes is None
    assert "LogisticRegression does not convert to ONNX" in reason
    assert "FunctionTransformer('sqrt')" in reason


def test_a_compiled_model_that_does_not_match_is_refused(fitted, data, monkeypatch):
    other = compiled.to_onnx(fitted["RandomForestClassifier"])
    monkeypatch.setattr(compiled, "to_onnx", lambda pipeline: other)

    onnx_bytes, reason = compile_pipeline(fitted["LogisticRegression"], data.head(100))

    assert onnx_bytes is None
    assert "ONNX probabilities differ from the pipeline's" in reason
    assert "100 rows x 3 offers" in reason


def test_a_single_class_model_is_not_compiled(data):
    X = feature_frame(data)
    forest = build_pipeline("RandomForestClassifier", {"n_estimators": 2}, random_state=0)
    forest.fit(X, np.zeros(len(X), dtype=np.int64))

    onnx_bytes, reason = compile_pipeline(forest, data.head(20))

    assert onnx_bytes is None and "classes [0, 1]" in reason


def test_no_rows_no_check_no_compile(fitted, data):
    assert compile_pipeline(fitted["LogisticRegression"], data.head(0)) == (
        None, "no rows to check the compiled model against")


def test_save_compiled_writes_the_file_and_removes_a_stale_one(fitted, data, tmp_path):
    path, reason = save_compiled(fitted["RandomForestClassifier"], tmp_path, data.head(100))
    assert path == tmp_path / ONNX_FILENAME and path.stat().st_size > 0, reason
    np.testing.assert_allclose(
        CompiledScorer.from_file(path).counterfactual_proba(data.head(30)),
        counterfactual_proba(fitted["RandomForestClassifier"], data.head(30)),
        rtol=0, atol=TOLERANCE,
    )

    bad = build_pipeline("LogisticRegression", {}, random_state=0)
    bad.set_params(preprocess__history__log1p__func=np.sqrt)
    bad.fit(feature_frame(data), data["conversion"])
    path, reason = save_compiled(bad, tmp_path, data.head(100))

    assert path is None and "does not convert" in reason
    assert not (tmp_path / ONNX_FILENAME).exists()


def test_the_scorer_refuses_an_onnx_model_of_something_else(fitted):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    plain = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    onnx_model = convert_sklearn(plain, initial_types=[("x", FloatTensorType([None, 1]))],
                                 target_opset=compiled.TARGET_OPSET)

    with pytest.raises(ValueError, match="not a compiled model pipeline"):
        CompiledScorer(onnx_model.SerializeToString())
