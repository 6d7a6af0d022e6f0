"""The experiments dashboard, served by a real ``panel serve`` and driven in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboards.experiments.sample_data import synthetic_outcomes
from factory_tasks.summary import build_summary, write_summary_atomic

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_fixture(path: Path, n: int = 60) -> "pd.DataFrame":  # noqa: F821
    summary = build_summary(synthetic_outcomes(n, seed=7, runs=2, failure_rate=0.2))
    write_summary_atomic(summary, path)
    return summary


class PanelServer:
    """``panel serve dashboards/experiments_app.py`` on a free port, in its own process group."""

    def __init__(self, summary: Path, promotions: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/experiments_app"
        env = {**os.environ, "MODEL_FACTORY_SUMMARY": str(summary),
               "MODEL_FACTORY_PROMOTIONS": str(promotions), "MODEL_FACTORY_DASHBOARD_POLL_S": "0.5",
               "USER": "browser-test"}
        self.log = log
        self._log_handle = open(log, "w")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "panel"), "serve", str(REPO / "dashboards" / "experiments_app.py"),
             "--address", "127.0.0.1", "--port", str(self.port),
             f"--allow-websocket-origin=127.0.0.1:{self.port}", "--num-procs", "1"],
            cwd=REPO, env=env, stdout=self._log_handle, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"panel serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"panel serve not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_handle.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    summary_path = root / "experiments_summary.csv"
    summary = write_fixture(summary_path)
    return {"root": root, "summary": summary_path, "promotions": root / "promotions.jsonl", "frame": summary}


@pytest.fixture(scope="module")
def server(files):
    srv = PanelServer(files["summary"], files["promotions"], files["root"] / "panel.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    log = (files["root"] / "panel.log").read_text()
    # Tornado logs a write to a websocket the test already closed; anything else is a bug.
    blocks = log.split("Traceback (most recent call last):")[1:]
    real = [b for b in blocks if "WebSocketClosedError" not in b and "StreamClosedError" not in b]
    assert not real, real[0][-3000:]


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
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server.url)
    pg.wait_for_selector(".mf-leaderboard .tabulator-row", timeout=WAIT_MS)
    yield pg
    context.close()
    assert errors == [], errors


def shown_text(page, css: str) -> str:
    """Visible text of a Panel pane (its content lives in the host's shadow root)."""
    return page.locator(css).evaluate("e => (e.shadowRoot || e).textContent")


def test_page_shows_the_fixture_rows_best_first(page, files):
    frame = files["frame"]
    best = frame.sort_values("ranking_score", ascending=False).iloc[0]
    assert "Showing 60 of 60" in shown_text(page, ".mf-count")
    first_row = page.locator(".mf-leaderboard .tabulator-row").first
    assert best["experiment_id"] in first_row.inner_text()
    assert page.locator(".mf-leaderboard .tabulator-row").count() == 20  # one remote page
    assert "Data as of" in page.get_by_text(re.compile("Data as of")).first.inner_text()
    assert page.locator(".mf-best .tabulator-row").count() == frame["family"].nunique()


def test_status_filter_narrows_the_rows(page, files):
    frame = files["frame"]
    succeeded = int((frame["status"] == "succeeded").sum())
    assert succeeded < len(frame)
    page.locator("button", has_text=re.compile(r"^\s*failed\s*$")).first.click()
    page.get_by_text(f"Showing {succeeded} of 60").wait_for(timeout=WAIT_MS)
    page.locator(".mf-leaderboard .tabulator-page", has_text="Last").click()
    page.get_by_text(f"Showing {succeeded} of 60").wait_for(timeout=WAIT_MS)
    statuses = page.locator(".mf-leaderboard .tabulator-cell[tabulator-field=status]").all_inner_texts()
    assert statuses and set(statuses) == {"succeeded"}


def test_selecting_a_row_shows_its_per_fold_scores(page, files):
    frame = files["frame"]
    row = page.locator(".mf-leaderboard .tabulator-row").nth(1)
    experiment_id = row.locator(".tabulator-cell[tabulator-field=experiment_id]").inner_text().strip()
    row.locator("input[type=checkbox]").click()
    folds = json.loads(frame.loc[frame["experiment_id"] == experiment_id, "roc_auc_folds"].iat[0])
    table = page.locator(".mf-folds table")
    table.wait_for(timeout=WAIT_MS)
    text = table.inner_text()
    assert all(f"{v:.4f}" in text for v in folds), (folds, text)
    page.get_by_text(f"Experiment {experiment_id}").wait_for(timeout=WAIT_MS)
    page.locator(".mf-detail .bk-Canvas, .mf-detail canvas").first.wait_for(timeout=WAIT_MS)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "experiments_dashboard.png"), full_page=True)


def test_promote_records_a_promotion(page, files):
    row = page.locator(".mf-leaderboard .tabulator-row").first
    experiment_id = row.locator(".tabulator-cell[tabulator-field=experiment_id]").inner_text().strip()
    # Without a reason the promotion is refused, in words.
    row.locator("input[type=checkbox]").click()
    page.get_by_text(f"Promote {experiment_id}").first.wait_for(timeout=WAIT_MS)
    page.locator(".mf-promote button").click()
    page.get_by_text("needs a reason").wait_for(timeout=WAIT_MS)
    assert not files["promotions"].exists()
    assert page.locator(".mf-reviewer input").input_value() == "browser-test"
    page.locator(".mf-reason textarea").fill("best ROC AUC, stable folds")
    page.locator(".mf-promote button").click()
    page.get_by_text(re.compile(r"Promoted\s+" + experiment_id)).wait_for(timeout=WAIT_MS)
    records = [json.loads(line) for line in files["promotions"].read_text().splitlines()]
    assert records[-1]["experiment_id"] == experiment_id
    assert records[-1]["reviewer"] == "browser-test"
    assert records[-1]["reason"] == "best ROC AUC, stable folds"
    page.get_by_text("Current promotion").wait_for(timeout=WAIT_MS)


def test_corrupt_summary_shows_a_message_and_recovers(page, files):
    path = files["summary"]
    good = path.read_bytes()
    try:
        path.write_text("timestamp,classifier,accuracy\n2026-01-01,RF,0.85\n")
        page.get_by_text("The experiments summary cannot be shown").wait_for(timeout=WAIT_MS)
        body = shown_text(page, ".mf-summary-error")
        assert "does not have the expected header" in body and "Traceback" not in body
        assert not page.locator(".mf-leaderboard").is_visible()
        path.unlink()
        page.get_by_text(re.compile("does not exist yet")).wait_for(timeout=WAIT_MS)
    finally:
        path.write_bytes(good)
        os.utime(path)
    page.locator(".mf-leaderboard .tabulator-row").first.wait_for(timeout=WAIT_MS)
    page.get_by_text("Showing 60 of 60").wait_for(timeout=WAIT_MS)
    assert page.locator(".mf-summary-error").count() == 0


def test_a_new_summary_appears_without_reload(page, files):
    path = files["summary"]
    good = path.read_bytes()
    try:
        write_fixture(path, n=25)
        page.get_by_text("Showing 25 of 25").wait_for(timeout=WAIT_MS)
    finally:
        path.write_bytes(good)
        os.utime(path)
    page.get_by_text("Showing 60 of 60").wait_for(timeout=WAIT_MS)
