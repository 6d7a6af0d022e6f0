"""factory_tasks.summary: build, atomic write, strict read, refresh from a real SQLite store."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from factory_tasks.outcome_store import OUTCOME_COLUMN_NAMES, OutcomeStore, RunContext, outcome_row
from factory_tasks.summary import (
    SUMMARY_COLUMN_NAMES,
    SUMMARY_DTYPES,
    SummaryError,
    build_summary,
    read_summary,
    refresh_summary,
    write_summary_atomic,
)


class SqliteFileHook:
    """The DB-API surface OutcomeStore uses, on a real SQLite file (like SqliteHook)."""

    conn_type = "sqlite"

    def __init__(self, path):
        self.path = str(path)

    def get_conn(self):
        return sqlite3.connect(self.path)


def _spec(experiment_id, family="random_forest", metric="roc_auc", params=None):
    return {
        "experiment_id": experiment_id,
        "family": family,
        "estimator": "RandomForestClassifier" if family == "random_forest" else "LogisticRegression",
        "params": params or {"n_estimators": 100},
        "cv_folds": 3,
        "metrics": ["roc_auc", "log_loss"],
        "ranking_metric": metric,
        "resources": {"cpu": 1, "memory_gb": 2},
        "data_snapshot": {"path": "snap.parquet", "hash": "abc123"},
    }


def _result(score, metric="roc_auc"):
    folds = [score - 0.01, score, score + 0.01]
    return {
        "status": "succeeded",
        "metrics": {metric: {"mean": score, "std": 0.01, "folds": folds}},
        "fit_time": {"mean": 1.0},
        "score_time": {"mean": 0.1},
        "wall_time_s": 4.0,
        "artifact_path": "experiments/x/model.skops",
        "started_at": "2026-03-01T00:00:00+00:00",
        "finished_at": "2026-03-01T00:01:00+00:00",
    }


def _rows():
    run_a = RunContext("run_a", "g1", "2026-03-01T10:00:00+00:00")
    run_b = RunContext("run_b", "g1", "2026-03-02T10:00:00+00:00")
    return [
        outcome_row(_spec("b0"), _result(0.70), run_b),
        outcome_row(_spec("a1"), _result(0.60), run_a),
        outcome_row(_spec("a2"), _result(0.80), run_a),
        outcome_row(_spec("a3"), None, RunContext("run_a", "g1", "2026-03-01T10:00:00+00:00", run_status="failed")),
        outcome_row(_spec("a4", metric="log_loss"), _result(0.30, "log_loss"), run_a),
        outcome_row(_spec("a5", metric="log_loss"), _result(0.20, "log_loss"), run_a),
    ]


def test_build_summary_has_documented_columns_dtypes_and_stable_order():
    frame = build_summary(pd.DataFrame(_rows(), columns=list(OUTCOME_COLUMN_NAMES)))
    assert tuple(frame.columns) == SUMMARY_COLUMN_NAMES
    assert {c: str(frame[c].dtype) for c in frame.columns} == {
        c: ("string" if d == "string" else d) for c, d in SUMMARY_DTYPES.items()
    }
    # Oldest recorded first; within a run the best first (log_loss: lower is better); failed last.
    assert list(frame["experiment_id"]) == ["a2", "a1", "a5", "a4", "a3", "b0"]
    run_a = frame[frame["factory_run_id"] == "run_a"]
    assert run_a["experiment_id"].iloc[-1] == "a3"  # no score: last
    assert list(run_a[run_a["ranking_metric"] == "log_loss"]["experiment_id"]) == ["a5", "a4"]
    assert frame["experiment_id"].iloc[-1] == "b0"
    # Same input in another order gives the same output.
    shuffled = pd.DataFrame(list(reversed(_rows())), columns=list(OUTCOME_COLUMN_NAMES))
    pd.testing.assert_frame_equal(build_summary(shuffled), frame)


def test_build_summary_rejects_missing_columns():
    with pytest.raises(ValueError, match="lacks summary columns: status"):
        build_summary(pd.DataFrame(_rows()).drop(columns=["status"]))


def test_write_then_read_round_trips(tmp_path):
    frame = build_summary(pd.DataFrame(_rows(), columns=list(OUTCOME_COLUMN_NAMES)))
    path = tmp_path / "nested" / "experiments_summary.csv"
    write_summary_atomic(frame, path)
    back = read_summary(path)
    pd.testing.assert_frame_equal(back, frame)
    assert json.loads(back.loc[back["experiment_id"] == "a2", "roc_auc_folds"].iat[0]) == pytest.approx([0.79, 0.8, 0.81])
    assert back.loc[back["experiment_id"] == "a3", "error"].iat[0].startswith("the job run ended failed")
    assert [p.name for p in path.parent.iterdir()] == ["experiments_summary.csv"]  # no temp left


def test_empty_table_gives_a_valid_csv_with_headers(tmp_path):
    path = tmp_path / "s.csv"
    write_summary_atomic(build_summary(pd.DataFrame(columns=list(OUTCOME_COLUMN_NAMES))), path)
    assert path.read_text().strip().split(",") == list(SUMMARY_COLUMN_NAMES)
    back = read_summary(path)
    assert back.empty and tuple(back.columns) == SUMMARY_COLUMN_NAMES


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "s.csv"
    frame = build_summary(pd.DataFrame(_rows(), columns=list(OUTCOME_COLUMN_NAMES)))
    write_summary_atomic(frame, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("factory_tasks.summary.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_summary_atomic(frame.iloc[:1], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_write_rejects_a_frame_with_other_columns(tmp_path):
    with pytest.raises(ValueError, match="SUMMARY_COLUMNS"):
        write_summary_atomic(pd.DataFrame({"a": [1]}), tmp_path / "s.csv")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist yet"),
        ("", "is empty"),
        ("timestamp,classifier,accuracy\n1,2,3\n", "does not have the expected header"),
        (",".join(reversed(SUMMARY_COLUMN_NAMES)) + "\n", "wrong order"),
        (",".join(SUMMARY_COLUMN_NAMES) + "\n" + ",".join(["x"] * len(SUMMARY_COLUMN_NAMES)) + "\n", "could not be parsed"),
        (",".join(SUMMARY_COLUMN_NAMES) + "\n" + "a,b,c\n" + ",".join(["1"] * (len(SUMMARY_COLUMN_NAMES) + 3)) + "\n", "could not be parsed"),
    ],
    ids=["missing", "empty", "wrong-header", "wrong-order", "bad-number", "ragged"],
)
def test_read_summary_explains_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "s.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SummaryError, match=message) as info:
        read_summary(path)
    assert str(path) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_refresh_summary_reads_the_real_store(tmp_path):
    hook = SqliteFileHook(tmp_path / "warehouse.db")
    store = OutcomeStore(hook)
    rows = _rows()
    store.replace_run("run_a", [r for r in rows if r["factory_run_id"] == "run_a"])
    store.replace_run("run_b", [r for r in rows if r["factory_run_id"] == "run_b"])
    path = tmp_path / "out" / "experiments_summary.csv"
    assert refresh_summary(hook, path) == 6
    back = read_summary(path)
    assert set(back["experiment_id"]) == {"a1", "a2", "a3", "a4", "a5", "b0"}
    # Idempotent; and an empty warehouse gives a header-only file.
    assert refresh_summary(hook, path) == 6
    empty_hook = SqliteFileHook(tmp_path / "empty.db")
    assert refresh_summary(empty_hook, path) == 0
    assert read_summary(path).empty
