"""factory_tasks.warehouse.promotions: rules, the append-only model_promotions table on real SQLite,
concurrent writers, and rows that break the contract."""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from factory_tasks.core.contracts import ContractError, Promotion
from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.warehouse.promotions import (
    PROMOTION_COLUMN_NAMES,
    PROMOTIONS_TABLE,
    PromotionRefused,
    latest_promotion,
    load_promotions,
    promote,
)

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)
E1, E2, E3 = "00000000000000e1", "00000000000000e2", "00000000000000e3"


# ``hook`` (tests/unit/conftest.py): a real SQLite warehouse behind Airflow's SqliteHook.


def _summary() -> pd.DataFrame:
    rows = [
        dict(factory_run_id="run_a", experiment_id=E1, family="random_forest",
             estimator="RandomForestClassifier", status="succeeded", error=None,
             ranking_metric="roc_auc", ranking_score=0.81),
        dict(factory_run_id="run_a", experiment_id=E2, family="logistic_regression",
             estimator="LogisticRegression", status="failed", error="ValueError: boom",
             ranking_metric="roc_auc", ranking_score=None),
        dict(factory_run_id="run_b", experiment_id=E1, family="random_forest",
             estimator="RandomForestClassifier", status="succeeded", error=None,
             ranking_metric="roc_auc", ranking_score=0.79),
        dict(factory_run_id="run_b", experiment_id=E3, family="logistic_regression",
             estimator="LogisticRegression", status="succeeded", error=None,
             ranking_metric="roc_auc", ranking_score=0.75),
    ]
    return pd.DataFrame(rows).reindex(columns=list(OUTCOME_COLUMN_NAMES))


def _sql(hook, statement: str, params: tuple = ()) -> list[tuple]:
    conn = hook.get_conn()
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def _table_rows(hook) -> list[tuple]:
    return _sql(hook, f"SELECT {', '.join(PROMOTION_COLUMN_NAMES)} FROM {PROMOTIONS_TABLE}")


def test_promote_appends_one_row_to_model_promotions(hook):
    p = promote(_summary(), E1, "run_a", " alice ", " best AUC ", hook, NOW)
    assert p == Promotion(experiment_id=E1, factory_run_id="run_a", reviewer="alice", reason="best AUC",
                          promoted_at="2026-03-04T12:00:00+00:00", family="random_forest",
                          estimator="RandomForestClassifier", ranking_metric="roc_auc", ranking_score=0.81)
    assert PROMOTIONS_TABLE == Promotion.TABLE == "model_promotions"
    assert _table_rows(hook) == [(1, E1, "run_a", "alice", "best AUC", "2026-03-04T12:00:00+00:00",
                                  "random_forest", "RandomForestClassifier", "roc_auc", 0.81)]
    assert latest_promotion(hook) == p


def test_promoted_at_is_utc(hook):
    other = datetime(2026, 3, 4, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    p = promote(_summary(), E3, "run_b", "bob", "ok", hook, other)
    assert p.promoted_at == "2026-03-04T12:00:00+00:00"
    with pytest.raises(ValueError, match="timezone-aware"):
        promote(_summary(), E3, "run_b", "bob", "ok", hook, datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "experiment_id, run, reviewer, reason, message",
    [
        (E2, "run_a", "alice", "why not", "failed and cannot be promoted (error: ValueError: boom)"),
        ("00000000000000ff", "run_a", "alice", "why", "in factory run run_a is not in the summary"),
        (E3, "run_a", "alice", "why", "is not in the summary"),
        (E1, "run_a", "alice", "   ", "needs a reason"),
        (E1, "run_a", "", "why", "needs a signed-in reviewer"),
        (E1, "run_a", None, "why", "needs a signed-in reviewer"),
        (E1, None, "alice", "why", "appears in several factory runs (run_a, run_b)"),
    ],
    ids=["failed", "unknown", "wrong-run", "empty-reason", "empty-reviewer", "no-reviewer", "ambiguous"],
)
def test_refusals_say_why_and_write_nothing(hook, experiment_id, run, reviewer, reason, message):
    with pytest.raises(PromotionRefused) as info:
        promote(_summary(), experiment_id, run, reviewer, reason, hook, NOW)
    assert message in str(info.value)
    assert load_promotions(hook).promotions == []


def test_a_summary_row_that_makes_no_valid_promotion_is_refused(hook):
    summary = _summary()
    summary.loc[3, "family"] = None
    with pytest.raises(PromotionRefused, match="does not make a valid promotion.*family"):
        promote(summary, E3, "run_b", "alice", "why", hook, NOW)
    bad_id = _summary()
    bad_id.loc[3, "experiment_id"] = "not-hex"
    with pytest.raises(PromotionRefused, match="experiment_id"):
        promote(bad_id, "not-hex", "run_b", "alice", "why", hook, NOW)
    assert load_promotions(hook).promotions == []


def test_run_can_be_inferred_when_unique(hook):
    p = promote(_summary(), E3, None, "alice", "only one", hook, NOW)
    assert p.factory_run_id == "run_b"


def test_latest_promotion_per_run_is_the_last_promoted(hook):
    assert latest_promotion(hook) is None  # no table yet: nothing promoted, nothing created
    assert _sql(hook, "SELECT name FROM sqlite_master") == []
    promote(_summary(), E1, "run_b", "alice", "first", hook, NOW)
    promote(_summary(), E1, "run_a", "alice", "other run", hook, NOW + timedelta(seconds=1))
    promote(_summary(), E3, "run_b", "bob", "changed my mind", hook, NOW + timedelta(seconds=2))
    assert latest_promotion(hook, "run_b").experiment_id == E3
    assert latest_promotion(hook, "run_a").reason == "other run"
    assert latest_promotion(hook).reviewer == "bob"
    assert latest_promotion(hook, "run_c") is None
    # a review window that closed before the change of mind sees the first pick
    assert latest_promotion(hook, "run_b", promoted_by=NOW + timedelta(seconds=1)).reason == "first"
    assert latest_promotion(hook, "run_b", promoted_by=NOW - timedelta(seconds=1)) is None
    # The order is promoted_at, not the order rows come back in.
    promote(_summary(), E1, "run_b", "carol", "back-dated", hook, NOW - timedelta(days=1))
    assert latest_promotion(hook, "run_b").reviewer == "bob"
    assert [p.reviewer for p in load_promotions(hook).promotions] == ["carol", "alice", "alice", "bob"]


def test_the_table_is_append_only_and_never_recreated(hook):
    promote(_summary(), E1, "run_a", "alice", "one", hook, NOW)
    promote(_summary(), E1, "run_a", "alice", "one", hook, NOW)  # the same pick twice: two rows
    assert len(_table_rows(hook)) == 2


def _insert_raw(hook, **values):
    row = {"schema_version": 1, "experiment_id": E1, "factory_run_id": "run_a", "reviewer": "alice",
           "reason": "r", "promoted_at": "2026-03-04T12:00:00+00:00", "family": "random_forest",
           "estimator": "RandomForestClassifier", "ranking_metric": "roc_auc", "ranking_score": 0.8, **values}
    _sql(hook, f"INSERT INTO {PROMOTIONS_TABLE} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
         tuple(row.values()))


@pytest.mark.parametrize(
    "values, field",
    [
        ({"reviewer": None}, "reviewer: Field required"),
        ({"reviewer": ""}, "reviewer: String should have at least 1 character"),
        ({"schema_version": 2}, "schema_version: Input should be 1"),
        ({"experiment_id": "e9"}, "experiment_id: String should match pattern"),
        ({"ranking_score": "high"}, "ranking_score: Input should be a valid number"),
        ({"promoted_at": "yesterday"}, "promoted_at: 'yesterday' is not an ISO 8601 time"),
        ({"promoted_at": "2026-03-05T12:00:00"}, "is not an ISO 8601 time with a timezone"),
    ],
    ids=["null-reviewer", "empty-reviewer", "unknown-version", "bad-id", "text-score", "bad-time", "naive-time"],
)
def test_a_row_that_breaks_the_contract_is_reported_not_dropped(hook, values, field):
    promote(_summary(), E1, "run_a", "alice", "good", hook, NOW)
    _insert_raw(hook, factory_run_id="run_x", **values)
    log = load_promotions(hook)
    assert [p.reason for p in log.promotions] == ["good"]
    [problem] = log.problems
    assert isinstance(problem, ContractError)
    assert problem.source.startswith("model_promotions row ") and "factory_run_id='run_x'" in problem.source
    assert any(field in p for p in problem.problems), problem.problems
    # A deploy must not act on a table it cannot fully read.
    with pytest.raises(ContractError) as info:
        latest_promotion(hook, "run_a")
    assert "table model_promotions" in str(info.value) and field in str(info.value)


def _writer(hook, n, who):
    summary = _summary()
    for i in range(n):
        promote(summary, E3, "run_b", who, f"reason {i} " + "x" * 2000, hook, NOW + timedelta(microseconds=i))


def test_concurrent_writers_lose_nothing(hook):
    promote(_summary(), E1, "run_a", "first", "creates the table", hook, NOW)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(hook, 25, f"w{k}")) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    log = load_promotions(hook)
    assert log.problems == []
    assert len(log.promotions) == 101
    assert {p.reviewer for p in log.promotions} == {"first", "w0", "w1", "w2", "w3"}
