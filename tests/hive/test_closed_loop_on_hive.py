"""The closed loop's warehouse on a real HiveServer2, the same as on SQLite.

One story runs on both warehouses: two hourly windows of traffic logged from an endpoint
(``prediction_log``, ``customer_responses``, ``customer_interactions``, ``response_feed``, each
window a partition), a deployment record with the gate's evidence, the second window monitored (``model_monitoring``)
with its alerts (``model_alerts``) and the retrain they ask for, a third window whose alerts the
retrain in flight answers, the live traffic a gate reads, the matured interactions a retrain
trains on, and a rollback request. What each warehouse answers must be equal, and must hold
what the story wrote.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from factory_tasks.core.contracts import PairedDifference
from factory_tasks.loop import interactions as ia
from factory_tasks.loop.alerts import read_alerts
from factory_tasks.loop.config import LoopConfig
from factory_tasks.loop.live_traffic import matured_traffic
from factory_tasks.loop.monitoring import read_rows
from factory_tasks.loop.simulator import simulate_customers
from factory_tasks.loop.windows import MonitoringWindow
from factory_tasks.stages.monitoring import monitor, record_run_alerts, retrain_due, serving_model
from factory_tasks.warehouse.deployments import DEPLOYMENTS, record_deployment
from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS
from factory_tasks.warehouse.rollbacks import load_requests, request_rollback
from factory_tasks.warehouse.training_data import read_interactions_frame
from tests.monitoring_window import deployment_record
from tests.unit.loop.test_interactions import FakeModel, Metrics, endpoint_of

pytestmark = pytest.mark.hive

T0 = datetime(2026, 12, 1, 6, tzinfo=timezone.utc)
HOUR_MS = 3_600_000
CONFIG = LoopConfig.model_validate({
    "traffic": {"customers_per_window": 1_200, "request_batch": 400, "seed": 5},
    "responses": {"window_minutes": 60, "delay_median_minutes": 12, "duplicate_share": 0.05, "unknown_share": 0.01},
    # a drift alert on every window: the model's snapshot is all Phone customers
    "monitoring": {"min_labels": 100},
})
GRID = "config/grid.yaml"


def _window(k: int) -> ia.Window:
    return ia.Window(datetime.fromtimestamp(T0.timestamp() + k * 3600, timezone.utc),
                     datetime.fromtimestamp(T0.timestamp() + (k + 1) * 3600, timezone.utc))


def _monitored(k: int) -> MonitoringWindow:
    w = _window(k)
    return MonitoringWindow.from_interval(w.start, w.end, CONFIG.responses.window_minutes)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def loop_story(hook) -> dict:
    """Everything the loop writes and reads back, as plain values to compare across warehouses."""
    evidence = [PairedDifference(measure="policy_value", source="live", challenger=11.7, champion=12.2,
                                 difference=-0.44, low=-1.91, high=1.04, n_rows=3_976, method="paired bootstrap")]
    record_deployment(hook, deployment_record("v-test", deployment_crn="crn:d-1", gate_evidence=evidence,
                                              gate_reason="kept — 'live' ${traffic} says 95% [-1.91, +1.04]",
                                              deployed_at="2026-12-01T05:00:00+00:00"))
    model = FakeModel(epsilon=0.1)
    windows = [ia.run_window(hook, CONFIG, _window(k), endpoint_of(model), Metrics()).as_dict() for k in range(3)]
    deployment = serving_model(hook)
    reference = simulate_customers(5_000, 99)
    reference = reference.assign(channel="Phone")  # the traffic's mix drifts from it: an alert per window
    story: dict = {"windows": [{k: v for k, v in w.items() if k != "seconds"} for w in windows],
                   "serving": deployment["model_version"], "monitored": [], "retrains": []}
    for k, retrain_id in ((1, "monitoring__20261201T070000"), (2, None)):
        window = _monitored(k)
        summary = monitor(hook, window, CONFIG, GRID, {"v-test": reference}, deployment)
        conf = retrain_due(hook, window, summary, CONFIG, GRID, retrain_failed=lambda run_id: False)
        record_run_alerts(hook, window, CONFIG, retrain_id if conf is not None else None,
                          retrain_failed=lambda run_id: False)
        story["monitored"].append(_sorted(read_rows(hook, window.as_of_window).drop(columns=["computed_at_ms"],
                                                                                    errors="ignore")))
        story["retrains"].append(conf is not None)
    story["alerts"] = sorted((a.alert_id, a.retrain_run_id) for a in read_alerts(hook))
    story["live"] = _sorted(matured_traffic(hook, "v-test", now=_window(3).start,
                                            response_window_minutes=CONFIG.responses.window_minutes))
    story["interactions"] = _sorted(read_interactions_frame(hook, CUSTOMER_INTERACTIONS))
    asked = request_rollback(hook, DEPLOYMENTS.read_all(hook) + [deployment_record(
        "v-new", deployment_id="d2", deployed_at="2026-12-01T09:00:00+00:00")], "v-test", "ana",
        "v-new's offers look wrong — 'quotes' and ${vars}", datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc))
    story["rollbacks"] = [r for r in load_requests(hook) if r.request_id == asked.request_id]
    story["deployments"] = [r for r in DEPLOYMENTS.read_all(hook) if r.model_version == "v-test"]
    return story


def test_the_loop_reads_and_writes_the_same_on_hive_as_on_sqlite(hive_hook, sqlite_hook):
    on_sqlite, on_hive = loop_story(sqlite_hook), loop_story(hive_hook)

    # what the story wrote is there (on SQLite, the reference)
    assert [w["customers"] for w in on_sqlite["windows"]] == [1_200] * 3
    assert on_sqlite["windows"][2]["matured"] > 0 and on_sqlite["serving"] == "v-test"
    assert all(len(rows) > 0 for rows in on_sqlite["monitored"])
    # the first monitored window asks for the retrain, the next one's alerts name it
    assert on_sqlite["retrains"] == [True, False]
    alerted = {alert_id.split("/")[0] for alert_id, _ in on_sqlite["alerts"]}
    assert alerted == {"2026-12-01T07:00:00Z", "2026-12-01T08:00:00Z"}, on_sqlite["alerts"]
    assert {retrain for _, retrain in on_sqlite["alerts"]} == {"monitoring__20261201T070000"}
    assert len(on_sqlite["live"]) > 0 and len(on_sqlite["interactions"]) > 0
    assert len(on_sqlite["rollbacks"]) == 1
    [deployed] = on_sqlite["deployments"]
    assert deployed.gate_evidence[0].n_rows == 3_976 and "${traffic}" in deployed.gate_reason

    # ... and Hive answers the same
    assert on_hive["windows"] == on_sqlite["windows"]
    assert on_hive["serving"] == on_sqlite["serving"]
    for hive_rows, sqlite_rows in zip(on_hive["monitored"], on_sqlite["monitored"]):
        pd.testing.assert_frame_equal(hive_rows, sqlite_rows, check_dtype=False)
    assert on_hive["retrains"] == on_sqlite["retrains"] and on_hive["alerts"] == on_sqlite["alerts"]
    pd.testing.assert_frame_equal(on_hive["live"], on_sqlite["live"], check_dtype=False)
    pd.testing.assert_frame_equal(on_hive["interactions"], on_sqlite["interactions"], check_dtype=False)
    assert on_hive["rollbacks"] == on_sqlite["rollbacks"]
    assert on_hive["deployments"] == on_sqlite["deployments"]
