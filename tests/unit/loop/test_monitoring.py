"""Monitoring maths on simulated windows where the truth is known, the alerts, idempotent reruns."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core.contracts import MonitoringAlert
from factory_tasks.core.schema import DEFAULT_ECONOMICS
from factory_tasks.loop.alerts import (
    alerts_of_run,
    answering_retrain,
    decide_alerts,
    monitor_window,
    read_alerts,
    record_alerts,
)
from factory_tasks.loop.cohorts import read_cohorts, responses_ingested_through
from factory_tasks.loop.config import LoopConfig
from factory_tasks.loop.monitoring import monitoring_rows, read_rows, record_rows
from factory_tasks.loop.simulator import simulate_customers
from factory_tasks.loop.windows import MonitoringWindow, iso, label_state
from factory_tasks.stages.monitoring import record_run_alerts, responses_ingested, retrain_due
from tests.monitoring_window import HOUR_MS, T0_MS, SqliteHook, record_feed, simulate_window, write_window

DRIFTED = {"Web": 0.70, "Phone": 0.22, "Multichannel": 0.08}
CONFIG = LoopConfig()


def window_at(hour: int, minutes: float = 180) -> MonitoringWindow:
    return MonitoringWindow.from_interval(iso(T0_MS + hour * HOUR_MS), iso(T0_MS + (hour + 1) * HOUR_MS), minutes)


@pytest.fixture(scope="module")
def reference():
    return simulate_customers(20_000, 99)


def warehouse(tmp_path, windows):
    hook = SqliteHook(tmp_path / "warehouse.db")
    for w in windows:
        write_window(hook, w)
    _feed(hook, range(8))  # every response through 08:00 delivered
    return hook


def value(rows, cohort_hour, metric, dimension=""):
    hit = rows[(rows.cohort_start == iso(T0_MS + cohort_hour * HOUR_MS)) & (rows.metric == metric)
               & (rows.dimension == dimension)]
    assert len(hit) == 1, (cohort_hour, metric, dimension, len(hit))
    return hit.iloc[0]


def test_cohorts_that_can_still_change_and_the_judged_one():
    window = window_at(3)
    assert [(iso(s), iso(e)) for s, e in window.cohorts()] == [
        (f"2026-12-01T0{h}:00:00Z", f"2026-12-01T0{h + 1}:00:00Z") for h in range(4)]
    assert window.judged_cohorts() == [window.cohorts()[0]]  # 01:00 + 180 min = 04:00 = end
    odd = MonitoringWindow.from_interval(iso(T0_MS), iso(T0_MS + HOUR_MS), 150)
    assert len(odd.cohorts()) == 4 and [iso(s) for s, _ in odd.judged_cohorts()] == ["2026-11-30T21:00:00Z"]


def test_label_completeness_maths():
    end, w = 10_000, 1_000
    decided = np.array([8_000, 9_000, 9_001, 9_500, 8_500])
    responded = np.array([8_500, np.nan, 9_100, 10_200, 9_600])  # 10_200 arrives after end
    matured, conversion = label_state(decided, responded, end, w)
    assert matured.tolist() == [True, True, False, False, True]  # decided + w <= end
    assert conversion.tolist() == [1, 0, 1, 0, 0]  # 9_600 is beyond 8_500 + w: not a conversion
    assert matured.mean() == pytest.approx(3 / 5)


def test_immature_then_final_and_known_answer_policy_value(tmp_path, reference):
    # a response window of 150 min: as of 03:00, half the 00:00 cohort has matured. Delays short
    # enough that (almost) no conversion expires, so the simulator's truth is the loop's truth.
    sim = simulate_window(T0_MS, 40_000, seed=3, window_minutes=150, delay_median_minutes=20, delay_sigma=0.5)
    hook = warehouse(tmp_path, [sim])
    rows = {}
    for hour in (0, 2, 3):
        window = window_at(hour, 150)
        rows[hour] = monitoring_rows(read_cohorts(hook, window), window, CONFIG, DEFAULT_ECONOMICS, {"v1": reference})
    at0, at1, at3 = (r[r.cohort_start == iso(T0_MS)] for r in (rows[0], rows[2], rows[3]))
    # as of 01:00 no response window (180 min) has closed: no label metrics at all
    assert value(rows[0], 0, "label_completeness").value == 0.0
    assert "roc_auc" not in set(at0.metric) and value(rows[0], 0, "volume").maturity == "final"
    assert value(rows[0], 0, "label_completeness").maturity == "immature"
    # as of 03:00 half the cohort has matured: reported, immature
    assert value(rows[2], 0, "label_completeness").value == pytest.approx(1 / 2, abs=0.02)
    assert set(at1[at1.metric.isin(["roc_auc", "policy_value_dr"])].maturity) == {"immature"}
    # as of 04:00 (00:59 + 150 min < 04:00) every label is in: final
    assert value(rows[3], 0, "label_completeness").value == 1.0
    label_metrics = at3[~at3.metric.isin(["volume", "offer_share", "score_mean", "score_p10", "score_p50",
                                          "score_p90", "estimated_roc_auc", "estimated_conversion_rate",
                                          "drift_psi"])]
    assert set(label_metrics.maturity) == {"final"}
    assert {"calibration_expected", "calibration_observed"} <= set(at3.metric)
    assert len(at3[at3.metric == "calibration_observed"]) == 10
    dr = value(rows[3], 0, "policy_value_dr")
    assert dr.lower < sim.true_policy_value < dr.upper
    assert dr.value == pytest.approx(sim.true_policy_value, abs=0.35)
    # the model knows the truth: the policy beats every blast offer and exploration
    assert value(rows[3], 0, "policy_vs_exploration_dr").lower > 0
    assert value(rows[3], 0, "estimate_reliable").value == 1.0
    assert value(rows[3], 0, "estimated_roc_auc").value == pytest.approx(value(rows[3], 0, "roc_auc").value, abs=0.02)


def test_responses_after_the_end_and_duplicates_are_not_labels(tmp_path):
    sim = simulate_window(T0_MS, 5_000, seed=4, duplicate_share=0.5)
    hook = warehouse(tmp_path, [sim])
    window = window_at(3)
    data = read_cohorts(hook, window)
    attached = sim.responses[(sim.responses.status == "attached") & (sim.responses.responded_at_ms < window.end_ms)]
    assert data.conversion.sum() == attached.prediction_uuid.nunique()


def test_drift_detected_on_a_shifted_channel_mix_only(tmp_path, reference):
    hook = warehouse(tmp_path, [simulate_window(T0_MS, 3_000, seed=5),
                                simulate_window(T0_MS + HOUR_MS, 3_000, seed=6, channel_shares=DRIFTED)])
    rows = monitoring_rows(read_cohorts(hook, window_at(1)), window_at(1), CONFIG, DEFAULT_ECONOMICS,
                           {"v1": reference})
    drift = rows[rows.metric == "drift_psi"]
    stable, drifted = (drift[drift.cohort_start == iso(T0_MS + h * HOUR_MS)].set_index("dimension").value
                       for h in (0, 1))
    assert stable.max() < CONFIG.monitoring.drift_warn
    assert drifted["feature=channel"] >= CONFIG.monitoring.drift_alert
    assert drifted.drop("feature=channel").max() < CONFIG.monitoring.drift_warn
    ids = [a.alert_id for a in decide_alerts(rows, window_at(1), CONFIG.monitoring)
           if a.kind == "feature_drift"]
    assert ids == ["2026-12-01T01:00:00Z/v1/feature_drift/feature=channel"]


@pytest.mark.parametrize("metric, dimension, bad, good, kind", [
    ("drift_psi", "feature=channel", 0.25, 0.2499, "feature_drift"),  # >= alert
    ("estimated_roc_auc", "", 0.5599, 0.56, "estimated_performance"),  # < floor
    ("roc_auc", "", 0.5599, 0.56, "realised_performance"),
    ("calibration_error", "", 0.0501, 0.05, "calibration"),  # > ceiling
])
def test_alert_thresholds(metric, dimension, bad, good, kind):
    window = window_at(3)
    raised = decide_alerts(_one(window, metric, dimension, bad), window, CONFIG.monitoring)
    assert [(a.kind, a.alert_id) for a in raised] == [(kind, f"{window.as_of_window}/v1/{kind}/{dimension}")]
    assert decide_alerts(_one(window, metric, dimension, good), window, CONFIG.monitoring) == []


def _one(window, metric, dimension, val, upper=None, maturity=None):
    current, judged = iso(window.start_ms), iso(window.judged_cohorts()[0][0])
    cohort = current if metric in ("drift_psi", "estimated_roc_auc") else judged
    return pd.DataFrame([dict(
        as_of_window=window.as_of_window, as_of_ms=window.end_ms, cohort_start=cohort, cohort_end=cohort,
        model_version="v1", metric=metric, dimension=dimension, value=val,
        lower=None if upper is None else val - 1.0, upper=upper, n=1000,
        maturity=maturity or ("estimate" if metric.startswith("est") else "final"))])


def test_policy_alert_needs_confidence_and_final_labels():
    window = window_at(3)
    worse = _one(window, "policy_vs_best_blast_dr", "", -1.0, upper=-0.01)
    assert [a.kind for a in decide_alerts(worse, window, CONFIG.monitoring)] == ["policy_value"]
    unsure = _one(window, "policy_vs_best_blast_dr", "", -1.0, upper=0.2)
    assert decide_alerts(unsure, window, CONFIG.monitoring) == []
    immature = _one(window, "policy_vs_best_blast_dr", "", -1.0, upper=-0.01, maturity="immature")
    assert decide_alerts(immature, window, CONFIG.monitoring) == []
    # an old cohort already judged by an earlier run is not judged again
    old = worse.assign(cohort_start=iso(window.cohorts()[1][0]))
    assert decide_alerts(old, window, CONFIG.monitoring) == []


def test_rerun_is_idempotent(tmp_path, reference):
    hook = warehouse(tmp_path, [simulate_window(T0_MS + 3 * HOUR_MS, 2_000, seed=7, channel_shares=DRIFTED)])
    window = window_at(3)
    first = monitor_window(hook, window, CONFIG, DEFAULT_ECONOMICS, {"v1": reference})
    assert first["alert_ids"] == ["2026-12-01T03:00:00Z/v1/feature_drift/feature=channel"]
    assert record_alerts(hook, alerts_of_run(hook, window, CONFIG), "run-1") == first["alert_ids"]
    again = monitor_window(hook, window, CONFIG, DEFAULT_ECONOMICS, {"v1": reference})
    assert again == first
    assert record_alerts(hook, alerts_of_run(hook, window, CONFIG), "run-2") == []
    assert len(read_rows(hook, window.as_of_window)) == first["rows"]
    assert [(a.alert_id, a.retrain_run_id) for a in read_alerts(hook)] == [(first["alert_ids"][0], "run-1")]
    # another window's partition is left alone
    record_rows(hook, window_at(4), monitoring_rows(read_cohorts(hook, window_at(4)), window_at(4), CONFIG,
                                                    DEFAULT_ECONOMICS))
    assert len(read_rows(hook, window.as_of_window)) == first["rows"]


def test_no_predictions_no_rows(tmp_path):
    hook = SqliteHook(tmp_path / "empty.db")
    summary = monitor_window(hook, window_at(3), CONFIG, DEFAULT_ECONOMICS)
    assert summary["rows"] == 0 and summary["alert_ids"] == []


def test_dr_corrects_a_miscalibrated_model_with_the_logged_propensities(tmp_path):
    # scores off by noise and overconfident: q_hat is wrong, the logged propensities are right
    sim = simulate_window(T0_MS, 40_000, seed=8, exploration=0.3, score_noise=0.3, score_scale=1.5,
                          delay_median_minutes=20, delay_sigma=0.5)
    hook = warehouse(tmp_path, [sim])
    window = window_at(3)
    rows = monitoring_rows(read_cohorts(hook, window), window, CONFIG, DEFAULT_ECONOMICS)
    for method in ("dr", "ipw", "snipw"):
        estimate = value(rows, 0, f"policy_value_{method}")
        assert estimate.lower < sim.true_policy_value < estimate.upper, method
    assert value(rows, 0, "estimate_reliable").value == 0.0  # the calibration check catches it


def _feed(hook, hours):
    for hour in hours:
        record_feed(hook, T0_MS + (hour + 1) * HOUR_MS)


def test_a_gap_in_the_response_feed_stops_the_watermark_and_keeps_labels_provisional(tmp_path, caplog):
    # hours 00..03 decided; the feed delivered the responses of 00, 01 and 03, not those of 02
    missing = iso(T0_MS + 2 * HOUR_MS)
    hook = SqliteHook(tmp_path / "warehouse.db")
    for k in range(4):
        sim = simulate_window(T0_MS + k * HOUR_MS, 2_000, seed=20 + k)
        write_window(hook, replace(sim, responses=sim.responses[sim.responses.window_start != missing]))
    _feed(hook, (0, 1, 3))
    assert responses_ingested_through(hook) == T0_MS + 2 * HOUR_MS  # 03's window does not hide 02's gap
    window = window_at(3)
    with caplog.at_level(logging.INFO, logger="factory_tasks.stages.monitoring"):
        through, ready = responses_ingested(hook, window)
    assert (through, ready) == (T0_MS + 2 * HOUR_MS, False)
    assert ("the responses received from 2026-12-01T02:00:00Z to 2026-12-01T03:00:00Z were not delivered, "
            "later ones were: rerun customer_interactions for those windows") in caplog.text
    summary = monitor_window(hook, window, CONFIG, DEFAULT_ECONOMICS)
    assert summary["labels_as_of"] == iso(T0_MS + 2 * HOUR_MS)
    rows = read_rows(hook, window.as_of_window)
    # the 00:00 cohort's response window closed at 04:00, but its 02:00 responses never came
    assert value(rows, 0, "label_completeness").maturity == "immature"
    labels = rows[rows.metric.isin(["conversion_rate", "roc_auc", "policy_value_dr", "calibration_error"])]
    assert "final" not in set(labels.maturity)
    assert not [a for a in alerts_of_run(hook, window, CONFIG) if a.kind != "feature_drift"]

    # the missing window delivered late (a rerun of customer_interactions): final again
    sim = simulate_window(T0_MS, 2_000, seed=20)
    write_window(hook, replace(sim, predictions=sim.predictions.iloc[:0],
                               responses=sim.responses[sim.responses.window_start == missing]))
    _feed(hook, (2,))
    assert responses_ingested(hook, window) == (T0_MS + 4 * HOUR_MS, True)
    monitor_window(hook, window, CONFIG, DEFAULT_ECONOMICS)
    assert value(read_rows(hook, window.as_of_window), 0, "label_completeness").maturity == "final"


def test_a_gap_before_the_cohorts_a_run_reads_does_not_hold_it_back(tmp_path):
    hook = SqliteHook(tmp_path / "warehouse.db")
    _feed(hook, (0, 2, 3, 4, 5, 6, 7))  # 01 missing: it matters up to the run at 04:00 (180-minute windows)
    assert responses_ingested_through(hook) == T0_MS + 1 * HOUR_MS
    assert responses_ingested(hook, window_at(4)) == (T0_MS + 1 * HOUR_MS, False)  # cohorts from 01:00
    assert responses_ingested(hook, window_at(5)) == (T0_MS + 8 * HOUR_MS, True)  # cohorts from 02:00
    # no feed yet: no watermark, and no label is taken as final
    empty = SqliteHook(tmp_path / "empty.db")
    assert responses_ingested(empty, window_at(3)) == (None, False)
    write_window(empty, simulate_window(T0_MS, 2_000, seed=24))
    monitor_window(empty, window_at(3), CONFIG, DEFAULT_ECONOMICS)
    assert value(read_rows(empty, window_at(3).as_of_window), 0, "label_completeness").value == 0.0


def test_bad_prediction_rows_are_counted_named_and_left_out_of_the_window(tmp_path, caplog):
    sim = simulate_window(T0_MS + 3 * HOUR_MS, 2_000, seed=9)
    predictions = sim.predictions.astype({"propensity": object, "history": object})
    bad = {0: ("propensity", 0.0, "0.0"), 1: ("propensity", 2.0, "2.0"), 2: ("propensity", None, "NULL"),
           3: ("propensity", -0.5, "-0.5"), 4: ("history", "abc", "'abc'")}
    for i, (column, bad_value, _) in bad.items():
        predictions.at[i, column] = bad_value
    hook = SqliteHook(tmp_path / "warehouse.db")
    write_window(hook, replace(sim, predictions=predictions))
    _feed(hook, range(4))
    window = window_at(3)
    with caplog.at_level(logging.WARNING, logger="factory_tasks.loop.cohorts"):
        summary = monitor_window(hook, window, CONFIG, DEFAULT_ECONOMICS)
    rejected = summary["rejected_rows"]
    assert rejected["count"] == 5
    assert rejected["by_column"] == {"prediction_log.propensity": 4, "prediction_log.history": 1}
    for i, (column, _, shown) in bad.items():
        uuid = predictions.at[i, "prediction_uuid"]
        line = next(e for e in rejected["examples"] if uuid in e)
        assert line.startswith(f"prediction_log prediction_uuid {uuid}: {column} = {shown} (")
        assert line in caplog.text
    # the rest of the window is monitored
    rows = read_rows(hook, window.as_of_window)
    assert value(rows, 3, "volume").value == 2_000 - 5
    assert np.isfinite(value(rows, 3, "estimated_roc_auc").value)


def NONE_FAILED(run_id: str) -> bool:
    return False


def _asked(hook, hour: int, version: str, retrain: str | None) -> None:
    window = window_at(hour)
    record_alerts(hook, [MonitoringAlert(
        alert_id=f"{window.as_of_window}/{version}/feature_drift/feature=channel", as_of_window=window.as_of_window,
        cohort_start=window.as_of_window, model_version=version, kind="feature_drift", metric="drift_psi",
        dimension="feature=channel", value=0.4, threshold=0.25, message="channel drifted",
        raised_at=iso(window.end_ms))], retrain)


def test_a_windows_alerts_are_recorded_in_one_append_and_never_twice(tmp_path, monkeypatch):
    from factory_tasks.warehouse.sqlite import SqliteDialect

    appends: list[int] = []
    original = SqliteDialect.append_rows

    def counted(self, hook, table, columns, rows):
        rows = list(rows)
        appends.append(len(rows))
        return original(self, hook, table, columns, rows)

    monkeypatch.setattr(SqliteDialect, "append_rows", counted)
    hook = SqliteHook(tmp_path / "warehouse.db")
    window = window_at(3)
    alerts = [MonitoringAlert(
        alert_id=f"{window.as_of_window}/v1/feature_drift/feature={f}", as_of_window=window.as_of_window,
        cohort_start=window.as_of_window, model_version="v1", kind="feature_drift", metric="drift_psi",
        dimension=f"feature={f}", value=0.4, threshold=0.25, message=f"{f} drifted", raised_at=iso(window.end_ms))
        for f in ("channel", "zip_code", "recency")]
    assert record_alerts(hook, alerts[:1], "run-1") == [alerts[0].alert_id]
    assert record_alerts(hook, alerts, "run-1") == [a.alert_id for a in alerts[1:]]
    assert record_alerts(hook, alerts, "run-1") == []
    assert appends == [1, 2]  # one append per call that has new alerts, none without
    assert sorted(a.alert_id for a in read_alerts(hook)) == sorted(a.alert_id for a in alerts)


def test_a_retrain_answers_its_versions_alerts_for_the_cooldown_counted_from_the_window_that_asked(tmp_path):
    hook = SqliteHook(tmp_path / "warehouse.db")
    _asked(hook, 3, "v1", "monitoring__03")
    for hour in (4, 5, 6, 7, 8):  # the drift goes on: each hour's alerts name the 03:00 retrain
        answering = answering_retrain(hook, {"v1"}, window_at(hour), 360, retrain_failed=NONE_FAILED)
        assert answering is not None and answering.retrain_run_id == "monitoring__03", hour
        _asked(hook, hour, "v1", answering.retrain_run_id)
    # six hours after the window that asked (not after the last that named it): retrain again, on more data
    assert answering_retrain(hook, {"v1"}, window_at(9), 360, retrain_failed=NONE_FAILED) is None
    # another version (a new champion) alerts afresh; so does a version with one the retrain did not cover
    assert answering_retrain(hook, {"v2"}, window_at(4), 360, retrain_failed=NONE_FAILED) is None
    assert answering_retrain(hook, {"v1", "v2"}, window_at(4), 360, retrain_failed=NONE_FAILED) is None
    # a rerun of the window that asked is not answered by its own retrain (its trigger finds the run)
    assert answering_retrain(hook, {"v1"}, window_at(3), 360, retrain_failed=NONE_FAILED) is None
    # cooldown 0: every alerting window retrains; alerts without a retrain answer nothing
    assert answering_retrain(hook, {"v1"}, window_at(4), 0, retrain_failed=NONE_FAILED) is None
    _asked(hook, 12, "v3", None)
    assert answering_retrain(hook, {"v3"}, window_at(13), 360, retrain_failed=NONE_FAILED) is None


def test_a_failed_retrain_answers_no_alerts_and_the_next_alerting_window_asks_again(tmp_path):
    hook = SqliteHook(tmp_path / "warehouse.db")
    _asked(hook, 3, "v1", "monitoring__03")
    asked_about: list[str] = []

    def failed(run_id: str) -> bool:
        asked_about.append(run_id)
        return run_id == "monitoring__03"

    assert answering_retrain(hook, {"v1"}, window_at(4), 360, retrain_failed=failed) is None
    # the 04:00 window's retrain answers from then on; the failed one is never counted again
    _asked(hook, 4, "v1", "monitoring__04")
    answering = answering_retrain(hook, {"v1"}, window_at(5), 360, retrain_failed=failed)
    assert answering is not None and answering.retrain_run_id == "monitoring__04"
    # only retrains within their cooldown are asked about
    assert answering_retrain(hook, {"v1"}, window_at(11), 360, retrain_failed=failed) is None
    assert set(asked_about) == {"monitoring__03", "monitoring__04"} and asked_about.count("monitoring__04") == 1


def test_the_next_drifted_window_names_the_retrain_in_flight_and_asks_for_none(tmp_path, reference):
    shifted = {"Web": 0.80, "Phone": 0.15, "Multichannel": 0.05}  # PSI on channel well above drift_alert
    hook = warehouse(tmp_path, [simulate_window(T0_MS + h * HOUR_MS, 2_000, seed=7 + h, channel_shares=shifted)
                                for h in (3, 4)])
    config = CONFIG.model_copy(update={"monitoring": CONFIG.monitoring.model_copy(
        update={"retrain_review_window_minutes": 30})})
    first = monitor_window(hook, window_at(3), config, DEFAULT_ECONOMICS, {"v1": reference})
    conf = retrain_due(hook, window_at(3), first, config, "config/grid.yaml", retrain_failed=NONE_FAILED)
    assert conf is not None and conf["reason"] == ", ".join(first["retrain_alert_ids"])
    assert record_run_alerts(hook, window_at(3), config, "monitoring__20261201T030000",
                             retrain_failed=NONE_FAILED) == first["alert_ids"]

    second = monitor_window(hook, window_at(4), config, DEFAULT_ECONOMICS, {"v1": reference})
    assert second["retrain_alert_versions"] == ["v1"]
    assert retrain_due(hook, window_at(4), second, config, "config/grid.yaml", retrain_failed=NONE_FAILED) is None
    assert record_run_alerts(hook, window_at(4), config, None, retrain_failed=NONE_FAILED) == second["alert_ids"]
    assert {a.retrain_run_id for a in read_alerts(hook)} == {"monitoring__20261201T030000"}
    # with the cooldown off, the second window asks for its own retrain, as before
    off = config.model_copy(update={"monitoring": config.monitoring.model_copy(update={"retrain_cooldown_minutes": 0})})
    assert retrain_due(hook, window_at(4), second, off, "config/grid.yaml", retrain_failed=NONE_FAILED) is not None
