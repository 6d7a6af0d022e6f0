"""The experiments dashboard, served by a real ``panel serve`` behind Panel's login (the command
line of ``make dashboard``) and driven in headless Chromium; promotions land in a real SQLite
warehouse."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from stack.dashboard import APP, WAREHOUSE_CONN_ENV, ensure_secrets, serve_command, serve_env
from stack.env import StackPaths

from dashboards.experiments.sample_data import synthetic_outcomes
from factory_tasks.warehouse.promotions import PROMOTION_COLUMN_NAMES, PROMOTIONS_TABLE, latest_promotion
from factory_tasks.warehouse.summary import build_summary, write_summary
from tests.sqlite_warehouse import SqliteWarehouse

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000
USER = "browser-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary_file(root: Path) -> Path:
    """Where a server rooted at ``root`` reads its summary: ``<object store>/experiments_summary/...``."""
    return root / "object store" / "experiments_summary" / "experiments_summary.csv"


def write_fixture(path: Path, n: int = 60) -> "pd.DataFrame":  # noqa: F821
    summary = build_summary(synthetic_outcomes(n, seed=7, runs=2, failure_rate=0.2))
    write_summary(summary, path)
    return summary


class PanelServer:
    """``make dashboard``'s ``panel serve`` (same command line, credentials and cookie secret,
    made under ``root/var/secrets``) on a free port, in its own process group. The summary is
    read from the object store ``file://root/object store``; promotions go to the SQLite
    warehouse ``root/var/warehouse.db``."""

    def __init__(self, root: Path, log: Path, user: str = USER, app: Path = APP):
        self.paths = StackPaths(root / "var").make()
        self.secrets = ensure_secrets(self.paths, user=user)
        self.user, self.password = user, self.secrets.password(user)
        self.warehouse_db = self.paths.warehouse_db
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/{app.stem}"
        base = {k: v for k, v in os.environ.items() if k != WAREHOUSE_CONN_ENV}
        env = serve_env(self.paths, self.secrets, base={
            **base, "MODEL_FACTORY_OBJECT_STORE": f"file://{root}/object store",
            "MODEL_FACTORY_DASHBOARD_POLL_S": "0.5"})
        self.log = log
        self._log_handle = open(log, "w")
        self.proc = subprocess.Popen(
            serve_command(self.port, app=app),
            cwd=REPO, env=env, stdout=self._log_handle, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the login page answers (the app itself needs a session)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"panel serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/login", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"panel serve not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def session_cookies(self) -> list[dict]:
        """Sign in with the login form's POST; the session cookies, for ``context.add_cookies``."""
        with httpx.Client(base_url=self.base_url, follow_redirects=False, timeout=30) as client:
            response = client.post("/login", data={"username": self.user, "password": self.password})
            assert response.status_code == 302 and "user" in client.cookies, response.text[:500]
            return [{"name": c.name, "value": c.value, "url": self.base_url} for c in client.cookies.jar]

    def promotions(self) -> list[dict]:
        """The rows of model_promotions in the server's warehouse (none before the first)."""
        with sqlite3.connect(self.warehouse_db) as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (PROMOTIONS_TABLE,)).fetchone():
                return []
            rows = conn.execute(f"SELECT {', '.join(PROMOTION_COLUMN_NAMES)} FROM {PROMOTIONS_TABLE}").fetchall()
        return [dict(zip(PROMOTION_COLUMN_NAMES, r)) for r in rows]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_handle.close()


def log_in(page, server: PanelServer, user: str | None = None, password: str | None = None) -> None:
    """Open the app, get sent to the login page, sign in there."""
    page.goto(server.url)
    page.wait_for_url(re.compile(r"/login"), timeout=WAIT_MS)
    page.locator("input[name=username]").fill(user or server.user)
    page.locator("input[name=password]").fill(password or server.password)
    page.locator("button[type=submit]").click()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    summary_path = summary_file(root)
    summary = write_fixture(summary_path)
    return {"root": root, "summary": summary_path, "frame": summary}


@pytest.fixture(scope="module")
def server(files):
    srv = PanelServer(files["root"], files["root"] / "panel.log")
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
    """A signed-in page: through the login page, as a reviewer would."""
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(pg, server)
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
    assert page.locator(".mf-best tbody tr").count() == frame["family"].nunique()


def test_the_leaderboard_shows_the_uplift_interval_beside_auc_and_the_hyperparameters_under_whole_titles(
        page, files):
    frame = files["frame"]
    fields = page.locator(".mf-leaderboard .tabulator-col[tabulator-field]").evaluate_all(
        "cols => cols.filter(c => c.offsetWidth > 0).map(c => c.getAttribute('tabulator-field'))")
    assert fields.index("policy_uplift_mean") == fields.index("roc_auc_mean") + 1
    assert fields.index("policy_uplift_ci") == fields.index("policy_uplift_mean") + 1 and "params" in fields
    # Every title is whole: its text is no wider than the room it has (a cut one scrolls).
    titles = page.locator(".mf-leaderboard .tabulator-col[tabulator-field] .tabulator-col-title").evaluate_all(
        "ts => ts.filter(t => t.offsetWidth > 0).map(t => [t.textContent, t.scrollWidth, t.clientWidth])")
    assert "uplift 95% interval" in [t for t, _, _ in titles] and "hyperparameters" in [t for t, _, _ in titles]
    cut = [(t, scroll, client) for t, scroll, client in titles if scroll > client]
    assert cut == [], cut
    # The first row's interval and hyperparameters, as the fixture has them; the legend says what ≈0 means.
    row = page.locator(".mf-leaderboard .tabulator-row").first
    experiment_id = row.locator(".tabulator-cell[tabulator-field=experiment_id]").inner_text().strip()
    shown = frame.loc[frame["experiment_id"] == experiment_id].iloc[0]
    params = json.loads(shown["params_json"])
    assert (row.locator(".tabulator-cell[tabulator-field=params]").inner_text().strip()
            == ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
    interval = row.locator(".tabulator-cell[tabulator-field=policy_uplift_ci]")
    assert re.fullmatch(r"\[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]( ≈0)?", interval.inner_text().strip())
    assert interval.is_visible()
    marks = page.locator(".mf-leaderboard .tabulator-cell[tabulator-field=policy_uplift_ci]").all_inner_texts()
    assert any(m.endswith("≈0") for m in marks) and not all(m.endswith("≈0") for m in marks), marks
    assert "not distinguishable from sending everyone the best offer" in shown_text(page, ".mf-legend")


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


def test_the_signed_in_user_promotes_and_is_recorded_in_model_promotions(page, server, files):
    assert f"Signed in as {USER}" in shown_text(page, ".mf-user")
    assert page.locator(".mf-reviewer input").count() == 0  # no reviewer box: the reviewer is the login
    assert f"Reviewer: {USER}" in shown_text(page, ".mf-reviewer")
    row = page.locator(".mf-leaderboard .tabulator-row").first
    experiment_id = row.locator(".tabulator-cell[tabulator-field=experiment_id]").inner_text().strip()
    # Without a reason the promotion is refused, in words.
    row.locator("input[type=checkbox]").click()
    page.get_by_text(f"Promote {experiment_id}").first.wait_for(timeout=WAIT_MS)
    page.locator(".mf-promote button").click()
    page.get_by_text("needs a reason").wait_for(timeout=WAIT_MS)
    assert server.promotions() == []
    reason = "best ROC AUC, O'Brien's \"stable\" folds <b>not bold</b>"
    page.locator(".mf-reason textarea").fill(reason)
    page.locator(".mf-promote button").click()
    message = page.get_by_text(re.compile(r"Promoted\s+" + experiment_id))
    message.wait_for(timeout=WAIT_MS)
    assert f"by {USER}" in message.inner_text()
    page.get_by_text("Current promotion").wait_for(timeout=WAIT_MS)
    current = shown_text(page, ".mf-current-promotion")
    assert f"by {USER}" in current and reason in current, current  # as typed: no &#x27;, no markup
    assert page.locator(".mf-current-promotion").evaluate("e => (e.shadowRoot || e).querySelectorAll('b').length") == 0
    [record] = server.promotions()
    assert (record["experiment_id"], record["reviewer"], record["reason"]) == (experiment_id, USER, reason)
    assert record["schema_version"] == 1 and record["promoted_at"].endswith("+00:00")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "experiments_dashboard_promoted.png"), full_page=True)


def test_without_a_session_nothing_is_served(server, browser):
    # The app page redirects to the login page; nothing of the app comes back.
    response = httpx.get(server.url, follow_redirects=False, timeout=30)
    assert response.status_code == 302 and re.match(r"\.?/login\?next=", response.headers["location"])
    assert "bokeh" not in response.text.lower()
    login = httpx.get(server.url, follow_redirects=True, timeout=30)
    assert login.url.path == "/login" and 'name="password"' in login.text
    # The websocket the page's widgets (and the Promote button) talk through refuses the handshake.
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    for cookie in ({}, {"Cookie": "is_guest=1"}, {"Cookie": "user=browser-test"}):
        with pytest.raises(InvalidStatus) as info:
            connect(f"ws://127.0.0.1:{server.port}/experiments_app/ws", additional_headers=cookie,
                    origin=f"http://127.0.0.1:{server.port}", open_timeout=30)
        assert info.value.response.status_code == 403, cookie
    # A wrong password gets the login page again, with an error and no session cookie.
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as client:
        response = client.post("/login", data={"username": server.user, "password": "wrong"})
        assert response.status_code == 302 and "error=" in response.headers["location"]
        assert "user" not in client.cookies
    # In the browser: the login page, and a bad password keeps it there.
    context = browser.new_context()
    try:
        page = context.new_page()
        log_in(page, server, password="not-the-password")
        page.get_by_text("Invalid username or password").wait_for(timeout=WAIT_MS)
        assert page.locator(".mf-leaderboard").count() == 0
    finally:
        context.close()


def _websocket_refusal(server: PanelServer, cookies: dict[str, str]) -> int:
    """The status with which the app's websocket refuses a handshake with these cookies."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/experiments_app/ws", additional_headers={"Cookie": header},
                origin=server.base_url, open_timeout=30)
    return info.value.response.status_code


def test_a_session_cookie_opens_the_app_and_logout_ends_it(server, browser):
    captured = {c["name"]: c["value"] for c in server.session_cookies()}
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as client:
        client.cookies.update(captured)
        assert client.get("/experiments_app").status_code == 200
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    try:
        context.add_cookies([{"name": k, "value": v, "url": server.base_url} for k, v in captured.items()])
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_selector(".mf-leaderboard .tabulator-row", timeout=WAIT_MS)
        page.goto(f"{server.base_url}/logout")
        page.goto(server.url)
        page.wait_for_url(re.compile(r"/login"), timeout=WAIT_MS)
    finally:
        context.close()
    # The cookies taken before the logout (a copy, a stolen one) open nothing any more.
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as client:
        client.cookies.update(captured)
        response = client.get("/experiments_app")
        assert response.status_code == 302 and "/login" in response.headers["location"]
    assert _websocket_refusal(server, captured) == 403
    # Another session of the same user is not ended by this one's logout.
    other = {c["name"]: c["value"] for c in server.session_cookies()}
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as client:
        client.cookies.update(other)
        assert client.get("/experiments_app").status_code == 200


def test_repeated_failed_sign_ins_are_refused_for_a_while(tmp_path):
    """A password cannot be guessed at the login's speed: past a few failures per user (more per
    client address) the login answers 429 and says how long to wait, even to the right password."""
    write_fixture(summary_file(tmp_path))
    server = PanelServer(tmp_path, tmp_path / "panel-throttle.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as client:
            statuses = [client.post("/login", data={"username": server.user, "password": f"guess-{i}"}).status_code
                        for i in range(8)]
            assert statuses[:5] == [302] * 5 and statuses[5:] == [429] * 3, statuses
            refused = client.post("/login", data={"username": server.user, "password": server.password})
            assert refused.status_code == 429 and "user" not in client.cookies
            assert re.search(rf"Too many failed sign-ins for {server.user}; try again in \d+ s", refused.text)
            assert int(refused.headers["Retry-After"]) > 0 and 'name="password"' in refused.text
            # Other names from the same address are still let in, up to the address's own limit.
            statuses = [client.post("/login", data={"username": f"nobody-{i}", "password": "x"}).status_code
                        for i in range(15)]
            assert set(statuses) == {302} and "user" not in client.cookies
            last = client.post("/login", data={"username": "nobody-else", "password": "x"})
            assert last.status_code == 429 and "Too many failed sign-ins from 127.0.0.1" in last.text
    finally:
        server.stop()
    assert server.password not in (tmp_path / "panel-throttle.log").read_text()


def test_a_truncated_summary_shows_the_line_in_the_page(page, files):
    path = files["summary"]
    good = path.read_bytes()
    try:
        path.write_bytes(good[: len(good) // 2])
        page.get_by_text("The experiments summary cannot be shown").wait_for(timeout=WAIT_MS)
        body = shown_text(page, ".mf-summary-error")
        assert re.search(r"is corrupt at line \d+: \d+ fields, expected \d+", body), body
        assert str(path) in body and "Traceback" not in body
        assert not page.locator(".mf-leaderboard").is_visible()
    finally:
        path.write_bytes(good)
        os.utime(path)
    page.get_by_text("Showing 60 of 60").wait_for(timeout=WAIT_MS)


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


def test_served_without_authentication_the_app_refuses_every_session(files, tmp_path, browser):
    """Defence in depth: ``panel serve`` without its login (or OAuth) serves no dashboard."""
    server = PanelServer(files["root"], tmp_path / "panel-open.log")
    server.stop()  # the same environment, then the command line without its login
    command = serve_command(server.port)
    at = command.index("--auth-module")
    env = serve_env(server.paths, server.secrets, base={**os.environ, "MODEL_FACTORY_OBJECT_STORE":
                                                        f"file://{files['root']}/object store"})
    with open(tmp_path / "panel-open.log", "w") as log:
        proc = subprocess.Popen([*command[:at], *command[at + 2:]], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(server.url, timeout=10)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "panel-open.log").read_text()
                time.sleep(0.3)
        assert response.status_code == 200
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(server.url)
            page.get_by_text("This dashboard needs a signed-in user").wait_for(timeout=WAIT_MS)
            assert page.locator(".mf-leaderboard, .mf-promote").count() == 0
        finally:
            context.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_a_header_only_summary_says_no_experiments_yet_then_shows_new_rows(tmp_path, browser):
    """A fresh ``var/``: the experiments_summary DAG ran before any outcome was recorded and
    wrote a header-only CSV. Signing in gets the page with that said (not a 500), and the
    leaderboard follows when the first rows arrive."""
    from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES

    path = summary_file(tmp_path)
    write_summary(build_summary(pd.DataFrame.from_records([], columns=list(OUTCOME_COLUMN_NAMES))), path)
    assert path.read_text().count("\n") == 1  # the header only, as the DAG writes it
    server = PanelServer(tmp_path, tmp_path / "panel-empty.log")
    context = None
    try:
        server.wait_ready()
        context = browser.new_context(viewport={"width": 1500, "height": 1400})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        statuses: list[int] = []
        page.on("response", lambda r: statuses.append(r.status) if "/experiments_app" in r.url.split("?")[0] else None)
        log_in(page, server)
        page.wait_for_url(re.compile(r"/experiments_app"), timeout=WAIT_MS)
        page.get_by_text("No experiments yet").wait_for(timeout=WAIT_MS)
        assert 500 not in statuses and 200 in statuses, statuses
        body = shown_text(page, ".mf-no-experiments")
        assert str(path) in body and "Traceback" not in body
        assert page.locator(".mf-summary-error").count() == 0
        write_fixture(path, n=30)
        page.get_by_text("Showing 30 of 30").wait_for(timeout=WAIT_MS)
        page.locator(".mf-leaderboard .tabulator-row").first.wait_for(timeout=WAIT_MS)
        assert not page.get_by_text("No experiments yet").is_visible()
        assert errors == [], errors
    finally:
        if context is not None:
            context.close()
        server.stop()
    log = (tmp_path / "panel-empty.log").read_text()
    assert "Traceback" not in log and "UnsetValueError" not in log, log[-3000:]


def test_a_reused_page_gives_the_next_reviewer_their_own_session_and_nothing_from_a_cdn(
        tmp_path_factory, browser):
    """``make dashboard`` serves each page's HTML from an earlier session of it
    (``--reuse-sessions warm``): the second reviewer must still get their own session (their
    name, their rows), no trace of the first one, and every request must stay on this machine
    (a session built behind a reused page once took its stylesheets from Panel's CDN)."""
    root = tmp_path_factory.mktemp("reuse")
    write_fixture(summary_file(root))
    secrets = ensure_secrets(StackPaths(root / "var").make(), user="alice")
    users = {**json.loads(secrets.credentials.read_text()), "bob": "a-second-reviewer-password"}
    secrets.credentials.write_text(json.dumps(users))
    srv = PanelServer(root, root / "panel.log", user="alice")
    try:
        srv.wait_ready()
        for user in ("alice", "bob", "alice"):
            context = browser.new_context(viewport={"width": 1500, "height": 1200})
            try:
                with httpx.Client(base_url=srv.base_url, timeout=30) as client:  # the login page is Panel's
                    assert client.post("/login", data={"username": user, "password": users[user]}).status_code == 302
                    context.add_cookies([{"name": c.name, "value": c.value, "url": srv.base_url}
                                         for c in client.cookies.jar])
                pg = context.new_page()
                elsewhere, pages = [], []
                local = (srv.base_url, "blob:", "data:")
                pg.on("request", lambda r: r.url.startswith(local) or elsewhere.append(r.url))
                pg.on("response", lambda r: r.url == srv.url and pages.append(r))
                pg.goto(srv.url)
                pg.wait_for_selector(".mf-leaderboard .tabulator-row", timeout=WAIT_MS)
                pg.get_by_text("Showing 60 of 60").wait_for(timeout=WAIT_MS)
                assert f"Signed in as {user}" in shown_text(pg, ".mf-user")
                other = "bob" if user == "alice" else "alice"
                assert pages and other not in pages[-1].text()
                pg.locator(".mf-promote").wait_for(timeout=WAIT_MS)  # what follows the first document
                assert elsewhere == [], elsewhere
            finally:
                context.close()
    finally:
        srv.stop()


def _rows(page) -> list[dict[str, str]]:
    """The leaderboard's shown rows: experiment, run and status of each."""
    rows = []
    for row in page.locator(".mf-leaderboard .tabulator-row").all():
        cell = {f: row.locator(f".tabulator-cell[tabulator-field={f}]").inner_text().strip()
                for f in ("experiment_id", "factory_run_id", "status")}
        rows.append(cell)
    return rows


def test_two_reviewers_promoting_at_once_both_see_the_promotion_the_deploy_step_reads(tmp_path, browser):
    """Alice and Bob promote two experiments of one run a moment apart: both pages end up
    showing, as the current promotion, the one ``latest_promotion`` (the deploy step) reads."""
    write_fixture(summary_file(tmp_path))
    secrets = ensure_secrets(StackPaths(tmp_path / "var").make(), user="alice")
    users = {**json.loads(secrets.credentials.read_text()), "bob": "a-second-reviewer-password"}
    secrets.credentials.write_text(json.dumps(users))
    server = PanelServer(tmp_path, tmp_path / "panel-two.log", user="alice")
    contexts = []
    try:
        server.wait_ready()
        pages = {}
        for user in ("alice", "bob"):
            contexts.append(browser.new_context(viewport={"width": 1500, "height": 1400}))
            pages[user] = contexts[-1].new_page()
            log_in(pages[user], server, user=user, password=users[user])
            pages[user].wait_for_selector(".mf-leaderboard .tabulator-row", timeout=WAIT_MS)
        rows = [r for r in _rows(pages["alice"]) if r["status"] == "succeeded"]
        run = rows[0]["factory_run_id"]
        picks = dict(zip(("alice", "bob"), [r["experiment_id"] for r in rows if r["factory_run_id"] == run][:2]))
        for user, experiment_id in picks.items():
            page = pages[user]
            page.locator(".mf-leaderboard .tabulator-row", has_text=experiment_id).locator("input[type=checkbox]").click()
            page.get_by_text(f"Promote {experiment_id}").first.wait_for(timeout=WAIT_MS)
            page.locator(".mf-reason textarea").fill(f"{user}'s pick")
        for user in ("alice", "bob"):
            pages[user].locator(".mf-promote button").click()
        for user in ("alice", "bob"):
            pages[user].get_by_text(re.compile(r"Promoted\s+" + picks[user])).wait_for(timeout=WAIT_MS)
        decision = latest_promotion(SqliteWarehouse(server.warehouse_db), run)
        assert decision is not None and decision.reviewer in picks
        expected = f"Current promotion for run {run}: {decision.experiment_id} "
        for user in ("alice", "bob"):
            deadline = time.monotonic() + WAIT_MS / 1000
            while True:
                shown = shown_text(pages[user], ".mf-current-promotion")
                if expected in shown and f"by {decision.reviewer} " in shown:
                    break
                assert time.monotonic() < deadline, f"{user}'s page shows {shown!r}, the deploy step reads {decision}"
                time.sleep(0.2)
    finally:
        for context in contexts:
            context.close()
        server.stop()
