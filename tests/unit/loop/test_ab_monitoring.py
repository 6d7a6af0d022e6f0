"""A live A/B test in model_monitoring, on a real SQLite warehouse with simulated windows whose
truth is known: each arm's value, the always-valid difference, the verdict as an ``ab_test``
alert that never asks for a retrain, and the redeploy that carries the verdict out."""

from __future__ import annotations

import pytest

from factory_tasks.core.schema import DEFAULT_ECONOMICS
from factory_tasks.loop.ab_monitoring import LiveTest
from factory_tasks.loop.alerts import alerts_of_run, monitor_window
from factory_tasks.loop.config import ABTestConfig, LoopConfig
from factory_tasks.loop.monitoring import read_rows
from factory_tasks.loop.windows import MonitoringWindow, iso
from factory_tasks.stages.monitoring import retrain_conf, verdict_run
from tests.monitoring_window import HOUR_MS, T0_MS, SqliteHook, record_feed, simulate_window, write_window

TEST = LiveTest("v-a:v-b", "v-a", "v-b", 0.5, "crn:cml:deployment/ab")
DEPLOYMENT = {"model_version": "v-b", "champion_version": "v-a", "test_id": "v-a:v-b", "exploration_epsilon": 0.1,
              "challenger_share": 0.5, "deployment_crn": "crn:cml:deployment/ab", "deployment_id": "ab"}


def window_at(hour: int) -> MonitoringWindow:
    return MonitoringWindow.from_interval(iso(T0_MS + hour * HOUR_MS), iso(T0_MS + (hour + 1) * HOUR_MS), 180)


def warehouse(tmp_path, challenger_noise: float, hours: int = 6, per_arm: int = 1000) -> tuple[SqliteHook, dict]:
    """An hour of the champion alone (before the test), then ``hours`` hours of the test's
    deployment: the champion's model has noisy scores (worse offers), the challenger's
    ``challenger_noise``. The champion's old deployment still decides a few customers in the
    test's first hour (the switch-over): they are not the test's."""
    hook = SqliteHook(tmp_path / "warehouse.db")
    write_window(hook, simulate_window(T0_MS, 2 * per_arm, seed=99, model_version="v-a", score_noise=1.5))
    write_window(hook, simulate_window(T0_MS + HOUR_MS, 300, seed=98, model_version="v-a", score_noise=1.5))
    truth = {"v-a": [], "v-b": []}
    for h in range(1, hours + 1):
        for version, seed, noise in (("v-a", 100 + h, 1.5), ("v-b", 200 + h, challenger_noise)):
            sim = simulate_window(T0_MS + h * HOUR_MS, per_arm, seed=seed, model_version=version, score_noise=noise)
            sim.predictions["deployment_crn"] = TEST.deployment_crn
            write_window(hook, sim)
            truth[version].append(sim.true_policy_value)
    for h in range(hours + 4):
        record_feed(hook, T0_MS + (h + 1) * HOUR_MS)
    return hook, {v: sum(t) / len(t) for v, t in truth.items()}


def ab(rows, metric, dimension=""):
    hit = rows[(rows.metric == metric) & (rows.dimension == dimension)]
    assert len(hit) == 1, (metric, dimension, hit)
    return hit.iloc[0]


def test_a_truly_better_challenger_is_promoted_with_its_evidence(tmp_path):
    hook, truth = warehouse(tmp_path, challenger_noise=0.0)
    window = window_at(9)  # every test decision has matured (W = 3 h)
    summary = monitor_window(hook, window, LoopConfig(), DEFAULT_ECONOMICS, test=TEST)
    rows = read_rows(hook, window.as_of_window)

    # each arm: its decisions (the hour before the test is not the test's), its value covering the truth
    for arm, version in (("champion", "v-a"), ("challenger", "v-b")):
        assert ab(rows, "ab_decisions", f"arm={arm}").value == 6000
        value = ab(rows, "ab_value_dr", f"arm={arm}")
        assert value.model_version == version and value.n == 6000
        assert value.lower < truth[version] < value.upper, (arm, value, truth)
    diff = ab(rows, "ab_difference_dr")
    assert diff.lower > 0 and diff.lower < truth["v-b"] - truth["v-a"] < diff.upper
    first_decision = min(r.cohort_start for r in rows.itertuples() if r.metric.startswith("ab_"))
    assert (diff.cohort_start, diff.n) == (first_decision, 12_000) and first_decision.startswith("2026-12-01T01:")
    assert ab(rows, "ab_verdict", "verdict=promote").value == 1.0
    assert ab(rows, "ab_share").value == 0.5

    standing = summary["ab_test"]
    assert (standing["state"], standing["winner"]) == ("promote", "v-b")
    assert "the challenger is better" in standing["reason"] and "always-valid" in standing["reason"]
    verdict_alerts = [a for a in alerts_of_run(hook, window, LoopConfig()) if a.kind == "ab_test"]
    assert [a.alert_id for a in verdict_alerts] == [f"{window.as_of_window}/v-b/ab_test/verdict=promote"]
    assert "promote" in verdict_alerts[0].message and f"{diff.value:+.2f}" in verdict_alerts[0].message
    # a verdict is no reason to retrain
    assert verdict_alerts[0].alert_id in summary["alert_ids"]
    assert verdict_alerts[0].alert_id not in summary["retrain_alert_ids"]
    # ... and while a test runs its alerts retrain nothing: a retrain's deploy would replace the test
    assert summary["retrain_alert_ids"], "the simulated champion's calibration should alert"
    assert retrain_conf(summary, LoopConfig(), "config/grid.yaml") is None
    assert retrain_conf({**summary, "ab_test": None}, LoopConfig(), "config/grid.yaml")["reason"] == ", ".join(
        summary["retrain_alert_ids"])

    [run] = verdict_run(summary, LoopConfig(), DEPLOYMENT)
    assert run["conf"] == {"model_version": "v-b", "requested_by": "model_monitoring", "test_verdict": "promote",
                           "reason": f"A/B test v-a:v-b: {standing['reason']}", "exploration_epsilon": 0.1}
    assert run["trigger_run_id"].startswith("ab_test__")
    # the same two versions tested again (another deployment) is another test: another verdict run
    assert verdict_run(summary, LoopConfig(), {**DEPLOYMENT, "deployment_id": "ab-2"})[0]["trigger_run_id"] != run[
        "trigger_run_id"]
    # the same test's verdict the next hour asks for the same run (triggered once)
    later = monitor_window(hook, window_at(10), LoopConfig(), DEFAULT_ECONOMICS, test=TEST)
    assert verdict_run(later, LoopConfig(), DEPLOYMENT)[0]["trigger_run_id"] == run["trigger_run_id"]


def test_no_verdict_before_min_decisions_and_none_while_labels_are_immature(tmp_path):
    hook, _ = warehouse(tmp_path, challenger_noise=0.0, hours=2)
    summary = monitor_window(hook, window_at(2), LoopConfig(), DEFAULT_ECONOMICS, test=TEST)
    rows = read_rows(hook, window_at(2).as_of_window)
    # decided through 03:00, labels as of 03:00: only the first decisions have matured
    assert ab(rows, "ab_decisions", "arm=challenger").value == 2000
    assert ab(rows, "ab_difference_dr").n < 1000
    assert summary["ab_test"]["state"] == "continue" and "no verdict before 1,000" in summary["ab_test"]["reason"]
    assert verdict_run(summary, LoopConfig(), DEPLOYMENT) == []
    assert not [a for a in alerts_of_run(hook, window_at(2), LoopConfig()) if a.kind == "ab_test"]


def test_equal_arms_end_with_the_champion_when_the_test_runs_out(tmp_path):
    hook, _ = warehouse(tmp_path, challenger_noise=1.5)  # the same model quality in both arms
    config = LoopConfig(ab_test=ABTestConfig(max_decisions=8000, planned_decisions=4000))
    summary = monitor_window(hook, window_at(9), config, DEFAULT_ECONOMICS, test=TEST)
    standing = summary["ab_test"]
    assert (standing["state"], standing["winner"]) == ("expired", "v-a"), standing["reason"]
    assert "not distinguishable" in standing["reason"]
    [run] = verdict_run(summary, config, DEPLOYMENT)
    assert (run["conf"]["model_version"], run["conf"]["test_verdict"]) == ("v-a", "end")


def test_with_conclude_off_a_verdict_is_recorded_and_the_test_goes_on(tmp_path):
    hook, _ = warehouse(tmp_path, challenger_noise=0.0)
    config = LoopConfig(ab_test=ABTestConfig(conclude=False))
    summary = monitor_window(hook, window_at(9), config, DEFAULT_ECONOMICS, test=TEST)
    assert summary["ab_test"]["state"] == "promote"
    assert [a.kind for a in alerts_of_run(hook, window_at(9), config)].count("ab_test") == 1
    assert verdict_run(summary, config, DEPLOYMENT) == []


def test_outside_a_test_there_are_no_test_rows(tmp_path):
    hook, _ = warehouse(tmp_path, challenger_noise=0.0, hours=1)
    summary = monitor_window(hook, window_at(4), LoopConfig(), DEFAULT_ECONOMICS)
    assert summary["ab_test"] is None
    assert not read_rows(hook, window_at(4).as_of_window).metric.str.startswith("ab_").any()
    assert LiveTest.of({"model_version": "v-a", "champion_version": None}) is None
    assert LiveTest.of(DEPLOYMENT) == TEST


def test_a_lopsided_split_needs_more_decisions_before_a_verdict():
    from factory_tasks.loop.ab_monitoring import min_decisions

    assert min_decisions(ABTestConfig(min_decisions=1000), 0.5) == 1000
    assert min_decisions(ABTestConfig(min_decisions=250), 0.05) == 1000  # ~50 challenger rows at the first look
    assert min_decisions(ABTestConfig(min_decisions=250), 0.95) == 1000


@pytest.mark.parametrize(("over", "message"), [
    ({"min_decisions": 5000, "max_decisions": 4000}, "must not exceed max_decisions"),
    ({"alpha": 0.5}, "alpha"),
    ({"min_decisions": 1}, "min_decisions"),
])
def test_bad_test_settings_are_refused(over, message):
    with pytest.raises(ValueError, match=message):
        ABTestConfig(**over)
