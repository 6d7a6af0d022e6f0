"""How the summary behind the page is: how fresh it is, why it cannot be shown, or that it has
no rows yet."""

from __future__ import annotations

from datetime import datetime, timezone

import panel as pn
import param
from panel.viewable import Viewer

from dashboards.experiments.store import ExperimentsStore


class Freshness(Viewer):
    """'Data as of … (N s ago)': how old the file behind the page is."""

    store = param.ClassSelector(class_=ExperimentsStore)

    def __init__(self, **params):
        super().__init__(**params)
        self._pane = pn.pane.Markdown(self._text(), css_classes=["mf-freshness"], margin=(0, 10))
        self.store.param.watch(lambda *_: self.tick(), ["data_as_of", "error"])

    def _text(self) -> str:
        as_of = self.store.data_as_of
        if as_of is None:
            return f"**No data** · `{self.store.summary_url}`"
        age = (datetime.now(timezone.utc).replace(tzinfo=None) - as_of).total_seconds()
        rows = 0 if self.store.data is None else len(self.store.data)
        return (
            f"Data as of **{as_of:%Y-%m-%d %H:%M:%S} UTC** ({max(0, int(age))} s ago) · "
            f"{rows:,} rows · `{self.store.summary_url}`"
        )

    def tick(self) -> None:
        self._pane.object = self._text()

    def __panel__(self):
        return self._pane


class ErrorBanner(Viewer):
    """The reason the summary cannot be shown, in words (never a stack trace)."""

    store = param.ClassSelector(class_=ExperimentsStore)

    @param.depends("store.error")
    def _banner(self):
        if not self.store.error:
            return pn.pane.Markdown("", visible=False)
        return pn.pane.Alert(
            f"**The experiments summary cannot be shown.** {self.store.error}\n\n"
            "This page checks the file every few seconds and shows the data as soon as it is valid.",
            alert_type="danger",
            css_classes=["mf-summary-error"],
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.panel(self._banner)


class NoExperimentsBanner(Viewer):
    """'No experiments yet': the summary is valid but has no rows (a fresh ``var/``)."""

    store = param.ClassSelector(class_=ExperimentsStore)

    @param.depends("store.notice")
    def _banner(self):
        if not self.store.notice:
            return pn.pane.Markdown("", visible=False)
        return pn.pane.Alert(
            f"**No experiments yet.** {self.store.notice}\n\n"
            "This page checks the file every few seconds and shows the experiments as soon as there are some.",
            alert_type="info",
            css_classes=["mf-no-experiments"],
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.panel(self._banner)
