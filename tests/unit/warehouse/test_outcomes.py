"""The outcome store on a real SQLite file through Airflow's SqliteHook."""

from __future__ import annotations

import json
import math

import pytest

from factory_tasks.core.contracts import ExperimentResult, ExperimentSpec
from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.warehouse.outcomes import (
    OUTCOMES_TABLE,
    OutcomeSchemaError,
    OutcomeStore,
    RunContext,
    outcome_row,
)
from tests.contract_factories import make_result, make_spec


def _spec(seed: str, **params) -> ExperimentSpec:
    return make_spec("LogisticRegression", params or {"C": 1.0 + int(seed.strip("e"))},
                     family="logistic_regression", metrics=["roc_auc", "log_loss"])


def _result(spec: ExperimentSpec, auc: float) -> ExperimentResult:
    return make_result(spec, auc, metrics={
        "roc_auc": {"mean": auc, "std": 0.01, "folds": [auc - 0.01, auc, auc + 0.01]},
        "log_loss": {"mean": float("nan"), "std": float("inf"), "folds": [0.4, float("nan"), 0.4]}})


def _ctx(run_id: str) -> RunContext:
    return RunContext(factory_run_id=run_id, grid_hash="g", recorded_at="2026-11-27T10:00:00+00:00",
                      job_id="j", job_run_id="r", run_status="ENGINE_SUCCEEDED")


def test_row_has_documented_columns_and_nonfinite_metrics_become_null():
    row = outcome_row(_spec("e1"), _result(_spec("e1"), 0.7), _ctx("run-a"))
    assert tuple(row) == OUTCOME_COLUMN_NAMES
    assert row["ranking_score"] == pytest.approx(0.7)
    assert row["log_loss_mean"] is None and row["log_loss_std"] is None
    assert json.loads(row["log_loss_folds"]) == [0.4, None, 0.4]
    assert row["accuracy_mean"] is None and row["accuracy_folds"] is None


def test_missing_result_is_recorded_as_failure_with_reason():
    ctx = RunContext("run-a", "g", "t", "j", "r", "ENGINE_TIMEDOUT")
    row = outcome_row(_spec("e1"), None, ctx)
    assert row["status"] == "failed"
    assert "ENGINE_TIMEDOUT" in row["error"] and "no result file" in row["error"]


def test_replace_run_is_idempotent_and_leaves_other_runs_alone(hook):
    store = OutcomeStore(hook)
    rows_a = [outcome_row(_spec(f"e{i}"), _result(_spec(f"e{i}"), 0.6 + i / 100), _ctx("run-a")) for i in range(3)]
    store.replace_run("run-a", rows_a)
    store.replace_run("run-a", rows_a)  # a retry
    store.replace_run("run-b", [outcome_row(_spec("e9"), _result(_spec("e9"), 0.9), _ctx("run-b"))])
    assert len(store.read("run-a")) == 3
    store.replace_run("run-a", rows_a[:1])  # a rerun that recorded fewer rows replaces, never appends
    frame = store.read()
    assert sorted(frame["factory_run_id"]) == ["run-a", "run-b"]
    assert list(frame.columns) == list(OUTCOME_COLUMN_NAMES)
    assert math.isclose(frame.loc[frame.factory_run_id == "run-b", "roc_auc_mean"].item(), 0.9)


def test_replace_run_refuses_rows_of_another_run_and_keeps_what_was_recorded(hook):
    store = OutcomeStore(hook)
    store.replace_run("run-a", [outcome_row(_spec("e1"), _result(_spec("e1"), 0.7), _ctx("run-a"))])
    stray = outcome_row(_spec("e2"), _result(_spec("e2"), 0.8), _ctx("run-b"))
    with pytest.raises(ValueError, match="run-b"):
        store.replace_run("run-a", [stray])
    assert list(store.read()["experiment_id"]) == [_spec("e1").experiment_id]


def test_strings_with_quotes_newlines_and_unicode_round_trip(hook):
    store = OutcomeStore(hook)
    nasty = "it's \"quoted\"\nline two; DROP TABLE experiment_outcomes; -- ünïcødé ✓"
    spec = make_spec("LogisticRegression", {"solver": nasty})
    failed = ExperimentResult(experiment_id=spec.experiment_id, status="failed", error=nasty)
    row = outcome_row(spec, failed, _ctx("run-a"))
    store.replace_run("run-a", [row])
    back = store.read("run-a").iloc[0]
    assert back["error"] == nasty
    assert json.loads(back["params_json"]) == {"solver": nasty}


def test_a_table_of_an_older_layout_is_a_clear_error_not_a_silent_mismatch(hook):
    conn = hook.get_conn()
    with conn:
        conn.execute(f"CREATE TABLE {OUTCOMES_TABLE} (factory_run_id TEXT, experiment_id TEXT)")
    conn.close()
    with pytest.raises(OutcomeSchemaError, match=r"lacks column\(s\) family.*make clean.*ALTER TABLE"):
        OutcomeStore(hook).read()
