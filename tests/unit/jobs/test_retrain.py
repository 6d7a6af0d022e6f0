"""The retrain job: the exact pipeline refitted on the full snapshot, checked against its CV
estimate on a held-out slice, the champion scored on the same slice; as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factory_tasks.core.contracts import Lineage, MetricScores, RetrainRequest, RetrainResult
from factory_tasks.jobs.retrain import bootstrap_se, consistency, refit
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.training.artifacts import load_metadata, load_model, save_model
from factory_tasks.training.features import build_pipeline, feature_frame
from factory_tasks.warehouse.training_data import write_snapshot
from tests.contract_factories import make_spec

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "jobs" / "retrain_model.py"


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


def test_refit_keeps_the_hyperparameters_and_scores_champion_on_the_same_slice(data, project):
    _, snapshot = project
    champion = build_pipeline("LogisticRegression", {"C": 0.01}, random_state=0).fit(
        feature_frame(data), data["conversion"])
    request = _request(snapshot, cv_mean=0.5, cv_std=0.3)  # a wide CV spread: consistent whatever the score
    fitted = refit(request, data, champion=champion)
    final = fitted["final"].named_steps["classifier"]
    assert final.C == 0.5 and final.random_state == 0  # the experiment's exact hyperparameters
    assert fitted["n_rows"] == len(data) and len(fitted["holdout_rows"]) == len(data) // 5
    assert set(fitted["holdout"]) >= {"roc_auc", "policy_value", "policy_uplift"}
    assert set(fitted["champion_holdout"]) == set(fitted["holdout"])
    assert fitted["champion_holdout"] != fitted["holdout"] and fitted["consistent"]


def _run(root: Path, request: RetrainRequest) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MF_")}
    env[RetrainRequest.ENV] = request.model_dump_json()
    return subprocess.run([sys.executable, str(SCRIPT)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_job_writes_model_metadata_lineage_and_result(data, project):
    root, snapshot = project
    probe = refit(_request(snapshot), data)["holdout"]["roc_auc"]
    # a champion already in the project
    champion_model = build_pipeline("LogisticRegression", {"C": 0.01}, random_state=0).fit(
        feature_frame(data), data["conversion"])
    save_model(champion_model, root / "models" / "champion", {"model_version": "champion"})
    request = _request(snapshot, cv_mean=probe, cv_std=0.005,
                       champion={"model_version": "champion", "artifact_path": "models/champion/model.skops"})
    proc = _run(root, request)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = RetrainResult.parse((root / request.result_path).read_bytes(), "retrain.json")
    assert result.status == "succeeded" and result.consistent and result.n_rows == len(data)
    assert result.champion_holdout is not None and result.holdout.n_rows == result.champion_holdout.n_rows
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

    request = _request({"path": ref.project_path, "hash": ref.hash}, cv_mean=0.5, cv_std=0.3)
    plain = refit(request, data)
    thirds = refit(request, data.assign(propensity=1 / 3))
    logged = refit(request, read)
    assert thirds["holdout"] == pytest.approx(plain["holdout"])
    assert logged["holdout"]["roc_auc"] == pytest.approx(plain["holdout"]["roc_auc"])  # same split, same model
    assert logged["holdout"]["policy_value"] != pytest.approx(plain["holdout"]["policy_value"])
    assert "propensity" not in logged["final"].feature_names_in_
