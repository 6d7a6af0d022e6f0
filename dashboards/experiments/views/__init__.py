"""Views of the experiments store: each a ``Viewer`` over one :class:`ExperimentsStore`, one
module per part of the page: ``filters`` (the sidebar's filters), ``status`` (freshness, and why
nothing is shown), ``leaderboard`` (the experiments and the best per family), ``detail`` (the
selected experiments in full and side by side), ``hyperparameters`` (score against each
hyperparameter) and ``promote`` (the promote form).

Charts are plain Bokeh figures in ``pn.pane.Bokeh`` built from aggregated or sampled rows, so
the browser never receives the whole summary.
"""
