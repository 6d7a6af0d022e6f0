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
from dashboards.monitoring.store import (
    ALERT_COLUMNS,
    HISTORY_TITLES,
    WINDOW_TITLES,
    MonitoringData,
    MonitoringStore,
    deployment_history,
    empty_alerts,
    gate_evidence,
)
from factory_tasks.core.contracts import ContractError
from factory_tasks.warehouse.rollbacks import RollbackRefused

HTML_FIELDS = ("conversion", "roc_auc", "policy_value_dr")
#: fixed widths: Tabulator then lays out the first rows without measuring every cell
WINDOW_WIDTHS = {"cohort": 124, "model_version": 58, "volume": 62, "conversion": 150, "roc_auc": 132,
                 "estimated_roc_auc": 74, "label_completeness": 62, "policy_value_dr": 200, "max_drift": 124,
                 "alerts": 58, "maturity": 96}
HISTORY_WIDTHS = {"model_version": 150, "deployed_at": 230, "action": 76, "chosen_by": 260, "gate_reason": 380,
                  "deployment_id": 150}
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
    return (
        f"### Serving model {_code(d.model_version)} since {html.escape(d.deployed_at)}\n"
        f"{steps}\n\n"
        + (f"Rolled back at the request of **{plain(d.requested_by or 'someone')}**: {plain(d.request_reason or '')}\n\n"
           if d.action == "rollback" else "")
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
            titles=dict(HISTORY_TITLES), widths=dict(HISTORY_WIDTHS), configuration=TABLE_CONFIGURATION)
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
