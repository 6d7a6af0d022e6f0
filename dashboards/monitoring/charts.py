"""The monitoring charts over time, per model version: plain Bokeh figures built from the
reduced rows (``MonitoringData.latest``), only while their tab is shown (:class:`Charts`)."""

from __future__ import annotations

import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Label, Range1d, Span
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from panel.viewable import Viewer

from dashboards.monitoring.store import MonitoringStore


def _colors(versions: list[str]) -> dict[str, str]:
    return {v: Category10_10[i % 10] for i, v in enumerate(versions)}


def _series(latest: pd.DataFrame, metric: str, dimension: str = "") -> pd.DataFrame:
    rows = latest[(latest["metric"] == metric) & (latest["dimension"] == dimension)]
    return rows.sort_values("cohort_dt", kind="stable")


def _figure(title: str, y_label: str):
    fig = figure(height=300, sizing_mode="stretch_width", x_axis_type="datetime", title=title,
                 toolbar_location="right", tools="pan,xwheel_zoom,box_zoom,reset")
    fig.yaxis.axis_label = y_label
    fig.xaxis.axis_label = "cohort (UTC)"
    return fig


def _finish(fig):
    if fig.legend:
        fig.legend.location = "bottom_left"
        fig.legend.click_policy = "hide"
        fig.legend.label_text_font_size = "9pt"
    return fig


def realised_vs_estimated_figure(latest: pd.DataFrame, realised: str, estimated: str, title: str,
                                 floor: float | None = None):
    """Per model version: the realised metric (filled = final, hollow = immature) and its estimate."""
    fig = _figure(title, realised)
    versions = sorted(latest["model_version"].unique())
    colors = _colors(versions)
    for version in versions:
        mine = latest[latest["model_version"] == version]
        color = colors[version]
        est = _series(mine, estimated)
        if not est.empty:
            fig.line(est["cohort_dt"], est["value"], color=color, line_dash="dashed", line_width=2,
                     legend_label=f"{version} estimated")
        real = _series(mine, realised)
        if real.empty:
            continue
        fig.line(real["cohort_dt"], real["value"], color=color, line_width=2, alpha=0.7,
                 legend_label=f"{version} realised")
        for maturity, fill in (("final", color), ("immature", "white")):
            part = real[real["maturity"] == maturity]
            if part.empty:
                continue
            source = ColumnDataSource({"x": part["cohort_dt"], "y": part["value"], "n": part["n"],
                                       "maturity": part["maturity"]})
            fig.scatter("x", "y", source=source, size=7, line_color=color, fill_color=fill,
                        legend_label=f"{version} realised ({maturity})")
    if floor is not None:
        # a Span does not widen the auto range: include the floor so its line is always in view
        shown = latest.loc[latest["metric"].isin([realised, estimated]) & (latest["dimension"] == ""), "value"].dropna()
        if not shown.empty:
            low, high = min(float(shown.min()), floor), max(float(shown.max()), floor)
            pad = (high - low) * 0.05 or 0.01
            fig.y_range = Range1d(low - pad, high + pad)
        fig.add_layout(Span(location=floor, dimension="width", line_color="#d62728", line_dash="dotted"))
        fig.add_layout(Label(x=5, y=floor, x_units="screen", text=f"floor {floor:g}", text_font_size="8pt",
                             text_color="#d62728"))
    fig.add_tools(HoverTool(tooltips=[("cohort", "@x{%F %H:%M}"), ("value", "@y{0.0000}"),
                                      ("labels", "@n"), ("maturity", "@maturity")],
                            formatters={"@x": "datetime"}))
    return _finish(fig)


def label_completeness_figure(latest: pd.DataFrame):
    fig = _figure("Label completeness (share of the cohort's labels arrived)", "share")
    versions = sorted(latest["model_version"].unique())
    for version, color in _colors(versions).items():
        rows = _series(latest[latest["model_version"] == version], "label_completeness")
        if not rows.empty:
            fig.line(rows["cohort_dt"], rows["value"], color=color, line_width=2, legend_label=version)
            fig.scatter(rows["cohort_dt"], rows["value"], color=color, size=5)
    fig.y_range.start, fig.y_range.end = 0, 1.05
    return _finish(fig)


def policy_value_figure(latest: pd.DataFrame, confidence: float):
    """The model's policy value (DR, with its interval) against exploration and the best blast offer."""
    fig = _figure(f"Policy value per customer (doubly robust, {confidence:.0%} interval)", "value per customer")
    versions = sorted(latest["model_version"].unique())
    colors = _colors(versions)
    blast = latest[latest["metric"] == "blast_value_dr"]
    for version in versions:
        mine = latest[latest["model_version"] == version]
        color = colors[version]
        dr = _series(mine, "policy_value_dr")
        if not dr.empty:
            band = dr.dropna(subset=["lower", "upper"])
            if not band.empty:
                fig.varea(band["cohort_dt"], band["lower"], band["upper"], fill_color=color, fill_alpha=0.18,
                          legend_label=f"{version} policy interval")
            fig.line(dr["cohort_dt"], dr["value"], color=color, line_width=2, legend_label=f"{version} policy (DR)")
        explore = _series(mine, "exploration_value")
        if not explore.empty:
            fig.line(explore["cohort_dt"], explore["value"], color="#7f7f7f", line_dash="dashed",
                     legend_label="exploration (random offer)")
        mine_blast = blast[blast["model_version"] == version]
        if not mine_blast.empty:
            best = mine_blast.groupby("cohort_dt")["value"].max().sort_index()
            fig.line(best.index, best.to_numpy(), color="#2ca02c", line_dash="dotted", line_width=2,
                     legend_label="best blast offer")
    return _finish(fig)


def drift_figure(latest: pd.DataFrame, metric: str, warn: float, alert: float):
    """Drift per feature over the cohorts, with the warn and alert thresholds."""
    fig = _figure(f"Feature drift ({metric}) against the training snapshot", metric)
    rows = latest[latest["metric"] == metric]
    if rows.empty:
        other = latest[latest["metric"].str.startswith("drift_")]
        rows, metric = (other, str(other["metric"].iat[0])) if not other.empty else (rows, metric)
    per = rows.groupby(["dimension", "cohort_dt"])["value"].max().reset_index()
    for i, (dimension, part) in enumerate(per.groupby("dimension", sort=True)):
        fig.line(part["cohort_dt"], part["value"], color=Category10_10[i % 10], line_width=2,
                 legend_label=str(dimension).removeprefix("feature="))
    for level, color, name in ((warn, "#ff7f0e", "warn"), (alert, "#d62728", "alert")):
        fig.add_layout(Span(location=level, dimension="width", line_color=color, line_dash="dashed", line_width=2))
        fig.add_layout(Label(x=5, y=level, x_units="screen", text=f"{name} {level:g}", text_font_size="8pt",
                             text_color=color))
    fig.legend.location = "top_left"
    return _finish(fig)


def ab_difference_figure(history: pd.DataFrame, alpha: float):
    """An A/B test's difference challenger − champion (DR) at each monitoring run, with its
    always-valid interval (where both sides are finite) and the line of no difference.
    ``history``: :attr:`~dashboards.monitoring.store.AbTest.history` (runs with a value)."""
    fig = figure(height=260, sizing_mode="stretch_width", x_axis_type="datetime", toolbar_location="right",
                 tools="pan,xwheel_zoom,box_zoom,reset",
                 title=f"Challenger − champion per customer (DR), {(1 - alpha):.0%} always-valid interval")
    fig.xaxis.axis_label = "monitoring run (window end, UTC)"
    fig.yaxis.axis_label = "difference per customer"
    band = history.dropna(subset=["lower", "upper"])
    if not band.empty:
        fig.varea(band["as_of_dt"], band["lower"], band["upper"], fill_color="#1f77b4", fill_alpha=0.18,
                  legend_label="always-valid interval")
    source = ColumnDataSource({"x": history["as_of_dt"], "y": history["value"], "lower": history["lower"],
                               "upper": history["upper"], "n": history["n"], "state": history["state"].astype(str)})
    fig.line("x", "y", source=source, color="#1f77b4", line_width=2, legend_label="challenger − champion")
    fig.scatter("x", "y", source=source, color="#1f77b4", size=6)
    fig.add_layout(Span(location=0, dimension="width", line_color="#555555", line_dash="dashed"))
    fig.add_tools(HoverTool(tooltips=[("run", "@x{%F %H:%M}"), ("difference", "@y{+0.00}"),
                                      ("interval", "[@lower{+0.00}, @upper{+0.00}]"), ("matured", "@n{0,0}"),
                                      ("verdict", "@state")], formatters={"@x": "datetime"}))
    return _finish(fig)


class Charts(Viewer):
    """The charts over time, one tab each. A chart is built only while it is shown: while
    :attr:`active` is False (the app ties it to its own tab) nothing is built, and of the five
    tabs only the open one is; a new read rebuilds the open chart and leaves the others to be
    built when they are opened."""

    store = param.ClassSelector(class_=MonitoringStore)
    active = param.Boolean(default=True, doc=(
        "Whether the charts are on screen. While False a new read builds no figure nobody sees; "
        "the open tab's figure is built on showing."))

    #: (tab title, name: the css class mf-chart-<name>)
    TABS = (("ROC AUC", "auc"), ("Conversion", "conversion"), ("Label completeness", "labels"),
            ("Policy value", "policy"), ("Drift", "drift"))
    _UNBUILT = object()

    def __init__(self, **params):
        super().__init__(**params)
        self._slots = [pn.Column(sizing_mode="stretch_width", css_classes=["mf-chart", f"mf-chart-{name}"])
                       for _, name in self.TABS]
        self._built: list[object] = [self._UNBUILT] * len(self.TABS)  # the data each slot shows
        self.tabs = pn.Tabs(*((title, slot) for (title, _), slot in zip(self.TABS, self._slots)),
                            dynamic=False, sizing_mode="stretch_width", css_classes=["mf-charts"])
        self.tabs.param.watch(lambda *_: self._show(), "active")
        self.param.watch(lambda *_: self._show(), "active")
        self.store.param.watch(lambda *_: self._show(), "data")
        self._show()

    def figure(self, name: str, latest: pd.DataFrame):
        """The Bokeh figure of the tab ``name`` over the reduced rows ``latest``."""
        m = self.store.config.monitoring
        if name == "auc":
            return realised_vs_estimated_figure(latest, "roc_auc", "estimated_roc_auc",
                                                "ROC AUC: realised (labels) vs estimated (scores alone)",
                                                floor=m.roc_auc_floor)
        if name == "conversion":
            return realised_vs_estimated_figure(latest, "conversion_rate", "estimated_conversion_rate",
                                                "Conversion rate: realised vs estimated")
        if name == "labels":
            return label_completeness_figure(latest)
        if name == "policy":
            return policy_value_figure(latest, m.policy_confidence)
        if name == "drift":
            return drift_figure(latest, self.store.drift_metric, m.drift_warn, m.drift_alert)
        raise ValueError(f"no chart {name!r}")

    def _show(self) -> None:
        """Build the open tab's chart if it is shown and not built from the current read."""
        if not self.active:
            return
        i = self.tabs.active
        data = self.store.data
        if self._built[i] is data:
            return
        self._built[i] = data
        if data is None or data.latest.empty:
            self._slots[i][:] = [pn.pane.Markdown("No monitoring rows to chart.")]
        else:
            self._slots[i][:] = [pn.pane.Bokeh(self.figure(self.TABS[i][1], data.latest),
                                               sizing_mode="stretch_width")]

    def __panel__(self):
        return self.tabs
