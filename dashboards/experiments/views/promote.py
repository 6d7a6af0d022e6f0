"""Promote an experiment, as the signed-in user, with a reason; and the current promotion."""

from __future__ import annotations

import panel as pn
import param
from panel.viewable import Viewer

from dashboards.auth import current_user
from dashboards.common import plain
from dashboards.experiments.store import ExperimentsStore
from dashboards.experiments.warehouse import WAREHOUSE_ERRORS
from factory_tasks.warehouse.promotions import PromotionRefused


class PromotePanel(Viewer):
    """Promote the experiment shown in the detail view, as the signed-in user, with a reason.

    The reviewer is whoever :attr:`identify` says is signed in to this session
    (``pn.state.user``), asked again at every click: nobody signed in, no promotion.
    """

    store = param.ClassSelector(class_=ExperimentsStore)
    identify = param.Callable(default=current_user, doc="Returns the session's signed-in user ('' if none).")
    reason = param.String(default="", doc="Why this experiment should be deployed.")
    message = param.String(default="", doc="Outcome of the last promote attempt.")
    message_type = param.Selector(default="info", objects=["info", "success", "danger", "warning"])

    def __init__(self, **params):
        super().__init__(**params)
        signed_in = bool(self.identify())
        self.button = pn.widgets.Button(label="Promote", color="primary", css_classes=["mf-promote"],
                                        disabled=not signed_in)
        self.button.on_click(self._promote)

    def _promote(self, _event=None):
        reviewer = self.identify()
        if not reviewer:
            self.message_type, self.message = "danger", "Not promoted: nobody is signed in to this session."
            return
        try:
            promotion = self.store.promote_focus(reviewer, self.reason)
        except PromotionRefused as exc:
            self.message_type, self.message = "danger", f"Not promoted: {plain(exc, quote=True)}"
            return
        except WAREHOUSE_ERRORS as exc:
            self.message_type, self.message = "danger", f"Could not record the promotion: {plain(exc, quote=True)}"
            return
        done = (f"Promoted `{promotion.experiment_id}` ({promotion.estimator}) of factory run "
                f"`{promotion.factory_run_id}` at {promotion.promoted_at} by **{plain(promotion.reviewer, quote=True)}**")
        # What the deploy step will read is the warehouse's latest, re-read after the write:
        # another reviewer's promotion may be stamped later.
        current = self.store.current_promotion(promotion.factory_run_id)
        if current == promotion:
            self.message_type, self.message = "success", f"{done}: the deploy step reads this one."
        elif current is None:
            self.message_type, self.message = "warning", f"{done}, but the promotions could not be read back."
        else:
            self.message_type = "warning"
            self.message = (f"{done}, but the current promotion for run `{current.factory_run_id}` is "
                            f"`{current.experiment_id}` ({current.estimator}) by **{plain(current.reviewer, quote=True)}** "
                            f"at {current.promoted_at}, the latest: the deploy step reads that one.")

    @param.depends("message", "message_type")
    def _message(self):
        if not self.message:
            return pn.pane.Markdown("", visible=False)
        return pn.pane.Alert(self.message, alert_type=self.message_type, css_classes=["mf-promote-message"])

    @param.depends("store.promotion_log", "store.promotion_error", "store.selected_keys")
    def _current(self):
        log = self.store.promotion_log
        parts = []
        if self.store.promotion_error:
            parts.append(pn.pane.Alert(plain(self.store.promotion_error, quote=True), alert_type="warning",
                                       css_classes=["mf-promotions-error"]))
        if log is not None and log.problems:
            shown = ("; ".join(plain(p, quote=True) for p in log.problems[:3])
                     + (" ..." if len(log.problems) > 3 else ""))
            parts.append(pn.pane.Alert(
                f"The table model_promotions has {len(log.problems)} invalid row(s): {shown}",
                alert_type="warning", css_classes=["mf-promotions-error"]))
        row = self.store.focus
        p = None if row is None else self.store.current_promotion(row["factory_run_id"])
        if p is not None:
            parts.append(pn.pane.Markdown(
                f"Current promotion for run `{p.factory_run_id}`: `{p.experiment_id}` ({p.estimator}) "
                f"by **{plain(p.reviewer, quote=True)}** at {p.promoted_at} — "
                f"“{plain(p.reason, quote=True)}”",
                css_classes=["mf-current-promotion"]))
        return pn.Column(*parts) if parts else pn.pane.Markdown("", visible=False)

    @param.depends("store.selected_keys")
    def _target(self):
        row = self.store.focus
        if row is None:
            return pn.pane.Markdown("Select an experiment to promote it.")
        return pn.pane.Markdown(f"Promote `{row['experiment_id']}` ({row['estimator']}) of run `{row['factory_run_id']}`")

    def _live(self, widget, name: str):
        """Follow keystrokes too, so a click on Promote right after typing sees the text."""
        widget.param.watch(lambda event: setattr(self, name, event.new), "value_input")
        return widget

    def _reviewer(self):
        user = self.identify()
        if not user:
            return pn.pane.Markdown("Sign in to promote.", css_classes=["mf-reviewer"])
        return pn.pane.Markdown(f"Reviewer: **{plain(user, quote=True)}** (signed in)", css_classes=["mf-reviewer"])

    def __panel__(self):
        return pn.Column(
            "### Promote",
            self._target,
            self._reviewer(),
            self._live(pn.widgets.TextAreaInput.from_param(self.param.reason, name="Reason", height=80,
                                                           css_classes=["mf-reason"]), "reason"),
            self.button,
            self._message,
            self._current,
            sizing_mode="stretch_width",
        )
