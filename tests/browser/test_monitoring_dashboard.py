"""The monitoring dashboard, served by ``make dashboard``'s ``panel serve`` (both apps, behind
Panel's login) and driven in headless Chromium; it reads a real SQLite warehouse written by
``dashboards.monitoring.sample_data``."""

from __future__ import annotations

import re
import sqlite3

import httpx
import pytest
from playwright.sync_api import expect
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
from stack.dashboard import APP, MONITORING_APP, serve_command

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
