"""run_experiment: cross-validation of the whole pipeline on tiny data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from factory_tasks.core import estimators
from factory_tasks.core.contracts import ExperimentResult
from factory_tasks.core.estimators import ESTIMATORS, EstimatorEntry
from factory_tasks.core.metrics import METRICS
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.training.experiment import FITTED_ON_KEY, MODEL_KEY, json_result, run_experiment
from tests.contract_factories import make_spec as contract_spec

# Small settings so every registered estimator cross-validates in well under a second.
SMALL_PARAMS = {
    "LogisticRegression": {"C": 0.5},
    "HistGradientBoostingClassifier": {"max_iter": 10},
    "GradientBoostingClassifier": {"n_estimators": 10, "max_depth": 2},
    "RandomForestClassifier": {"n_estimators": 10, "max_depth": 4},
}


def make_spec(estimator="LogisticRegression", params=None, **over):
    over.setdefault("data_snapshot", {"path": "snapshots/x.parquet", "hash": "abc"})
    return contract_spec(estimator, SMALL_PARAMS.get(estimator, {}) if params is None else params, **over)


@pytest.fixture(scope="module")
def data():
    return simulate_interactions(900, seed=31)


@pytest.fixture
def strong_signal():
    """Simulated rows whose conversion depends strongly on an offer x segment interaction."""
    df = simulate_interactions(1_500, seed=32)
    rng = np.random.default_rng(0)
    p = np.where((df["used_bogo"] == 1) & (df["offer"] == "Buy One Get One"), 0.6, 0.06)
    return df.assign(conversion=(rng.random(len(df)) < p).astype(np.int64))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_registered_estimator_cross_validates(name, data):
    result = run_experiment(make_spec(name), data, n_threads=1, progress=lambda line: None)
    assert result["status"] == "succeeded" and result["error"] is None
    assert set(result["metrics"]) == set(METRICS)
    for name_, scores in result["metrics"].items():
        assert len(scores["folds"]) == 3, name_
        assert all(math.isfinite(v) for v in scores["folds"]), name_
        assert scores["mean"] == pytest.approx(np.mean(scores["folds"]))
        assert scores["std"] == pytest.approx(np.std(scores["folds"]))
    for key in ("fit_time", "score_time"):
        assert set(result[key]) == {"mean", "std", "total"} and result[key]["total"] > 0
    assert result["n_rows"] == 900 and result["threads"] == 1 and result["cv_folds"] == 3
    assert result["wall_time_s"] >= result["fit_time"]["total"]
    assert result["data_snapshot_hash"] == "abc"
    assert 0.0 <= result["metrics"]["roc_auc"]["mean"] <= 1.0


def test_result_has_the_documented_fields_and_is_json(data):
    result = run_experiment(make_spec(), data, progress=lambda line: None)
    documented = {
        "experiment_id", "status", "error", "traceback", "family", "estimator", "params",
        "cv_folds", "ranking_metric", "metrics", "fit_time", "score_time", "wall_time_s",
        "n_rows", "threads", "data_snapshot_hash", "started_at", "finished_at",
    }
    as_json = json_result(result)
    assert set(as_json) == documented  # the job adds artifact_path, metadata_path, code_version
    json.dumps(as_json, allow_nan=False)


def test_returns_the_first_fold_model_and_says_what_it_was_fitted_on(data):
    result = run_experiment(make_spec(), data, progress=lambda line: None)
    model = result[MODEL_KEY]
    assert model.predict_proba(data.drop(columns="conversion").head(5)).shape == (5, 2)
    fitted_on = result[FITTED_ON_KEY]
    assert fitted_on["fold"] == 1 and fitted_on["cv_folds"] == 3
    assert fitted_on["n_rows"] == 600  # 2/3 of 900 rows
    assert fitted_on["data_snapshot_hash"] == "abc"


def test_same_spec_same_scores(data):
    a = run_experiment(make_spec("RandomForestClassifier"), data, progress=lambda line: None)
    b = run_experiment(make_spec("RandomForestClassifier"), data, progress=lambda line: None)
    assert a["metrics"] == b["metrics"]


def test_progress_lines_per_fold(data):
    lines: list[str] = []
    run_experiment(make_spec(metrics=["roc_auc"]), data, progress=lines.append)
    folds = [line for line in lines if line.startswith("fold ")]
    assert [line.split()[1] for line in folds] == ["1/3", "2/3", "3/3"]
    assert all("roc_auc=" in line for line in folds)


def test_counterfactuals_are_predicted_once_per_fold(data, monkeypatch):
    calls: list[int] = []
    from sklearn.pipeline import Pipeline

    original = Pipeline.predict_proba

    def counting(self, X, **kw):
        calls.append(len(X))
        return original(self, X, **kw)

    monkeypatch.setattr(Pipeline, "predict_proba", counting)
    run_experiment(make_spec(cv_folds=3), data, progress=lambda line: None)
    assert calls == [900, 900, 900]  # one call per fold: 300 held-out rows x 3 offers


def test_a_model_with_signal_beats_a_dummy(strong_signal, monkeypatch):
    monkeypatch.setitem(estimators.ESTIMATORS, "DummyClassifier", EstimatorEntry(DummyClassifier))
    quiet = {"progress": lambda line: None}
    dummy = run_experiment(make_spec("DummyClassifier", {"strategy": "prior"}), strong_signal, **quiet)
    model = run_experiment(make_spec("LogisticRegression", {"C": 1.0}), strong_signal, **quiet)
    assert dummy["metrics"]["roc_auc"]["mean"] == pytest.approx(0.5)
    assert model["metrics"]["roc_auc"]["mean"] > 0.7
    assert model["metrics"]["log_loss"]["mean"] < dummy["metrics"]["log_loss"]["mean"]
    # the model learns to make BOGO offers to past BOGO users: a better policy than the dummy's
    assert model["metrics"]["policy_value"]["mean"] > dummy["metrics"]["policy_value"]["mean"]


def test_only_a_validated_spec_runs(data):
    with pytest.raises(TypeError, match="needs an ExperimentSpec, got dict"):
        run_experiment(make_spec().model_dump(mode="json"), data, progress=lambda line: None)


def test_the_result_satisfies_the_result_contract_once_the_job_adds_its_fields(data):
    result = json_result(run_experiment(make_spec(), data, progress=lambda line: None))
    complete = ExperimentResult.model_validate({
        **result, "artifact_path": "a", "metadata_path": "m", "code_version": "v",
        "library_versions": {"sklearn": "1", "numpy": "1", "pandas": "1", "skops": "1"}})
    assert complete.status == "succeeded" and complete.metrics["roc_auc"].folds == result["metrics"]["roc_auc"]["folds"]


def test_too_few_positives_for_the_folds_is_a_clear_error(data):
    few = data.assign(conversion=0)
    few.loc[few.index[:2], "conversion"] = 1
    with pytest.raises(ValueError, match="cannot make 3 stratified folds"):
        run_experiment(make_spec(), few, progress=lambda line: None)


def test_bad_data_is_refused(data):
    with pytest.raises(ValueError, match="lacks required column"):
        run_experiment(make_spec(), data.drop(columns="offer"), progress=lambda line: None)


def test_logged_propensities_weight_the_policy_metrics_and_are_never_a_feature(data):
    """A snapshot with interactions carries each row's logged propensity: 1/3 everywhere is the
    randomized campaign (the same scores as without the column); other values change only the
    off-policy metrics, and the model never sees the column."""
    spec = make_spec()
    quiet = dict(n_threads=1, progress=lambda line: None)
    plain = run_experiment(spec, data, **quiet)
    thirds = run_experiment(spec, data.assign(propensity=1 / 3), **quiet)
    for name, scores in plain["metrics"].items():
        assert thirds["metrics"][name]["folds"] == pytest.approx(scores["folds"]), name
    rng = np.random.default_rng(5)
    logged = run_experiment(spec, data.assign(propensity=np.where(rng.random(len(data)) < 0.5, 0.9, 0.05)), **quiet)
    for name in ("roc_auc", "log_loss", "average_precision", "accuracy"):
        assert logged["metrics"][name]["folds"] == pytest.approx(plain["metrics"][name]["folds"]), name
    for name in ("policy_value", "policy_uplift"):
        assert logged["metrics"][name]["mean"] != pytest.approx(plain["metrics"][name]["mean"]), name
    features = set(logged[MODEL_KEY].feature_names_in_)
    assert "propensity" not in features and features == set(plain[MODEL_KEY].feature_names_in_)


def test_a_propensity_outside_zero_one_is_refused(data):
    from factory_tasks.core.schema import TrainingDataError

    with pytest.raises(TrainingDataError, match=r"column 'propensity' must lie in \(0, 1\]"):
        run_experiment(make_spec(), data.assign(propensity=0.0), n_threads=1, progress=lambda line: None)
