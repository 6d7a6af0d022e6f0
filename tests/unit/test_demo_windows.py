"""make run's demo hours: the loop's three, then the A/B phase's three that no deployment has
decided yet (the test's deployment must decide them itself)."""

from __future__ import annotations

from datetime import datetime, timezone

from stack.airflow_api import iso
from stack.backfill import HOUR
from stack.closed_loop import demo_windows, write_demo_config

from factory_tasks.core.settings import REPO_ROOT
from factory_tasks.loop.config import load_loop_config

NOW = datetime(2026, 12, 6, 16, 25, tzinfo=timezone.utc)
H = datetime(2026, 12, 6, 16, tzinfo=timezone.utc)


def test_a_fresh_stack_takes_the_last_six_full_hours():
    loop, ab = demo_windows(NOW)
    assert loop == [H - 6 * HOUR, H - 5 * HOUR, H - 4 * HOUR] and ab == [H - 3 * HOUR, H - 2 * HOUR, H - HOUR]


def test_decided_hours_push_the_ab_hours_back_until_all_three_are_fresh():
    decided = {iso(H - HOUR), iso(H - 4 * HOUR)}  # e.g. the schedule's latest hour, an earlier run's loop hour
    loop, ab = demo_windows(NOW, decided)
    assert ab == [H - 7 * HOUR, H - 6 * HOUR, H - 5 * HOUR] and loop == [H - 10 * HOUR, H - 9 * HOUR, H - 8 * HOUR]
    assert not {iso(w) for w in ab} & decided


def test_the_demo_settings_start_a_test_and_the_ab_hours_retrain_nothing(tmp_path):
    source = REPO_ROOT / "config" / "closed_loop.yaml"
    demo = load_loop_config(write_demo_config(source, tmp_path / "demo.yaml", drift_start=H - 5 * HOUR))
    ab = load_loop_config(write_demo_config(source, tmp_path / "ab.yaml", drift_start=H - 5 * HOUR,
                                            retrain_on_alert=False))
    assert demo.monitoring.retrain_challenger_share == 0.5 and demo.monitoring.retrain_on_alert is True
    assert ab.monitoring.retrain_on_alert is False and ab.drift.enabled and ab.drift.start == iso(H - 5 * HOUR)
    # make run --no-ab-test: the gate alone decides the retrain
    gate_only = load_loop_config(write_demo_config(source, tmp_path / "gate.yaml", drift_start=H - 5 * HOUR,
                                                   challenger_share=0.0))
    assert gate_only.monitoring.retrain_challenger_share == 0.0 and gate_only.monitoring.retrain_on_alert is True
