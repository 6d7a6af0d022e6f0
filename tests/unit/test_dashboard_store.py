"""The experiments dashboard's store and views, on small real summary files."""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pandas as pd
import panel as pn
import pytest

from dashboards.common import SignedInUser
from dashboards.experiments.sample_data import synthetic_outcomes
from dashboards.experiments.store import (
    ALL_RUNS,
    ExperimentsStore,
    best_per_family,
    empty_frame,
    hyperparameter_frame,
    prepare,
)
from dashboards.experiments.views.detail import ComparisonTable, ExperimentDetail
from dashboards.experiments.views.hyperparameters import HyperparameterView
from dashboards.experiments.views.leaderboard import BestPerFamily, Leaderboard
from dashboards.experiments.views.promote import PromotePanel
from dashboards.experiments.views.status import ErrorBanner, Freshness
from factory_tasks.core.metrics import fold_intervals
from factory_tasks.warehouse.promotions import PROMOTIONS_TABLE, latest_promotion, load_promotions
from factory_tasks.warehouse.summary import build_summary, write_summary
from tests.sqlite_warehouse import SqliteWarehouse


def _write(path, frame):
    write_summary(build_summary(frame), path)
    # A distinct mtime even on coarse-timestamp filesystems.
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def outcomes():
    return synthetic_outcomes(60, seed=1, runs=2, failure_rate=0.2)


@pytest.fixture
def store(tmp_path, outcomes, hook):
    """A session's store: the summary through a file:// URL, promotions in a real SQLite
    warehouse behind Airflow's SqliteHook (``hook``, tests/unit/conftest.py)."""
    _write(tmp_path / "summary.csv", outcomes)
    return ExperimentsStore(summary_url=f"file://{tmp_path}/summary.csv", warehouse=hook)


def _sql(hook, statement: str) -> list[tuple]:
    conn = hook.get_conn()
    try:
        with conn:
            return conn.execute(statement).fetchall()
    finally:
        conn.close()


def _texts(viewable) -> str:
    """All text that a view's current objects would render (Markdown, Alerts, DataFrames)."""
    root = pn.panel(viewable)
    out = []
    for obj in root.select(lambda o: isinstance(o, (pn.pane.Markdown, pn.pane.Alert, pn.pane.DataFrame))):
        out.append(obj.object if isinstance(obj.object, str) else obj.object.to_string())
    for view in root.select(pn.param.ParamMethod):
        out.append(_texts(view._pane))
    return "\n".join(out)


def test_loads_everything_best_first(store, outcomes):
    assert store.error == ""
    assert len(store.filtered) == len(outcomes)
    scores = store.filtered["rank_key"].dropna()
    assert scores.is_monotonic_decreasing
    assert store.filtered["rank_key"].isna().sum() == (outcomes["status"] == "failed").sum()
    assert store.param.factory_run.objects[0] == ALL_RUNS and len(store.param.factory_run.objects) == 3


def test_filters_narrow_the_rows(store, outcomes):
    run = store.param.factory_run.objects[1]
    store.factory_run = run
    assert set(store.filtered["factory_run_id"]) == {run}
    assert len(store.filtered) == (outcomes["factory_run_id"] == run).sum()
    store.factory_run = ALL_RUNS
    store.families = ["random_forest"]
    assert set(store.filtered["family"]) == {"random_forest"}
    store.families = []
    store.statuses = ["failed"]
    assert set(store.filtered["status"]) == {"failed"} and len(store.filtered) == (outcomes["status"] == "failed").sum()
    store.statuses = ["succeeded", "failed"]
    lo, hi = store.param.score_range.bounds
    mid = (lo + hi) / 2
    store.score_range = (mid, hi)
    assert len(store.filtered) > 0 and (store.filtered["ranking_score"] >= mid).all()
    assert "failed" not in set(store.filtered["status"])
    store.score_range = (lo, hi)
    assert len(store.filtered) == len(outcomes)
    d_lo, d_hi = store.param.date_range.bounds
    store.date_range = (d_lo, d_lo + (d_hi - d_lo) / 4)
    assert 0 < len(store.filtered) < len(outcomes)
    assert (store.filtered["recorded_dt"] <= pd.Timestamp(store.date_range[1])).all()


def test_best_per_family_respects_metric_direction():
    frame = synthetic_outcomes(30, seed=2)
    frame.loc[frame["family"] == "random_forest", "ranking_metric"] = "log_loss"
    prepared = prepare(build_summary(frame))
    best = best_per_family(prepared).set_index("family")
    rf = prepared[(prepared["family"] == "random_forest") & (prepared["status"] == "succeeded")]
    assert best.loc["random_forest", "ranking_score"] == rf["ranking_score"].min()  # lower is better
    lr = prepared[(prepared["family"] == "logistic_regression") & (prepared["status"] == "succeeded")]
    assert best.loc["logistic_regression", "ranking_score"] == lr["ranking_score"].max()
    assert best.loc["random_forest", "experiments"] == (prepared["family"] == "random_forest").sum()


def test_best_per_family_view_follows_filters(store):
    view = BestPerFamily(store=store)
    assert len(view.table.object) == 3 and view.table.visible and not view.empty.visible
    store.families = ["logistic_regression"]
    assert list(view.table.object["family"]) == ["logistic_regression"]
    store.statuses = ["failed"]
    assert view.empty.visible and not view.table.visible
    assert "No succeeded experiment matches" in view.empty.object


def test_leaderboard_selection_drives_detail_and_comparison(store):
    board = Leaderboard(store=store)
    assert len(board.table.value) == len(store.filtered)
    assert board.table.pagination == "remote"
    assert "Showing **60** of 60" in board.count.object
    board.table.selection = [0]
    first = store.filtered.iloc[0]
    assert store.selected_keys == [first["row_key"]]
    detail = _texts(ExperimentDetail(store=store))
    folds = json.loads(first["roc_auc_folds"])
    assert first["experiment_id"] in detail
    assert f"{folds[0]:.4f}" in detail and "spread" in detail
    assert "Tick two or more" in _texts(ComparisonTable(store=store))
    board.table.selection = [0, 3]
    compare = _texts(ComparisonTable(store=store))
    assert first["experiment_id"] in compare and store.filtered.iloc[3]["experiment_id"] in compare
    # The last ticked one is in focus; filtering keeps the selection by key.
    assert store.focus["row_key"] == store.filtered.iloc[3]["row_key"]
    store.families = [first["family"]]
    assert first["row_key"] in store.selected_keys
    assert [board.table.value["row_key"].iat[i] for i in board.table.selection][0] == first["row_key"]


def test_detail_of_a_failed_experiment_shows_its_error(store):
    failed = store.data[store.data["status"] == "failed"].iloc[0]
    store.selected_keys = [failed["row_key"]]
    text = _texts(ExperimentDetail(store=store))
    assert "Failed:" in text and "simulated failure" in text


def test_hyperparameter_view_uses_a_sample(store):
    view = HyperparameterView(store=store, max_points=100)
    assert view.family in store.param.families.objects
    sample = hyperparameter_frame(store.filtered[store.filtered["family"] == "random_forest"], max_rows=5)
    assert len(sample) == 5 and {"n_estimators", "max_depth"} <= set(sample.columns)
    charts = pn.panel(view._charts())
    assert len(charts.select(pn.pane.Bokeh)) >= 2  # one per hyperparameter + parallel coordinates


def test_promote_from_the_panel_records_the_signed_in_user(store):
    panel = PromotePanel(store=store, identify=lambda: "alice")
    assert not panel.button.disabled and "Reviewer: **alice** (signed in)" in _texts(panel)
    panel._promote()
    assert panel.message_type == "danger" and "Select an experiment" in panel.message
    ok = store.data[store.data["status"] == "succeeded"].iloc[0]
    store.selected_keys = [ok["row_key"]]
    panel.reason = ""
    panel._promote()
    assert "needs a reason" in panel.message
    panel.reason = "best AUC on run 1"
    panel._promote()
    assert panel.message_type == "success", panel.message
    assert "by **alice**" in panel.message
    recorded = latest_promotion(store.warehouse)
    assert (recorded.experiment_id, recorded.reviewer) == (ok["experiment_id"], "alice")
    assert _sql(store.warehouse, f"SELECT reviewer, reason FROM {PROMOTIONS_TABLE}") == [
        ("alice", "best AUC on run 1")]
    assert "Current promotion" in _texts(panel) and "**alice**" in _texts(panel)
    failed = store.data[store.data["status"] == "failed"].iloc[0]
    store.selected_keys = [failed["row_key"]]
    panel._promote()
    assert panel.message_type == "danger" and "cannot be promoted" in panel.message


def test_there_is_no_reviewer_box_and_nobody_signed_in_cannot_promote(store):
    assert "reviewer" not in PromotePanel.param
    session = {"user": "alice"}
    panel = PromotePanel(store=store, identify=lambda: session["user"])
    assert not pn.panel(panel).select(pn.widgets.TextInput)
    ok = store.data[store.data["status"] == "succeeded"].iloc[0]
    store.selected_keys = [ok["row_key"]]
    panel.reason = "looks good"
    session["user"] = ""  # signed in when the page was built, not at the click: refused
    panel._promote()
    assert panel.message_type == "danger" and "nobody is signed in" in panel.message
    assert load_promotions(store.warehouse).promotions == []
    anonymous = PromotePanel(store=store, identify=lambda: "")
    assert anonymous.button.disabled and "Sign in to promote" in _texts(anonymous)
    assert "Not signed in" in _texts(SignedInUser(identify=lambda: ""))
    # Whatever the page does, the store refuses an empty reviewer too.
    from factory_tasks.warehouse.promotions import PromotionRefused
    with pytest.raises(PromotionRefused, match="signed-in reviewer"):
        store.promote_focus("  ", "looks good")


def test_current_user_is_the_authenticated_cookie_user_never_a_guest(monkeypatch):
    from dashboards import auth

    state = type(pn.state)
    monkeypatch.setattr(state, "user", property(lambda self: None))
    monkeypatch.setattr(state, "cookies", property(lambda self: {}))
    assert auth.current_user() == ""
    monkeypatch.setattr(state, "user", property(lambda self: "alice"))
    assert auth.current_user() == "alice"
    assert "Signed in as **alice**" in _texts(SignedInUser())
    monkeypatch.setattr(state, "cookies", property(lambda self: {"is_guest": "1"}))
    assert auth.current_user() == ""


def test_user_text_is_shown_as_text(store):
    panel = PromotePanel(store=store, identify=lambda: "<b>mallory</b>")
    ok = store.data[store.data["status"] == "succeeded"].iloc[0]
    store.selected_keys = [ok["row_key"]]
    panel.reason = '<img src=x onerror="alert(1)"> **bold**'
    panel._promote()
    text = _texts(panel)
    assert "<img" not in text and "<b>" not in text and "&lt;img" in text and "\\*\\*bold" in text
    assert latest_promotion(store.warehouse).reason == '<img src=x onerror="alert(1)"> **bold**'


class _VisibleText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _shown(viewable) -> tuple[str, list[str]]:
    """What the browser shows of a view's Markdown and Alerts: the text and the HTML tags, from
    the HTML Panel sends (``_transform_object``, entity-escaped once more for Bokeh's HTML)."""
    root = pn.panel(viewable)
    panes = list(root.select(lambda o: isinstance(o, (pn.pane.Markdown, pn.pane.Alert))))
    for view in root.select(pn.param.ParamMethod):
        panes += list(view._pane.select(lambda o: isinstance(o, (pn.pane.Markdown, pn.pane.Alert))))
    parser = _VisibleText()
    for pane in panes:
        parser.feed(html.unescape(pane._transform_object(pane.object)["object"]))
    return "".join(parser.text), parser.tags


def test_an_apostrophe_shows_as_itself_and_markup_as_text(store):
    reason = "O'Brien's pick: \"steady\" <script>alert(1)</script> <img src=x onerror=alert(1)> **bold** #1 & co"
    panel = PromotePanel(store=store, identify=lambda: "d'Arcy")
    ok = store.data[store.data["status"] == "succeeded"].iloc[0]
    store.selected_keys = [ok["row_key"]]
    panel.reason = reason
    panel._promote()
    text, tags = _shown(panel)
    assert reason in text and "Reviewer: d'Arcy" in text and "&#x27;" not in text, text
    assert not {"script", "img"} & set(tags), tags
    text, tags = _shown(SignedInUser(identify=lambda: "O'Brien <b>x</b>", quote=True))
    assert "Signed in as O'Brien <b>x</b>" in text and "b" not in tags, (text, tags)


def _promotion_row(experiment_id: str, reviewer: str, promoted_at: str) -> dict:
    return {"schema_version": 1, "experiment_id": experiment_id, "factory_run_id": "run-1", "reviewer": reviewer,
            "reason": "pick", "promoted_at": promoted_at, "family": "f", "estimator": "e",
            "ranking_metric": "roc_auc", "ranking_score": 0.8}


def test_a_tie_in_promoted_at_is_decided_the_same_whatever_order_the_rows_are_read_in(tmp_path, store):
    """The page's current promotion and the deploy step's read agree, on any warehouse."""
    from factory_tasks.core.contracts import Promotion
    from factory_tasks.warehouse.promotions import PROMOTIONS, ensure_schema

    at = "2026-12-06T07:00:00.123456+00:00"
    rows = [_promotion_row("00000000000000aa", "alice", at), _promotion_row("00000000000000bb", "bob", at)]
    hooks = [SqliteWarehouse(tmp_path / "ab.db"), SqliteWarehouse(tmp_path / "ba.db")]
    for hook, order in zip(hooks, (rows, rows[::-1])):  # the same rows, written in either order
        ensure_schema(hook)
        for row in order:
            PROMOTIONS.append(hook, Promotion.from_data(row, "test row"))
    decisions = [latest_promotion(hook, "run-1") for hook in hooks]
    assert decisions[0] == decisions[1], [d.reviewer for d in decisions]
    for hook, decision in zip(hooks, decisions):
        page = ExperimentsStore(summary_url=store.summary_url, warehouse=hook)
        assert page.current_promotion("run-1") == decision


def test_after_a_promote_the_page_shows_the_promotion_the_deploy_step_reads(store):
    """Two reviewers at once: each page ends up showing the promotion the deploy step reads,
    and the reviewer whose promotion is not the latest is told which one is."""
    ok = store.data[store.data["status"] == "succeeded"]
    run = ok["factory_run_id"].iloc[0]
    first, second = ok[ok["factory_run_id"] == run].iloc[0], ok[ok["factory_run_id"] == run].iloc[1]
    bob_store = ExperimentsStore(summary_url=store.summary_url, warehouse=store.warehouse)
    alice = PromotePanel(store=store, identify=lambda: "alice", reason="mine")
    store.selected_keys, bob_store.selected_keys = [first["row_key"]], [second["row_key"]]
    alice._promote()
    assert alice.message_type == "success" and "the deploy step reads this one" in alice.message, alice.message
    # Bob's promotion, stamped a second later, lands; Alice's page follows at its next poll.
    bob_store.promote_focus("bob", "his", now=datetime.now(timezone.utc) + timedelta(seconds=1))
    store.reload_promotions()  # as the page does every few polls
    text, _ = _shown(alice)
    assert f"Current promotion for run {run}: {second['experiment_id']}" in text and "by bob" in text, text
    # Alice promotes again, but her promotion is stamped before Bob's: she is told it is not the one.
    alice._promote()
    assert alice.message_type == "warning", alice.message
    assert (f"the current promotion for run `{run}` is `{second['experiment_id']}` "
            f"({second['estimator']}) by **bob**") in alice.message, alice.message
    assert latest_promotion(store.warehouse, run).reviewer == "bob"
    assert f"Current promotion for run {run}: {second['experiment_id']}" in _shown(alice)[0]


def test_invalid_promotion_rows_and_an_unreachable_warehouse_show_in_the_panel(tmp_path, store):
    panel = PromotePanel(store=store, identify=lambda: "alice")
    ok = store.data[store.data["status"] == "succeeded"].iloc[0]
    store.selected_keys = [ok["row_key"]]
    panel.reason = "good"
    panel._promote()
    _sql(store.warehouse, f"UPDATE {PROMOTIONS_TABLE} SET reviewer = NULL")
    store.reload_promotions()
    assert "model_promotions has 1 invalid row" in _texts(panel) and "reviewer" in _texts(panel)
    (tmp_path / "not-a-dir").write_text("")
    broken = ExperimentsStore(summary_url=store.summary_url,
                              warehouse=SqliteWarehouse(tmp_path / "not-a-dir" / "w.db"))
    assert "could not be read from the warehouse" in broken.promotion_error
    broken.selected_keys = [ok["row_key"]]
    panel = PromotePanel(store=broken, identify=lambda: "alice", reason="good")
    panel._promote()
    assert panel.message_type == "danger" and "Could not record the promotion" in panel.message
    assert "could not be read from the warehouse" in _texts(panel)


def test_corrupt_file_shows_a_message_then_recovers(tmp_path, store, outcomes):
    path = tmp_path / "summary.csv"
    banner = ErrorBanner(store=store)
    freshness = Freshness(store=store)
    assert "cannot be shown" not in _texts(banner)
    path.write_text("timestamp,classifier,accuracy\n1,2,3\n")
    assert store.reload() is True
    assert "does not have the expected header" in store.error
    assert store.data is None and store.filtered.empty
    assert "cannot be shown" in _texts(banner) and "Traceback" not in _texts(banner)
    assert "No data" in freshness._pane.object
    assert store.reload() is False  # unchanged file: nothing to do
    path.unlink()
    store.reload()
    assert "does not exist yet" in store.error
    _write(path, outcomes.iloc[:10])
    assert store.reload() is True
    assert store.error == "" and len(store.filtered) == 10
    assert "Data as of" in freshness._pane.object and "10 rows" in freshness._pane.object


def _column_definitions(board: Leaderboard) -> tuple:
    root = board.table.get_root()
    return root.configuration, [(c.field, type(c.formatter).__name__) for c in root.columns]


def test_the_leaderboard_keeps_its_column_definitions_while_there_is_nothing_to_show(tmp_path, store, outcomes):
    """Emptied with other dtypes, the table would get other column definitions, and Tabulator
    would rebuild itself in the browser each time the summary goes and comes back."""
    path = tmp_path / "summary.csv"
    board = Leaderboard(store=store)
    with_rows = _column_definitions(board)
    path.write_text("timestamp,classifier,accuracy\n1,2,3\n")
    assert store.reload() and store.error
    assert board.table.value.empty and _column_definitions(board) == with_rows
    path.unlink()
    store.reload()
    assert _column_definitions(board) == with_rows
    missing_at_start = ExperimentsStore(summary_url=str(path), warehouse=store.warehouse)
    assert _column_definitions(Leaderboard(store=missing_at_start)) == with_rows
    _write(path, outcomes)
    assert store.reload() and len(board.table.value) == len(outcomes)
    assert _column_definitions(board) == with_rows


def test_a_truncated_summary_shows_the_line_in_the_page(tmp_path, store):
    path = tmp_path / "summary.csv"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert store.reload() is True
    assert store.data is None and "is corrupt at line" in store.error and str(path) in store.error
    assert "corrupt at line" in _texts(ErrorBanner(store=store))


def test_missing_file_at_start(tmp_path, hook):
    s = ExperimentsStore(summary_url=str(tmp_path / "none.csv"), warehouse=hook)
    assert "does not exist yet" in s.error and s.filtered.empty
    board = Leaderboard(store=s)
    assert board.table.value.empty


def test_narrowed_filters_survive_a_reload(tmp_path, store, outcomes):
    lo, hi = store.param.score_range.bounds
    store.score_range = ((lo + hi) / 2, hi)
    store.families = ["random_forest"]
    _write(tmp_path / "summary.csv", pd.concat([outcomes, synthetic_outcomes(10, seed=9)]))
    assert store.reload()
    assert len(store.data) == 70
    assert store.families == ["random_forest"]
    assert store.score_range[0] >= (lo + hi) / 2 - 1e-9
    assert isinstance(store.date_range[0], datetime)


def test_range_widgets_follow_a_new_file_with_other_bounds(tmp_path, store, outcomes):
    from dashboards.experiments.views.filters import FilterPanel

    panel = FilterPanel(store=store)
    assert (panel.score.start, panel.score.end) == store.param.score_range.bounds
    higher = outcomes.copy()
    higher["ranking_score"] = higher["ranking_score"] + 0.5
    higher["roc_auc_mean"] = higher["ranking_score"]
    _write(tmp_path / "summary.csv", higher)
    assert store.reload()
    assert (panel.score.start, panel.score.end) == store.param.score_range.bounds
    assert tuple(panel.score.value) == store.score_range
    assert (panel.dates.start, panel.dates.end) == store.param.date_range.bounds
    # Moving the widget filters the store.
    lo, hi = store.param.score_range.bounds
    panel.score.value = ((lo + hi) / 2, hi)
    assert (store.filtered["ranking_score"] >= (lo + hi) / 2).all() and len(store.filtered) < len(higher)


def test_an_unreachable_store_shows_a_message_then_recovers(tmp_path, store, monkeypatch):
    from dashboards.experiments import store as store_module

    real = store_module.summary_version

    def unreachable(location):
        raise ConnectionError("object store down")

    monkeypatch.setattr(store_module, "summary_version", unreachable)
    assert store.reload() is True and "could not be looked up: object store down" in store.error
    assert store.data is None and store.reload() is False
    monkeypatch.setattr(store_module, "summary_version", real)
    assert store.reload() is True and store.error == "" and len(store.data) == 60


def _serialized(viewable) -> dict:
    """The page as Bokeh sends it to the browser: an unset slider property raises here."""
    from bokeh.document import Document

    doc = Document()
    doc.add_root(pn.panel(viewable).get_root(doc))
    return doc.to_json()


def test_a_header_only_summary_says_no_experiments_yet_and_the_page_serializes(tmp_path, hook, outcomes):
    """The experiments_summary DAG on a fresh var/ writes a header-only file: the page says
    so (no 500: the range sliders get a placeholder range), then follows the first rows."""
    from dashboards.experiments.views.filters import FilterPanel
    from dashboards.experiments.views.status import NoExperimentsBanner
    from dashboards.experiments_app import create_app

    path = tmp_path / "summary.csv"
    _write(path, outcomes.iloc[0:0])
    assert path.read_text().count("\n") == 1
    s = ExperimentsStore(summary_url=f"file://{path}", warehouse=hook)
    assert s.error == "" and s.data is not None and s.data.empty and s.filtered.empty
    assert "has no rows" in s.notice and str(path) in s.notice
    assert s.param.score_range.bounds is None and s.param.date_range.bounds is None
    filters = FilterPanel(store=s)
    assert filters.score.disabled and filters.dates.disabled
    assert filters.dates.start is not None and filters.dates.value is not None
    banner = NoExperimentsBanner(store=s)
    assert "No experiments yet" in _texts(banner) and "Traceback" not in _texts(banner)
    assert "cannot be shown" not in _texts(ErrorBanner(store=s))
    assert "Showing **0** of 0" in Leaderboard(store=s).count.object
    _serialized(create_app(s, live=False))
    board = Leaderboard(store=s)
    _write(path, outcomes)
    assert s.reload() is True
    assert s.notice == "" and "No experiments yet" not in _texts(banner)
    assert "Showing **60** of 60" in board.count.object
    assert not filters.score.disabled and not filters.dates.disabled
    assert (filters.dates.start, filters.dates.end) == s.param.date_range.bounds
    assert tuple(filters.score.value) == tuple(s.param.score_range.bounds)
    _serialized(filters)
    _write(path, outcomes.iloc[0:0])  # back to no rows: said again, sliders disabled
    assert s.reload() is True and "has no rows" in s.notice
    assert filters.score.disabled and filters.dates.disabled
    _serialized(filters)


def test_a_missing_file_at_start_serializes(tmp_path, hook):
    from dashboards.experiments_app import create_app

    s = ExperimentsStore(summary_url=str(tmp_path / "none.csv"), warehouse=hook)
    assert "does not exist yet" in s.error and s.notice == ""
    _serialized(create_app(s, live=False))


def test_the_leaderboard_shows_the_uplift_interval_beside_auc_and_each_experiments_hyperparameters(store):
    board = Leaderboard(store=store)
    value = board.table.value
    columns = list(value.columns)
    assert columns.index("policy_uplift_mean") == columns.index("roc_auc_mean") + 1
    assert columns.index("policy_uplift_ci") == columns.index("policy_uplift_mean") + 1
    data = store.data.set_index("row_key")
    marked = 0
    for row in value.itertuples(index=False):
        full = data.loc[row.row_key]
        params = json.loads(full["params_json"])
        assert row.params == ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        if full["status"] != "succeeded":
            assert row.policy_uplift_ci == ""
            continue
        interval = fold_intervals(json.loads(full["policy_uplift_folds"]))
        low, high = float(interval.low), float(interval.high)
        assert row.policy_uplift_ci.startswith(f"[{low:+.4f}, {high:+.4f}]")
        assert row.policy_uplift_ci.endswith("≈0") == (low <= 0 <= high)
        marked += row.policy_uplift_ci.endswith("≈0")
    assert 0 < marked < len(value)  # the sample has both kinds
    titles = board.table.titles
    assert titles["policy_uplift_ci"] == "uplift 95% interval" and titles["params"] == "hyperparameters"
    assert "not distinguishable from sending everyone the best offer" in board.legend.object


def test_prepare_derives_the_leaderboard_columns_once_and_an_empty_frame_has_their_dtypes(outcomes):
    frame = prepare(build_summary(outcomes))
    assert {"params", "policy_uplift_low", "policy_uplift_high", "policy_uplift_ci"} <= set(frame.columns)
    empty = empty_frame()
    for column in ("params", "policy_uplift_low", "policy_uplift_ci"):
        assert empty[column].dtype == frame[column].dtype, column
