"""Planning the fan-out and collecting outcomes, without any server."""

from __future__ import annotations

import json

from factory_tasks.collect import JobRunRef, outcome_rows, read_rows_file, write_rows_file
from factory_tasks.fanout import SPEC_ENV, job_name, result_path, run_request, split_long_first, split_reusable
from factory_tasks.leaderboard import format_leaderboard, rank_outcomes
from factory_tasks.outcome_store import OUTCOME_COLUMN_NAMES

import pandas as pd


def _spec(eid: str, cpu: float = 1, family: str = "random_forest") -> dict:
    return {
        "experiment_id": eid, "family": family, "estimator": "RandomForestClassifier",
        "params": {"n_estimators": 10}, "cv_folds": 3, "metrics": ["roc_auc", "log_loss"],
        "ranking_metric": "roc_auc", "resources": {"cpu": cpu, "memory_gb": 2.5},
        "economics": {}, "random_state": 0, "data_snapshot": {"path": "snapshots/s.parquet", "hash": "h"},
    }


def test_one_job_per_resource_profile():
    assert job_name({"cpu": 2, "memory_gb": 2.5}) == "model-factory-experiment-2cpu-2.5gb"
    assert job_name({"cpu": 1.0, "memory_gb": 4}) != job_name({"cpu": 2.0, "memory_gb": 4})


def test_run_request_carries_the_spec_in_the_environment():
    req = run_request(_spec("e1", cpu=2), factory_run_id="manual__1", code_version="v", max_active=3)
    assert json.loads(req["environment"][SPEC_ENV])["experiment_id"] == "e1"
    assert req["environment"]["MF_FACTORY_RUN_ID"] == "manual__1"
    assert (req["cpu"], req["memory_gb"], req["max_active_runs_per_dag_run"]) == (2.0, 2.5, 3)
    json.dumps(req)  # XCom-safe


def test_long_experiments_are_split_off_to_go_first():
    forest, boosting, logistic = (
        dict(_spec(f"e{i}"), estimator=name)
        for i, name in enumerate(["RandomForestClassifier", "HistGradientBoostingClassifier", "LogisticRegression"])
    )
    long, short = split_long_first([logistic, forest, boosting])
    assert [s["experiment_id"] for s in long] == ["e0", "e1"]  # cost hints 5 and 3 vs 1; order kept
    assert short == [logistic]
    # one estimator, or none: nothing is short
    assert split_long_first([logistic, logistic]) == ([logistic, logistic], [])
    assert split_long_first([]) == ([], [])


def test_only_succeeded_results_are_reused():
    results = {"e1": {"status": "succeeded"}, "e2": {"status": "failed"}}
    to_run, reused = split_reusable([_spec("e1"), _spec("e2"), _spec("e3")], results.get)
    assert [s["experiment_id"] for s in to_run] == ["e2", "e3"]
    assert reused == ["e1"]
    assert result_path("e1") == "experiments/e1/result.json"


def test_outcome_rows_cover_every_spec_and_read_each_result_once(tmp_path):
    reads: list[str] = []
    results = {
        "e1": {"status": "succeeded", "metrics": {"roc_auc": {"mean": 0.7, "std": 0.0, "folds": [0.7]}}},
        "e2": {"status": "failed", "error": "ValueError: boom"},
    }

    def read(eid):
        reads.append(eid)
        return results.get(eid)

    runs = {"e1": JobRunRef("e1", "j", "r1", "ENGINE_SUCCEEDED"), "e2": JobRunRef("e2", "j", "r2", "ENGINE_FAILED"),
            "e3": JobRunRef("e3", "j", "r3", "ENGINE_TIMEDOUT")}
    rows = outcome_rows([_spec("e1"), _spec("e2"), _spec("e3")], runs, read,
                        factory_run_id="run", grid_hash="g", recorded_at="t")
    assert sorted(reads) == ["e1", "e2", "e3"]
    by_id = {r["experiment_id"]: r for r in rows}
    assert by_id["e1"]["status"] == "succeeded" and by_id["e1"]["job_run_id"] == "r1"
    assert by_id["e2"]["error"] == "ValueError: boom"
    assert by_id["e3"]["status"] == "failed" and "ENGINE_TIMEDOUT" in by_id["e3"]["error"]
    path = write_rows_file(rows, tmp_path / "out" / "rows.jsonl")
    assert read_rows_file(path) == rows


def test_leaderboard_ranks_by_metric_direction_and_lists_failures():
    def row(eid, metric, score, status="succeeded", error=None):
        r = dict.fromkeys(OUTCOME_COLUMN_NAMES)
        r.update(experiment_id=eid, family="lr", params_json='{"C": 1}', status=status, error=error,
                 ranking_metric=metric, ranking_score=score, roc_auc_mean=score, roc_auc_std=0.01)
        return r

    frame = pd.DataFrame([row("a", "log_loss", 0.5), row("b", "log_loss", 0.3), row("c", "log_loss", None, "failed", "boom")])
    assert list(rank_outcomes(frame)["experiment_id"]) == ["b", "a"]  # lower log loss is better
    text = format_leaderboard(frame)
    assert text.index(" b ") < text.index(" a ")
    assert "1 failed" in text and "boom" in text
