"""The monitoring dashboard, served by ``make dashboard``'s ``panel serve`` (both apps, behind
Panel's login) and driven in headless Chromium; it reads a real SQLite warehouse written by
``dashboards.monitoring.sample_data`` (and, for the A/B test, the ``ab_*`` rows ``monitor_window``
wrote of a simulated live test, ``tests/unit/ab_warehouse.py``)."""

from __future__ import annotations

import re
import sqlite3

import httpx
import pytest
from playwright.sync_api import expect
from stack.dashboard import APP, MONITORING_APP, serve_command
from test_experiments_dashboard import (  # the experiments tests' server and helpers (tests/browser)
    CHROMIUM,
    CHROMIUM_ARGS,
    OUTPUT,
    WAIT_MS,
    PanelServer,
    shown_text,
)

from dashboards.monitoring.sample_data import write_sample_monitoring
from factory_tasks.warehouse.loop_tables import MODEL_MONITORING

pytestmark = pytest.mark.browser

ROWS = 5000
WINDOWS = ".mf-monitoring-windows"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    with pytest.MonkeyPatch.context() as mp:  # read by PanelServer into the server's environment
        mp.setenv("MODEL_FACTORY_MONITORING_REFRESH_S", "0.5")
        srv = PanelServer(root, root / "panel.log", app=MONITORING_APP)
    srv.monitoring_url = srv.url
    srv.frame = write_sample_monitoring(srv.warehouse_db, ROWS, seed=5)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    log = (root / "panel.log").read_text()
    blocks = log.split("Traceback (most recent call last):")[1:]
    real = [b for b in blocks if "WebSocketClosedError" not in b and "StreamClosedError" not in b]
    assert not real, real[0][-3000:]
    assert srv.password not in log and srv.secrets.cookie_secret not in log


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """Signed in through the login page, on the monitoring app, its first rows shown."""
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server.monitoring_url)
    pg.wait_for_url(re.compile(r"/login"), timeout=WAIT_MS)
    pg.locator("input[name=username]").fill(server.user)
    pg.locator("input[name=password]").fill(server.password)
    pg.locator("button[type=submit]").click()
    pg.wait_for_selector(f"{WINDOWS} .tabulator-row", timeout=WAIT_MS)
    yield pg
    context.close()
    assert errors == [], errors


def _windows(frame) -> int:
    return len(frame[["cohort_start", "model_version"]].drop_duplicates())


def _sql(server, *statements: tuple[str, tuple]) -> None:
    with sqlite3.connect(server.warehouse_db) as conn:
        for statement, params in statements:
            conn.execute(statement, params)


def test_the_lineage_windows_and_immature_values_are_shown(page, server):
    frame = server.frame
    total = _windows(frame)
    assert f"Showing {total} of {total} windows" in shown_text(page, ".mf-windows-count")
    lineage = shown_text(page, ".mf-lineage")
    assert "Serving model v2" in lineage
    for part in ("data snapshot", "experiment", "model v2", "deployment deployment-v2", "factory run"):
        assert part in lineage, (part, lineage)
    rows = page.locator(f"{WINDOWS} .tabulator-row")
    assert rows.count() == min(20, total)  # one remote page
    newest = rows.first
    # The newest cohort's labels are still arriving: its realised values say so.
    assert "immature" in newest.locator(".tabulator-cell[tabulator-field=maturity]").inner_text()
    conversion = newest.locator(".tabulator-cell[tabulator-field=conversion]")
    assert "immature" in conversion.inner_text() and conversion.locator(".mf-immature").count() == 1
    assert newest.locator(".tabulator-cell[tabulator-field=model_version]").inner_text().strip() == "v2"
    # An old cohort is final: no immature mark on its values.
    page.locator(f"{WINDOWS} .tabulator-page", has_text="Last").click()
    page.locator(f"{WINDOWS} .tabulator-row").last.wait_for(timeout=WAIT_MS)
    last = page.locator(f"{WINDOWS} .tabulator-row").last
    last.locator(".tabulator-cell[tabulator-field=maturity]", has_text="final").wait_for(timeout=WAIT_MS)
    assert "immature" not in last.inner_text()
    assert f"Signed in as {server.user}" in shown_text(page, ".mf-user")


def test_alerts_only_narrows_the_windows_and_the_alerts_table_lists_them(page, server):
    total = _windows(server.frame)
    with sqlite3.connect(server.warehouse_db) as conn:
        alerts = conn.execute("SELECT cohort_start, model_version FROM model_alerts").fetchall()
    flagged = len(set(alerts))
    assert 0 < flagged < total
    page.locator(".mf-alerts-only button").click()
    page.get_by_text(f"Showing {flagged} of {total} windows").wait_for(timeout=WAIT_MS)
    rows = page.locator(f"{WINDOWS} .tabulator-row")
    expect(rows).to_have_count(flagged, timeout=WAIT_MS)
    assert all("⚠" in t for t in rows.locator(".tabulator-cell[tabulator-field=alerts]").all_inner_texts())
    page.locator(".mf-alerts-only button").click()
    page.get_by_text(f"Showing {total} of {total} windows").wait_for(timeout=WAIT_MS)
    # The alerts table: one row per model_alerts row.
    page.locator(".mf-alerts .tabulator-row").first.wait_for(timeout=WAIT_MS)
    assert page.locator(".mf-alerts .tabulator-row").count() == len(alerts)
    messages = page.locator(".mf-alerts .tabulator-cell[tabulator-field=message]").all_inner_texts()
    assert messages and all("PSI" in m or "policy" in m for m in messages), messages


def test_the_first_alert_raised_while_the_page_is_open_is_listed(page, server):
    """The alerts table is hidden while there is no alert; rows that arrive then are drawn."""
    with sqlite3.connect(server.warehouse_db) as conn:
        raised = conn.execute("SELECT COUNT(*) FROM model_alerts").fetchone()[0]
    assert raised > 0
    try:
        _sql(server, ("CREATE TABLE model_alerts_kept AS SELECT * FROM model_alerts", ()),
             ("DELETE FROM model_alerts", ()))
        page.locator(".mf-no-alerts").wait_for(timeout=WAIT_MS)
        assert not page.locator(".mf-alerts").is_visible()
    finally:
        _sql(server, ("INSERT INTO model_alerts SELECT * FROM model_alerts_kept", ()),
             ("DROP TABLE model_alerts_kept", ()))
    page.locator(".mf-alerts .tabulator-row").first.wait_for(timeout=WAIT_MS)
    expect(page.locator(".mf-alerts .tabulator-row")).to_have_count(raised, timeout=WAIT_MS)
    assert not page.locator(".mf-no-alerts").is_visible()


def test_charts_are_drawn_when_their_tab_is_opened_and_the_page_is_captured(page, server):
    page.locator(".mf-alerts .tabulator-row").first.wait_for(timeout=WAIT_MS)  # the page has loaded
    # Behind their tab, nothing is built: no figure reaches the page before it is opened.
    page.locator(".mf-charts").first.wait_for(state="attached", timeout=WAIT_MS)
    assert page.locator(".bk-Canvas").count() == 0
    page.locator(".mf-sections .bk-tab", has_text="Charts over time").click()
    page.locator(".mf-chart-auc .bk-Canvas").first.wait_for(timeout=WAIT_MS)
    # Only the open chart is built; each other one when its tab is opened.
    assert page.locator(".mf-chart-drift .bk-Canvas").count() == 0
    for tab, name in (("Drift", "drift"), ("Policy value", "policy"), ("Label completeness", "labels"),
                      ("Conversion", "conversion"), ("ROC AUC", "auc")):
        page.locator(".mf-charts .bk-tab", has_text=tab).click()
        page.locator(f".mf-chart-{name} .bk-Canvas").first.wait_for(timeout=WAIT_MS)
    # Back on the windows: the table is still there, with its rows.
    page.locator(".mf-sections .bk-tab", has_text="Windows and alerts").click()
    page.locator(f"{WINDOWS} .tabulator-row").first.wait_for(timeout=WAIT_MS)
    page.locator(".mf-sections .bk-tab", has_text="Charts over time").click()
    page.locator(".mf-chart-auc .bk-Canvas").first.wait_for(timeout=WAIT_MS)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "monitoring_dashboard.png"), full_page=True)


def test_a_missing_table_and_a_bad_row_show_a_banner_naming_them(page, server):
    total = _windows(server.frame)
    try:
        _sql(server, (f"ALTER TABLE {MODEL_MONITORING} RENAME TO {MODEL_MONITORING}_away", ()))
        page.locator(".mf-monitoring-error").wait_for(timeout=WAIT_MS)
        banner = shown_text(page, ".mf-monitoring-error")
        assert "The table model_monitoring does not exist" in banner and "Traceback" not in banner
        page.get_by_text("Showing 0 of 0 windows").wait_for(timeout=WAIT_MS)
        assert "Serving model v2" in shown_text(page, ".mf-lineage")  # what can be shown still is
    finally:
        _sql(server, (f"ALTER TABLE {MODEL_MONITORING}_away RENAME TO {MODEL_MONITORING}", ()))
    page.get_by_text(f"Showing {total} of {total} windows").wait_for(timeout=WAIT_MS)
    expect(page.locator(".mf-monitoring-error")).to_have_count(0, timeout=WAIT_MS)
    try:
        _sql(server, (f"INSERT INTO {MODEL_MONITORING} (as_of_window, as_of_ms, cohort_start, cohort_end, "
                      "model_version, metric, dimension, value, maturity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      ("2026-12-02T00:00:00Z", 1, "2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z", "v1",
                       "roc_auc", "", "not a number", "done")))
        page.locator(".mf-monitoring-error").wait_for(timeout=WAIT_MS)
        banner = shown_text(page, ".mf-monitoring-error")
        assert f"table model_monitoring row {ROWS + 1}: maturity 'done' is not one of final, immature, estimate" \
            in banner, banner[-600:]
        assert f"1 of {ROWS + 1:,} rows of model_monitoring are invalid" in banner, banner[-600:]
        page.get_by_text(f"Showing {total} of {total} windows").wait_for(timeout=WAIT_MS)  # the rest is shown
    finally:
        _sql(server, (f"DELETE FROM {MODEL_MONITORING} WHERE maturity = ?", ("done",)))
    expect(page.locator(".mf-monitoring-error")).to_have_count(0, timeout=WAIT_MS)


def test_make_dashboard_serves_both_apps_and_nothing_without_a_session(server):
    command = serve_command(5006)  # make dashboard's command line
    assert command[4:6] == [str(APP), str(MONITORING_APP)]
    response = httpx.get(server.monitoring_url, follow_redirects=False, timeout=30)
    assert response.status_code == 302 and re.match(r"\.?/login\?next=", response.headers["location"])
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as client:
        client.cookies.update({c["name"]: c["value"] for c in server.session_cookies()})
        assert client.get("/monitoring_app").status_code == 200


def _rollback_requests(server) -> list[dict]:
    from factory_tasks.warehouse.rollbacks import ROLLBACK_REQUESTS

    names = [c.name for c in ROLLBACK_REQUESTS.columns]
    with sqlite3.connect(server.warehouse_db) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (ROLLBACK_REQUESTS.table,)).fetchone():
            return []
        return [dict(zip(names, r)) for r in conn.execute(f"SELECT {', '.join(names)} FROM {ROLLBACK_REQUESTS.table}")]


def test_the_deployment_history_and_a_signed_in_reviewers_rollback_request(page, server):
    from factory_tasks.core.contracts import DeploymentRecord
    from factory_tasks.warehouse.deployments import DEPLOYMENTS, serving
    from tests.sqlite_warehouse import SqliteWarehouse

    page.locator(".mf-sections .bk-tab", has_text="Deployments").click()
    history = page.locator(".mf-deployments .tabulator-row")
    expect(history).to_have_count(2, timeout=WAIT_MS)  # v2 (serving), then v1
    assert history.first.locator(".tabulator-cell[tabulator-field=model_version]").inner_text().strip() == "v2"
    assert "promotion by reviewer" in history.first.locator(".tabulator-cell[tabulator-field=chosen_by]").inner_text()
    evidence = page.locator(".mf-gate-evidence .tabulator-row")
    expect(evidence).to_have_count(2, timeout=WAIT_MS)  # v2's paired comparisons
    assert "policy_value" in evidence.nth(1).inner_text() and "0.0400" in evidence.nth(1).inner_text()
    assert f"Requested by: {server.user}" in shown_text(page, ".mf-requester")
    # only an earlier version is offered; without a reason nothing is recorded
    assert page.locator(".mf-rollback-version option").all_inner_texts() == ["v1"]
    page.locator(".mf-rollback button").click()
    page.get_by_text("needs a reason").wait_for(timeout=WAIT_MS)
    assert _rollback_requests(server) == []
    page.locator(".mf-rollback-reason textarea").fill("v2's AUC <b>dropped</b>")
    page.locator(".mf-rollback button").click()
    page.get_by_text(re.compile(r"Rollback to\s+v1\s+requested by")).wait_for(timeout=WAIT_MS)
    [row] = _rollback_requests(server)
    assert (row["model_version"], row["requested_by"], row["reason"], row["serving_version"]) == (
        "v1", server.user, "v2's AUC <b>dropped</b>", "v2")
    # pending, naming the Airflow run that carries it out (where to look if it stays pending)
    page.locator(".mf-rollback-requests", has_text=f"rollback__{row['request_id']}").wait_for(timeout=WAIT_MS)
    assert "pending" in shown_text(page, ".mf-rollback-requests")
    # the DAG carries it out: a rollback record of v1 after the request marks it done
    hook = SqliteWarehouse(server.warehouse_db)
    first = next(d for d in DEPLOYMENTS.read_all(hook) if d.model_version == "v1")
    rolled_back = DeploymentRecord.from_data({**first.model_dump(mode="json"), "deployment_id": "deployment-v1-again",
                                              "deployed_at": "2099-01-01T00:00:00+00:00", "action": "rollback",
                                              "requested_by": server.user, "request_reason": row["reason"]}, "test")
    try:
        DEPLOYMENTS.append(hook, rolled_back)
        assert serving(hook).deployment_id == "deployment-v1-again"
        page.locator(".mf-rollback-requests", has_text="done by deployment").wait_for(timeout=WAIT_MS)
        top = page.locator(".mf-deployments .tabulator-row").first
        top.locator(".tabulator-cell[tabulator-field=action]", has_text="rollback").wait_for(timeout=WAIT_MS)
        assert f"rollback asked by {server.user}" in top.inner_text()
        assert page.locator(".mf-rollback-version option").all_inner_texts() == ["v2"]  # v1 serves now
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "monitoring_dashboard_rollback.png"), full_page=True)
    finally:
        _sql(server, ("DELETE FROM model_deployments WHERE deployment_id = ?", ("deployment-v1-again",)),
             ("DELETE FROM model_rollback_requests", ()))


def test_an_anonymous_user_cannot_request_a_rollback(server, browser):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    context = browser.new_context()
    try:
        anonymous = context.new_page()
        anonymous.goto(server.monitoring_url)
        anonymous.wait_for_url(re.compile(r"/login"), timeout=WAIT_MS)  # the app is not served at all
        assert anonymous.locator(".mf-rollback").count() == 0 and anonymous.locator(".mf-sections").count() == 0
    finally:
        context.close()
    # nor is the websocket a click on "Request rollback" would go through, with no or a forged cookie
    for cookie in ({}, {"Cookie": "is_guest=1"}, {"Cookie": f"user={server.user}"}):
        with pytest.raises(InvalidStatus) as info:
            connect(f"ws://127.0.0.1:{server.port}/monitoring_app/ws", additional_headers=cookie,
                    origin=server.base_url, open_timeout=30)
        assert info.value.response.status_code == 403, cookie
    assert _rollback_requests(server) == []


# -- the A/B test ------------------------------------------------------------------------------

AB_COLUMNS = ("as_of_window", "as_of_ms", "cohort_start", "cohort_end", "model_version", "metric", "dimension",
              "value", "lower", "upper", "n", "maturity")


@pytest.fixture(scope="module")
def ab_runs(tmp_path_factory):
    """A live test of v3 (a quarter of the customers) against v2, a week after the sample's
    windows, and its first five hourly monitoring runs, written by ``monitor_window`` into a
    warehouse of its own: the ``ab_*`` rows of each run, the ``ab_start`` record and the fifth
    run's standing (a limit of 1,200 matured decisions: the test expires there)."""
    from factory_tasks.loop.config import ABTestConfig, LoopConfig
    from factory_tasks.loop.windows import iso
    from tests.monitoring_window import HOUR_MS, T0_MS, SqliteHook
    from tests.unit.ab_warehouse import ab_start, live_test, run_monitoring, simulate_test

    hook = SqliteHook(tmp_path_factory.mktemp("ab") / "warehouse.db")
    start_ms = T0_MS + 7 * 24 * HOUR_MS
    start = ab_start("v2", "v3", iso(start_ms).replace("Z", "+00:00"), share=0.25)
    simulate_test(hook, start_ms, 6, champion="v2", challenger="v3", per_hour=600, share=0.25)
    config = LoopConfig(ab_test=ABTestConfig(max_decisions=1200, planned_decisions=1000))
    summaries = run_monitoring(hook, [start_ms + h * HOUR_MS for h in range(1, 6)], live_test(start), config)
    with sqlite3.connect(hook.path) as conn:
        runs = [conn.execute(f"SELECT {', '.join(AB_COLUMNS)} FROM {MODEL_MONITORING} WHERE metric LIKE 'ab_%' "
                             "AND as_of_window = ?", (s["as_of_window"],)).fetchall() for s in summaries]
    assert [s["ab_test"]["state"] for s in summaries] == ["continue"] * 4 + ["expired"]
    return {"start": start, "runs": runs, "standing": summaries[-1]["ab_test"]}


def _pane_text(page, css: str) -> str:
    """The rendered text of a Panel pane, without its stylesheets (its shadow root's other children)."""
    return page.locator(css).evaluate(
        "e => Array.from((e.shadowRoot || e).children).filter(c => !['STYLE', 'LINK'].includes(c.tagName))"
        ".map(c => c.innerText).join('\\n').trim()")


def _difference(run: list[tuple]) -> dict:
    [row] = [dict(zip(AB_COLUMNS, r)) for r in run if r[AB_COLUMNS.index("metric")] == "ab_difference_dr"]
    return row


def test_the_ab_test_panel_shows_a_running_test_its_verdict_and_how_it_ended(page, server, ab_runs):
    from tests.sqlite_warehouse import SqliteWarehouse
    from tests.unit.ab_warehouse import verdict_record, write_records

    start, runs = ab_runs["start"], ab_runs["runs"]
    insert = f"INSERT INTO {MODEL_MONITORING} ({', '.join(AB_COLUMNS)}) VALUES ({', '.join('?' * len(AB_COLUMNS))})"
    total = _windows(server.frame)
    end = verdict_record(start, "end", "2026-12-08T06:02:00+00:00", ab_runs["standing"]["reason"])
    try:
        _sql(server, *((insert, r) for run in runs[:4] for r in run))
        write_records(SqliteWarehouse(server.warehouse_db), start)
        page.locator(".mf-lineage", has_text="Serving an A/B test").wait_for(timeout=WAIT_MS)
        assert "champion v2 and challenger v3 (75% / 25%)" in shown_text(page, ".mf-lineage")
        # the test's rows are no windows
        page.get_by_text(f"Showing {total} of {total} windows").wait_for(timeout=WAIT_MS)

        page.locator(".mf-sections .bk-tab", has_text="A/B test").click()
        page.locator(".mf-ab-verdict", has_text="no verdict before").wait_for(timeout=WAIT_MS)
        assert _pane_text(page, ".mf-ab-verdict").startswith(
            "Verdict: not distinguishable yet — no verdict before 1,000 matured decisions")
        assert f"A/B test v2:v3: running since {start.deployed_at}" in _pane_text(page, ".mf-ab-summary")
        diff = _difference(runs[3])
        assert diff["n"] == 600 and diff["lower"] < 0 < diff["upper"]
        shown = _pane_text(page, ".mf-ab-difference")
        assert f"{diff['value']:+,.2f} [{diff['lower']:+,.2f}, {diff['upper']:+,.2f}]" in shown, shown
        assert f"boundary ±{(diff['upper'] - diff['lower']) / 2:,.2f}" in shown and "on 600 matured" in shown
        arms = page.locator(".mf-ab-arms tbody tr")
        expect(arms).to_have_count(2, timeout=WAIT_MS)
        # 4 hours of decisions, the first hour's matured: 450 / 150 an hour
        assert re.search(r"champion\s+v2\s+75%\s+450 / 1,800", arms.nth(0).inner_text()), arms.nth(0).inner_text()
        assert re.search(r"challenger\s+v3\s+25%\s+150 / 600", arms.nth(1).inner_text()), arms.nth(1).inner_text()
        expect(page.locator(".mf-ab-history tbody tr")).to_have_count(4, timeout=WAIT_MS)
        page.locator(".mf-ab-chart .bk-Canvas").first.wait_for(timeout=WAIT_MS)

        # the next hourly run reaches the limit: the open panel follows it
        _sql(server, *((insert, r) for r in runs[4]))
        page.locator(".mf-ab-verdict", has_text="expired: champion kept").wait_for(timeout=WAIT_MS)
        diff = _difference(runs[4])
        assert f"{diff['value']:+,.2f} [{diff['lower']:+,.2f}, {diff['upper']:+,.2f}]" in \
            _pane_text(page, ".mf-ab-difference")
        expect(page.locator(".mf-ab-history tbody tr")).to_have_count(5, timeout=WAIT_MS)
        assert "expired" in page.locator(".mf-ab-history tbody tr").first.inner_text()
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "monitoring_dashboard_ab_test.png"), full_page=True)

        # the verdict carried out: v2 alone; no test runs, the last one's verdict stays in view
        write_records(SqliteWarehouse(server.warehouse_db), end)
        page.locator(".mf-ab-summary", has_text="No A/B test is running").wait_for(timeout=WAIT_MS)
        summary = _pane_text(page, ".mf-ab-summary")
        assert f"The last one, v2:v3, ended at {end.deployed_at} (ab_end: v2 serving alone): expired: champion kept" \
            in summary, summary
        assert "Serving model v2" in shown_text(page, ".mf-lineage")
        page.locator(".mf-sections .bk-tab", has_text="Deployments").click()
        history = page.locator(".mf-deployments .tabulator-row")
        expect(history).to_have_count(4, timeout=WAIT_MS)
        cells = [[history.nth(i).locator(f".tabulator-cell[tabulator-field={f}]").inner_text().strip()
                  for f in ("action", "model_version", "champion", "split")] for i in range(2)]
        assert cells == [["ab_end", "v2", "", ""], ["ab_start", "v3", "v2", "75% / 25%"]]
        assert "A/B verdict by model_monitoring" in history.first.inner_text()
        page.screenshot(path=str(OUTPUT / "monitoring_dashboard_ab_deployments.png"), full_page=True)
    finally:
        _sql(server, (f"DELETE FROM {MODEL_MONITORING} WHERE metric LIKE 'ab_%'", ()),
             ("DELETE FROM model_deployments WHERE deployment_id IN (?, ?)", (start.deployment_id, end.deployment_id)))
    page.locator(".mf-lineage", has_text="Serving model v2").wait_for(timeout=WAIT_MS)
