"""What one DAG hands the next in the closed loop: the retrain's conf (model_monitoring →
model_factory), its review window carried by the asset event (model_factory →
deploy_best_model), and the closed-loop setting it comes from."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from factory_tasks.core.settings import REPO_ROOT
from factory_tasks.loop.config import LoopConfig, LoopConfigError, load_loop_config
from factory_tasks.stages.deploy import newest_factory_run
from factory_tasks.stages.monitoring import retrain_conf

T0 = datetime(2026, 12, 1, 8, tzinfo=timezone.utc)
ALERTS = {"alert_ids": ["2026-12-01T03:00:00Z/v1/feature_drift/feature=channel", "2026-12-01T03:00:00Z/v1/roc_auc/"]}


def _config(**monitoring) -> LoopConfig:
    return LoopConfig.model_validate({"monitoring": monitoring})


def test_an_alert_asks_for_a_retrain_on_fresh_data_with_the_configured_window():
    conf = retrain_conf(ALERTS, _config(retrain_review_window_minutes=30), "config/small.yaml",
                        "config/closed_loop.yaml")
    # the grid whose economics priced the window is the grid the retrain runs; the loop's settings
    # travel on to the deploy run (its shadow evaluation's response window)
    assert conf == {"grid_path": "config/small.yaml", "include_interactions": True,
                    "reason": ", ".join(ALERTS["alert_ids"]), "review_window_minutes": 30.0,
                    "loop_config_path": "config/closed_loop.yaml", "challenger_share": 0.0}
    # a loop that A/B tests its retrains says so to the deploy run, through model_factory's asset event
    assert retrain_conf(ALERTS, _config(retrain_challenger_share=0.3), "config/grid.yaml")["challenger_share"] == 0.3
    # unset: the deploy DAG's own default (a number or null, never a string: the DAG params check it)
    assert retrain_conf(ALERTS, _config(), "config/grid.yaml")["review_window_minutes"] is None


def test_no_alert_or_retraining_off_asks_for_nothing():
    assert retrain_conf({"alert_ids": []}, _config(), "config/grid.yaml") is None
    assert retrain_conf(ALERTS, _config(retrain_on_alert=False), "config/grid.yaml") is None


def test_the_shipped_closed_loop_file_leaves_the_window_to_the_deploy_dag():
    assert load_loop_config(REPO_ROOT / "config" / "closed_loop.yaml").monitoring.retrain_review_window_minutes is None


@pytest.mark.parametrize("value", [-0.1, 0.6, ".nan", "half"])
def test_a_retrain_challenger_share_out_of_range_names_the_key(tmp_path, value):
    path = tmp_path / "loop.yaml"
    path.write_text(f"monitoring:\n  retrain_challenger_share: {value}\n")
    with pytest.raises(LoopConfigError, match=r"loop.yaml:2: monitoring.retrain_challenger_share"):
        load_loop_config(path)


@pytest.mark.parametrize("value", [-1, 7 * 24 * 60 + 1, ".inf", "soon"])
def test_a_review_window_out_of_range_names_the_key(tmp_path, value):
    path = tmp_path / "loop.yaml"
    path.write_text(f"monitoring:\n  retrain_review_window_minutes: {value}\n")
    with pytest.raises(LoopConfigError, match=r"loop.yaml:2: monitoring.retrain_review_window_minutes"):
        load_loop_config(path)


def _event(factory_run_id: str | None, at: datetime, source_run_id: str = "r", **extra) -> SimpleNamespace:
    """An asset event as a task sees it (timestamp, source run, extra)."""
    named = {"factory_run_id": factory_run_id} if factory_run_id else {}
    return SimpleNamespace(timestamp=at, source_run_id=source_run_id, extra={**named, **extra})


def test_the_newest_event_gives_the_factory_run_its_time_and_its_review_window():
    events = [_event("run_a", T0, review_window_minutes=5),
              _event("run_b", T0 + timedelta(minutes=2), review_window_minutes=0.5),
              _event(None, T0 + timedelta(minutes=9))]  # names no factory run
    newest = newest_factory_run(events)
    assert (newest.factory_run_id, newest.recorded_at, newest.review_window_minutes) == (
        "run_b", T0 + timedelta(minutes=2), 0.5)
    assert newest.loop_config_path is None  # not a closed-loop retrain: the deploy DAG's param
    looped = newest_factory_run([_event("run_c", T0, loop_config_path="var/config/closed_loop_demo.yaml",
                                        challenger_share=0.5)])
    assert (looped.loop_config_path, looped.challenger_share) == ("var/config/closed_loop_demo.yaml", 0.5)
    assert newest.challenger_share is None  # the deploy DAG's param decides
    # an event written without the window (or with null) leaves it to the DAG's param
    assert newest_factory_run([_event("run_a", T0)]).review_window_minutes is None
    assert newest_factory_run([_event("run_a", T0, review_window_minutes=None)]).review_window_minutes is None
    assert newest_factory_run([_event(None, T0)]) is None and newest_factory_run([]) is None


def test_a_timestamp_tie_is_broken_the_same_way_whatever_the_order():
    tied = [_event("run_a", T0, "a", review_window_minutes=1), _event("run_b", T0, "b", review_window_minutes=2)]
    assert {newest_factory_run(order) for order in (tied, tied[::-1])} == {("run_b", T0, 2, None, None)}
