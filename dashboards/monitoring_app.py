"""The monitoring dashboard: ``python -m stack dashboard`` (``make dashboard``) serves it beside
the experiments dashboard, at ``/monitoring_app``, behind the same login.

Reads what the ``model_monitoring`` DAG wrote — the warehouse tables ``model_monitoring``,
``model_alerts``, ``model_deployments`` and ``model_rollback_requests`` through the Airflow connection
``model_factory_warehouse`` — and the thresholds of ``config/closed_loop.yaml``
(``$MODEL_FACTORY_LOOP_CONFIG``). The tab *A/B test* shows the running (or last) live A/B test:
each arm's values, the always-valid difference and the verdict, hour by hour; a test's ``ab_*``
rows never enter the windows or the charts. It writes only a signed-in reviewer's rollback request (the tab
*Deployments*: the history, the gate's evidence, and a request to serve an earlier version again,
appended to ``model_rollback_requests``; the DAG ``rollback_requests`` carries it out). ``$MODEL_FACTORY_MONITORING_REFRESH_S``
(default 30) sets how often the tables are read again (one read is shared by all sessions).
Nothing happens at import; the page is built per browser session by :func:`create_app`, and
only for a signed-in session.

What makes the page fast (``benchmarks/dashboard_render.py`` measures it), as on the
experiments dashboard:

- no Panel template: a header, a sidebar column and a main column. ``FastListTemplate`` would
  have the browser fetch and parse megabytes more JavaScript (FAST web components and
  MathJax), a stylesheet per component, and a Google Fonts stylesheet, which on a machine
  without internet is a request that can only fail;
- the first document holds what the first screen needs (the lineage and the windows table);
  the alerts table and the charts' tabs arrive right after it (``pn.state.onload``);
- the charts sit behind their own tab and are built only while it (and their own tab within
  it) is shown: a visit that only reads the windows builds no figure, and a click on the
  alerts-only filter does not wait behind five of them; the A/B test and the deployments are
  built when their tab is first opened.
"""

from __future__ import annotations

import panel as pn

from dashboards.auth import current_user
from dashboards.common import SignedInUser, refusal
from dashboards.layout import page, rule
from dashboards.monitoring.charts import Charts
from dashboards.monitoring.store import MonitoringStore, refresh_seconds
from dashboards.monitoring.views import (
    ABTestPanel,
    AlertsTable,
    DeploymentHistory,
    Freshness,
    Lineage,
    ProblemBanner,
    RollbackPanel,
    WindowsTable,
)

TITLE = "Model Factory · monitoring"
SIDEBAR_WIDTH = 260
WINDOWS_TAB, CHARTS_TAB, AB_TAB, DEPLOYMENTS_TAB = 0, 1, 2, 3


def create_app(store: MonitoringStore | None = None, live: bool = True):
    """Build one session's page: lineage and windows first; the alerts and the charts' tabs once
    it has loaded, each chart built when its tab is opened."""
    pn.extension("tabulator", notifications=False, loading_indicator=True)
    store = store or MonitoringStore()
    freshness = Freshness(store=store)
    alerts_slot = pn.Column(sizing_mode="stretch_width", css_classes=["mf-later"])
    charts_slot = pn.Column(sizing_mode="stretch_width")
    ab_slot = pn.Column(sizing_mode="stretch_width")
    deployments_slot = pn.Column(sizing_mode="stretch_width")
    tabs = pn.Tabs(
        ("Windows and alerts", pn.Column(WindowsTable(store=store), rule(), alerts_slot,
                                         sizing_mode="stretch_width")),
        ("Charts over time", charts_slot),
        ("A/B test", ab_slot),
        ("Deployments", deployments_slot),
        dynamic=False,  # the windows table stays rendered while the charts are looked at
        sizing_mode="stretch_width",
        css_classes=["mf-sections"],
    )

    def add_the_rest():
        alerts_slot[:] = [AlertsTable(store=store)]
        charts = Charts(store=store, active=tabs.active == CHARTS_TAB)
        tabs.param.watch(lambda event: setattr(charts, "active", event.new == CHARTS_TAB), "active")
        charts_slot[:] = [pn.pane.Markdown("### Over time, per model version"), charts]

        def show_tab(*_):
            # built when first opened: a Tabulator drawn inside a hidden tab stays blank, and a
            # visit that never opens the tab builds nothing of it
            if tabs.active == DEPLOYMENTS_TAB and not len(deployments_slot):
                deployments_slot[:] = [DeploymentHistory(store=store), rule(), RollbackPanel(store=store)]
            if tabs.active == AB_TAB and not len(ab_slot):
                ab_slot[:] = [ABTestPanel(store=store)]

        tabs.param.watch(show_tab, "active")
        show_tab()

    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        # The first document is what the first screen needs; the rest follows once it is shown.
        pn.state.onload(add_the_rest)
    else:
        add_the_rest()

    if live:
        def poll():
            store.reload()
            freshness.tick()

        pn.state.add_periodic_callback(poll, period=int(max(1.0, refresh_seconds() / 2) * 1000))

    return page(
        TITLE,
        sidebar_width=SIDEBAR_WIDTH,
        sidebar=[SignedInUser(), freshness,
                 pn.pane.Markdown("[Experiments dashboard](./experiments_app) · [All dashboards](./)")],
        main=[pn.Column(ProblemBanner(store=store), Lineage(store=store), tabs, sizing_mode="stretch_width")],
    )


if pn.state.served:
    (create_app() if current_user() else refusal()).servable(title=TITLE)
