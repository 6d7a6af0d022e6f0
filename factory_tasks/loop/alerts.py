"""One monitoring window's run (:func:`monitor_window`), the alert decisions on its
``model_monitoring`` rows, and the ``model_alerts`` table.

| kind | metric | raised when | on |
| --- | --- | --- | --- |
| ``feature_drift`` | ``drift_psi`` / ``drift_js`` | value >= ``monitoring.drift_alert`` (one alert per feature) | the new cohort ``[start, end)`` |
| ``estimated_performance`` | ``estimated_roc_auc`` | value < ``monitoring.roc_auc_floor`` | the new cohort |
| ``realised_performance`` | ``roc_auc`` | value < ``roc_auc_floor`` | a cohort whose labels became final in this run |
| ``calibration`` | ``calibration_error`` | value > ``calibration_error_ceiling`` | a cohort whose labels became final in this run |
| ``policy_value`` | ``policy_vs_best_blast_dr`` | the interval's upper bound < 0 (worse than the best blast offer with ``policy_confidence``) | a cohort whose labels became final in this run |
| ``ab_test`` | ``ab_verdict`` | a live A/B test reached a verdict: promote, end or expired (:mod:`factory_tasks.loop.ab_monitoring`) | the test's decisions so far |

An ``ab_test`` alert concludes a test (the DAG redeploys the winner); it never asks for a retrain.

Label alerts act on final labels only, so each cohort is judged once, in the run where its
last response window closes (immature values are shown, never alerted on). A metric a cohort
did not report (fewer matured labels than ``min_labels``) raises nothing.

``alert_id`` is ``<as_of_window>/<model_version>/<kind>/<dimension>``: a rerun of a window
derives the same ids from the same rows, and :func:`record_alerts` skips ids already in
``model_alerts``, so an append-only table never holds an alert twice. The DAG writes alerts
after it has triggered the retrain, so each row carries the ``retrain_run_id`` it asked for,
or the earlier retrain that still answers it (:func:`answering_retrain`,
``monitoring.retrain_cooldown_minutes``; a retrain that failed answers nothing).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from factory_tasks.core.contracts import MonitoringAlert
from factory_tasks.loop.ab_monitoring import LiveTest, decisions_of_test, live_test_rows
from factory_tasks.loop.cohorts import read_cohorts
from factory_tasks.loop.config import LoopConfig, MonitoringConfig
from factory_tasks.loop.monitoring import DRIFT_METRIC_NAMES, monitoring_rows, read_rows, record_rows
from factory_tasks.loop.windows import MINUTE_MS, MonitoringWindow, epoch_ms, iso
from factory_tasks.warehouse.contract_table import ContractTable

log = logging.getLogger(__name__)

ALERTS = ContractTable(MonitoringAlert)


def _alert(window: MonitoringWindow, row: Any, kind: str, threshold: float, message: str) -> MonitoringAlert:
    return MonitoringAlert(
        alert_id=f"{window.as_of_window}/{row.model_version}/{kind}/{row.dimension}",
        as_of_window=window.as_of_window, cohort_start=row.cohort_start, model_version=row.model_version,
        kind=kind, metric=row.metric, dimension=row.dimension, value=float(row.value),
        threshold=float(threshold), message=message, raised_at=iso(window.end_ms),
    )


def decide_alerts(rows: pd.DataFrame, window: MonitoringWindow, monitoring: MonitoringConfig) -> list[MonitoringAlert]:
    """The alerts one run's rows raise (see the module docstring), in a stable order."""
    if rows.empty:
        return []
    current = rows[rows["cohort_start"] == iso(window.start_ms)]
    judged = rows[rows["cohort_start"].isin([iso(s) for s, _ in window.judged_cohorts()])
                  & (rows["maturity"] == "final")]
    drift_metric = DRIFT_METRIC_NAMES[monitoring.drift_metric]
    alerts: list[MonitoringAlert] = []

    def of(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
        chosen = frame[(frame["metric"] == metric) & frame["value"].notna()]
        return chosen.sort_values(["cohort_start", "model_version", "dimension"], kind="stable")

    for row in of(current, drift_metric).itertuples():
        if row.value >= monitoring.drift_alert:
            feature = row.dimension.removeprefix("feature=")
            alerts.append(_alert(window, row, "feature_drift", monitoring.drift_alert,
                                 f"{feature}: {drift_metric} {row.value:.3f} >= {monitoring.drift_alert} "
                                 f"against the training snapshot ({row.n} predictions)"))
    for row in of(current, "estimated_roc_auc").itertuples():
        if row.value < monitoring.roc_auc_floor:
            alerts.append(_alert(window, row, "estimated_performance", monitoring.roc_auc_floor,
                                 f"estimated ROC AUC {row.value:.3f} < {monitoring.roc_auc_floor} "
                                 f"(from {row.n} scores, before labels)"))
    for row in of(judged, "roc_auc").itertuples():
        if row.value < monitoring.roc_auc_floor:
            alerts.append(_alert(window, row, "realised_performance", monitoring.roc_auc_floor,
                                 f"ROC AUC {row.value:.3f} < {monitoring.roc_auc_floor} on {row.n} final labels"))
    for row in of(judged, "calibration_error").itertuples():
        if row.value > monitoring.calibration_error_ceiling:
            alerts.append(_alert(window, row, "calibration", monitoring.calibration_error_ceiling,
                                 f"calibration error {row.value:.3f} > {monitoring.calibration_error_ceiling} "
                                 f"on {row.n} final labels"))
    for row in of(judged, "policy_vs_best_blast_dr").itertuples():
        if pd.notna(row.upper) and row.upper < 0:
            alerts.append(_alert(window, row, "policy_value", 0.0,
                                 f"the model's decisions are worth {-row.value:.2f} less per customer than the "
                                 f"best single offer ({monitoring.policy_confidence:.0%} interval "
                                 f"{row.lower:.2f} .. {row.upper:.2f}, {row.n} final labels)"))
    differences = {(r.cohort_start, r.model_version): r for r in of(rows, "ab_difference_dr").itertuples()}
    for row in of(rows, "ab_verdict").itertuples():
        state = row.dimension.removeprefix("verdict=")
        diff = differences.get((row.cohort_start, row.model_version))
        if state != "continue" and diff is not None:
            alerts.append(_alert(window, row, "ab_test", 0.0, f"A/B test of {row.model_version}: {state}: "
                                 f"challenger − champion {diff.value:+.2f} [{diff.lower:+.2f}, {diff.upper:+.2f}] "
                                 f"per customer on {diff.n} matured decisions (always-valid interval)"))
    # one alert per id (a cohort judged twice, e.g. two versions, still has distinct ids)
    unique = {a.alert_id: a for a in alerts}
    return list(unique.values())


def record_alerts(hook: Any, alerts: list[MonitoringAlert], retrain_run_id: str | None = None) -> list[str]:
    """Append the alerts not yet in ``model_alerts`` (with ``retrain_run_id``, but an A/B
    verdict's), all in one append; their ids."""
    if not alerts:
        return []
    existing = {a.alert_id for a in ALERTS.read_all(hook)}
    new: list[MonitoringAlert] = []
    for alert in alerts:
        if alert.alert_id in existing:
            log.info("alert %s is already recorded", alert.alert_id)
            continue
        # an A/B verdict never asks for a retrain, nor is one answered by it
        answered_by = retrain_run_id if alert.kind != "ab_test" else None
        new.append(alert.model_copy(update={"retrain_run_id": answered_by}))
    ALERTS.append_all(hook, new)
    return [a.alert_id for a in new]


def answering_retrain(hook: Any, versions: Iterable[str], window: MonitoringWindow, cooldown_minutes: float, *,
                      retrain_failed: Callable[[str], bool]) -> MonitoringAlert | None:
    """The recorded alert that asked for a retrain which still answers alerts on ``versions`` in
    ``window``: for each of those model versions, a retrain its alerts asked for in a window that
    started less than ``cooldown_minutes`` before this one and that has not failed (the latest
    such retrain's first alert). None when a retrain is due. ``retrain_failed(run_id)`` says
    whether a retrain run failed (or is gone); it is asked only about retrains in their cooldown.

    Drift goes on for hours while the retrain it asked for runs, is reviewed and deployed;
    retraining each hour would train on the same rows again. The cooldown counts from the window
    that asked, not from the later windows that only name its retrain, so a champion the gate
    kept is retrained again once it has passed, on more data; a new model version alerts afresh.
    A retrain that failed answers nothing: the next alerting window asks for another."""
    versions = set(versions)
    if cooldown_minutes <= 0 or not versions:
        return None
    named: dict[str, list[MonitoringAlert]] = {}  # retrain run id -> every alert naming it
    for alert in ALERTS.read_all(hook):
        if alert.retrain_run_id:
            named.setdefault(alert.retrain_run_id, []).append(alert)
    since = window.start_ms - cooldown_minutes * MINUTE_MS
    answering: list[MonitoringAlert] = []  # the alerts of the window that asked, per retrain in its cooldown
    for run_id, alerts in named.items():
        asked_ms = min(epoch_ms(a.as_of_window) for a in alerts)
        if not since < asked_ms < window.start_ms:
            continue
        if retrain_failed(run_id):
            log.info("retrain %s, asked for by the alerts of the window %s, failed: it answers no alerts",
                     run_id, iso(asked_ms))
            continue
        answering += [a for a in alerts if epoch_ms(a.as_of_window) == asked_ms]
    if not answering or not versions <= {a.model_version for a in answering}:
        return None
    return max(answering, key=lambda a: epoch_ms(a.as_of_window))


def read_alerts(hook: Any) -> list[MonitoringAlert]:
    return ALERTS.read_all(hook)


def monitor_window(hook: Any, window: MonitoringWindow, config: LoopConfig, economics: Mapping,
                   references: Mapping[str, pd.DataFrame] | None = None, test: LiveTest | None = None) -> dict:
    """One monitoring run: read the open cohorts (and during an A/B ``test``, its decisions so
    far), compute, replace the run's partition of ``model_monitoring``; the alerts it raises (not
    yet recorded). Returns a small summary, with the instant the labels hold for, the rows left
    out because they break the schema, and the test's standing."""
    data = read_cohorts(hook, window)
    rows = monitoring_rows(data, window, config, economics, references)
    standing = None
    if test is not None:
        test_rows_, outcome = live_test_rows(decisions_of_test(hook, test, window), window, test, config.ab_test,
                                             economics)
        rows = pd.concat([rows, pd.DataFrame(test_rows_, columns=rows.columns)], ignore_index=True)
        standing = {"test_id": test.test_id, "state": outcome.state, "reason": outcome.reason,
                    "champion_version": test.champion_version, "challenger_version": test.challenger_version,
                    "winner": test.challenger_version if outcome.state == "promote" else test.champion_version}
        log.info("A/B test %s: %s", test.test_id, outcome.reason)
    written = record_rows(hook, window, rows)
    alerts = decide_alerts(rows, window, config.monitoring)
    cohorts = sorted(set(rows["cohort_start"])) if written else []
    rejected = data.rejected
    log.info("model_monitoring %s: %d rows for %d cohort(s) of %d predictions, labels as of %s; %d alert(s)%s%s",
             window.as_of_window, written, len(cohorts), len(data), iso(data.labels_as_of_ms or window.end_ms),
             len(alerts), "".join(f"\n  {a.alert_id}: {a.message}" for a in alerts),
             f"\n  {rejected.count} row(s) left out, their values break the schema: "
             + ", ".join(f"{c} {k}" for c, k in rejected.by_column.items()) if rejected.count else "")
    return {"as_of_window": window.as_of_window, "rows": written, "predictions": len(data),
            "labels_as_of": iso(data.labels_as_of_ms or window.end_ms), "cohorts": cohorts,
            "alert_ids": [a.alert_id for a in alerts],
            "retrain_alert_ids": [a.alert_id for a in alerts if a.kind != "ab_test"],
            "retrain_alert_versions": sorted({a.model_version for a in alerts if a.kind != "ab_test"}),
            "rejected_rows": rejected.as_dict(), "ab_test": standing}


def alerts_of_run(hook: Any, window: MonitoringWindow, config: LoopConfig) -> list[MonitoringAlert]:
    """The alerts of a run already recorded in ``model_monitoring`` (derived again from its rows)."""
    return decide_alerts(read_rows(hook, window.as_of_window), window, config.monitoring)
