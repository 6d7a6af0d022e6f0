"""The experiments dashboard: ``python -m stack dashboard`` (``make dashboard``), which runs
``panel serve dashboards/experiments_app.py --basic-auth <credentials> ...``.

Reads the summary at ``settings.summary_location()`` (``$MODEL_FACTORY_OBJECT_STORE/
experiments_summary/experiments_summary.csv``) and records promotions in the warehouse table
``model_promotions`` (Airflow connection ``model_factory_warehouse``), as the signed-in user.
``$MODEL_FACTORY_DASHBOARD_POLL_S`` sets how often the summary is checked for changes (default 2).
Nothing happens at import; the page is built per browser session by :func:`create_app`, and
only for a signed-in session: served without authentication, every page is a refusal.
"""

from __future__ import annotations

import os

import panel as pn

from dashboards.experiments.auth import current_user
from dashboards.experiments.store import ExperimentsStore
from dashboards.experiments.views import (
    BestPerFamily,
    ComparisonTable,
    ErrorBanner,
    ExperimentDetail,
    FilterPanel,
    Freshness,
    HyperparameterView,
    Leaderboard,
    PromotePanel,
    SignedInUser,
)


def poll_seconds() -> float:
    try:
        return max(0.5, float(os.environ.get("MODEL_FACTORY_DASHBOARD_POLL_S", "2")))
    except ValueError:
        return 2.0


def create_app(store: ExperimentsStore | None = None, live: bool = True):
    """Build one session's page. With ``live``, poll the summary file and tick the freshness."""
    pn.extension("tabulator", notifications=False, loading_indicator=True)
    store = store or ExperimentsStore()
    freshness = Freshness(store=store)
    leaderboard = Leaderboard(store=store)
    top = pn.Column(sizing_mode="stretch_width")
    bottom = pn.Column(sizing_mode="stretch_width")
    promote_slot = pn.Column(sizing_mode="stretch_width")
    content = pn.Column(
        top, leaderboard, bottom, sizing_mode="stretch_width", visible=store.error == ""
    )
    store.param.watch(lambda event: setattr(content, "visible", not event.new), "error")

    def add_views():
        top[:] = [BestPerFamily(store=store)]
        bottom[:] = [
            pn.Tabs(
                ("Experiment", ExperimentDetail(store=store)),
                ("Side by side", ComparisonTable(store=store)),
                ("Hyperparameters", HyperparameterView(store=store)),
                dynamic=True,
                sizing_mode="stretch_width",
            )
        ]
        promote_slot[:] = [pn.layout.Divider(), PromotePanel(store=store)]

    add_views()

    if live:
        def poll():
            store.reload()
            freshness.tick()

        pn.state.add_periodic_callback(poll, period=int(poll_seconds() * 1000))

    return pn.template.FastListTemplate(
        title="Model Factory · experiments",
        # The promote form sits in the sidebar, beside the filters: a wide detail view next to
        # it in the main area would overlap it and swallow its clicks.
        sidebar=[SignedInUser(), FilterPanel(store=store), freshness, promote_slot],
        main=[pn.Column(ErrorBanner(store=store), content, sizing_mode="stretch_width")],
        sidebar_width=360,
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
