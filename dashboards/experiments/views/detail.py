"""The selected experiments in full: the one selected last on its own (params, folds, timings,
artifacts), and all of them side by side."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import BoxAnnotation, ColumnDataSource, HoverTool, Span
from bokeh.plotting import figure
from panel.viewable import Viewer

from dashboards.experiments.store import (
    ExperimentsStore,
    metric_direction,
    parse_folds,
    parse_params,
)
from factory_tasks.core.metrics import METRICS


def fmt(value, digits: int = 4) -> str:
    """A value as table text: "–" when missing, a float to ``digits`` decimals (or significant
    digits when it is very large or very small)."""
    if value is None or value is pd.NA:
        return "–"
    try:
        if isinstance(value, float) and math.isnan(value):
            return "–"
    except TypeError:
        pass
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def folds_figure(metric: str, folds: list[float | None], mean, std):
    """Per-fold scores as points, with the mean and a ±1 std band."""
    xs = [f"fold {i + 1}" for i in range(len(folds))]
    ys = [np.nan if v is None else v for v in folds]
    fig = figure(
        x_range=xs, height=220, width=420, title=f"{metric} per fold ({metric_direction(metric)})",
        toolbar_location=None, tools="",
    )
    source = ColumnDataSource({"fold": xs, "score": ys})
    fig.vbar(x="fold", top="score", width=0.15, source=source, color="#9ecae1",
             bottom=float(np.nanmin(ys)) if any(not math.isnan(y) for y in ys) else 0)
    fig.scatter(x="fold", y="score", size=10, source=source, color="#08519c")
    if mean is not None and not pd.isna(mean):
        fig.add_layout(Span(location=float(mean), dimension="width", line_color="#d62728", line_dash="dashed"))
        if std is not None and not pd.isna(std):
            fig.add_layout(BoxAnnotation(bottom=float(mean - std), top=float(mean + std),
                                         fill_alpha=0.12, fill_color="#d62728"))
    fig.add_tools(HoverTool(tooltips=[("fold", "@fold"), ("score", "@score{0.0000}")]))
    return fig


class ExperimentDetail(Viewer):
    """Everything about the experiment selected last: params, folds, timings, artifacts."""

    store = param.ClassSelector(class_=ExperimentsStore)

    @param.depends("store.selected_keys", "store.data")
    def _detail(self):
        row = self.store.focus
        if row is None:
            return pn.pane.Markdown("Tick an experiment in the leaderboard to see its details.",
                                    css_classes=["mf-detail-empty"])
        metric = str(row["ranking_metric"])
        head = pn.pane.Markdown(
            f"### Experiment `{row['experiment_id']}`\n"
            f"**{row['estimator']}** ({row['family']}) · status **{row['status']}** · "
            f"factory run `{row['factory_run_id']}` · ranking metric **{metric}** = "
            f"{fmt(row['ranking_score'])}",
            sizing_mode="stretch_width",
        )
        parts: list = [head]
        if row["status"] != "succeeded":
            parts.append(pn.pane.Alert(f"**Failed:** {fmt(row['error'])}", alert_type="danger",
                                       css_classes=["mf-detail-error"]))
        params = parse_params(row["params_json"])
        params_table = pd.DataFrame({"hyperparameter": list(params), "value": [str(v) for v in params.values()]})
        fold_rows = []
        for name in METRICS:
            folds = parse_folds(row[f"{name}_folds"])
            if not folds and pd.isna(row[f"{name}_mean"]):
                continue
            fold_rows.append({
                "metric": name,
                "mean": fmt(row[f"{name}_mean"]),
                "std": fmt(row[f"{name}_std"]),
                "spread": fmt((max(f for f in folds if f is not None) - min(f for f in folds if f is not None)))
                if any(f is not None for f in folds) else "–",
                "folds": ", ".join(fmt(f) for f in folds),
            })
        folds_table = pd.DataFrame(fold_rows, columns=["metric", "mean", "std", "spread", "folds"])
        ranking_folds = parse_folds(row.get(f"{metric}_folds")) if f"{metric}_folds" in row else []
        chart = (
            pn.pane.Bokeh(folds_figure(metric, ranking_folds, row.get(f"{metric}_mean"), row.get(f"{metric}_std")))
            if ranking_folds else pn.pane.Markdown("No per-fold scores recorded.")
        )
        facts = pd.DataFrame(
            [
                ("cv folds", fmt(row["cv_folds"])),
                ("fit time (mean, s)", fmt(row["fit_time_mean"])),
                ("score time (mean, s)", fmt(row["score_time_mean"])),
                ("wall time (s)", fmt(row["wall_time_s"])),
                ("cpu", fmt(row["cpu"])),
                ("memory (GB)", fmt(row["memory_gb"])),
                ("artifact", fmt(row["artifact_path"])),
                ("data snapshot hash", fmt(row["data_snapshot_hash"])),
                ("grid hash", fmt(row["grid_hash"])),
                ("code version", fmt(row["code_version"])),
                ("job / run", f"{fmt(row['job_id'])} / {fmt(row['job_run_id'])} ({fmt(row['run_status'])})"),
                ("started / finished", f"{fmt(row['started_at'])} → {fmt(row['finished_at'])}"),
                ("recorded", fmt(row["recorded_at"])),
            ],
            columns=["field", "value"],
        )
        parts.append(pn.Row(
            pn.Column("#### Cross-validation", chart,
                      pn.pane.DataFrame(folds_table, index=False, css_classes=["mf-folds"], sizing_mode="stretch_width")),
            pn.Column("#### Hyperparameters",
                      pn.pane.DataFrame(params_table, index=False, css_classes=["mf-params"]),
                      "#### Run", pn.pane.DataFrame(facts, index=False, css_classes=["mf-facts"])),
        ))
        return pn.Column(*parts, sizing_mode="stretch_width", css_classes=["mf-detail"])

    def __panel__(self):
        return pn.panel(self._detail)


class ComparisonTable(Viewer):
    """The selected experiments side by side (one column each)."""

    store = param.ClassSelector(class_=ExperimentsStore)

    @param.depends("store.selected_keys", "store.data")
    def _table(self):
        rows = self.store.rows_for(self.store.selected_keys)
        if len(rows) < 2:
            return pn.pane.Markdown("Tick two or more experiments to compare them side by side.")
        columns = {}
        for _, row in rows.iterrows():
            entry = {
                "family": row["family"], "estimator": row["estimator"], "status": row["status"],
                "factory run": row["factory_run_id"],
                f"ranking ({row['ranking_metric']})": fmt(row["ranking_score"]),
            }
            for name in METRICS:
                if not pd.isna(row[f"{name}_mean"]):
                    entry[name] = f"{fmt(row[f'{name}_mean'])} ± {fmt(row[f'{name}_std'])}"
            for key, value in sorted(parse_params(row["params_json"]).items()):
                entry[f"param: {key}"] = str(value)
            entry["wall time (s)"] = fmt(row["wall_time_s"])
            columns[str(row["experiment_id"])] = entry
        table = pd.DataFrame(columns)
        table.index.name = "field"
        return pn.pane.DataFrame(table, css_classes=["mf-compare"], sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Column("### Side by side", self._table, sizing_mode="stretch_width")
