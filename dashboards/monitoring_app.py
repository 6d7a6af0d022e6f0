"""The monitoring dashboard: ``python -m stack dashboard`` (``make dashboard``) serves it beside
the experiments dashboard, at ``/monitoring_app``, behind the same login.

Reads what the ``model_monitoring`` DAG wrote — the warehouse tables ``model_monitoring``,
``model_alerts`` and ``model_deployments`` through the Airflow connection
``model_factory_warehouse`` — and the thresholds of ``config/closed_loop.yaml``
(``$MODEL_FACTORY_LOOP_CONFIG``). It writes nothing. ``$MODEL_FACTORY_MONITORING_REFRESH_S``
(default 30) sets how often the tables are read again (one read is shared by all sessions).
Nothing happens at import; the page is built per browser session by :func:`create_app`, and
only for a signed-in session.
"""

from __future__ import annotations

import panel as pn

from dashboards.experiments.auth import current_user
from dashboards.monitoring.store import MonitoringStore, refresh_seconds
from dashboards.monitoring.views import (
    AlertsTable,
    Charts,
    Freshness,
    Lineage,
    ProblemBanner,
    SignedInUser,
    WindowsTable,
)


def create_app(store: MonitoringStore | None = None, live: bool = True):
    """Build one session's page: lineage and windows first; charts and alerts once it has loaded."""
    pn.extension("tabulator", notifications=False, loading_indicator=True)
    store = store or MonitoringStore()
    freshness = Freshness(store=store)
    later = pn.Column(sizing_mode="stretch_width", css_classes=["mf-later"])

    def add_the_rest():
        later[:] = [
            pn.layout.Divider(),
            "### Over time, per model version",
            Charts(store=store),
            pn.layout.Divider(),
            AlertsTable(store=store),
        ]

    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        pn.state.onload(add_the_rest)
    else:
        add_the_rest()

    if live:
        def poll():
            store.reload()
            freshness.tick()

        pn.state.add_periodic_callback(poll, period=int(max(1.0, refresh_seconds() / 2) * 1000))

    return pn.template.FastListTemplate(
        title="Model Factory · monitoring",
        sidebar=[SignedInUser(), freshness,
                 pn.pane.Markdown("[Experiments dashboard](./experiments_app) · [All dashboards](./)")],
        main=[pn.Column(ProblemBanner(store=store), Lineage(store=store), WindowsTable(store=store), later,
                        sizing_mode="stretch_width")],
        sidebar_width=260,
    )


def refusal():
    """The whole page for a session nobody is signed in to."""
    return pn.pane.Alert(
        "**This dashboard needs a signed-in user.** Serve it with authentication: "
        "`python -m stack dashboard` (`make dashboard`), or `panel serve` with `--basic-auth` "
        "or an OAuth provider and a `--cookie-secret`.",
        alert_type="danger", css_classes=["mf-not-signed-in"],
    )


if pn.state.served:
    (create_app() if current_user() else refusal()).servable()
