"""The leaderboard filters."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import panel as pn
import param
from panel.viewable import Viewer

from dashboards.experiments.store import ExperimentsStore


class FilterPanel(Viewer):
    """The leaderboard filters, as widgets generated from the store's parameters.

    The two range sliders are synced by hand: when a new file arrives their bounds must move
    before their values, an order ``pn.Param`` does not guarantee. Until the data has bounds
    (no file, or a header-only one) they are disabled on a placeholder range: a Bokeh slider
    without a start, end or value cannot be serialized, and the page would be an HTTP 500.
    """

    store = param.ClassSelector(class_=ExperimentsStore)

    def __init__(self, **params):
        super().__init__(**params)
        self._choices = pn.Param(
            self.store,
            parameters=["factory_run", "families", "statuses"],
            widgets={
                "factory_run": {"type": pn.widgets.Select, "name": "Factory run"},
                "families": {"type": pn.widgets.MultiChoice, "name": "Family (empty = all)"},
                "statuses": {"type": pn.widgets.CheckButtonGroup, "name": "Status"},
            },
            show_name=False,
            sizing_mode="stretch_width",
        )
        self.score = pn.widgets.EditableRangeSlider(label="Ranking score", step=0.0001, start=0.0, end=1.0,
                                                    value=(0.0, 1.0), disabled=True,
                                                    css_classes=["mf-score-range"])
        today = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
        self.dates = pn.widgets.DatetimeRangeSlider(label="Recorded (UTC)", start=today, end=today + timedelta(days=1),
                                                    value=(today, today + timedelta(days=1)), disabled=True,
                                                    css_classes=["mf-date-range"])
        self._sync_ranges()
        self.store.param.watch(lambda *_: self._sync_ranges(), ["score_range", "date_range", "data"])
        self.score.param.watch(lambda e: self._push("score_range", e.new), "value_throttled")
        self.dates.param.watch(lambda e: self._push("date_range", e.new), "value_throttled")
        self.score.param.watch(lambda e: self._push("score_range", e.new), "value")

    def _push(self, name: str, value) -> None:
        if value is None:
            return
        bounds = self.store.param[name].bounds
        if bounds is None:
            return
        lo, hi = max(value[0], bounds[0]), min(value[1], bounds[1])
        if lo <= hi and tuple(getattr(self.store, name) or ()) != (lo, hi):
            setattr(self.store, name, (lo, hi))

    def _sync_ranges(self) -> None:
        for widget, name in ((self.score, "score_range"), (self.dates, "date_range")):
            bounds = self.store.param[name].bounds
            value = getattr(self.store, name)
            widget.disabled = bounds is None
            if bounds is None or value is None:
                continue
            if (widget.start, widget.end) != tuple(bounds):
                # Widen first so neither the old nor the new value is ever out of bounds.
                if widget.start is None or widget.end is None:
                    widget.param.update(start=bounds[0], end=bounds[1])
                else:
                    widget.param.update(start=min(widget.start, bounds[0]), end=max(widget.end, bounds[1]))
            if tuple(widget.value or ()) != tuple(value):
                widget.value = tuple(value)
            if (widget.start, widget.end) != tuple(bounds):
                widget.param.update(start=bounds[0], end=bounds[1])

    def __panel__(self):
        return pn.Column(self._choices, self.score, self.dates, sizing_mode="stretch_width")
