"""The experiments dashboard: ``python -m stack dashboard`` (``make dashboard``), which runs
``panel serve dashboards/experiments_app.py --auth-module dashboards/login.py ...``.

Reads the summary at ``settings.summary_location()`` (``$MODEL_FACTORY_OBJECT_STORE/
experiments_summary/experiments_summary.csv``) and records promotions in the warehouse table
``model_promotions`` (Airflow connection ``model_factory_warehouse``), as the signed-in user.
``$MODEL_FACTORY_DASHBOARD_POLL_S`` sets how often the summary is checked for changes (default 2;
the promotions are re-read every fifth time).
Nothing happens at import; the page is built per browser session by :func:`create_app`, and
only for a signed-in session: served without authentication, every page is a refusal.

What makes the page fast (``benchmarks/dashboard_render.py`` measures it):

- no Panel template: a header, a sidebar column and a main column. ``FastListTemplate`` would
  have the browser fetch and parse megabytes more JavaScript (FAST web components and
  MathJax), a stylesheet per component, and a Google Fonts stylesheet, which on a machine
  without internet is a request that can only fail;
- the first document holds what the first screen needs (filters, the leaderboard, the best per
  family); the tabs below and the promote form arrive right after it (``pn.state.onload``);
- the leaderboard pages on the server (one page of rows travels), the hyperparameter charts
  are built only while their tab is shown, and a filter updates tables in place;
- one Tabulator, with the basic renderer (:data:`dashboards.layout.TABLE_CONFIGURATION`): the
  best-per-family table is plain HTML;
- the page's HTML comes from an earlier session of the page and this session is built while
  the browser loads the scripts (``--reuse-sessions warm``, :mod:`dashboards.serve_setup`).
"""

from __future__ import annotations

import itertools
import os

import panel as pn

from dashboards.auth import current_user
from dashboards.common import SignedInUser, refusal
from dashboards.experiments.store import ExperimentsStore
from dashboards.experiments.views.detail import ComparisonTable, ExperimentDetail
from dashboards.experiments.views.filters import FilterPanel
from dashboards.experiments.views.hyperparameters import HyperparameterView
from dashboards.experiments.views.leaderboard import BestPerFamily, Leaderboard
from dashboards.experiments.views.promote import PromotePanel
from dashboards.experiments.views.status import (
    ErrorBanner,
    Freshness,
    NoExperimentsBanner,
)
from dashboards.layout import page, rule, shown_or_hidden


def poll_seconds() -> float:
    try:
        return max(0.5, float(os.environ.get("MODEL_FACTORY_DASHBOARD_POLL_S", "2")))
    except ValueError:
        return 2.0


TITLE = "Model Factory · experiments"
#: model_promotions is re-read every this many polls
PROMOTIONS_EVERY_POLLS = 5
SIDEBAR_WIDTH = 360


def create_app(store: ExperimentsStore | None = None, live: bool = True):
    """Build one session's page. With ``live``, poll the summary file and the promotions and
    tick the freshness."""
    pn.extension("tabulator", notifications=False, loading_indicator=True)
    store = store or ExperimentsStore()
    freshness = Freshness(store=store)
    leaderboard = Leaderboard(store=store)
    top = pn.Column(sizing_mode="stretch_width")
    bottom = pn.Column(sizing_mode="stretch_width")
    promote_slot = pn.Column(sizing_mode="stretch_width")
    # Hidden while the page says why there is nothing to show (an error, or no rows yet).
    content = pn.Column(top, leaderboard, bottom, sizing_mode="stretch_width",
                        styles=shown_or_hidden(not (store.error or store.notice)))
    store.param.watch(lambda *_: setattr(content, "styles", shown_or_hidden(not (store.error or store.notice))),
                      ["error", "notice"])

    def add_views():
        hyperparameters = HyperparameterView(store=store, active=False)
        tabs = pn.Tabs(
            ("Experiment", ExperimentDetail(store=store)),
            ("Side by side", ComparisonTable(store=store)),
            ("Hyperparameters", hyperparameters),
            dynamic=True,
            sizing_mode="stretch_width",
        )
        tabs.param.watch(lambda event: setattr(hyperparameters, "active", event.new == 2), "active")
        bottom[:] = [tabs]
        promote_slot[:] = [PromotePanel(store=store)]

    top[:] = [BestPerFamily(store=store)]
    # The first document is what the first screen needs; the rest follows once it is shown.
    pn.state.onload(add_views)

    if live:
        polls = itertools.count(1)

        def poll():
            store.reload()
            # Another reviewer's promotion may now be the one the deploy step reads. Reading
            # model_promotions is a warehouse query (the summary's check is a stat): less often.
            if next(polls) % PROMOTIONS_EVERY_POLLS == 0:
                store.reload_promotions()
            freshness.tick()

        pn.state.add_periodic_callback(poll, period=int(poll_seconds() * 1000))

    # The promote form sits in the sidebar, beside the filters: a wide detail view next to it
    # in the main area would overlap it and swallow its clicks.
    return page(
        TITLE,
        sidebar_width=SIDEBAR_WIDTH,
        sidebar=[SignedInUser(quote=True), FilterPanel(store=store), freshness, rule(), promote_slot],
        main=[pn.Column(ErrorBanner(store=store), NoExperimentsBanner(store=store), content,
                        sizing_mode="stretch_width")],
    )


if pn.state.served:
    (create_app() if current_user() else refusal()).servable(title=TITLE)
