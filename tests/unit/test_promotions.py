"""factory_tasks.promotions: rules, durable append-only records, concurrency, corruption."""

from __future__ import annotations

import json
import multiprocessing
from datetime import datetime, timezone

import pandas as pd
import pytest

from factory_tasks.promotions import (
    CorruptPromotionsError,
    Promotion,
    PromotionRefused,
    latest_promotion,
    load_promotions,
    promote,
)
from factory_tasks.outcome_store import OUTCOME_COLUMN_NAMES

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)


def _summary() -> pd.DataFrame:
    rows = [
        dict(factory_run_id="run_a", experiment_id="e1", family="random_forest",
             estimator="RandomForestClassifier", status="succeeded", error=None,
             ranking_metric="roc_auc", ranking_score=0.81),
        dict(factory_run_id="run_a", experiment_id="e2", family="logistic_regression",
             estimator="LogisticRegression", status="failed", error="ValueError: boom",
             ranking_metric="roc_auc", ranking_score=None),
        dict(factory_run_id="run_b", experiment_id="e1", family="random_forest",
             estimator="RandomForestClassifier", status="succeeded", error=None,
             ranking_metric="roc_auc", ranking_score=0.79),
        dict(factory_run_id="run_b", experiment_id="e3", family="logistic_regression",
             estimator="LogisticRegression", status="succeeded", error=None,
             ranking_metric="roc_auc", ranking_score=0.75),
    ]
    return pd.DataFrame(rows).reindex(columns=list(OUTCOME_COLUMN_NAMES))


def test_promote_writes_a_durable_record(tmp_path):
    path = tmp_path / "sub" / "promotions.jsonl"
    p = promote(_summary(), "e1", "run_a", " alice ", " best AUC ", path, NOW)
    assert p == Promotion("e1", "run_a", "alice", "best AUC", "2026-03-04T12:00:00+00:00",
                          "random_forest", "RandomForestClassifier", "roc_auc", 0.81)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["experiment_id"] == "e1"
    assert latest_promotion(path) == p


def test_promoted_at_is_utc(tmp_path):
    from datetime import timedelta
    other = datetime(2026, 3, 4, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    p = promote(_summary(), "e3", "run_b", "bob", "ok", tmp_path / "p.jsonl", other)
    assert p.promoted_at == "2026-03-04T12:00:00+00:00"
    with pytest.raises(ValueError, match="timezone-aware"):
        promote(_summary(), "e3", "run_b", "bob", "ok", tmp_path / "p.jsonl", datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "experiment_id, run, reviewer, reason, message",
    [
        ("e2", "run_a", "alice", "why not", "failed and cannot be promoted (error: ValueError: boom)"),
        ("nope", "run_a", "alice", "why", "Experiment nope in factory run run_a is not in the summary"),
        ("e3", "run_a", "alice", "why", "is not in the summary"),
        ("e1", "run_a", "alice", "   ", "needs a reason"),
        ("e1", "run_a", "", "why", "needs the reviewer"),
        ("e1", None, "alice", "why", "appears in several factory runs (run_a, run_b)"),
    ],
    ids=["failed", "unknown", "wrong-run", "empty-reason", "empty-reviewer", "ambiguous"],
)
def test_refusals_say_why_and_write_nothing(tmp_path, experiment_id, run, reviewer, reason, message):
    path = tmp_path / "p.jsonl"
    with pytest.raises(PromotionRefused) as info:
        promote(_summary(), experiment_id, run, reviewer, reason, path, NOW)
    assert message in str(info.value)
    assert not path.exists()


def test_run_can_be_inferred_when_unique(tmp_path):
    p = promote(_summary(), "e3", None, "alice", "only one", tmp_path / "p.jsonl", NOW)
    assert p.factory_run_id == "run_b"


def test_latest_promotion_per_run_is_the_last_appended(tmp_path):
    path = tmp_path / "p.jsonl"
    assert latest_promotion(path) is None
    promote(_summary(), "e1", "run_b", "alice", "first", path, NOW)
    promote(_summary(), "e1", "run_a", "alice", "other run", path, NOW)
    promote(_summary(), "e3", "run_b", "bob", "changed my mind", path, NOW)
    assert latest_promotion(path, "run_b").experiment_id == "e3"
    assert latest_promotion(path, "run_a").reason == "other run"
    assert latest_promotion(path).reviewer == "bob"
    assert latest_promotion(path, "run_c") is None


def test_corrupt_lines_are_reported_not_dropped(tmp_path):
    path = tmp_path / "p.jsonl"
    promote(_summary(), "e1", "run_a", "alice", "good", path, NOW)
    with open(path, "a") as f:
        f.write('{"experiment_id": "e9"}\n')
        f.write("not json at all")  # a torn line with no newline
    log = load_promotions(path)
    assert len(log.promotions) == 1
    assert [p.split(":")[0] for p in log.problems] == ["line 2", "line 3"]
    assert "missing fields" in log.problems[0]
    with pytest.raises(CorruptPromotionsError, match="2 corrupt promotion record"):
        latest_promotion(path)
    # The next append starts on its own line: the torn fragment stays one bad line.
    promote(_summary(), "e3", "run_b", "bob", "after", path, NOW)
    log = load_promotions(path)
    assert [p.experiment_id for p in log.promotions] == ["e1", "e3"] and len(log.problems) == 2


def _writer(path, n, who):
    summary = _summary()
    for i in range(n):
        promote(summary, "e3", "run_b", who, f"reason {i} " + "x" * 2000, path, NOW)


def test_concurrent_writers_never_interleave(tmp_path):
    path = str(tmp_path / "p.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, 40, f"w{k}")) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = load_promotions(path)
    assert log.problems == []
    assert len(log.promotions) == 160
    assert {p.reviewer for p in log.promotions} == {"w0", "w1", "w2", "w3"}
