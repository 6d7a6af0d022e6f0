"""The filtered experiments, best first, and the best of each family among them."""

from __future__ import annotations

import pandas as pd
import panel as pn
import param
from bokeh.models import NumberFormatter
from panel.viewable import Viewer

from dashboards.experiments.store import (
    LEADERBOARD_COLUMNS,
    ExperimentsStore,
    best_per_family,
    empty_frame,
)
from dashboards.layout import TABLE_CONFIGURATION
from factory_tasks.core.metrics import INCLUDES_ZERO_MARK

_FORMATTERS = {
    c: NumberFormatter(format="0.0000")
    for c in ("ranking_score", "roc_auc_mean", "log_loss_mean", "policy_value_mean")
}
_FORMATTERS["policy_uplift_mean"] = NumberFormatter(format="+0.0000")
_FORMATTERS["wall_time_s"] = NumberFormatter(format="0.0")

_TITLES = {
    "experiment_id": "experiment", "params": "hyperparameters", "ranking_metric": "ranked by",
    "ranking_score": "score", "roc_auc_mean": "ROC AUC", "policy_uplift_mean": "uplift",
    "policy_uplift_ci": "uplift 95% interval", "policy_value_mean": "policy value",
    "log_loss_mean": "log loss", "wall_time_s": "wall s", "factory_run_id": "factory run",
    "recorded_at": "recorded at",
}
_INTERVAL_NOTE = (f"{INCLUDES_ZERO_MARK}: the interval includes 0, not distinguishable from sending everyone "
                  "the best offer")
_HEADER_TOOLTIPS = {
    "params": "the experiment's hyperparameters",
    "policy_uplift_mean": "policy_uplift: value per customer of the model's decisions over the best single "
                          "offer sent to everyone (mean over the folds)",
    "policy_uplift_ci": "95% interval of policy_uplift across the folds (t, Nadeau-Bengio corrected: a rough "
                        f"guide, the folds overlap). {_INTERVAL_NOTE}",
}

# Every column's width, in pixels. Without them Tabulator measures each cell of each column to
# fit it to its data ("fit_data_table"), the largest part of the browser's work before the
# first rows appear. Each fits its title with the sort arrow (the browser test checks that no
# title is cut) or the longest usual value; longer hyperparameters are cut, their tooltip whole.
_WIDTHS = {
    "experiment_id": 150, "family": 185, "params": 320, "status": 95, "ranking_metric": 125,
    "ranking_score": 90, "roc_auc_mean": 115, "policy_uplift_mean": 90, "policy_uplift_ci": 200,
    "policy_value_mean": 140, "log_loss_mean": 95, "estimator": 245, "wall_time_s": 80,
    "factory_run_id": 275, "recorded_at": 215, "experiments": 125,
}

_BEST_CSS = """
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { padding: 4px 8px; text-align: left; border-bottom: 1px solid #e0e0e0; white-space: nowrap; }
th { background: #f5f5f5; }
"""


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
            titles=_TITLES,
            header_tooltips=_HEADER_TOOLTIPS,
            sortable={"policy_uplift_ci": False},  # text: the uplift column sorts by the mean
            configuration={**TABLE_CONFIGURATION, "columnDefaults": {"tooltip": True}},
            header_filters=False,
            sizing_mode="stretch_width",
            height=640,
            css_classes=["mf-leaderboard"],
        )
        self.count = pn.pane.Markdown(self._count_text(), css_classes=["mf-count"])
        self.legend = pn.pane.Markdown(
            f"uplift: value per customer over the best single offer sent to everyone, with its 95% interval "
            f"across folds (a rough guide). **{_INTERVAL_NOTE}.**", css_classes=["mf-legend"], margin=(0, 10))
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
        return pn.Column(self.count, self.table, self.legend, sizing_mode="stretch_width")


class BestPerFamily(Viewer):
    """The best succeeded experiment of each family among the filtered rows.

    A plain HTML table rendered on the server: a few rows, nothing to page, sort or select, so a
    second Tabulator (whose layout passes the browser would run before the first rows appear)
    buys nothing. A filter that leaves the best rows as they were sends nothing.
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
