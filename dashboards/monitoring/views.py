"""Views of the monitoring store: each a ``Viewer`` over one :class:`MonitoringStore`.

The windows table is one Tabulator (remote pagination) whose filter is a bound function: the
"alerts only" toggle narrows it on the server and ships one page, never a new table. Charts are
plain Bokeh figures built from the reduced rows (``MonitoringData.latest``), only while their tab
is shown (:class:`Charts`).
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone

import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Label, NumberFormatter, Range1d, Span
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from panel.viewable import Viewer

from dashboards.experiments.auth import LOGOUT_URL, current_user
from dashboards.layout import TABLE_CONFIGURATION, shown_or_hidden
from dashboards.monitoring.store import ALERT_COLUMNS, WINDOW_TITLES, MonitoringData, MonitoringStore, empty_alerts

HTML_FIELDS = ("conversion", "roc_auc", "policy_value_dr")
#: fixed widths: Tabulator then lays out the first rows without measuring every cell
WINDOW_WIDTHS = {"cohort": 124, "model_version": 58, "volume": 62, "conversion": 150, "roc_auc": 132,
                 "estimated_roc_auc": 74, "label_completeness": 62, "policy_value_dr": 200, "max_drift": 124,
                 "alerts": 58, "maturity": 96}
ALERT_WIDTHS = {"raised_at": 160, "model_version": 64, "cohort_start": 160, "kind": 130, "metric": 150,
                "dimension": 130, "value": 80, "threshold": 80, "message": 420, "retrain_run_id": 200}


def _plain(text: object) -> str:
    """Text from a table or a login shown as text: no HTML, no Markdown markup."""
    escaped = html.escape(str(text), quote=False)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", escaped)


def _code(text: object) -> str:
    return f"<code>{html.escape(str(text))}</code>"


def _colors(versions: list[str]) -> dict[str, str]:
    return {v: Category10_10[i % 10] for i, v in enumerate(versions)}


class SignedInUser(Viewer):
    """Who this session belongs to, and the way out."""

    identify = param.Callable(default=current_user, doc="Returns the session's signed-in user ('' if none).")

    def __panel__(self):
        user = self.identify()
        if not user:
            return pn.pane.Markdown("**Not signed in**", css_classes=["mf-user"])
        return pn.pane.Markdown(f"Signed in as **{_plain(user)}** · [Log out]({LOGOUT_URL})", css_classes=["mf-user"])


class ProblemBanner(Viewer):
    """What cannot be shown and why, each problem naming its table, row or connection."""

    store = param.ClassSelector(class_=MonitoringStore)

    @param.depends("store.problems")
    def _banner(self):
        problems = self.store.problems
        if not problems:
            return pn.pane.Markdown("", visible=False)
        items = "\n".join(f"- {_plain(p)}" for p in problems)
        return pn.pane.Alert(
            f"**Some monitoring data cannot be shown.**\n\n{items}\n\n"
            "This page reads the warehouse again every little while and shows the data once it is readable.",
            alert_type="danger", css_classes=["mf-monitoring-error"], sizing_mode="stretch_width")

    def __panel__(self):
        return pn.panel(self._banner)


def lineage_markdown(data: MonitoringData | None) -> str:
    serving = None if data is None else data.serving
    if serving is None:
        return ("### Serving: no deployment recorded\n"
                "`model_deployments` has no row yet: `deploy_best_model` records each deployment there.")
    d = serving
    chosen = d.chosen_by + (f" by {html.escape(d.chosen_by_user)}" if d.chosen_by_user else "")
    earlier = len(data.deployments) - 1
    steps = " → ".join([
        f"data snapshot {_code(d.data_snapshot_hash)}",
        f"experiment {_code(d.experiment_id)} (factory run {_code(d.factory_run_id)})",
        f"model {_code(d.model_version)} ({_code(d.model_name)}, build {_code(d.build_id)})",
        f"deployment {_code(d.deployment_id)}",
    ])
    return (
        f"### Serving model {_code(d.model_version)} since {html.escape(d.deployed_at)}\n"
        f"{steps}\n\n"
        f"Chosen: {html.escape(chosen)} — {_plain(d.choice_reason)} · gate: {_plain(d.gate_reason)}"
        f"{' (overridden)' if d.gate_override else ''} · code {_code(d.code_version)}"
        f"{f' · {earlier} earlier deployment(s)' if earlier > 0 else ''}"
    )


class Lineage(Viewer):
    """The serving deployment (latest row of ``model_deployments``) and where it came from."""

    store = param.ClassSelector(class_=MonitoringStore)

    def __init__(self, **params):
        super().__init__(**params)
        self._pane = pn.pane.Markdown(lineage_markdown(self.store.data), css_classes=["mf-lineage"],
                                      sizing_mode="stretch_width")
        self.store.param.watch(lambda e: setattr(self._pane, "object", lineage_markdown(e.new)), "data")

    def __panel__(self):
        return self._pane


class Freshness(Viewer):
    """When the warehouse was read, and how much."""

    store = param.ClassSelector(class_=MonitoringStore)

    def __init__(self, **params):
        super().__init__(**params)
        self._pane = pn.pane.Markdown(self._text(), css_classes=["mf-freshness"], margin=(0, 10))
        self.store.param.watch(lambda *_: self.tick(), "data")

    def _text(self) -> str:
        data = self.store.data
        if data is None:
            return "**No data read**"
        checked = self.store.checked_at or data.read_at
        age = (datetime.now(timezone.utc) - checked).total_seconds()
        m = self.store.config.monitoring
        return (f"Data as of **{data.read_at:%Y-%m-%d %H:%M:%S} UTC** (checked {max(0, int(age))} s ago) · "
                f"{data.rows:,} monitoring rows · {len(data.alerts):,} alerts · {_plain(data.warehouse)}\n\n"
                f"Thresholds (config/closed\\_loop.yaml): drift {m.drift_metric} warn {m.drift_warn:g}, "
                f"alert {m.drift_alert:g} · AUC floor {m.roc_auc_floor:g} · calibration error ceiling "
                f"{m.calibration_error_ceiling:g}")

    def tick(self) -> None:
        self._pane.object = self._text()

    def __panel__(self):
        return self._pane


class WindowsTable(Viewer):
    """One row per cohort × model version, newest first; "alerts only" narrows it."""

    store = param.ClassSelector(class_=MonitoringStore)
    page_size = param.Integer(default=20, bounds=(5, 200), doc="Rows per page.")

    def __init__(self, **params):
        super().__init__(**params)
        self.table = pn.widgets.Tabulator(
            self.store.windows,
            pagination="remote",
            page_size=self.page_size,
            show_index=False,
            disabled=True,
            selectable=False,
            hidden_columns=["has_alert", "row_key"],
            titles=dict(WINDOW_TITLES),
            widths=dict(WINDOW_WIDTHS),
            formatters={f: {"type": "html"} for f in HTML_FIELDS},
            header_filters=False,
            sizing_mode="stretch_width",
            height=560,
            css_classes=["mf-monitoring-windows"],
            configuration=TABLE_CONFIGURATION,
        )
        self.toggle = pn.widgets.Toggle.from_param(self.store.param.alerts_only, name="⚠ Alerts only",
                                                   button_type="warning", button_style="outline",
                                                   width=140, css_classes=["mf-alerts-only"])
        self.table.add_filter(pn.bind(self.store.filter_windows, alerts_only=self.store.param.alerts_only))
        self.count = pn.pane.Markdown(self._count_text(), css_classes=["mf-windows-count"], margin=(5, 10))
        self.store.param.watch(self._on_data, "data")
        self.store.param.watch(lambda *_: setattr(self.count, "object", self._count_text()), ["shown"])

    def _count_text(self) -> str:
        return f"Showing **{self.store.shown:,}** of {self.store.total:,} windows"

    def _on_data(self, *_):
        self.table.value = self.store.windows
        self.count.object = self._count_text()

    def __panel__(self):
        return pn.Column(
            "### Windows (cohort × model version)",
            pn.Row(self.toggle, self.count),
            pn.pane.Markdown("Realised values of cohorts whose labels are still arriving are marked "
                             "*immature*: they will change. AUC estimated is computed from scores alone.",
                             styles={"color": "#555"}),
            self.table,
            sizing_mode="stretch_width",
        )


class AlertsTable(Viewer):
    """``model_alerts``, newest first."""

    store = param.ClassSelector(class_=MonitoringStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.table = pn.widgets.Tabulator(
            self._value(), pagination="local", page_size=10, show_index=False, disabled=True,
            selectable=False, sizing_mode="stretch_width", css_classes=["mf-alerts"], widths=dict(ALERT_WIDTHS),
            configuration=TABLE_CONFIGURATION,
            formatters={"value": NumberFormatter(format="0.000"), "threshold": NumberFormatter(format="0.000")},
            titles={"raised_at": "Raised (UTC)", "model_version": "Model", "cohort_start": "Cohort",
                    "retrain_run_id": "Retrain run"},
        )
        self.empty = pn.pane.Markdown("No alert has been raised.", css_classes=["mf-no-alerts"])
        self.shown = pn.Column(self.table, sizing_mode="stretch_width")
        self._sync()
        self.store.param.watch(lambda *_: self._sync(), "data")

    def _value(self) -> pd.DataFrame:
        data = self.store.data
        return (empty_alerts() if data is None else data.alerts)[ALERT_COLUMNS]

    def _sync(self):
        value = self._value()
        self.table.value = value
        self.shown.styles, self.empty.visible = shown_or_hidden(not value.empty), value.empty

    def __panel__(self):
        return pn.Column("### Alerts (model_alerts)", self.empty, self.shown, sizing_mode="stretch_width")


# -- charts ------------------------------------------------------------------------------------

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
