"""deploy_best_model's gate and record stages on a real SQLite warehouse and a project folder
standing in for the CML project: the champion's recipe read from its model metadata, the gate's
evidence logged as a table and copied into the deployment record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from factory_tasks.core.contracts import (
    ContractError,
    DeploymentRecord,
    GateDecision,
    HoldoutScores,
    PairedDifference,
    RetrainResult,
)
from factory_tasks.stages.deploy import champion_ref, gate_decision, record
from factory_tasks.warehouse.deployments import record_deployment, serving
from tests.contract_factories import make_deployment

CHOICE = {"factory_run_id": "manual__1", "experiment_id": "0123456789abcdef", "chosen_by": "automatic",
          "reason": "best"}


class Project:
    """The CML client's file reads, from a folder."""

    def __init__(self, root: Path):
        self.root = root

    def download_file(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, payload: bytes | dict) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload if isinstance(payload, bytes) else json.dumps(payload).encode())


def _serving(version: str) -> DeploymentRecord:
    return make_deployment(version, "2026-12-01T10:00:00+00:00", experiment_id="fedcba9876543210",
                           factory_run_id="manual__0")


def _diff(measure: str, low: float, high: float) -> PairedDifference:
    return PairedDifference(measure=measure, source="holdout", challenger=1.0, champion=0.5, difference=0.5,
                            low=low, high=high, n_rows=1600, method="paired bootstrap, 400 resamples")


def test_the_champions_recipe_comes_from_its_model_metadata(tmp_path):
    project = Project(tmp_path)
    champion = _serving("v1")
    project.write(champion.metadata_path, {"experiment_id": "fedcba9876543210", "estimator": "RandomForestClassifier",
                                           "params": {"max_depth": None, "n_estimators": 50}, "random_state": 7})
    ref = champion_ref(project, champion)
    assert (ref.model_version, ref.artifact_path, ref.estimator, ref.params, ref.random_state) == (
        "v1", "models/v1/model.skops", "RandomForestClassifier", {"max_depth": None, "n_estimators": 50}, 7)
    project.write(champion.metadata_path, {"experiment_id": "fedcba9876543210", "estimator": "RandomForestClassifier",
                                           "params": {}})
    with pytest.raises(ContractError, match="model.metadata.json.*random_state: Field required"):
        champion_ref(project, champion)


def test_the_gate_logs_its_evidence_and_the_record_keeps_it(tmp_path, hook, caplog):
    project = Project(tmp_path)
    record_deployment(hook, _serving("v1"))
    comparison = [_diff("roc_auc", 0.001, 0.08), _diff("policy_value", 0.4, 6.7)]
    retrain = RetrainResult(
        model_version="v2", status="succeeded", ranking_metric="roc_auc",
        holdout=HoldoutScores(metrics={"roc_auc": 0.61, "policy_value": 14.2}, n_rows=1600),
        champion_holdout=HoldoutScores(metrics={"roc_auc": 0.57, "policy_value": 10.7}, n_rows=1600),
        comparison=comparison, consistent=True, consistency_note="ok", artifact_path="models/v2/model.skops",
        metadata_path="models/v2/model.metadata.json", n_rows=8000, code_version="v")
    project.write(RetrainResult.path_for("v2"), retrain.to_json())
    project.write(retrain.metadata_path, {"lineage": {
        "experiment_id": "0123456789abcdef", "factory_run_id": "manual__1", "grid_hash": "g",
        "data_snapshot_hash": "h2", "code_version": "v", "chosen_by": "automatic", "choice_reason": "best"}})

    with caplog.at_level(logging.INFO, logger="factory_tasks.stages.deploy"):
        decision = gate_decision(hook, project, CHOICE, "v2", ranking_margin=0.01, policy_value_margin=0.0)
    assert decision["deploy"] and GateDecision.from_data(decision, "gate").evidence == comparison
    logged = caplog.text
    assert "the gate's evidence for v2 (challenger − champion v1)" in logged
    assert "policy_value  holdout" in logged and "95% [+0.400, +6.700]" in logged

    deployed = {"model_name": "next-best-offer", "model_id": "m1", "build_id": "b2", "deployment_id": "d2",
                "replaced_deployment_ids": ["d1"]}
    record(hook, project, model_version="v2", deployed=deployed, decision=decision,
           deployed_at="2026-12-01T12:00:00+00:00")
    now = serving(hook)
    assert now.model_version == "v2" and now.gate_evidence == comparison and now.gate_reason == decision["reason"]


def test_the_champions_matured_traffic_goes_to_the_project_for_the_retrain_job(tmp_path):
    """export_live_traffic: the serving version's matured decisions as Parquet in the challenger's
    model folder, named with their hash; nothing matured: no file, no reference."""
    import hashlib
    import io
    from datetime import datetime, timezone

    import pandas as pd

    from factory_tasks.stages.deploy import export_live_traffic
    from tests.monitoring_window import HOUR_MS, T0_MS, simulate_window
    from tests.unit.loop.test_live_traffic import W, warehouse

    class Uploads(Project):
        def upload_file(self, path: str, data: bytes, overwrite: bool = False) -> str:
            self.write(path, data)
            return path

    windows = [simulate_window(T0_MS, 1_500, seed=1, window_minutes=W, delay_median_minutes=20, delay_sigma=0.5)]
    hook = warehouse(tmp_path, windows)
    project = Uploads(tmp_path / "project")
    now = datetime.fromtimestamp((T0_MS + 6 * HOUR_MS) / 1000, tz=timezone.utc)
    ref = export_live_traffic(hook, project, "v1", "challenger-1", now=now, response_window_minutes=W)
    assert ref is not None and ref.champion_version == "v1" and ref.path == "models/challenger-1/live_traffic.parquet"
    data = project.download_file(ref.path)
    assert hashlib.sha256(data).hexdigest() == ref.hash
    exported = pd.read_parquet(io.BytesIO(data))
    assert len(exported) == ref.n_rows == 1_500 and exported.prediction_uuid.is_unique
    assert export_live_traffic(hook, project, "v9", "challenger-2", now=now, response_window_minutes=W) is None
    assert not (tmp_path / "project" / "models" / "challenger-2").exists()


def test_a_kept_champion_is_put_to_a_reviewer_with_the_evidence_and_kept_by_default():
    from datetime import timedelta

    from factory_tasks.loop.selection import DEPLOY_CHALLENGER, KEEP_CHAMPION
    from factory_tasks.stages.deploy import final_decision, override_request

    kept = GateDecision(deploy=False, reason="not deployed: not shown better than the champion v1: policy_value …",
                        ranking_metric="roc_auc", challenger={}, champion_version="v1", overridable=True,
                        evidence=[_diff("policy_value", -0.3, 0.9)]).model_dump(mode="json")
    [review] = override_request(kept, minutes=0.25)
    assert review["options"] == [KEEP_CHAMPION, DEPLOY_CHALLENGER] and review["defaults"] == [KEEP_CHAMPION]
    assert review["response_timeout"] == timedelta(seconds=15)
    assert "keeps the champion v1" in review["body"] and "policy_value  holdout" in review["body"]
    assert "[-0.300, +0.900]" in review["body"]
    # deployed, or kept for a reason no reviewer may overrule: no review
    assert override_request({**kept, "deploy": True}, minutes=5) == []
    assert override_request({**kept, "overridable": False}, minutes=5) == []
    # a window nobody could answer in (and Airflow 3.3.2 would fail timing out): kept, unasked
    assert override_request(kept, minutes=0) == [] and override_request(kept, minutes=0.13) == []  # 7.8 s
    assert len(override_request(kept, minutes=0.2)) == 1
    # the timeout's default keeps; a user's "deploy" is their override
    assert final_decision(kept, {"chosen_options": [KEEP_CHAMPION], "responded_by_user": None}) == kept
    final = final_decision(kept, {"chosen_options": [DEPLOY_CHALLENGER], "responded_by_user": "ana"})
    assert final["deploy"] and final["override"] and "ana's override" in final["reason"]


def test_during_a_test_the_gate_compares_with_its_champion_and_never_redeploys_its_challenger(tmp_path, hook):
    project = Project(tmp_path)
    record_deployment(hook, _serving("v1"))
    record_deployment(hook, make_deployment("v2", "2026-12-01T11:00:00+00:00", action="ab_start",
                                            champion_version="v1", challenger_share=0.5, test_id="v1:v2"))
    comparison = [_diff("roc_auc", 0.001, 0.08), _diff("policy_value", 0.4, 6.7)]
    for version in ("v2", "v3"):
        retrain = RetrainResult(
            model_version=version, status="succeeded", ranking_metric="roc_auc",
            holdout=HoldoutScores(metrics={"roc_auc": 0.61, "policy_value": 14.2}, n_rows=1600),
            champion_holdout=HoldoutScores(metrics={"roc_auc": 0.57, "policy_value": 10.7}, n_rows=1600),
            comparison=comparison, consistent=True, consistency_note="ok",
            artifact_path=f"models/{version}/model.skops", metadata_path=f"models/{version}/model.metadata.json",
            n_rows=8000, code_version="v")
        project.write(RetrainResult.path_for(version), retrain.to_json())
    # the challenger under test, retrained again (a second alert's retrain): the test decides
    again = gate_decision(hook, project, CHOICE, "v2", ranking_margin=0.01, policy_value_margin=0.0)
    assert not again["deploy"] and not again["overridable"]
    assert "v2 is being A/B tested against v1" in again["reason"] and "the test's verdict decides" in again["reason"]
    # another challenger: gated against the test's champion (a deploy replaces the test)
    other = gate_decision(hook, project, CHOICE, "v3", ranking_margin=0.01, policy_value_margin=0.0)
    assert other["deploy"] and other["champion_version"] == "v1"
