"""The monitoring dashboard's A/B test: the store's reading of a live test and the panel's words,
on real SQLite warehouses whose ``ab_*`` rows the monitoring code wrote itself (``monitor_window``
on simulated windows, ``tests/unit/ab_warehouse.py``): a running test, a concluded one, a test
of the same versions run again, and none at all. And a test's rows never reach the windows."""

from __future__ import annotations

import math

import pandas as pd
import panel as pn
import pytest

from dashboards.monitoring.store import (
    MonitoringStore,
    deployment_history,
    is_ab_row,
    latest_rows,
    load_monitoring,
    read_alerts,
    read_monitoring,
    verdict_words,
    window_table,
)
from dashboards.monitoring.views import (
    ABTestPanel,
    ab_arms_html,
    ab_difference_markdown,
    ab_summary_markdown,
    ab_verdict_markdown,
    lineage_markdown,
)
from factory_tasks.loop.config import ABTestConfig, LoopConfig
from factory_tasks.loop.monitoring import read_rows
from factory_tasks.loop.windows import iso
from tests.monitoring_window import HOUR_MS, T0_MS, SqliteHook
from tests.unit.ab_warehouse import (
    ab_start,
    champion_deploy,
    live_test,
    run_monitoring,
    simulate_test,
    verdict_record,
    window_ending,
    write_records,
)

START_MS = T0_MS + HOUR_MS
START_AT = "2026-12-01T01:00:00+00:00"
CHAMPION_AT = "2026-11-30T00:00:00+00:00"
#: a short test: equal arms reach its limit after a few hours
SHORT = LoopConfig(ab_test=ABTestConfig(max_decisions=3000, planned_decisions=2000))


def warehouse(tmp_path, runs: int, *, per_hour: int = 600, noise: float = 0.0, config: LoopConfig | None = None):
    """The champion v-a deployed, then a test of v-b (half the customers) from START_AT with six
    hours of decisions, and ``runs`` hourly monitoring runs (the first ending an hour into the test)."""
    hook = SqliteHook(tmp_path / "warehouse.db")
    start = ab_start("v-a", "v-b", START_AT)
    write_records(hook, champion_deploy("v-a", CHAMPION_AT), start)
    simulate_test(hook, START_MS, 6, per_hour=per_hour, challenger_noise=noise)
    summaries = run_monitoring(hook, run_ends(1, runs), live_test(start), config)
    return hook, start, summaries


def run_ends(first: int, last: int) -> list[int]:
    return [START_MS + h * HOUR_MS for h in range(first, last + 1)]


def ab_rows_of_run(hook, run: int) -> pd.DataFrame:
    rows = read_rows(hook, window_ending(START_MS + run * HOUR_MS).as_of_window)
    return rows[rows["metric"].str.startswith("ab_")]


def row(rows: pd.DataFrame, metric: str, dimension: str = "") -> pd.Series:
    [hit] = [r for _, r in rows[(rows["metric"] == metric) & (rows["dimension"] == dimension)].iterrows()]
    return hit


def interval_text(value: float, lower: float, upper: float) -> str:
    return f"{value:+,.2f} [{lower:+,.2f}, {upper:+,.2f}]"


def test_a_running_test_shows_the_latest_runs_values_and_no_verdict_before_the_minimum(tmp_path):
    hook, start, summaries = warehouse(tmp_path, runs=4)
    assert summaries[-1]["ab_test"]["state"] == "continue"
    # a backfill of the hour before the test, run while it serves: its (empty) test rows are not the test's
    [backfill] = run_monitoring(hook, [START_MS], live_test(start))
    assert not ab_rows_of_run(hook, 0).empty and backfill["ab_test"]["state"] == "continue"
    data = load_monitoring(hook, LoopConfig())
    ab = data.ab_test
    assert ab is not None and ab.running and ab.end is None
    assert (ab.test_id, ab.champion, ab.challenger, ab.share) == ("v-a:v-b", "v-a", "v-b", 0.5)

    # every value is the latest run's row, per arm and for the difference
    last = ab_rows_of_run(hook, 4)
    for arm, version in (("champion", "v-a"), ("challenger", "v-b")):
        mine = ab.arms.loc[arm]
        assert mine["version"] == version
        assert mine["decisions"] == row(last, "ab_decisions", f"arm={arm}")["value"] == 1200  # 4 h × 300
        for method in ("dr", "snipw", "ipw"):
            written = row(last, f"ab_value_{method}", f"arm={arm}")
            assert (mine[f"{method}_value"], mine[f"{method}_lower"], mine[f"{method}_upper"]) == pytest.approx(
                (written["value"], written["lower"], written["upper"]))
        assert mine["matured"] == row(last, "ab_value_dr", f"arm={arm}")["n"] == 300  # the first hour's
    diff = row(last, "ab_difference_dr")
    latest = ab.latest
    assert (latest["value"], latest["lower"], latest["upper"], latest["n"]) == pytest.approx(
        (diff["value"], diff["lower"], diff["upper"], 600))
    assert latest["half_width"] == pytest.approx((diff["upper"] - diff["lower"]) / 2)
    assert diff["lower"] < 0 < diff["upper"]

    # the history: one row per run, oldest first; nothing matured before the fourth
    assert ab.history["as_of_window"].tolist() == [window_ending(e).as_of_window for e in run_ends(1, 4)]
    assert ab.history["n"].tolist() == [0, 0, 0, 600]
    assert ab.history["value"].iloc[:3].isna().all() and ab.history["state"].tolist() == ["continue"] * 4

    # in words
    assert ab.verdict == "not distinguishable yet — no verdict before 1,000 matured decisions"
    assert "Verdict: **not distinguishable yet — no verdict before 1,000 matured decisions**" in ab_verdict_markdown(ab)
    difference = ab_difference_markdown(ab)
    assert interval_text(diff["value"], diff["lower"], diff["upper"]) in difference
    assert f"boundary ±{(diff['upper'] - diff['lower']) / 2:,.2f}" in difference and "on 600 matured" in difference
    summary = ab_summary_markdown(ab)
    assert summary.startswith(f"### A/B test <code>v-a:v-b</code>: running since {START_AT}")
    assert "exploration ε 0.1" in summary and "(4 run(s))" in summary
    arms = ab_arms_html(ab)
    assert arms.count("300 / 1,200") == 2
    dr = ab.arms.loc["challenger"]
    assert f"<b>{dr['dr_value']:,.2f} [{dr['dr_lower']:,.2f}, {dr['dr_upper']:,.2f}]</b>" in arms
    assert (f"Serving an A/B test since {START_AT}: champion <code>v-a</code> and challenger <code>v-b</code> "
            "(50% / 50%)") in lineage_markdown(data)


def test_the_panel_follows_the_next_run_past_the_minimum(tmp_path):
    hook, start, _ = warehouse(tmp_path, runs=4)
    store = MonitoringStore(warehouse=hook, config=LoopConfig())
    panel = ABTestPanel(store=store)
    assert "no verdict before 1,000 matured decisions" in panel.verdict.object
    assert len(panel.chart) == 1 and isinstance(panel.chart[0], pn.pane.Bokeh)  # one run with a value
    before = panel.difference.object

    [summary] = run_monitoring(hook, run_ends(5, 5), live_test(start))
    assert summary["ab_test"]["state"] == "continue" and "not distinguishable yet" in summary["ab_test"]["reason"]
    assert store.reload(max_age=0)
    diff = row(ab_rows_of_run(hook, 5), "ab_difference_dr")
    assert diff["n"] == 1200
    assert panel.verdict.object.startswith(
        "Verdict: **not distinguishable yet — the always-valid interval still holds 0**")
    assert panel.difference.object != before
    assert interval_text(diff["value"], diff["lower"], diff["upper"]) in panel.difference.object
    assert panel.history.object.count("<tr>") == 1 + 5  # the header and one per run
    assert panel.history.object.index(window_ending(run_ends(5, 5)[0]).as_of_window) < \
        panel.history.object.index(window_ending(run_ends(4, 4)[0]).as_of_window)  # newest first


def test_a_promoted_test_is_over_and_its_verdict_stays_in_view(tmp_path):
    hook, start, summaries = warehouse(tmp_path, runs=4, per_hour=2000)
    standing = summaries[-1]["ab_test"]
    assert standing["state"] == "promote"
    store = MonitoringStore(warehouse=hook, config=LoopConfig())
    ab = store.data.ab_test
    assert ab.running and ab.verdict == "challenger better: promote"
    assert "redeploys <code>v-b</code> alone" in ab_verdict_markdown(ab)
    running_values = ab.arms.copy()

    write_records(hook, verdict_record(start, "promote", "2026-12-01T05:04:00+00:00", standing["reason"]))
    store.reload(max_age=0)
    ab = store.data.ab_test
    assert not ab.running and ab.end.action == "ab_promote" and ab.outcome == "challenger better: promote"
    pd.testing.assert_frame_equal(ab.arms, running_values)  # the last run's values, still shown
    summary = ab_summary_markdown(ab)
    assert summary.startswith("### No A/B test is running\nThe last one, <code>v-a:v-b</code>, ended at "
                              "2026-12-01T05:04:00+00:00 (<code>ab_promote</code>: <code>v-b</code> serving alone): "
                              "**challenger better: promote**")
    assert ab_verdict_markdown(ab) == "Verdict: **challenger better: promote**"
    assert "Serving model <code>v-b</code>" in lineage_markdown(store.data)

    history = deployment_history(store.data.deployments)
    assert history["action"].tolist() == ["ab_promote", "ab_start", "deploy"]
    assert history["champion"].tolist() == ["", "v-a", ""] and history["split"].tolist() == ["", "50% / 50%", ""]
    assert history["chosen_by"].iloc[0] == f"A/B verdict by model_monitoring: A/B test v-a:v-b: {standing['reason']}"
    assert history["chosen_by"].iloc[1] == "automatic · A/B test v-a:v-b"


def test_an_expired_test_keeps_the_champion_and_a_new_test_of_the_same_versions_starts_empty(tmp_path):
    hook, start, summaries = warehouse(tmp_path, runs=8, noise=1.5, config=SHORT)
    standing = summaries[-1]["ab_test"]
    assert standing["state"] == "expired", standing["reason"]
    assert load_monitoring(hook, SHORT).ab_test.verdict == "expired: champion kept"

    write_records(hook, verdict_record(start, "end", "2026-12-01T09:03:00+00:00", standing["reason"]))
    ended = load_monitoring(hook, SHORT).ab_test
    assert not ended.running and ended.outcome == "expired: champion kept"
    assert len(ended.history) == 8 and ended.history["state"].iloc[-1] == "expired"
    assert "**expired: champion kept**" in ab_summary_markdown(ended)

    # the same versions tested again: the first test's rows (same versions, same arms) are not the new one's
    again = ab_start("v-a", "v-b", "2026-12-01T12:00:00+00:00")
    write_records(hook, again.model_copy(update={"deployment_id": "ab-again"}))
    data = load_monitoring(hook, SHORT)
    retest = data.ab_test
    assert retest.running and retest.start.deployment_id == "ab-again"
    assert retest.history.empty and retest.latest is None and retest.arms["dr_value"].isna().all()
    assert retest.verdict == "no monitoring run has reported on the test yet"
    assert "no monitoring run has reported on it yet" in ab_summary_markdown(retest)
    assert "n/a" in ab_difference_markdown(retest)
    panel = ABTestPanel(store=MonitoringStore(warehouse=hook, config=SHORT))
    assert len(panel.chart) == 0 and panel.details.visible


def test_without_a_test_the_panel_says_none_runs_and_none_has_run(tmp_path):
    hook = SqliteHook(tmp_path / "warehouse.db")
    write_records(hook, champion_deploy("v-a", CHAMPION_AT))
    simulate_test(hook, START_MS, 2)
    run_monitoring(hook, run_ends(1, 2), None)
    data = load_monitoring(hook, LoopConfig())
    assert data.ab_test is None and not data.problems and len(data.windows) > 0
    panel = ABTestPanel(store=MonitoringStore(warehouse=hook, config=LoopConfig()))
    assert panel.summary.object.startswith("### No A/B test is running\nNone has been run")
    assert not panel.details.visible


def test_the_verdicts_in_words():
    assert verdict_words("end", 5000, 1000) == "champion better: end"
    assert verdict_words("promote", 5000, 1000) == "challenger better: promote"
    assert verdict_words("continue", 999, 1000) == "not distinguishable yet — no verdict before 1,000 matured decisions"
    assert verdict_words("continue", 1000, 1000) == "not distinguishable yet — the always-valid interval still holds 0"
    assert verdict_words(None, 0, 1000) == "no monitoring run has reported on the test yet"


def test_a_tests_rows_never_change_the_windows_table_or_the_charts_rows(tmp_path):
    hook, _, _ = warehouse(tmp_path, runs=4, per_hour=2000)  # the last run concludes: an ab_test alert too
    good, bad, _ = read_monitoring(hook)
    assert not bad
    ab = is_ab_row(good).to_numpy()
    assert ab.any() and set(good.loc[ab, "metric"]) >= {"ab_decisions", "ab_difference_dr", "ab_verdict"}
    # the test's cohort starts at its first decision, no hourly cohort: left in, it would make windows of its own
    hourly = set(zip(good.loc[~ab, "cohort_dt"], good.loc[~ab, "model_version"]))
    spans = set(zip(good.loc[ab, "cohort_dt"], good.loc[ab, "model_version"]))
    assert spans and not spans & hourly
    alerts, _ = read_alerts(hook)
    assert (alerts["kind"] == "ab_test").any()

    without = window_table(latest_rows(good[~ab]), alerts[alerts["kind"] != "ab_test"], LoopConfig())
    assert len(without) == len(hourly)
    pd.testing.assert_frame_equal(window_table(latest_rows(good), alerts, LoopConfig()), without)
    # handed the rows themselves, the windows table leaves the test's out as well
    pd.testing.assert_frame_equal(window_table(good.sort_values("as_of_ms").drop_duplicates(
        ["cohort_start", "model_version", "metric", "dimension"], keep="last").reset_index(drop=True), alerts,
        LoopConfig()), without)
    data = load_monitoring(hook, LoopConfig())
    pd.testing.assert_frame_equal(data.windows, without)
    assert not data.latest["metric"].str.startswith("ab_").any()  # what the charts draw
    assert data.ab_test is not None and len(data.ab_test.history) == 4


def test_the_boundary_of_a_run_without_an_interval_is_not_a_number(tmp_path):
    hook, _, _ = warehouse(tmp_path, runs=1)
    ab = load_monitoring(hook, LoopConfig()).ab_test
    [first] = ab.history.to_dict("records")
    assert first["n"] == 0 and math.isnan(first["value"]) and math.isnan(first["half_width"])
    assert ab_difference_markdown(ab).startswith("**Challenger − champion (DR): n/a** — 0 matured decision(s)")
    assert ab.arms["decisions"].tolist() == [300, 300] and ab.arms["matured"].tolist() == [0, 0]
    assert iso(START_MS) <= ab.history["as_of_window"].iloc[0]
