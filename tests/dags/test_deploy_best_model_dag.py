"""deploy_best_model's own task code, run in-process against a real SQLite warehouse: which
factory run an asset-triggered run reviews and for how long, an unknown or undeployable
factory run failing at once (no retries, no review window), bad input failing without retries,
and the shape that lets an answered review end the run without waiting for the window."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import set_current_context

from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.warehouse.outcomes import OutcomeStore
from tests.sqlite_warehouse import SqliteWarehouse

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_ID = "deploy_best_model"
T0 = datetime(2026, 12, 1, 8, tzinfo=timezone.utc)


@pytest.fixture
def warehouse(tmp_path, monkeypatch) -> SqliteWarehouse:
    """A SQLite warehouse behind the DAG's connection, with factory runs ``run_old`` and
    ``run_new`` (one succeeded experiment each) and ``run_failed`` (none succeeded)."""
    from stack.env import sqlite_connection

    db = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE", sqlite_connection(db))
    hook = SqliteWarehouse(db)

    def row(run_id: str, experiment_id: str, status: str) -> dict:
        out = dict.fromkeys(OUTCOME_COLUMN_NAMES)
        out.update(factory_run_id=run_id, experiment_id=experiment_id, family="logistic_regression",
                   estimator="LogisticRegression", params_json='{"C": 1.0}', cv_folds=3, status=status,
                   ranking_metric="roc_auc", recorded_at=T0.isoformat())
        if status == "succeeded":
            out.update(ranking_score=0.7, roc_auc_mean=0.7, roc_auc_std=0.01)
        else:
            out.update(error="the job run ended failed and left no result file")
        return out

    store = OutcomeStore(hook)
    store.replace_run("run_old", [row("run_old", "0ld0000000000001", "succeeded")])
    store.replace_run("run_new", [row("run_new", "0ew0000000000001", "succeeded")])
    store.replace_run("run_failed", [row("run_failed", "fa11000000000001", "failed")])
    return hook


def _event(factory_run_id: str, at: datetime, source_run_id: str | None = None,
           review_window_minutes: float | None = None,
           loop_config_path: str | None = None, challenger_share: float | None = None) -> AssetEventDagRunReferenceResult:
    """An experiment_outcomes event as the task runner hands it to a task (``extra`` as
    model_factory's record_outcomes sets it)."""
    return AssetEventDagRunReferenceResult(
        asset={"name": "experiment_outcomes", "uri": "model-factory://warehouse/experiment_outcomes", "extra": {}},
        extra={"factory_run_id": factory_run_id, "review_window_minutes": review_window_minutes,
               "loop_config_path": loop_config_path, "challenger_share": challenger_share},
        source_task_id="record_outcomes", source_dag_id="model_factory",
        source_run_id=source_run_id or factory_run_id, source_map_index=-1, source_aliases=[], timestamp=at)


def _params(**over) -> dict:
    params = {"factory_run_id": None, "experiment_id": None, "review_window_minutes": 120,
              "loop_config_path": "config/closed_loop.yaml", "challenger_share": 0.0}
    return {**params, **over}


def run_task(dag, task_id: str, *, params: dict, events: list | None = None, run_after: datetime = T0, **args):
    """Call a @task's own code with the context Airflow gives it."""
    context = {"params": params, "triggering_asset_events": {"experiment_outcomes": events or []},
               "dag_run": SimpleNamespace(run_after=run_after),
               "ti": SimpleNamespace(start_date=run_after, xcom_pull=lambda *a, **k: None)}
    with set_current_context(context):
        return dag.task_dict[task_id].python_callable(**args)


# -- which factory run ------------------------------------------------------------------------
@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_resolve_run_reviews_the_newest_factory_run_whatever_the_event_order(dag, warehouse, order):
    events = [_event("run_old", T0), _event("run_new", T0 + timedelta(minutes=5)),
              _event("run_old", T0 + timedelta(minutes=1), source_run_id="run_old_rerun")]
    run = run_task(dag, "resolve_run", params=_params(), events=[events[i] for i in order])
    assert run["factory_run_id"] == "run_new"
    assert run["finished_at"] == (T0 + timedelta(minutes=5)).isoformat()


def test_resolve_run_breaks_a_timestamp_tie_the_same_way_every_time(dag, warehouse):
    tied = [_event("run_old", T0, source_run_id="a"), _event("run_new", T0, source_run_id="b")]
    picks = {run_task(dag, "resolve_run", params=_params(), events=events)["factory_run_id"]
             for events in (tied, tied[::-1])}
    assert picks == {"run_new"}


# -- how long the review window stays open -------------------------------------------------------
def test_the_factory_runs_review_window_from_its_event_overrides_the_param(dag, warehouse):
    older = _event("run_old", T0, review_window_minutes=1)
    newest = _event("run_new", T0 + timedelta(minutes=5), review_window_minutes=0.5)
    run = run_task(dag, "resolve_run", params=_params(), events=[newest, older])
    assert (run["factory_run_id"], run["minutes"]) == ("run_new", 0.5)
    assert run["closes_at"] == (T0 + timedelta(minutes=5, seconds=30)).isoformat()


def test_an_event_without_a_review_window_keeps_the_param(dag, warehouse):
    run = run_task(dag, "resolve_run", params=_params(review_window_minutes=45), events=[_event("run_new", T0)])
    assert run["minutes"] == 45 and run["closes_at"] == (T0 + timedelta(minutes=45)).isoformat()
    assert run["loop_config_path"] == "config/closed_loop.yaml"  # nor loop settings: the param's


def test_a_closed_loop_retrains_loop_settings_reach_the_shadow_evaluation(dag, warehouse):
    events = [_event("run_new", T0, loop_config_path="var/config/closed_loop_demo.yaml")]
    assert run_task(dag, "resolve_run", params=_params(), events=events)["loop_config_path"] == (
        "var/config/closed_loop_demo.yaml")


def test_a_retrains_challenger_share_starts_a_test_unless_the_event_leaves_it_to_the_param(dag, warehouse):
    asked = [_event("run_new", T0, loop_config_path="x.yaml", challenger_share=0.5)]
    assert run_task(dag, "resolve_run", params=_params(), events=asked)["challenger_share"] == 0.5
    silent = [_event("run_new", T0, challenger_share=None)]
    assert run_task(dag, "resolve_run", params=_params(challenger_share=0.2), events=silent)["challenger_share"] == 0.2


def test_a_run_given_by_param_keeps_the_params_window_whatever_the_events(dag, warehouse):
    run = run_task(dag, "resolve_run", params=_params(factory_run_id="run_old", review_window_minutes=10),
                   events=[_event("run_new", T0, review_window_minutes=1)])
    assert (run["factory_run_id"], run["minutes"]) == ("run_old", 10)


def test_a_manual_pick_has_no_window_and_no_review(dag, warehouse):
    run = run_task(dag, "resolve_run", params=_params(factory_run_id="run_new", experiment_id="0ew0000000000001"),
                   events=[_event("run_new", T0, review_window_minutes=30)])
    assert run["minutes"] == 0 and run["closes_at"] == run["finished_at"]
    assert run_task(dag, "review_request", params=_params(), run=run) == []


@pytest.mark.parametrize(("left", "reviewed"), [(timedelta(minutes=10), True), (timedelta(seconds=8), True),
                                                 (timedelta(seconds=7.9), False), (timedelta(0), False),
                                                 (timedelta(seconds=-30), False)])
def test_a_review_lasts_what_is_left_of_the_window_and_none_is_asked_with_less_than_8_s(dag, warehouse, left, reviewed):
    # the window's rest is the time sensor's: nobody answers faster, and Airflow 3.3.2 fails a
    # review timing out before its deferral was reported
    run = run_task(dag, "resolve_run", params=_params(), events=[_event("run_new", T0, review_window_minutes=1)])
    started = datetime.fromisoformat(run["closes_at"]) - left
    requested = run_task(dag, "review_request", params=_params(), run=run, run_after=started)
    if not reviewed:
        assert requested == [] and run_task(dag, "window_without_review", params=_params(), review=requested)
        return
    [review] = requested
    assert review["response_timeout"] == left
    assert review["options"] == ["0ew0000000000001 logistic_regression roc_auc=0.7000"] == review["defaults"]


def test_an_out_of_range_window_in_the_event_fails_without_retries(dag, warehouse):
    with pytest.raises(AirflowFailException, match="review_window_minutes"):
        run_task(dag, "resolve_run", params=_params(), events=[_event("run_new", T0, review_window_minutes=1e9)])


# -- a factory run that cannot be deployed from fails at once ---------------------------------
def test_an_unknown_factory_run_fails_at_once_naming_it_and_where_it_was_looked_for(dag, warehouse):
    with pytest.raises(AirflowFailException) as info:  # AirflowFailException: no retries
        run_task(dag, "resolve_run", params=_params(factory_run_id="manual__no_such_run"))
    message = str(info.value)
    assert "manual__no_such_run" in message
    assert "experiment_outcomes" in message and "model_factory_warehouse" in message


def test_an_unknown_factory_run_of_an_asset_event_fails_at_once_too(dag, warehouse):
    with pytest.raises(AirflowFailException, match="run_vanished"):
        run_task(dag, "resolve_run", params=_params(), events=[_event("run_vanished", T0)])


def test_a_factory_run_without_a_succeeded_experiment_fails_before_the_window(dag, warehouse):
    with pytest.raises(AirflowFailException, match="run_failed.*no succeeded experiment"):
        run_task(dag, "resolve_run", params=_params(factory_run_id="run_failed"))


def test_a_pick_of_an_experiment_not_in_the_run_fails_without_retries(dag, warehouse):
    run = run_task(dag, "resolve_run", params=_params(factory_run_id="run_new", experiment_id="feedfeedfeedfeed"))
    with pytest.raises(AirflowFailException, match="feedfeedfeedfeed.*not in this factory run"):
        run_task(dag, "choose_experiment", params=_params(), run=run)


# -- an answer closes the window ----------------------------------------------------------------
def test_the_time_sensor_waits_only_when_there_is_no_review_to_answer(dag):
    """With a review, its answer (or its timeout, at the window's end) closes the window: the
    time sensor is skipped, so the run ends as soon as the reviewer answers. Without one (no
    candidates to offer, or a manual pick) the sensor keeps the window open."""
    tasks = dag.task_dict
    gate = tasks["window_without_review"]
    assert tasks["wait_for_review_window"].upstream_task_ids == {"window_without_review"}
    assert gate.upstream_task_ids == {"review_request"}
    assert gate.ignore_downstream_trigger_rules is False  # review_closed still fires on the review
    assert gate.python_callable(["a review"]) is False and gate.python_callable([]) is True
    assert tasks["review_closed"].upstream_task_ids == {"review", "wait_for_review_window"}
