"""The retrain job: the exact pipeline refitted on the full snapshot, checked against its CV
estimate on a held-out slice, the champion's recipe refitted on the same rows and compared with
it on the slice by paired intervals; as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factory_tasks.core.contracts import ChampionRef, Lineage, MetricScores, RetrainRequest, RetrainResult
from factory_tasks.jobs.retrain import bootstrap_se, consistency, refit, resampled_scores, run_retrain
from factory_tasks.loop.selection import choose, evidence_table, gate
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.training.artifacts import load_metadata, load_model, save_model
from factory_tasks.training.experiment import score_model
from factory_tasks.training.features import build_pipeline, feature_frame
from factory_tasks.warehouse.training_data import write_snapshot
from tests.contract_factories import make_spec

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "jobs" / "retrain_model.py"
#: a deep random forest: it memorises the rows it was fitted on
DEEP_FOREST = {"n_estimators": 60, "max_depth": None, "min_samples_leaf": 1}


def _champion(estimator: str = "LogisticRegression", params: dict | None = None, random_state: int = 0,
              version: str = "champion") -> dict:
    return {"model_version": version, "artifact_path": f"models/{version}/model.skops", "experiment_id": "c" * 16,
            "estimator": estimator, "params": {"C": 0.01} if params is None else params, "random_state": random_state}


def _request(snapshot: dict, *, cv_mean: float = 0.70, cv_std: float = 0.01, champion=None, **spec_over) -> RetrainRequest:
    spec = make_spec("LogisticRegression", {"C": 0.5}, cv_folds=3, data_snapshot=snapshot, **spec_over)
    lineage = Lineage(experiment_id=spec.experiment_id, factory_run_id="manual__1", grid_hash="g",
                      data_snapshot_path=snapshot["path"], data_snapshot_hash=snapshot["hash"], code_version="v",
                      library_versions={}, chosen_by="automatic", choice_reason="best")
    return RetrainRequest(model_version=f"{spec.experiment_id}-test", spec=spec, lineage=lineage,
                          cv_estimate=MetricScores(mean=cv_mean, std=cv_std, folds=[cv_mean] * 3), champion=champion)


@pytest.fixture(scope="module")
def data():
    return simulate_interactions(3000, seed=61)


@pytest.fixture
def project(tmp_path, data):
    snap = write_snapshot(data, tmp_path / "snapshots")
    return tmp_path, {"path": snap.project_path, "hash": snap.hash}


def test_consistency_tolerance_comes_from_the_cv_spread():
    request = _request({"path": "s.parquet", "hash": "h"}, cv_mean=0.70, cv_std=0.01)  # 3 folds
    # a slice as large as a fold: 3 x the CV std
    assert consistency(request, 0.725, 1000, 3000)[0] and not consistency(request, 0.74, 1000, 3000)[0]
    assert "tolerance 0.0300" in consistency(request, 0.74, 1000, 3000)[1]
    # a slice a quarter of a fold's size spreads twice as much
    assert consistency(request, 0.74, 250, 3000)[0] and "× 2.00" in consistency(request, 0.74, 250, 3000)[1]
    tight = request.model_copy(update={"cv_estimate": MetricScores(mean=0.70, std=0.0, folds=[0.7] * 3)})
    assert consistency(tight, 0.705, 1000, 3000)[0]  # the floor (0.01) when the folds agree exactly
    assert not consistency(request, float("nan"), 1000, 3000)[0]

    # folds that agree by chance more closely than a slice can: the slice's own standard error decides
    lucky = request.model_copy(update={"cv_estimate": MetricScores(mean=0.61, std=0.005, folds=[0.61] * 3)})
    assert not consistency(lucky, 0.635, 1200, 6000)[0]
    ok, note = consistency(lucky, 0.635, 1200, 6000, holdout_se=0.016)
    assert ok and "bootstrap SE 0.0160" in note and "tolerance 0.0480" in note


def test_the_bootstrap_se_of_a_held_out_auc_matches_its_sampling_spread(data):
    """On the simulator, the spread of the AUC over fresh slices is known by repetition."""
    X, y = feature_frame(data), data["conversion"].to_numpy()
    model = build_pipeline("LogisticRegression", {"C": 1.0}, random_state=0).fit(X, y)
    economics = make_spec("LogisticRegression", {}).economics.model_dump(mode="json")
    from sklearn.metrics import roc_auc_score
    spread = np.std([roc_auc_score(s["conversion"], model.predict_proba(feature_frame(s))[:, 1])
                     for s in (simulate_interactions(600, seed=100 + k) for k in range(30))], ddof=1)
    fresh = simulate_interactions(600, seed=99)
    se = bootstrap_se(model, feature_frame(fresh), fresh["conversion"].to_numpy(), "roc_auc", economics)
    assert se is not None and 0.6 * spread < se < 1.6 * spread, (se, spread)
    policy_se = bootstrap_se(model, feature_frame(fresh), fresh["conversion"].to_numpy(), "policy_value", economics)
    assert policy_se is not None and policy_se > 0


def test_refit_keeps_the_hyperparameters_and_refits_the_champions_recipe_on_the_same_rows(data, project):
    _, snapshot = project
    request = _request(snapshot, cv_mean=0.5, cv_std=0.3, champion=_champion())  # consistent whatever the score
    fitted = refit(request, data)
    final = fitted["final"].named_steps["classifier"]
    assert final.C == 0.5 and final.random_state == 0  # the experiment's exact hyperparameters
    assert fitted["n_rows"] == len(data) and len(fitted["holdout_rows"]) == len(data) // 5
    assert set(fitted["holdout"]) >= {"roc_auc", "policy_value", "policy_uplift"}
    assert set(fitted["champion_holdout"]) == set(fitted["holdout"])
    assert fitted["champion_holdout"] != fitted["holdout"] and fitted["consistent"]
    # the champion: its recipe, fitted on exactly the rows the challenger was fitted on
    champion = fitted["champion_model"].named_steps["classifier"]
    assert champion.C == 0.01 and fitted["champion_model"] is not fitted["check_model"]
    hold = fitted["holdout_rows"].index
    fit_rows = np.setdiff1d(np.arange(len(data)), hold)
    X, y = feature_frame(data), data["conversion"].to_numpy()
    by_hand = build_pipeline("LogisticRegression", {"C": 0.01}, random_state=0).fit(X.iloc[fit_rows], y[fit_rows])
    assert np.allclose(by_hand.predict_proba(X.iloc[hold]), fitted["champion_model"].predict_proba(X.iloc[hold]))
    # the paired comparison: the ranking metric and policy value, points from the slice's scores
    auc, value = fitted["comparison"]
    assert (auc.measure, value.measure, auc.source, auc.n_rows) == ("roc_auc", "policy_value", "holdout", len(hold))
    for diff in (auc, value):
        assert diff.challenger == pytest.approx(fitted["holdout"][diff.measure])
        assert diff.champion == pytest.approx(fitted["champion_holdout"][diff.measure])
        assert diff.difference == pytest.approx(diff.challenger - diff.champion)
        assert diff.low < diff.difference < diff.high and diff.confidence == 0.95
        assert "paired bootstrap, 400 resamples" in diff.method and "refitted on the same rows" in diff.method


def test_the_paired_bootstrap_resamples_the_same_rows_for_both_models(data):
    """Paired: the interval of the difference is narrower than the two scores' own spreads
    suggest (shared noise cancels), and a model compared with itself differs by exactly 0."""
    X, y = feature_frame(data), data["conversion"].to_numpy()
    economics = make_spec("LogisticRegression", {}).economics.model_dump(mode="json")
    fit, hold = np.arange(2400), np.arange(2400, 3000)
    a = build_pipeline("LogisticRegression", {"C": 1.0}, random_state=0).fit(X.iloc[fit], y[fit])
    b = build_pipeline("LogisticRegression", {"C": 0.05}, random_state=0).fit(X.iloc[fit], y[fit])
    sa, sb, again = resampled_scores([a, b, a], X.iloc[hold], y[hold], ["roc_auc", "policy_value"], economics, seed=4)
    for metric in ("roc_auc", "policy_value"):
        assert np.isfinite(sa[metric]).sum() >= 390
        assert np.array_equal(sa[metric], again[metric], equal_nan=True)  # one set of resampled rows
        paired_sd = np.nanstd(sa[metric] - sb[metric])
        assert paired_sd < 0.7 * np.hypot(np.nanstd(sa[metric]), np.nanstd(sb[metric])), metric
    # the consistency check's standard error comes from the same resampling
    assert bootstrap_se(a, X.iloc[hold], y[hold], "roc_auc", economics, seed=4) == pytest.approx(
        np.nanstd(sa["roc_auc"], ddof=1))


def test_a_champion_with_the_challengers_recipe_is_the_same_refit(data, project):
    _, snapshot = project
    same = _champion("LogisticRegression", {"C": 0.5}, random_state=0)
    fitted = refit(_request(snapshot, cv_mean=0.5, cv_std=0.3, champion=same), data)
    assert fitted["champion_model"] is fitted["check_model"] and fitted["champion_holdout"] == fitted["holdout"]
    for diff in fitted["comparison"]:
        assert (diff.difference, diff.low, diff.high) == (0.0, 0.0, 0.0)
        assert "the challenger's recipe" in diff.method
    # another seed is another recipe: refitted
    other = refit(_request(snapshot, cv_mean=0.5, cv_std=0.3, champion={**same, "random_state": 1}), data)
    assert other["champion_model"] is not other["check_model"]


def test_the_gate_is_not_fooled_by_a_champion_that_memorised_the_slice(tmp_path):
    """The leak: the model now serving is a deep forest whose final fit used every row of the
    data — the held-out slice included. Scored on the slice it looks nearly perfect; the job
    instead refits its recipe on the challenger's fit rows, and compared on rows neither saw the
    logistic regression is the better model, which the gate deploys."""
    from types import SimpleNamespace

    from factory_tasks.stages.deploy import champion_ref

    data = simulate_interactions(8000, seed=62)
    snap = write_snapshot(data, tmp_path / "snapshots")
    snapshot = {"path": snap.project_path, "hash": snap.hash}
    X, y = feature_frame(data), data["conversion"].to_numpy()
    served = build_pipeline("RandomForestClassifier", DEEP_FOREST, random_state=0).fit(X, y)
    artifact, metadata = save_model(served, tmp_path / "models" / "champion", {
        "model_version": "champion", "experiment_id": "c" * 16, "estimator": "RandomForestClassifier",
        "params": DEEP_FOREST, "random_state": 0})
    # the deploy stage reads the champion's recipe from its model metadata
    cml = SimpleNamespace(download_file=lambda path: (tmp_path / path).read_bytes())
    record = SimpleNamespace(model_version="champion", artifact_path="models/champion/model.skops",
                             metadata_path="models/champion/model.metadata.json")
    ref = champion_ref(cml, record)
    assert ref == ChampionRef(model_version="champion", artifact_path="models/champion/model.skops",
                              experiment_id="c" * 16, estimator="RandomForestClassifier", params=DEEP_FOREST,
                              random_state=0)
    assert champion_ref(cml, None) is None

    request = _request(snapshot, cv_mean=0.5, cv_std=0.3, champion=ref.model_dump(mode="json"))  # consistent
    assert run_retrain(tmp_path, {RetrainRequest.ENV: request.model_dump_json()}) == 0
    result = RetrainResult.parse((tmp_path / request.result_path).read_bytes(), "retrain.json")
    auc = next(d for d in result.comparison if d.measure == "roc_auc")
    value = next(d for d in result.comparison if d.measure == "policy_value")

    # what the old job reported: the served artifact on the slice, nearly perfect by memory
    fitted = refit(request, data)
    hold = fitted["holdout_rows"].index
    economics = request.spec.economics.model_dump(mode="json")
    memorised = score_model(served, X.iloc[hold], y[hold], ["roc_auc"], economics)["roc_auc"]
    assert memorised > 0.9
    # now: the recipe refitted on the challenger's rows, judged on rows neither saw
    assert auc.n_rows == len(hold) == result.holdout.n_rows
    assert auc.champion == pytest.approx(fitted["champion_holdout"]["roc_auc"]) and auc.champion < memorised - 0.25
    assert auc.champion == pytest.approx(result.champion_holdout.metrics["roc_auc"])
    assert auc.difference > 0 and auc.high > 0 and value.low > 0  # the challenger is better, not worse

    decision = gate(result, choose_auto(), champion_version="champion", ranking_margin=0.01, policy_value_margin=0.0)
    assert decision.deploy and not decision.override, decision.reason
    assert decision.evidence == result.comparison
    assert "roc_auc" in evidence_table(decision.evidence)


def choose_auto():
    """An automatic choice (nobody picked), for the gate."""
    import pandas as pd

    from factory_tasks.warehouse.outcomes import RunContext, outcome_row
    from tests.contract_factories import make_result

    spec = make_spec("LogisticRegression", {"C": 0.5})
    row = outcome_row(spec, make_result(spec, 0.6), RunContext(factory_run_id="r", grid_hash="g", recorded_at="t"))
    return choose(pd.DataFrame([row]), factory_run_id="r")


def _run(root: Path, request: RetrainRequest) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MF_")}
    env[RetrainRequest.ENV] = request.model_dump_json()
    return subprocess.run([sys.executable, str(SCRIPT)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_job_writes_model_metadata_lineage_and_result(data, project):
    root, snapshot = project
    probe = refit(_request(snapshot), data)["holdout"]["roc_auc"]
    # a champion serving: the job refits its recipe and never reads its artifact (there is none here)
    request = _request(snapshot, cv_mean=probe, cv_std=0.005, champion=_champion())
    proc = _run(root, request)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = RetrainResult.parse((root / request.result_path).read_bytes(), "retrain.json")
    assert result.status == "succeeded" and result.consistent and result.n_rows == len(data)
    assert result.champion_holdout is not None and result.holdout.n_rows == result.champion_holdout.n_rows
    assert [(d.measure, d.source, d.n_rows) for d in result.comparison] == [
        ("roc_auc", "holdout", result.holdout.n_rows), ("policy_value", "holdout", result.holdout.n_rows)]
    assert all(d.low is not None and d.low <= d.high for d in result.comparison)
    assert result.artifact_path == f"models/{request.model_version}/model.skops"
    model = load_model(root / result.artifact_path)
    assert model.named_steps["classifier"].C == 0.5
    meta = load_metadata(root / result.artifact_path)
    assert meta["lineage"]["experiment_id"] == request.spec.experiment_id
    assert meta["lineage"]["chosen_by"] == "automatic" and meta["fitted_on"]["n_rows"] == len(data)
    assert result.onnx_path is None or (root / result.onnx_path).is_file()
    assert result.compiled_note


def test_a_refit_that_disagrees_with_its_cv_estimate_is_recorded_as_inconsistent(project):
    root, snapshot = project
    request = _request(snapshot, cv_mean=0.99, cv_std=0.001)  # a CV estimate no refit can match
    assert _run(root, request).returncode == 0
    result = RetrainResult.parse((root / request.result_path).read_bytes(), "retrain.json")
    assert result.consistent is False and "off by" in result.consistency_note


def test_a_bad_request_or_snapshot_is_a_failed_result(project):
    root, snapshot = project
    request = _request({**snapshot, "hash": "0" * 64})
    proc = _run(root, request)
    assert proc.returncode == 1
    result = json.loads((root / request.result_path).read_text())
    assert result["status"] == "failed" and "changed since the experiment was planned" in result["error"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MF_")}
    env[RetrainRequest.ENV] = "{not json"
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "MF_RETRAIN_REQUEST is not a valid document" in proc.stdout


def test_refit_weights_the_held_out_policy_metrics_by_the_snapshots_propensity(data, tmp_path):
    """A snapshot with interactions reaches the retrain job with its propensity column: the same
    split and model, the gate's policy metrics weighted per row, the column never a feature."""
    from factory_tasks.jobs.experiment import read_snapshot
    from factory_tasks.warehouse.training_data import snapshot_parquet

    rng = np.random.default_rng(3)
    with_log = data.assign(propensity=np.where(rng.random(len(data)) < 0.5, 0.9, 0.05))
    ref, raw = snapshot_parquet(with_log, interactions_table="customer_interactions", interaction_rows=len(data))
    (tmp_path / "snap.parquet").write_bytes(raw)
    read = read_snapshot(tmp_path / "snap.parquet", ref.hash)
    assert list(read.columns)[-1] == "propensity" and np.allclose(read["propensity"], with_log["propensity"])

    request = _request({"path": ref.project_path, "hash": ref.hash}, cv_mean=0.5, cv_std=0.3, champion=_champion())
    plain = refit(request, data)
    thirds = refit(request, data.assign(propensity=1 / 3))
    logged = refit(request, read)
    assert thirds["holdout"] == pytest.approx(plain["holdout"])
    assert logged["holdout"]["roc_auc"] == pytest.approx(plain["holdout"]["roc_auc"])  # same split, same model
    assert logged["holdout"]["policy_value"] != pytest.approx(plain["holdout"]["policy_value"])
    # the paired comparison's policy value is weighted the same way, its ranking metric is not
    (plain_auc, plain_value), (thirds_auc, thirds_value), (auc, value) = (
        f["comparison"] for f in (plain, thirds, logged))
    assert (thirds_value.low, thirds_value.high) == pytest.approx((plain_value.low, plain_value.high))
    assert auc.difference == pytest.approx(plain_auc.difference)
    assert value.champion == pytest.approx(logged["champion_holdout"]["policy_value"])
    assert value.champion != pytest.approx(plain_value.champion) and (value.low, value.high) != pytest.approx(
        (plain_value.low, plain_value.high))
    assert "propensity-weighted" in value.method and "propensity-weighted" not in plain_value.method
    assert "propensity" not in logged["final"].feature_names_in_


def test_the_shadow_evaluation_judges_the_refit_only_on_live_traffic_it_was_not_fitted_on(tmp_path):
    """The snapshot holds the champion's logged decisions (with their prediction_uuid): the
    refit is fitted on 80% of them, so only the other 20% and the decisions newer than the
    snapshot are its live evidence; none of the traffic: no live evidence, not an error."""
    from tests.unit.loop.test_shadow import CHAMPION, logged_traffic

    traffic = logged_traffic(4000, seed=5, champion=CHAMPION).assign(
        prediction_uuid=[f"p-{i}" for i in range(4000)])
    # the snapshot's rows: the 3,000 oldest decisions (history rows have no uuid: none here)
    data = traffic.iloc[:3000].drop(columns=["model_offer"]).reset_index(drop=True)
    request = _request({"path": "s.parquet", "hash": "h"}, champion=ChampionRef(**_champion()),
                       metrics=["roc_auc", "policy_value"])
    fitted = refit(request, data, live_traffic=traffic)
    live = fitted["live"]
    assert live.source == "live" and live.measure == "policy_value"
    # 600 held-out snapshot rows + 1000 newer decisions; the 2,400 fit rows are left out
    assert live.n_rows == 1000 + 600 and "2400 decision(s) it was fitted on left out" in live.method
    assert live.low is not None and live.low <= live.difference <= live.high

    no_traffic = refit(request, data, live_traffic=None)["live"]
    assert no_traffic.n_rows == 0 and no_traffic.low is None and "no live evidence" in no_traffic.method
