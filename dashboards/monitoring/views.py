"""Views of the monitoring store: each a ``Viewer`` over one :class:`MonitoringStore`; the charts
over time are in :mod:`dashboards.monitoring.charts`.

The windows table is one Tabulator (remote pagination) whose filter is a bound function: the
"alerts only" toggle narrows it on the server and ships one page, never a new table.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone

import pandas as pd
import panel as pn
import param
from bokeh.models import NumberFormatter
from panel.viewable import Viewer

from dashboards.auth import current_user
from dashboards.common import plain
from dashboards.experiments.warehouse import WAREHOUSE_ERRORS
from dashboards.layout import TABLE_CONFIGURATION, shown_or_hidden
from dashboards.monitoring.charts import ab_difference_figure
from dashboards.monitoring.store import (
    AB_HISTORY_TITLES,
    ALERT_COLUMNS,
    HISTORY_TITLES,
    HISTORY_TOOLTIPS,
    WINDOW_TITLES,
    AbTest,
    MonitoringData,
    MonitoringStore,
    deployment_history,
    empty_alerts,
    gate_evidence,
    split_text,
)
from factory_tasks.core.contracts import ContractError
from factory_tasks.warehouse.rollbacks import RollbackRefused, run_id_for

HTML_FIELDS = ("conversion", "roc_auc", "policy_value_dr")
#: fixed widths: Tabulator then lays out the first rows without measuring every cell
WINDOW_WIDTHS = {"cohort": 124, "model_version": 58, "volume": 62, "conversion": 150, "roc_auc": 132,
                 "estimated_roc_auc": 74, "label_completeness": 62, "policy_value_dr": 200, "max_drift": 124,
                 "alerts": 58, "maturity": 96}
HISTORY_WIDTHS = {"model_version": 150, "deployed_at": 230, "action": 96, "champion": 150, "split": 112,
                  "chosen_by": 260, "gate_reason": 380, "deployment_id": 150}
#: the A/B test's runs shown in its history table (newest first; the chart shows them all)
AB_HISTORY_ROWS = 24
ALERT_WIDTHS = {"raised_at": 160, "model_version": 64, "cohort_start": 160, "kind": 130, "metric": 150,
                "dimension": 130, "value": 80, "threshold": 80, "message": 420, "retrain_run_id": 200}


def _code(text: object) -> str:
    return f"<code>{html.escape(str(text))}</code>"


class ProblemBanner(Viewer):
    """What cannot be shown and why, each problem naming its table, row or connection."""

    store = param.ClassSelector(class_=MonitoringStore)

    @param.depends("store.problems")
    def _banner(self):
        problems = self.store.problems
        if not problems:
            return pn.pane.Markdown("", visible=False)
        items = "\n".join(f"- {plain(p)}" for p in problems)
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
    if d.action == "ab_start":
        head = (f"### Serving an A/B test since {html.escape(d.deployed_at)}: champion {_code(d.champion_version)} "
                f"and challenger {_code(d.model_version)} ({html.escape(split_text(d.challenger_share))})\n"
                f"Test {_code(d.test_id)}: its values and verdict are in the tab *A/B test*. The challenger's lineage: ")
    else:
        head = f"### Serving model {_code(d.model_version)} since {html.escape(d.deployed_at)}\n"
    asked = {"rollback": "Rolled back at the request of", "ab_promote": "The A/B test's verdict (promote), carried out by",
             "ab_end": "The A/B test's verdict (end), carried out by"}
    return (
        f"{head}{steps}\n\n"
        + (f"{asked[d.action]} **{plain(d.requested_by or 'someone')}**: {plain(d.request_reason or '')}\n\n"
           if d.action in asked else "")
        + f"Chosen: {html.escape(chosen)} — {plain(d.choice_reason)} · gate: {plain(d.gate_reason)}"
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
                f"{data.rows:,} monitoring rows · {len(data.alerts):,} alerts · {plain(data.warehouse)}\n\n"
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


class DeploymentHistory(Viewer):
    """``model_deployments``, newest first (deploys and rollbacks), and the gate's evidence of each
    deployment that has some: challenger and champion on the same rows, the paired difference
    and its interval."""

    store = param.ClassSelector(class_=MonitoringStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.table = pn.widgets.Tabulator(
            self._history(), pagination="local", page_size=10, show_index=False, disabled=True,
            selectable=False, sizing_mode="stretch_width", css_classes=["mf-deployments"],
            titles=dict(HISTORY_TITLES), widths=dict(HISTORY_WIDTHS), header_tooltips=dict(HISTORY_TOOLTIPS),
            configuration=TABLE_CONFIGURATION)
        number = NumberFormatter(format="0.0000")
        self.evidence = pn.widgets.Tabulator(
            self._evidence(), pagination="local", page_size=10, show_index=False, disabled=True,
            selectable=False, sizing_mode="stretch_width", css_classes=["mf-gate-evidence"],
            configuration=TABLE_CONFIGURATION,
            formatters={c: number for c in ("challenger", "champion", "difference", "low", "high")},
            titles={"model_version": "Model", "deployed_at": "Deployed (UTC)", "n_rows": "Rows"})
        self.no_evidence = pn.pane.Markdown("No deployment recorded gate evidence (paired comparisons).",
                                            css_classes=["mf-no-evidence"])
        self.shown = pn.Column(self.evidence, sizing_mode="stretch_width")
        self._sync()
        self.store.param.watch(lambda *_: self._sync(), "data")

    def _history(self) -> pd.DataFrame:
        return deployment_history(() if self.store.data is None else self.store.data.deployments)

    def _evidence(self) -> pd.DataFrame:
        return gate_evidence(() if self.store.data is None else self.store.data.deployments)

    def _sync(self):
        self.table.value = self._history()
        evidence = self._evidence()
        self.evidence.value = evidence
        self.shown.styles, self.no_evidence.visible = shown_or_hidden(not evidence.empty), evidence.empty

    def __panel__(self):
        return pn.Column("### Deployment history (model_deployments, newest first)", self.table,
                         "#### Gate evidence (challenger − champion on the same rows)", self.no_evidence, self.shown,
                         sizing_mode="stretch_width")


class RollbackPanel(Viewer):
    """Ask to serve an earlier model version again, as the signed-in user, with a reason; and the
    requests so far. The DAG ``rollback_requests`` carries a pending request out (within minutes,
    once no other deploy run is active); it is done when its rollback is in ``model_deployments``.

    The requester is whoever :attr:`identify` says is signed in (``pn.state.user``), asked again
    at every click: nobody signed in, no request.
    """

    store = param.ClassSelector(class_=MonitoringStore)
    identify = param.Callable(default=current_user, doc="Returns the session's signed-in user ('' if none).")
    reason = param.String(default="", doc="Why the earlier version should serve again.")
    message = param.String(default="", doc="Outcome of the last request.")
    message_type = param.Selector(default="info", objects=["info", "success", "danger", "warning"])

    def __init__(self, **params):
        super().__init__(**params)
        self.version = pn.widgets.Select(label="Model version", options=self._versions(), width=320,
                                         css_classes=["mf-rollback-version"])
        self.button = pn.widgets.Button(label="Request rollback", color="warning",
                                        css_classes=["mf-rollback"], disabled=not self.identify())
        self.button.on_click(self._request)
        self.reason_input = pn.widgets.TextAreaInput.from_param(self.param.reason, name="Reason", height=70,
                                                                css_classes=["mf-rollback-reason"])
        self.reason_input.param.watch(lambda event: setattr(self, "reason", event.new), "value_input")
        self.requests = pn.pane.Markdown(self._requests_text(), css_classes=["mf-rollback-requests"],
                                         sizing_mode="stretch_width")
        self.store.param.watch(lambda *_: self._sync(), "data")

    def _versions(self) -> list[str]:
        return [] if self.store.data is None else self.store.data.rollback_versions

    def _sync(self):
        versions = self._versions()
        if self.version.options != versions:
            self.version.options = versions
        self.requests.object = self._requests_text()

    def _requests_text(self) -> str:
        data = self.store.data
        statuses = [] if data is None else data.request_statuses
        if not statuses:
            return "No rollback has been requested."
        lines = []
        for s in reversed(statuses[-10:]):
            r = s.request
            done = f" by deployment {_code(s.deployment.deployment_id)} at {html.escape(s.deployment.deployed_at)}" \
                if s.deployment is not None else ""
            if s.state == "pending":  # where to look when it stays pending: that run failed or waits
                done = (f": Airflow's deploy_best_model run {_code(run_id_for(r))} carries it out "
                        "(failed: clear it there, or ask again)")
            lines.append(f"- {html.escape(r.requested_at)}: **{plain(r.requested_by)}** asked for "
                         f"{_code(r.model_version)} — {plain(r.reason)} · **{s.state}**{done}")
        return "Requests, newest first:\n\n" + "\n".join(lines)

    def _request(self, _event=None):
        user = self.identify()
        if not user:
            self.message_type, self.message = "danger", "Not requested: nobody is signed in to this session."
            return
        try:
            request = self.store.request_rollback(self.version.value or "", user, self.reason)
        except (RollbackRefused, ContractError) as exc:
            self.message_type, self.message = "danger", f"Not requested: {plain(exc)}"
            return
        except WAREHOUSE_ERRORS as exc:
            self.message_type, self.message = "danger", f"Could not record the request: {plain(exc)}"
            return
        self.message_type = "success"
        self.message = (f"Rollback to {_code(request.model_version)} requested by **{plain(request.requested_by)}** "
                        f"at {html.escape(request.requested_at)}: the DAG rollback\\_requests carries it out "
                        f"within minutes (deploy\\_best\\_model run {_code('rollback__' + request.request_id)}).")

    @param.depends("message", "message_type")
    def _message(self):
        if not self.message:
            return pn.pane.Markdown("", visible=False)
        return pn.pane.Alert(self.message, alert_type=self.message_type, css_classes=["mf-rollback-message"])

    def _requester(self):
        user = self.identify()
        if not user:
            return pn.pane.Markdown("Sign in to request a rollback.", css_classes=["mf-requester"])
        return pn.pane.Markdown(f"Requested by: **{plain(user)}** (signed in)", css_classes=["mf-requester"])

    def __panel__(self):
        return pn.Column(
            "### Roll back to an earlier version",
            pn.pane.Markdown("Serves a version deployed before again, from its files: no review, retrain or gate."),
            self._requester(), self.version, self.reason_input, self.button, self._message, self.requests,
            sizing_mode="stretch_width",
        )


# -- the A/B test ------------------------------------------------------------------------------

def _signed(value: float, digits: int = 2) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:+,.{digits}f}"


def _interval(value: float, lower: float, upper: float, signed: bool = False) -> str:
    """``value [lower, upper]`` (an open side as ∓∞); 'n/a' without a value."""
    if value is None or pd.isna(value):
        return "n/a"
    show = _signed if signed else (lambda v: f"{v:,.2f}")
    low = "−∞" if pd.isna(lower) else show(lower)
    high = "+∞" if pd.isna(upper) else show(upper)
    return f"{show(value)} [{low}, {high}]"


def _count(value: float) -> str:
    return "–" if value is None or pd.isna(value) else f"{int(value):,}"


def ab_summary_markdown(ab: AbTest | None) -> str:
    """The test's heading and facts: running or how it ended, versions, split, ε, start, last run."""
    if ab is None:
        return ("### No A/B test is running\n"
                "None has been run: `model_deployments` has no `ab_start` record (`deploy_best_model` with "
                "`challenger_share` above 0 starts one).")
    start = ab.start
    if ab.running:
        head = f"### A/B test {_code(ab.test_id)}: running since {html.escape(start.deployed_at)}"
    else:
        end = ab.end
        head = (f"### No A/B test is running\n"
                f"The last one, {_code(ab.test_id)}, ended at {html.escape(end.deployed_at)} "
                f"({_code(end.action)}: {_code(end.model_version)} serving alone): **{html.escape(ab.outcome)}**")
    epsilon = "not recorded" if start.exploration_epsilon is None else f"{start.exploration_epsilon:g}"
    latest = ab.latest
    runs = (f"last monitoring run {_code(latest['as_of_window'])} ({len(ab.history):,} run(s))" if latest
            else "no monitoring run has reported on it yet")
    started = "" if ab.running else f" · started at {html.escape(start.deployed_at)}"
    return (f"{head}\n\n"
            f"Champion {_code(ab.champion)} {(1 - ab.share) * 100:.4g}% · challenger {_code(ab.challenger)} "
            f"{ab.share * 100:.4g}% of the customers · exploration ε {epsilon}{started} · {runs}")


def ab_arms_html(ab: AbTest) -> str:
    """Each arm: version, share, decisions (matured / total), its DR value with the fixed-n interval
    (IPW and SNIPW beside it, smaller)."""
    level = f"{(1 - ab.alpha) * 100:g}%"
    rows = []
    for arm, share in (("champion", 1 - ab.share), ("challenger", ab.share)):
        a = ab.arms.loc[arm]
        others = " · ".join(f"{name} {_interval(a[f'{m}_value'], a[f'{m}_lower'], a[f'{m}_upper'])}"
                            for name, m in (("IPW", "ipw"), ("SNIPW", "snipw")))
        rows.append(f"<tr class='mf-ab-arm-{arm}'><td>{arm}</td><td>{_code(a['version'])}</td>"
                    f"<td>{share * 100:.4g}%</td><td>{_count(a['matured'])} / {_count(a['decisions'])}</td>"
                    f"<td><b>{_interval(a['dr_value'], a['dr_lower'], a['dr_upper'])}</b></td>"
                    f"<td><small>{others}</small></td></tr>")
    return ("<table class='mf-ab-arms-table'><thead><tr><th>Arm</th><th>Model</th><th>Share</th>"
            "<th>Decisions (matured / total)</th>"
            f"<th>Policy value per customer (DR, {level} interval)</th><th><small>IPW · SNIPW</small></th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def ab_difference_markdown(ab: AbTest) -> str:
    latest = ab.latest
    level = f"{(1 - ab.alpha) * 100:g}%"
    if latest is None or pd.isna(latest["value"]):
        matured = 0 if latest is None or pd.isna(latest["n"]) else int(latest["n"])
        return (f"**Challenger − champion (DR): n/a** — {matured:,} matured decision(s): "
                "no difference before the first matured decisions of both arms")
    boundary = latest["half_width"]
    bound = "±∞ (too few matured decisions)" if pd.isna(boundary) else f"±{boundary:,.2f}"
    return (f"**Challenger − champion (DR): {_interval(latest['value'], latest['lower'], latest['upper'], True)}** "
            f"per customer, {level} always-valid interval on {_count(latest['n'])} matured decisions · "
            f"the rule's boundary {bound} around the difference (a verdict once the interval excludes 0)")


def ab_verdict_markdown(ab: AbTest) -> str:
    if not ab.running:
        said = ab.verdict if ab.latest is not None else ""
        last = f" (the last monitoring run said: {html.escape(said)})" if said and said != ab.outcome else ""
        return f"Verdict: **{html.escape(ab.outcome)}**{last}"
    text = f"Verdict: **{html.escape(ab.verdict)}**"
    state = ab.state
    if state in (None, "continue"):
        return text + f" · the test ends at {ab.max_decisions:,} matured decisions at the latest"
    winner = ab.challenger if state == "promote" else ab.champion
    if ab.conclude:
        return text + f" · `deploy_best_model` redeploys {_code(winner)} alone"
    return text + " · `ab_test.conclude` is off: the verdict is recorded as an alert and the test goes on"


def ab_history_html(ab: AbTest, limit: int = AB_HISTORY_ROWS) -> str:
    """The difference at each monitoring run, newest first (the last ``limit``)."""
    history = ab.history
    if history.empty:
        return "<p>No monitoring run has reported on the test yet.</p>"
    shown = history.iloc[::-1].head(limit)
    cells = []
    for row in shown.itertuples(index=False):  # at most ``limit`` rows
        cells.append(f"<tr><td>{html.escape(row.as_of_window)}</td>"
                     f"<td>{_interval(row.value, row.lower, row.upper, True)}</td>"
                     f"<td>{'–' if pd.isna(row.half_width) else f'±{row.half_width:,.2f}'}</td>"
                     f"<td>{_count(row.n)}</td><td>{html.escape(str(row.state or '–'))}</td></tr>")
    more = len(history) - len(shown)
    note = f"<p>… and {more:,} earlier run(s) (in the chart)</p>" if more > 0 else ""
    head = "".join(f"<th>{html.escape(t)}</th>" for t in AB_HISTORY_TITLES.values())
    return f"<table class='mf-ab-history-table'><thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody></table>{note}"


_AB_CSS = """
table { border-collapse: collapse; font-size: 0.95em; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 3px 10px; text-align: left; white-space: nowrap; }
th { background: #f5f5f5; }
small { color: #555; }
"""


class ABTestPanel(Viewer):
    """The running (or latest) A/B test: versions and split, each arm's decisions and values, the
    difference challenger − champion with its always-valid interval and the rule's boundary, the
    verdict in words, and the difference at each hourly run (a table and a chart). Outside a test,
    that none runs and how the last one ended. Everything comes from :attr:`MonitoringData.ab_test`,
    derived once per read; a new read that leaves the test as it was redraws nothing."""

    store = param.ClassSelector(class_=MonitoringStore)

    def __init__(self, **params):
        super().__init__(**params)
        self.summary = pn.pane.Markdown("", css_classes=["mf-ab-summary"], sizing_mode="stretch_width")
        self.arms = pn.pane.HTML("", css_classes=["mf-ab-arms"], stylesheets=[_AB_CSS], sizing_mode="stretch_width")
        self.difference = pn.pane.Markdown("", css_classes=["mf-ab-difference"], sizing_mode="stretch_width")
        self.verdict = pn.pane.Markdown("", css_classes=["mf-ab-verdict"], sizing_mode="stretch_width")
        self.history = pn.pane.HTML("", css_classes=["mf-ab-history"], stylesheets=[_AB_CSS],
                                    sizing_mode="stretch_width")
        self.chart = pn.Column(sizing_mode="stretch_width", css_classes=["mf-ab-chart"])
        self.details = pn.Column(self.arms, self.difference, self.verdict,
                                 "#### Challenger − champion at each hourly monitoring run",
                                 self.chart, self.history, sizing_mode="stretch_width")
        self._key: object = object()
        self._sync()
        self.store.param.watch(lambda *_: self._sync(), "data")

    def _sync(self) -> None:
        ab = None if self.store.data is None else self.store.data.ab_test
        key = None if ab is None else ab.key
        if key == self._key:
            return
        self._key = key
        self.summary.object = ab_summary_markdown(ab)
        self.details.visible = ab is not None
        if ab is None:
            self.chart[:] = []
            return
        self.arms.object = ab_arms_html(ab)
        self.difference.object = ab_difference_markdown(ab)
        self.verdict.object = ab_verdict_markdown(ab)
        self.history.object = ab_history_html(ab)
        drawn = ab.history.dropna(subset=["value"])
        self.chart[:] = [pn.pane.Bokeh(ab_difference_figure(drawn, ab.alpha), sizing_mode="stretch_width")] \
            if not drawn.empty else []

    def __panel__(self):
        return pn.Column(self.summary, self.details, sizing_mode="stretch_width", css_classes=["mf-ab-test"])
