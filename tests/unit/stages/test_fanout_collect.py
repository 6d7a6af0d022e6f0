"""Planning the fan-out, reuse keyed on what computed a result, and collecting outcomes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core.contracts import (
    ContractError,
    ExperimentResult,
    ExperimentSpec,
    GridRef,
    Provenance,
    RunPlan,
    SnapshotRef,
)
from factory_tasks.core.names import EXPERIMENT_SCRIPT, job_name
from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.stages.collect import JobRunRef, outcome_rows
from factory_tasks.stages.fanout import run_request, split_long_first, split_reusable
from factory_tasks.training.leaderboard import format_leaderboard, rank_outcomes
from tests.contract_factories import LIBRARIES, make_result, make_spec, result_fields

CURRENT = Provenance(code_version="0.1.0+test", library_versions=LIBRARIES)


def _spec(seed: int, estimator: str = "RandomForestClassifier", cpu: float = 1.0) -> ExperimentSpec:
    params = {"n_estimators": 10 + seed} if estimator == "RandomForestClassifier" else {}
    return make_spec(estimator, params, resources={"cpu": cpu, "memory_gb": 2.5})


def test_one_job_per_resource_profile():
    assert job_name({"cpu": 2, "memory_gb": 2.5}) == "model-factory-experiment-2cpu-2.5gb"
    assert job_name({"cpu": 1.0, "memory_gb": 4}) != job_name({"cpu": 2.0, "memory_gb": 4})
    assert _spec(1, cpu=2).job_name == "model-factory-experiment-2cpu-2.5gb"


def test_run_request_carries_the_spec_in_the_environment():
    spec = _spec(1, cpu=2)
    req = run_request(spec, factory_run_id="manual__1", code_version="v", project_id="p1",
                      job_ids={"model-factory-experiment-1cpu-2.5gb": "j1", spec.job_name: "j2"})
    assert ExperimentSpec.parse(req["environment"][ExperimentSpec.ENV], "env") == spec
    # what the plan looked up and created: a submission looks nothing up
    assert (req["project_id"], req["job_id"]) == ("p1", "j2")
    assert req["environment"]["MF_FACTORY_RUN_ID"] == "manual__1"
    assert req["script"] == EXPERIMENT_SCRIPT
    assert (req["cpu"], req["memory_gb"]) == (2.0, 2.5)
    assert req["result_file"] == f"experiments/{spec.experiment_id}/result.json"  # explains a failed run
    json.dumps(req)  # XCom-safe


def test_long_experiments_are_split_off_to_go_first():
    forest, boosting, logistic = (
        _spec(0, "RandomForestClassifier"), _spec(0, "HistGradientBoostingClassifier"), _spec(0, "LogisticRegression"))
    long, short = split_long_first([logistic, forest, boosting])
    assert long == [forest, boosting]  # cost hints 5 and 3 vs 1; order kept
    assert short == [logistic]
    assert split_long_first([logistic, logistic]) == ([logistic, logistic], [])
    assert split_long_first([]) == ([], [])


def test_a_result_is_reused_only_if_the_same_code_and_libraries_computed_it():
    same, new_code, new_sklearn, failed, absent = (_spec(i) for i in range(5))
    results = {
        same.experiment_id: make_result(same),
        new_code.experiment_id: make_result(new_code, code_version="0.1.0+older"),
        new_sklearn.experiment_id: make_result(new_sklearn, library_versions={**LIBRARIES, "sklearn": "0.9"}),
        failed.experiment_id: ExperimentResult(experiment_id=failed.experiment_id, status="failed", error="boom"),
    }
    to_run, reused = split_reusable([same, new_code, new_sklearn, failed, absent], results.get, CURRENT)
    assert reused == [same.experiment_id]
    assert to_run == {
        new_code.experiment_id: "code changed (0.1.0+older -> 0.1.0+test)",
        new_sklearn.experiment_id: "libraries changed (sklearn 0.9 -> 1.0)",
        failed.experiment_id: "the earlier run failed",
        absent.experiment_id: "new experiment",
    }


def test_an_invalid_earlier_result_is_run_again_not_a_blocker():
    spec = _spec(1)

    def read(_):
        raise ContractError("result file x", ["status: bad"])

    to_run, reused = split_reusable([spec], read, CURRENT)
    assert reused == [] and "the earlier result is invalid" in to_run[spec.experiment_id]


# --- the result contract: every malformed file is a clear error naming the file and the field


def _parse(payload) -> ExperimentResult:
    raw = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return ExperimentResult.parse(raw, "result file experiments/x/result.json")


def test_a_complete_result_round_trips():
    result = make_result(_spec(1))
    assert _parse(result.to_json()) == result


@pytest.mark.parametrize("mutate, field", [
    (lambda f: {"status": "succeeded"}, "experiment_id"),  # the forged minimal file
    (lambda f: {**f, "metrics": {}}, "ranking metric"),
    (lambda f: {**f, "artifact_path": None}, "artifact_path"),
    (lambda f: {**f, "cv_folds": "3"}, "cv_folds"),
    (lambda f: {k: v for k, v in f.items() if k != "code_version"}, "code_version"),
    (lambda f: {**f, "library_versions": {"numpy": "2"}}, "library_versions lacks sklearn"),
    (lambda f: {**f, "schema_version": 7}, "schema_version"),
    (lambda f: {**f, "status": "great"}, "status"),
    (lambda f: {**f, "surprise": 1}, "surprise"),
    (lambda f: {**f, "metrics": {"roc_auc": {"mean": 0.7, "std": 0.0, "folds": [0.7]}}}, "fold scores"),
    (lambda f: {**f, "error": "ValueError: x"}, "has no error"),
    (lambda f: {"experiment_id": f["experiment_id"], "status": "failed"}, "needs an error"),
])
def test_a_malformed_result_names_the_file_and_the_field(mutate, field):
    with pytest.raises(ContractError) as caught:
        _parse(mutate(result_fields(_spec(1))))
    assert "experiments/x/result.json" in str(caught.value)
    assert field in str(caught.value)


@pytest.mark.parametrize("raw", [b'{"status": "succ', b"\x00garbage", b""])
def test_a_truncated_or_garbage_result_is_a_contract_error_not_a_json_error(raw):
    with pytest.raises(ContractError, match="experiments/x/result.json.*not valid JSON"):
        _parse(raw)


# --- collection


def _plan(specs, to_run, reused) -> RunPlan:
    return RunPlan(
        factory_run_id="run", grid=GridRef(grid_path="g.yaml", grid_hash="g", table="t", max_parallel=2),
        snapshot=SnapshotRef(table="t", hash="ab" * 32, n_rows=600, project_path="snapshots/x.parquet"),
        provenance=CURRENT, specs=specs, to_run=to_run, reused=reused)


def test_outcome_rows_cover_every_spec_and_record_bad_results_as_failed():
    ok, failed, timed_out, forged, reused = (_spec(i) for i in range(5))
    results = {
        ok.experiment_id: make_result(ok),
        failed.experiment_id: ExperimentResult(experiment_id=failed.experiment_id, status="failed",
                                               error="ValueError: boom"),
        reused.experiment_id: make_result(reused),
    }
    reads: list[str] = []

    def read(eid):
        reads.append(eid)
        if eid == forged.experiment_id:
            raise ContractError(f"result file experiments/{eid}/result.json", ["metrics: missing"])
        return results.get(eid)

    runs = {s.experiment_id: JobRunRef(s.experiment_id, "j", f"r{i}", status) for i, (s, status) in enumerate(
        [(ok, "ENGINE_SUCCEEDED"), (failed, "ENGINE_FAILED"), (timed_out, "ENGINE_TIMEDOUT"),
         (forged, "ENGINE_SUCCEEDED")])}
    specs = [ok, failed, timed_out, forged, reused]
    plan = _plan(specs, {s.experiment_id: "new experiment" for s in specs[:4]}, [reused.experiment_id])
    rows = outcome_rows(plan, runs, read, recorded_at="t")
    assert sorted(reads) == sorted(s.experiment_id for s in specs)
    by_id = {r["experiment_id"]: r for r in rows}
    assert tuple(rows[0]) == OUTCOME_COLUMN_NAMES
    assert by_id[ok.experiment_id]["status"] == "succeeded" and by_id[ok.experiment_id]["job_run_id"] == "r0"
    assert by_id[ok.experiment_id]["run_reason"] == "new experiment"
    assert json.loads(by_id[ok.experiment_id]["library_versions"]) == LIBRARIES
    assert by_id[failed.experiment_id]["error"] == "ValueError: boom"
    assert by_id[timed_out.experiment_id]["status"] == "failed"
    assert "ENGINE_TIMEDOUT" in by_id[timed_out.experiment_id]["error"]
    assert "1 CPU and 2.5 GB" in by_id[timed_out.experiment_id]["error"]
    forged_row = by_id[forged.experiment_id]
    assert forged_row["status"] == "failed" and "result.json" in forged_row["error"] and "metrics" in forged_row["error"]
    assert by_id[reused.experiment_id]["run_status"] == "REUSED"
    assert by_id[reused.experiment_id]["run_reason"].startswith("reused")


def test_leaderboard_ranks_by_metric_direction_and_lists_failures():
    def row(eid, metric, score, status="succeeded", error=None):
        r = dict.fromkeys(OUTCOME_COLUMN_NAMES)
        r.update(experiment_id=eid, family="lr", params_json='{"C": 1}', status=status, error=error,
                 ranking_metric=metric, ranking_score=score, roc_auc_mean=score, roc_auc_std=0.01)
        return r

    frame = pd.DataFrame([row("a", "log_loss", 0.5), row("b", "log_loss", 0.3), row("c", "log_loss", None, "failed", "boom")])
    assert list(rank_outcomes(frame)["experiment_id"]) == ["b", "a"]  # lower log loss is better
    frame["run_reason"] = ["new experiment", "code changed (v1 -> v2)", "code changed (v1 -> v2)"]
    text = format_leaderboard(frame)
    assert "Why each ran or was reused: 1 new experiment; 2 code changed (v1 -> v2)" in text
    frame["run_reason"] = ["code changed (v0 -> v2)", "code changed (v1 -> v2)", "code changed (v1 -> v2)"]
    assert "Why each ran or was reused: 3 code changed (from 2 earlier versions)" in format_leaderboard(frame)
    assert text.index(" b ") < text.index(" a ")
    assert "1 failed" in text and "boom" in text


def test_leaderboard_shows_the_uplift_with_its_interval_across_folds_and_marks_one_across_zero():
    def row(eid, score, uplift_folds):
        r = dict.fromkeys(OUTCOME_COLUMN_NAMES)
        r.update(experiment_id=eid, family="lr", params_json='{"C": 1, "penalty": "l2"}', status="succeeded",
                 ranking_metric="roc_auc", ranking_score=score, roc_auc_mean=score, roc_auc_std=0.01,
                 policy_value_mean=5.0, policy_uplift_mean=float(np.mean(uplift_folds)) if uplift_folds else None,
                 policy_uplift_folds=json.dumps(uplift_folds) if uplift_folds else None, fit_time_mean=1.0)
        return r

    frame = pd.DataFrame([row("above", 0.8, [0.50, 0.52, 0.48, 0.51, 0.49]),
                          row("across", 0.7, [0.5, -0.4, 0.3, -0.1, 0.2]),
                          row("nofolds", 0.6, None)])
    lines = format_leaderboard(frame).splitlines()
    header = lines[1]
    assert "policy_uplift [95% interval]" in header and "roc_auc" in header and "log_loss" not in header
    assert header.index("roc_auc") < header.index("policy_uplift")  # beside AUC
    above, across, nofolds = lines[2:5]
    # k = 5, Nadeau-Bengio corrected: half width t_{0.975,4} * sd * sqrt(1/5 + 1/4)
    half = 2.776445 * np.std([0.5, -0.4, 0.3, -0.1, 0.2], ddof=1) * math.sqrt(1 / 5 + 1 / 4)
    assert f"+0.1000 [{0.1 - half:+.4f}, {0.1 + half:+.4f}] ≈0" in across
    assert "+0.5000 [+0.4" in above and "≈0" not in above
    assert "≈0" not in nofolds and "C=1, penalty=l2" in nofolds
    assert any(line.startswith("≈0: the interval includes 0, not distinguishable from sending everyone the "
                               "best offer") for line in lines)
    assert max(len(line) for line in lines) <= 160
