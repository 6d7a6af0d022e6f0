"""Monitoring dashboard figures: what the reviewer must see is in view."""

from __future__ import annotations

import pandas as pd
import panel as pn

from dashboards.layout import TABLE_CONFIGURATION
from dashboards.monitoring.charts import realised_vs_estimated_figure
from dashboards.monitoring.store import ALERT_COLUMNS, empty_alerts, read_alerts
from factory_tasks.core.schema import DEFAULT_ECONOMICS
from factory_tasks.loop.alerts import alerts_of_run, monitor_window, record_alerts
from factory_tasks.loop.config import LoopConfig
from factory_tasks.loop.simulator import simulate_customers
from factory_tasks.loop.windows import MonitoringWindow, iso
from tests.monitoring_window import HOUR_MS, T0_MS, SqliteHook, simulate_window, write_window


def _latest(values: list[float], metric: str) -> pd.DataFrame:
    cohorts = pd.date_range("2026-12-01", periods=len(values), freq="h", tz="UTC")
    return pd.DataFrame({"cohort_dt": cohorts, "model_version": "v1", "metric": metric, "dimension": "",
                         "value": values, "n": 2000, "maturity": "final"})


def test_the_auc_floor_is_in_view_even_below_every_value():
    latest = pd.concat([_latest([0.70, 0.72, 0.74], "roc_auc"), _latest([0.71, 0.73, 0.72], "estimated_roc_auc")])
    fig = realised_vs_estimated_figure(latest, "roc_auc", "estimated_roc_auc", "AUC", floor=0.56)
    assert fig.y_range.start < 0.56 < 0.74 < fig.y_range.end
    # without a floor the range stays automatic (fitted to the data)
    auto = realised_vs_estimated_figure(latest, "roc_auc", "estimated_roc_auc", "AUC")
    assert type(auto.y_range).__name__ == "DataRange1d"


def test_the_alerts_table_keeps_its_column_definitions_from_no_alert_to_the_first(tmp_path):
    """A table that goes from empty to rows with other dtypes gets other column definitions, and
    Tabulator rebuilds itself in the browser instead of swapping the rows."""
    hook = SqliteHook(tmp_path / "warehouse.db")
    write_window(hook, simulate_window(T0_MS + 3 * HOUR_MS, 2_000, seed=7,
                                       channel_shares={"Web": 0.70, "Phone": 0.22, "Multichannel": 0.08}))
    window = MonitoringWindow.from_interval(iso(T0_MS + 3 * HOUR_MS), iso(T0_MS + 4 * HOUR_MS), 180)
    monitor_window(hook, window, LoopConfig(), DEFAULT_ECONOMICS, {"v1": simulate_customers(20_000, 99)})
    assert record_alerts(hook, alerts_of_run(hook, window, LoopConfig()), "run-1")
    alerts, problems = read_alerts(hook)
    assert len(alerts) == 1 and not problems

    def definitions(frame: pd.DataFrame):
        root = pn.widgets.Tabulator(frame[ALERT_COLUMNS], configuration=TABLE_CONFIGURATION).get_root()
        return root.configuration, [(c.field, type(c.formatter).__name__) for c in root.columns]

    assert definitions(empty_alerts()) == definitions(alerts)
