"""Run once by ``panel serve --setup`` before the server starts (:func:`stack.dashboard.serve_command`).

With ``--reuse-sessions warm`` the HTML of a page is rendered from an earlier session of the
same page and the visitor's own session is built meanwhile, while the browser loads the
scripts, instead of before the HTML is sent, which a first visit would otherwise wait for.
The page's HTML holds no data of that earlier session (its roots' ids, the title and the
script tags; the document comes over the visitor's websocket), so the key is the path alone.
Setting a key function also keeps the start-up session of ``--warm``, which nobody is signed
in to, from being the one reused.
"""

import panel as pn

pn.config.session_key_func = lambda request: request.path

# The --warm run at start-up is signed out, so it builds none of the views: import them and read
# the data here, so that the first reviewer after a restart waits for neither: importing the
# views (with Bokeh and Tabulator) and parsing the summary would otherwise fall in that visit.
# The stores never raise: a missing or broken summary is shown in the page, as it would be
# without this.
from dashboards.experiments.store import ExperimentsStore  # noqa: E402
from dashboards.experiments.views import (  # noqa: E402, F401
    detail,
    filters,
    hyperparameters,
    leaderboard,
    promote,
    status,
)
from dashboards.monitoring import charts as _monitoring_charts  # noqa: E402, F401
from dashboards.monitoring import views as _monitoring_views  # noqa: E402, F401
from dashboards.monitoring.store import MonitoringStore  # noqa: E402

ExperimentsStore()
MonitoringStore()
