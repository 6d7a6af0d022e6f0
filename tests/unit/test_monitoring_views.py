"""Monitoring dashboard figures: what the reviewer must see is in view."""

from __future__ import annotations

import pandas as pd

from dashboards.monitoring.views import realised_vs_estimated_figure


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
