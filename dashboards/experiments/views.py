"""Views of the experiments store: each a ``Viewer`` over one :class:`ExperimentsStore`.

Charts are plain Bokeh figures in ``pn.pane.Bokeh`` built from aggregated or sampled rows, so
the browser never receives the whole summary.
"""

from __future__ import annotations

import html
import math
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import BoxAnnotation, ColumnDataSource, FixedTicker, HoverTool, NumberFormatter, Span
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from bokeh.transform import jitter, linear_cmap
from panel.viewable import Viewer

from dashboards.experiments.auth import LOGOUT_URL, current_user
from dashboards.experiments.store import (
    LEADERBOARD_COLUMNS,
    ExperimentsStore,
    best_per_family,
    empty_frame,
    hyperparameter_frame,
    metric_direction,
    parse_folds,
    parse_params,
)
from dashboards.experiments.warehouse import WAREHOUSE_ERRORS
from dashboards.layout import TABLE_CONFIGURATION
from factory_tasks.core.metrics import METRICS
from factory_tasks.warehouse.promotions import PromotionRefused

_FORMATTERS = {
    c: NumberFormatter(format="0.0000")
    for c in ("ranking_score", "roc_auc_mean", "log_loss_mean", "policy_value_mean")
}
_FORMATTERS["wall_time_s"] = NumberFormatter(format="0.0")

# Every column's width, in pixels. Without them Tabulator measures each cell of each column to
# fit it to its data ("fit_data_table"), which took over half of the browser's time before
# the first rows appeared (~0.25 s of CPU for one 20-row page on these machines).
_WIDTHS = {  # the header (with its sort arrow) or the longest value, whichever is wider
    "experiment_id": 150, "family": 185, "estimator": 245, "status": 95, "ranking_metric": 150,
    "ranking_score": 145, "roc_auc_mean": 140, "log_loss_mean": 145, "policy_value_mean": 170,
    "wall_time_s": 120, "factory_run_id": 275, "recorded_at": 215, "experiments": 125,
}


_BEST_CSS = """
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { padding: 4px 8px; text-align: left; border-bottom: 1px solid #e0e0e0; white-space: nowrap; }
th { background: #f5f5f5; }
"""


def _fmt(value, digits: int = 4) -> str:
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


class FilterPanel(Viewer):
    """The leaderboard filters, as widgets generated from the store's parameters.

    The two range sliders are synced by hand: when a new file arrives their bounds must move
    before their values, an order ``pn.Param`` does not guarantee. Until the data has bounds
    (no file, or a header-only one) they are disabled on a placeholder range: a Bokeh slider
    without a start, end or value cannot be serialized, and the page would be an HTTP 500.
    """

    store = param.ClassSelector(class_=ExperimentsStore)

    def __init__(self, **params):
        super().__init__(**params)
        self._choices = pn.Param(
            self.store,
            parameters=["factory_run", "families", "statuses"],
            widgets={
                "factory_run": {"type": pn.widgets.Select, "name": "Factory run"},
                "families": {"type": pn.widgets.MultiChoice, "name": "Family (empty = all)"},
                "statuses": {"type": pn.widgets.CheckButtonGroup, "name": "Status"},
            },
            show_name=False,
            sizing_mode="stretch_width",
        )
        self.score = pn.widgets.EditableRangeSlider(label="Ranking score", step=0.0001, start=0.0, end=1.0,
                                                    value=(0.0, 1.0), disabled=True,
                                                    css_classes=["mf-score-range"])
        today = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
        self.dates = pn.widgets.DatetimeRangeSlider(label="Recorded (UTC)", start=today, end=today + timedelta(days=1),
                                                    value=(today, today + timedelta(days=1)), disabled=True,
                                                    css_classes=["mf-date-range"])
        self._sync_ranges()
        self.store.param.watch(lambda *_: self._sync_ranges(), ["score_range", "date_range", "data"])
        self.score.param.watch(lambda e: self._push("score_range", e.new), "value_throttled")
        self.dates.param.watch(lambda e: self._push("date_range", e.new), "value_throttled")
        self.score.param.watch(lambda e: self._push("score_range", e.new), "value")

    def _push(self, name: str, value) -> None:
        if value is None:
            return
        bounds = self.store.param[name].bounds
        if bounds is None:
            return
        lo, hi = max(value[0], bounds[0]), min(value[1], bounds[1])
        if lo <= hi and tuple(getattr(self.store, name) or ()) != (lo, hi):
            setattr(self.store, name, (lo, hi))

    def _sync_ranges(self) -> None:
        for widget, name in ((self.score, "score_range"), (self.dates, "date_range")):
            bounds = self.store.param[name].bounds
            value = getattr(self.store, name)
            widget.disabled = bounds is None
            if bounds is None or value is None:
                continue
            if (widget.start, widget.end) != tuple(bounds):
                # Widen first so neither the old nor the new value is ever out of bounds.
                if widget.start is None or widget.end is None:
                    widget.param.update(start=bounds[0], end=bounds[1])
                else:
                    widget.param.update(start=min(widget.start, bounds[0]), end=max(widget.end, bounds[1]))
            if tuple(widget.value or ()) != tuple(value):
                widget.value = tuple(value)
            if (widget.start, widget.end) != tuple(bounds):
                widget.param.update(start=bounds[0], end=bounds[1])

    def __panel__(self):
        return pn.Column(self._choices, self.score, self.dates, sizing_mode="stretch_width")


class Freshness(Viewer):
    """'Data as of … (N s ago)': how old the file behind the page is."""

    store = param.ClassSelector(class_=ExperimentsStore)

    def __init__(self, **params):
        super().__init__(**params)
        self._pane = pn.pane.Markdown(self._text(), css_classes=["mf-freshness"], margin=(0, 10))
        self.store.param.watch(lambda *_: self.tick(), ["data_as_of", "error"])

    def _text(self) -> str:
        as_of = self.store.data_as_of
        if as_of is None:
            return f"**No data** · `{self.store.summary_url}`"
        age = (datetime.now(timezone.utc).replace(tzinfo=None) - as_of).total_seconds()
        rows = 0 if self.store.data is None else len(self.store.data)
        return (
            f"Data as of **{as_of:%Y-%m-%d %H:%M:%S} UTC** ({max(0, int(age))} s ago) · "
            f"{rows:,} rows · `{self.store.summary_url}`"
        )

    def tick(self) -> None:
        self._pane.object = self._text()

    def __panel__(self):
        return self._pane


class ErrorBanner(Viewer):
    """The reason the summary cannot be shown, in words (never a stack trace)."""

    store = param.ClassSelector(class_=ExperimentsStore)

    @param.depends("store.error")
    def _banner(self):
        if not self.store.error:
            return pn.pane.Markdown("", visible=False)
        return pn.pane.Alert(
            f"**The experiments summary cannot be shown.** {self.store.error}\n\n"
            "This page checks the file every few seconds and shows the data as soon as it is valid.",
            alert_type="danger",
            css_classes=["mf-summary-error"],
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.panel(self._banner)


class NoExperimentsBanner(Viewer):
    """'No experiments yet': the summary is valid but has no rows (a fresh ``var/``)."""

    store = param.ClassSelector(class_=ExperimentsStore)

    @param.depends("store.notice")
    def _banner(self):
        if not self.store.notice:
            return pn.pane.Markdown("", visible=False)
        return pn.pane.Alert(
            f"**No experiments yet.** {self.store.notice}\n\n"
            "This page checks the file every few seconds and shows the experiments as soon as there are some.",
            alert_type="info",
            css_classes=["mf-no-experiments"],
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.panel(self._banner)


class Leaderboard(Viewer):
    """The filtered experiments, best first, paged on the server; tick rows to select them."""

    store = param.ClassSelector(class_=ExperimentsStore)
    page_size = param.Integer(default=20, bounds=(5, 200), doc="Rows per page.")

    def __init__(self, **params):
        super().__init__(**params)
        self._syncing = False
        self.table = pn.widgets.Tabulator(
            self._value(),
            pagination="remote",
            page_size=self.page_size,
            selectable="checkbox",
            show_index=False,
            disabled=True,
            hidden_columns=["row_key"],
            formatters=_FORMATTERS,
            widths={c: _WIDTHS[c] for c in LEADERBOARD_COLUMNS},
            header_filters=False,
            sizing_mode="stretch_width",
            height=640,
            css_classes=["mf-leaderboard"],
            configuration=TABLE_CONFIGURATION,
        )
        self.count = pn.pane.Markdown(self._count_text(), css_classes=["mf-count"])
        self.table.param.watch(self._on_selection, "selection")
        self.store.param.watch(self._on_filtered, "filtered")
        self.store.param.watch(self._on_selected_keys, "selected_keys")

    def _value(self) -> pd.DataFrame:
        filtered = self.store.filtered if self.store.filtered is not None else empty_frame()
        return filtered[[*LEADERBOARD_COLUMNS, "row_key"]].reset_index(drop=True)

    def _count_text(self) -> str:
        total = 0 if self.store.data is None else len(self.store.data)
        shown = 0 if self.store.filtered is None else len(self.store.filtered)
        return f"Showing **{shown:,}** of {total:,} experiments"

    def _positions(self, keys: list[str]) -> list[int]:
        value = self.table.value
        if not keys or value is None or value.empty:
            return []
        where = pd.Index(value["row_key"]).get_indexer(keys)
        return [int(i) for i in where if i >= 0]

    def _on_filtered(self, *_):
        self._syncing = True
        try:
            self.table.value = self._value()
            self.table.selection = self._positions(self.store.selected_keys)
        finally:
            self._syncing = False
        self.count.object = self._count_text()

    def _on_selected_keys(self, event):
        if self._syncing:
            return
        positions = self._positions(event.new)
        if sorted(positions) != sorted(self.table.selection):
            self._syncing = True
            try:
                self.table.selection = positions
            finally:
                self._syncing = False

    def _on_selection(self, event):
        if self._syncing:
            return
        value = self.table.value
        old = set(event.old)
        new_positions = [i for i in event.new if i not in old]
        kept = [i for i in event.new if i in old]
        # Keep the click order: the last one ticked is the one shown in the detail view.
        keys = [str(value["row_key"].iat[i]) for i in [*kept, *new_positions] if i < len(value)]
        hidden = [k for k in self.store.selected_keys if k not in set(value["row_key"])]
        self._syncing = True
        try:
            self.store.selected_keys = [*hidden, *keys]
        finally:
            self._syncing = False

    def __panel__(self):
        return pn.Column(self.count, self.table, sizing_mode="stretch_width")


class BestPerFamily(Viewer):
    """The best succeeded experiment of each family among the filtered rows.

    A plain HTML table rendered on the server: a few rows, nothing to page, sort or select, so a
    second Tabulator (its layout passes cost the browser ~0.1 s before the first rows) buys
    nothing. A filter that leaves the best rows as they were sends nothing.
    """

    store = param.ClassSelector(class_=ExperimentsStore)
    _COLUMNS = ["family", "estimator", "experiment_id", "ranking_metric", "ranking_score", "experiments", "factory_run_id"]

    def __init__(self, **params):
        super().__init__(**params)
        self.empty = pn.pane.Markdown("No succeeded experiment matches the filters.")
        self.table = pn.pane.DataFrame(
            pd.DataFrame(columns=self._COLUMNS), index=False, float_format="{:.4f}".format, border=0,
            sizing_mode="stretch_width", css_classes=["mf-best"], stylesheets=[_BEST_CSS],
        )
        self._update()
        self.store.param.watch(lambda *_: self._update(), "filtered")

    def _update(self) -> None:
        frame = self.store.filtered
        best = best_per_family(frame) if frame is not None and not frame.empty else None
        has_rows = best is not None and not best.empty
        if has_rows:
            value = best[self._COLUMNS].reset_index(drop=True)
            if not value.equals(self.table.object):  # most filter changes leave it as it is
                self.table.object = value
        self.table.visible, self.empty.visible = has_rows, not has_rows

    def __panel__(self):
        return pn.Column("### Best per family", self.empty, self.table, sizing_mode="stretch_width")


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
            f"{_fmt(row['ranking_score'])}",
            sizing_mode="stretch_width",
        )
        parts: list = [head]
        if row["status"] != "succeeded":
            parts.append(pn.pane.Alert(f"**Failed:** {_fmt(row['error'])}", alert_type="danger",
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
                "mean": _fmt(row[f"{name}_mean"]),
                "std": _fmt(row[f"{name}_std"]),
                "spread": _fmt((max(f for f in folds if f is not None) - min(f for f in folds if f is not None)))
                if any(f is not None for f in folds) else "–",
                "folds": ", ".join(_fmt(f) for f in folds),
            })
        folds_table = pd.DataFrame(fold_rows, columns=["metric", "mean", "std", "spread", "folds"])
        ranking_folds = parse_folds(row.get(f"{metric}_folds")) if f"{metric}_folds" in row else []
        chart = (
            pn.pane.Bokeh(folds_figure(metric, ranking_folds, row.get(f"{metric}_mean"), row.get(f"{metric}_std")))
            if ranking_folds else pn.pane.Markdown("No per-fold scores recorded.")
        )
        facts = pd.DataFrame(
            [
                ("cv folds", _fmt(row["cv_folds"])),
                ("fit time (mean, s)", _fmt(row["fit_time_mean"])),
                ("score time (mean, s)", _fmt(row["score_time_mean"])),
                ("wall time (s)", _fmt(row["wall_time_s"])),
                ("cpu", _fmt(row["cpu"])),
                ("memory (GB)", _fmt(row["memory_gb"])),
                ("artifact", _fmt(row["artifact_path"])),
                ("data snapshot hash", _fmt(row["data_snapshot_hash"])),
                ("grid hash", _fmt(row["grid_hash"])),
                ("code version", _fmt(row["code_version"])),
                ("job / run", f"{_fmt(row['job_id'])} / {_fmt(row['job_run_id'])} ({_fmt(row['run_status'])})"),
                ("started / finished", f"{_fmt(row['started_at'])} → {_fmt(row['finished_at'])}"),
                ("recorded", _fmt(row["recorded_at"])),
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
                f"ranking ({row['ranking_metric']})": _fmt(row["ranking_score"]),
            }
            for name in METRICS:
                if not pd.isna(row[f"{name}_mean"]):
                    entry[name] = f"{_fmt(row[f'{name}_mean'])} ± {_fmt(row[f'{name}_std'])}"
            for key, value in sorted(parse_params(row["params_json"]).items()):
                entry[f"param: {key}"] = str(value)
            entry["wall time (s)"] = _fmt(row["wall_time_s"])
            columns[str(row["experiment_id"])] = entry
        table = pd.DataFrame(columns)
        table.index.name = "field"
        return pn.pane.DataFrame(table, css_classes=["mf-compare"], sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Column("### Side by side", self._table, sizing_mode="stretch_width")


def _is_numeric(series: pd.Series) -> bool:
    values = series.dropna()
    return not values.empty and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def hyperparameter_figures(frame: pd.DataFrame, metric: str) -> list:
    """One scatter per hyperparameter: ranking score against the parameter's value."""
    figures = []
    params = [c for c in frame.columns if c not in ("experiment_id", "ranking_metric", "ranking_score", "rank_key")]
    for name in params:
        col = frame[name]
        if _is_numeric(col):
            values = pd.to_numeric(col, errors="coerce")
            positive = values.dropna()
            log = bool(len(positive) and (positive > 0).all() and positive.max() / positive.min() > 100)
            fig = figure(height=220, width=300, title=name, x_axis_type="log" if log else "linear",
                         toolbar_location=None, tools="")
            fig.scatter(values.to_numpy(dtype=float), frame["ranking_score"].to_numpy(dtype=float),
                        size=6, alpha=0.5)
        else:
            labels = col.map(lambda v: "None" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            factors = sorted(labels.unique())
            fig = figure(height=220, width=300, title=name, x_range=factors, toolbar_location=None, tools="")
            source = ColumnDataSource({"x": list(labels), "y": frame["ranking_score"].to_numpy(dtype=float)})
            fig.scatter(x=jitter("x", width=0.4, range=fig.x_range), y="y", source=source, size=6, alpha=0.5)
        fig.yaxis.axis_label = metric
        figures.append(fig)
    return figures


def parallel_coordinates_figure(frame: pd.DataFrame, metric: str, max_lines: int = 300):
    """Hyperparameters (scaled to 0–1; categories as evenly spaced codes) plus the score."""
    params = [c for c in frame.columns if c not in ("experiment_id", "ranking_metric", "ranking_score", "rank_key")]
    if not params:
        return None
    sample = frame if len(frame) <= max_lines else frame.sample(n=max_lines, random_state=0)
    axes = [*params, metric]
    scaled = {}
    for name in params:
        col = sample[name]
        if _is_numeric(col):
            values = pd.to_numeric(col, errors="coerce").astype(float)
            if (values.dropna() > 0).all() and values.max() / max(values.min(), 1e-300) > 100:
                values = np.log10(values)
        else:
            labels = col.map(str)
            codes = {lbl: i for i, lbl in enumerate(sorted(labels.unique()))}
            values = labels.map(codes).astype(float)
        span = values.max() - values.min()
        scaled[name] = (values - values.min()) / span if span else values * 0 + 0.5
    score = sample["ranking_score"].astype(float)
    span = score.max() - score.min()
    scaled[metric] = (score - score.min()) / span if span else score * 0 + 0.5
    xs = [list(range(len(axes)))] * len(sample)
    ys = [[float(scaled[a].iloc[i]) for a in axes] for i in range(len(sample))]
    source = ColumnDataSource({"xs": xs, "ys": ys, "rank": sample["rank_key"].astype(float).to_list(),
                               "experiment": sample["experiment_id"].astype(str).to_list(),
                               "score": score.to_list()})
    fig = figure(height=320, sizing_mode="stretch_width", title=f"Parallel coordinates (colour: {metric})",
                 toolbar_location=None, tools="", y_range=(-0.05, 1.05))
    low, high = float(sample["rank_key"].min()), float(sample["rank_key"].max())
    fig.multi_line("xs", "ys", source=source, line_alpha=0.5, line_width=1.5,
                   color=linear_cmap("rank", Viridis256, low, high if high > low else low + 1e-9))
    fig.xaxis.ticker = FixedTicker(ticks=list(range(len(axes))))
    fig.xaxis.major_label_overrides = {i: a for i, a in enumerate(axes)}
    fig.yaxis.visible = False
    fig.add_tools(HoverTool(tooltips=[("experiment", "@experiment"), ("score", "@score{0.0000}")]))
    return fig


class HyperparameterView(Viewer):
    """Ranking score against each hyperparameter, for one family, from a sample of the rows."""

    store = param.ClassSelector(class_=ExperimentsStore)
    family = param.Selector(default=None, objects=[], allow_None=True, doc="The family whose grid is shown.")
    max_points = param.Integer(default=2000, bounds=(100, 20000), doc="Rows sampled for the charts.")
    active = param.Boolean(default=True, doc=(
        "Whether the charts are on screen (the app ties this to its tab). While False a filter "
        "change does not sample rows and build figures nobody sees; they are built on showing."))

    def __init__(self, **params):
        super().__init__(**params)
        self._sync_families()
        self.store.param.watch(lambda *_: self._sync_families(), "filtered")

    def _sync_families(self):
        frame = self.store.filtered
        families = [] if frame is None or frame.empty else sorted(
            str(f) for f in pd.unique(frame["family"].to_numpy(dtype=object)) if not pd.isna(f))
        self.param.family.objects = families
        if self.family not in families:
            self.family = families[0] if families else None

    @param.depends("family", "store.filtered", "active")
    def _charts(self):
        if not self.active:
            return pn.pane.Markdown("", visible=False)
        frame = self.store.filtered
        if self.family is None or frame is None or frame.empty:
            return pn.pane.Markdown("No experiments match the filters.")
        rows = frame[frame["family"] == self.family]
        sample = hyperparameter_frame(rows, max_rows=self.max_points)
        if sample.empty:
            return pn.pane.Markdown(f"No succeeded experiment of {self.family} matches the filters.")
        metric = str(sample["ranking_metric"].mode().iat[0])
        note = pn.pane.Markdown(
            f"{len(sample):,} of {len(rows):,} experiments of **{self.family}** "
            f"({'sampled' if len(sample) < len(rows[rows['status'] == 'succeeded']) else 'all succeeded'}); "
            f"y axis: {metric} ({metric_direction(metric)})."
        )
        figs = hyperparameter_figures(sample, metric)
        parallel = parallel_coordinates_figure(sample, metric)
        return pn.Column(
            note,
            pn.FlexBox(*[pn.pane.Bokeh(f) for f in figs]) if figs else pn.pane.Markdown("This family has no hyperparameters."),
            pn.pane.Bokeh(parallel, sizing_mode="stretch_width") if parallel is not None else None,
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.Column(
            "### Hyperparameters",
            pn.widgets.Select.from_param(self.param.family, name="Family", width=260),
            self._charts,
            sizing_mode="stretch_width",
        )


def _plain(text: object) -> str:
    """User-supplied text (a reason, a user name) shown as text: no HTML, no Markdown markup."""
    escaped = html.escape(str(text), quote=True)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", escaped)


class SignedInUser(Viewer):
    """Who this session belongs to, and the way out."""

    identify = param.Callable(default=current_user, doc="Returns the session's signed-in user ('' if none).")

    def __panel__(self):
        user = self.identify()
        if not user:
            return pn.pane.Markdown("**Not signed in**", css_classes=["mf-user"])
        return pn.pane.Markdown(f"Signed in as **{_plain(user)}** · [Log out]({LOGOUT_URL})",
                                css_classes=["mf-user"])


class PromotePanel(Viewer):
    """Promote the experiment shown in the detail view, as the signed-in user, with a reason.

    The reviewer is whoever :attr:`identify` says is signed in to this session
    (``pn.state.user``), asked again at every click: nobody signed in, no promotion.
    """

    store = param.ClassSelector(class_=ExperimentsStore)
    identify = param.Callable(default=current_user, doc="Returns the session's signed-in user ('' if none).")
    reason = param.String(default="", doc="Why this experiment should be deployed.")
    message = param.String(default="", doc="Outcome of the last promote attempt.")
    message_type = param.Selector(default="info", objects=["info", "success", "danger", "warning"])

    def __init__(self, **params):
        super().__init__(**params)
        signed_in = bool(self.identify())
        self.button = pn.widgets.Button(label="Promote", color="primary", css_classes=["mf-promote"],
                                        disabled=not signed_in)
        self.button.on_click(self._promote)

    def _promote(self, _event=None):
        reviewer = self.identify()
        if not reviewer:
            self.message_type, self.message = "danger", "Not promoted: nobody is signed in to this session."
            return
        try:
            promotion = self.store.promote_focus(reviewer, self.reason)
        except PromotionRefused as exc:
            self.message_type, self.message = "danger", f"Not promoted: {_plain(exc)}"
            return
        except WAREHOUSE_ERRORS as exc:
            self.message_type, self.message = "danger", f"Could not record the promotion: {_plain(exc)}"
            return
        self.message_type = "success"
        self.message = (
            f"Promoted `{promotion.experiment_id}` ({promotion.estimator}) of factory run "
            f"`{promotion.factory_run_id}` at {promotion.promoted_at} by **{_plain(promotion.reviewer)}**."
        )

    @param.depends("message", "message_type")
    def _message(self):
        if not self.message:
            return pn.pane.Markdown("", visible=False)
        return pn.pane.Alert(self.message, alert_type=self.message_type, css_classes=["mf-promote-message"])

    @param.depends("store.promotion_log", "store.promotion_error", "store.selected_keys")
    def _current(self):
        log = self.store.promotion_log
        parts = []
        if self.store.promotion_error:
            parts.append(pn.pane.Alert(_plain(self.store.promotion_error), alert_type="warning",
                                       css_classes=["mf-promotions-error"]))
        if log is not None and log.problems:
            shown = "; ".join(_plain(p) for p in log.problems[:3]) + (" ..." if len(log.problems) > 3 else "")
            parts.append(pn.pane.Alert(
                f"The table model_promotions has {len(log.problems)} invalid row(s): {shown}",
                alert_type="warning", css_classes=["mf-promotions-error"]))
        row = self.store.focus
        if log is not None and row is not None:
            mine = [p for p in log.promotions if p.factory_run_id == row["factory_run_id"]]
            if mine:
                p = mine[-1]
                parts.append(pn.pane.Markdown(
                    f"Current promotion for run `{p.factory_run_id}`: `{p.experiment_id}` ({p.estimator}) "
                    f"by **{_plain(p.reviewer)}** at {p.promoted_at} — “{_plain(p.reason)}”",
                    css_classes=["mf-current-promotion"]))
        return pn.Column(*parts) if parts else pn.pane.Markdown("", visible=False)

    @param.depends("store.selected_keys")
    def _target(self):
        row = self.store.focus
        if row is None:
            return pn.pane.Markdown("Select an experiment to promote it.")
        return pn.pane.Markdown(f"Promote `{row['experiment_id']}` ({row['estimator']}) of run `{row['factory_run_id']}`")

    def _live(self, widget, name: str):
        """Follow keystrokes too, so a click on Promote right after typing sees the text."""
        widget.param.watch(lambda event: setattr(self, name, event.new), "value_input")
        return widget

    def _reviewer(self):
        user = self.identify()
        if not user:
            return pn.pane.Markdown("Sign in to promote.", css_classes=["mf-reviewer"])
        return pn.pane.Markdown(f"Reviewer: **{_plain(user)}** (signed in)", css_classes=["mf-reviewer"])

    def __panel__(self):
        return pn.Column(
            "### Promote",
            self._target,
            self._reviewer(),
            self._live(pn.widgets.TextAreaInput.from_param(self.param.reason, name="Reason", height=80,
                                                           css_classes=["mf-reason"]), "reason"),
            self.button,
            self._message,
            self._current,
            sizing_mode="stretch_width",
        )
