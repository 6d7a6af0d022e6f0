"""Ranking score against each hyperparameter of one family: a scatter per parameter and parallel
coordinates over all of them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, FixedTicker, HoverTool
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from bokeh.transform import jitter, linear_cmap
from panel.viewable import Viewer

from dashboards.experiments.store import (
    ExperimentsStore,
    hyperparameter_frame,
    metric_direction,
)


def _is_numeric(series: pd.Series) -> bool:
    values = series.dropna()
    return not values.empty and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def hyperparameter_figures(frame: pd.DataFrame, metric: str) -> list:
    """One scatter per hyperparameter: ranking score against the parameter's value."""
    figures = []
    params = [c for c in frame.columns if c not in ("experiment_id", "ranking_metric", "ranking_score", "rank_key")]
    for name in params:
        col = frame[name]
        if _is_numeric(col):
            values = pd.to_numeric(col, errors="coerce")
            positive = values.dropna()
            log = bool(len(positive) and (positive > 0).all() and positive.max() / positive.min() > 100)
            fig = figure(height=220, width=300, title=name, x_axis_type="log" if log else "linear",
                         toolbar_location=None, tools="")
            fig.scatter(values.to_numpy(dtype=float), frame["ranking_score"].to_numpy(dtype=float),
                        size=6, alpha=0.5)
        else:
            labels = col.map(lambda v: "None" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            factors = sorted(labels.unique())
            fig = figure(height=220, width=300, title=name, x_range=factors, toolbar_location=None, tools="")
            source = ColumnDataSource({"x": list(labels), "y": frame["ranking_score"].to_numpy(dtype=float)})
            fig.scatter(x=jitter("x", width=0.4, range=fig.x_range), y="y", source=source, size=6, alpha=0.5)
        fig.yaxis.axis_label = metric
        figures.append(fig)
    return figures


def parallel_coordinates_figure(frame: pd.DataFrame, metric: str, max_lines: int = 300):
    """Hyperparameters (scaled to 0–1; categories as evenly spaced codes) plus the score."""
    params = [c for c in frame.columns if c not in ("experiment_id", "ranking_metric", "ranking_score", "rank_key")]
    if not params:
        return None
    sample = frame if len(frame) <= max_lines else frame.sample(n=max_lines, random_state=0)
    axes = [*params, metric]
    scaled = {}
    for name in params:
        col = sample[name]
        if _is_numeric(col):
            values = pd.to_numeric(col, errors="coerce").astype(float)
            if (values.dropna() > 0).all() and values.max() / max(values.min(), 1e-300) > 100:
                values = np.log10(values)
        else:
            labels = col.map(str)
            codes = {lbl: i for i, lbl in enumerate(sorted(labels.unique()))}
            values = labels.map(codes).astype(float)
        span = values.max() - values.min()
        scaled[name] = (values - values.min()) / span if span else values * 0 + 0.5
    score = sample["ranking_score"].astype(float)
    span = score.max() - score.min()
    scaled[metric] = (score - score.min()) / span if span else score * 0 + 0.5
    xs = [list(range(len(axes)))] * len(sample)
    ys = [[float(scaled[a].iloc[i]) for a in axes] for i in range(len(sample))]
    source = ColumnDataSource({"xs": xs, "ys": ys, "rank": sample["rank_key"].astype(float).to_list(),
                               "experiment": sample["experiment_id"].astype(str).to_list(),
                               "score": score.to_list()})
    fig = figure(height=320, sizing_mode="stretch_width", title=f"Parallel coordinates (colour: {metric})",
                 toolbar_location=None, tools="", y_range=(-0.05, 1.05))
    low, high = float(sample["rank_key"].min()), float(sample["rank_key"].max())
    fig.multi_line("xs", "ys", source=source, line_alpha=0.5, line_width=1.5,
                   color=linear_cmap("rank", Viridis256, low, high if high > low else low + 1e-9))
    fig.xaxis.ticker = FixedTicker(ticks=list(range(len(axes))))
    fig.xaxis.major_label_overrides = {i: a for i, a in enumerate(axes)}
    fig.yaxis.visible = False
    fig.add_tools(HoverTool(tooltips=[("experiment", "@experiment"), ("score", "@score{0.0000}")]))
    return fig


class HyperparameterView(Viewer):
    """Ranking score against each hyperparameter, for one family, from a sample of the rows."""

    store = param.ClassSelector(class_=ExperimentsStore)
    family = param.Selector(default=None, objects=[], allow_None=True, doc="The family whose grid is shown.")
    max_points = param.Integer(default=2000, bounds=(100, 20000), doc="Rows sampled for the charts.")
    active = param.Boolean(default=True, doc=(
        "Whether the charts are on screen (the app ties this to its tab). While False a filter "
        "change does not sample rows and build figures nobody sees; they are built on showing."))

    def __init__(self, **params):
        super().__init__(**params)
        self._sync_families()
        self.store.param.watch(lambda *_: self._sync_families(), "filtered")

    def _sync_families(self):
        frame = self.store.filtered
        families = [] if frame is None or frame.empty else sorted(
            str(f) for f in pd.unique(frame["family"].to_numpy(dtype=object)) if not pd.isna(f))
        self.param.family.objects = families
        if self.family not in families:
            self.family = families[0] if families else None

    @param.depends("family", "store.filtered", "active")
    def _charts(self):
        if not self.active:
            return pn.pane.Markdown("", visible=False)
        frame = self.store.filtered
        if self.family is None or frame is None or frame.empty:
            return pn.pane.Markdown("No experiments match the filters.")
        rows = frame[frame["family"] == self.family]
        sample = hyperparameter_frame(rows, max_rows=self.max_points)
        if sample.empty:
            return pn.pane.Markdown(f"No succeeded experiment of {self.family} matches the filters.")
        metric = str(sample["ranking_metric"].mode().iat[0])
        note = pn.pane.Markdown(
            f"{len(sample):,} of {len(rows):,} experiments of **{self.family}** "
            f"({'sampled' if len(sample) < len(rows[rows['status'] == 'succeeded']) else 'all succeeded'}); "
            f"y axis: {metric} ({metric_direction(metric)})."
        )
        figs = hyperparameter_figures(sample, metric)
        parallel = parallel_coordinates_figure(sample, metric)
        return pn.Column(
            note,
            pn.FlexBox(*[pn.pane.Bokeh(f) for f in figs]) if figs else pn.pane.Markdown("This family has no hyperparameters."),
            pn.pane.Bokeh(parallel, sizing_mode="stretch_width") if parallel is not None else None,
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.Column(
            "### Hyperparameters",
            pn.widgets.Select.from_param(self.param.family, name="Family", width=260),
            self._charts,
            sizing_mode="stretch_width",
        )
