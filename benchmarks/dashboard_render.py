"""Dashboards: time to the first table rows and time for a filter to apply, in a real browser.

    .venv/bin/python benchmarks/dashboard_render.py [--dashboard experiments|monitoring|all]
        [--rows 50000] [--baseline-rows 1000] [--repeat 3]

Each dashboard in :data:`DASHBOARDS` is served with ``make dashboard``'s ``panel serve`` command
line (behind Panel's login) against sample data of ``--rows`` rows and, in the same run on the
same machine, against a baseline of ``--baseline-rows`` rows. Headless Chromium visits each
``--repeat`` times (after one warm-up visit); the medians are printed with their ratios to the
targets (first rows <= 1.5 s, filter <= 0.3 s) and to the baseline.

First rows: navigation start -> the first row matching the dashboard's selector is in the DOM
(fresh browser context, so nothing is cached, already signed in: the session cookie from one
login is given to each context, so the login page is not timed; the server's cache already
holds the parsed data, as it does for every visitor after the first).
Filter: the click on the dashboard's filter button -> its "Showing N of M" text shows the
narrowed count.

Both are taken inside the page: a ``requestAnimationFrame`` probe (piercing shadow roots, where
Panel renders) stamps ``performance.now()`` when the rows or the text appear, and the click's
own event time starts the filter. Playwright's waits poll at up to 500 ms intervals and would
add that to the figures. Each visit also prints where its first-rows time went: until the
page's HTML arrives (the server rendering the page; with ``make dashboard``'s reused sessions
the visitor's own session is built after that, while the scripts load), until the scripts ran
(DOMContentLoaded: downloading and parsing Bokeh, Panel and the extensions), and the rest
(websocket, document, render) -- and the JS/CSS bytes and any request leaving the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "browser"))

from test_experiments_dashboard import CHROMIUM, CHROMIUM_ARGS, PanelServer, summary_file  # noqa: E402

from stack.env import StackPaths  # noqa: E402

TARGET_FIRST_ROWS_S = 1.5
TARGET_FILTER_S = 0.3


@dataclass(frozen=True)
class Sample:
    """What one sample-data writer made: the count text before the filter, and after it (a
    regex; ``None``: any "Showing N of M" with the same M and another N)."""

    before: str
    after: str | None


@dataclass(frozen=True)
class Dashboard:
    app: Path  # served by panel serve
    write_sample: Callable[[Path, int, int], Sample]  # (server root, rows, seed)
    first_rows: str  # CSS selector of the first table rows
    filter_button: str  # the text of the button that filters
    count_text: str  # regex of the "Showing N of M ..." text; groups: N, M
    missing: str = ""  # why this dashboard cannot be measured (yet), if it cannot


def write_experiments(root: Path, rows: int, seed: int) -> Sample:
    """A summary CSV of ``rows`` experiments where the server rooted at ``root`` reads it."""
    from dashboards.experiments.sample_data import synthetic_outcomes
    from factory_tasks.warehouse.summary import build_summary, write_summary

    summary = build_summary(synthetic_outcomes(rows, seed=seed))
    write_summary(summary, summary_file(root))
    succeeded = int((summary["status"] == "succeeded").sum())
    return Sample(before=f"Showing {rows:,} of {rows:,} experiments",
                  after=re.escape(f"Showing {succeeded:,} of {rows:,} experiments"))


def write_monitoring(root: Path, rows: int, seed: int) -> Sample:
    """``rows`` monitoring rows in the SQLite warehouse of the server rooted at ``root``."""
    from dashboards.monitoring.sample_data import write_sample_monitoring

    write_sample_monitoring(StackPaths(root / "var").warehouse_db, rows, seed)
    return Sample(before="", after=None)  # the windows shown depend on the app: any narrowing


def _missing_monitoring() -> str:
    app = REPO / "dashboards" / "monitoring_app.py"
    if not app.exists():
        return f"the monitoring app {app.relative_to(REPO)} does not exist (yet)"
    if importlib.util.find_spec("dashboards.monitoring.sample_data") is None:
        return "dashboards.monitoring.sample_data (write_sample_monitoring) does not exist (yet)"
    return ""


DASHBOARDS: dict[str, Dashboard] = {
    "experiments": Dashboard(
        app=REPO / "dashboards" / "experiments_app.py",
        write_sample=write_experiments,
        first_rows=".mf-leaderboard .tabulator-row",
        filter_button="failed",  # the status toggle: hides the failed experiments
        count_text=r"Showing ([\d,]+) of ([\d,]+) experiments",
    ),
    "monitoring": Dashboard(
        app=REPO / "dashboards" / "monitoring_app.py",
        write_sample=write_monitoring,
        first_rows=".mf-monitoring-windows .tabulator-row",
        filter_button="alerts only",
        count_text=r"Showing ([\d,]+) of ([\d,]+) windows",
        missing=_missing_monitoring(),
    ),
}

# In the page, before any of its scripts: stamps performance.now() when a (shadow-piercing)
# selector first matches and when a text first matches a regex, checked every animation frame.
PROBE_JS = r"""
(() => {
  const rootsOf = (node) => {  // node and every shadow root inside it
    const out = [node];
    if (node.shadowRoot) out.push(node.shadowRoot);
    for (let i = 0; i < out.length; i++) {
      out[i].querySelectorAll('*').forEach(e => { if (e.shadowRoot) out.push(e.shadowRoot); });
    }
    return out;
  };
  const matches = (parts) => {  // "A B": a B inside (the shadow trees of) an A
    let scopes = [document];
    for (const part of parts) {
      const found = [];
      for (const scope of scopes) {
        for (const r of rootsOf(scope)) r.querySelectorAll(part).forEach(e => found.push(e));
      }
      if (!found.length) return false;
      scopes = found;
    }
    return true;
  };
  const roots = () => rootsOf(document);
  window.__mf = {stamps: {}, click: null};
  window.__mfWatchSelector = (name, selector) => {
    const parts = selector.trim().split(/\s+/);
    const tick = () => matches(parts) ? (window.__mf.stamps[name] = performance.now()) : requestAnimationFrame(tick);
    tick();
  };
  window.__mfText = (pattern) => {
    const re = new RegExp(pattern);
    for (const r of roots()) {
      const m = (r === document ? document.body : r).textContent.match(re);
      if (m) return m[0];
    }
    return null;
  };
  window.__mfWatchText = (name, pattern, not_text) => {
    const tick = () => {
      const found = window.__mfText(pattern);
      if (found !== null && found !== not_text) { window.__mf.stamps[name] = performance.now(); return; }
      requestAnimationFrame(tick);
    };
    tick();
  };
  window.addEventListener('click', e => { window.__mf.click = e.timeStamp; }, true);
  window.__mfWatchSelector('first_rows', window.__mfFirstRows);
})();
"""


@dataclass
class Visit:
    html_s: float  # navigation start -> first byte of the page (the server built the session)
    scripts_s: float  # -> DOMContentLoaded (JS/CSS downloaded and run)
    first_rows_s: float  # -> the first row in the DOM
    filter_s: float
    script_bytes: int
    external: list[str]


def visit(browser, server: PanelServer, board: Dashboard, sample: Sample) -> Visit:
    context = browser.new_context(viewport={"width": 1500, "height": 1200})
    try:
        context.add_cookies(server.session_cookies())
        context.add_init_script(f"window.__mfFirstRows = {board.first_rows!r};" + PROBE_JS)
        page = context.new_page()
        external: list[str] = []
        local = (server.base_url, "blob:", "data:")
        page.on("request", lambda r: None if r.url.startswith(local) else external.append(r.url))
        page.goto(server.url)
        page.wait_for_function("() => window.__mf && window.__mf.stamps.first_rows", timeout=120_000)
        nav = page.evaluate("""() => {
            const n = performance.getEntriesByType('navigation')[0];
            const bytes = performance.getEntriesByType('resource').reduce((a, e) => a + e.decodedBodySize, 0);
            return [n.responseStart, n.domContentLoadedEventEnd, window.__mf.stamps.first_rows, bytes]; }""")
        # The unfiltered count, then the click, then the narrowed count.
        page.wait_for_function(f"() => window.__mfText({board.count_text!r})", timeout=60_000)
        time.sleep(0.3)  # let the page settle: the filter is timed alone
        before = page.evaluate(f"() => window.__mfText({board.count_text!r})")
        if sample.before:
            assert before == sample.before, (before, sample.before)
        total = re.match(board.count_text, before).group(2)
        # Without an exact expectation: any N (the watch skips the unfiltered text) of the same M.
        after = sample.after or board.count_text.replace(r"of ([\d,]+)", f"of {re.escape(total)}")
        page.evaluate("([p, t]) => window.__mfWatchText('filtered', p, t)", [after, before])
        page.locator("button", has_text=board.filter_button).first.click()
        page.wait_for_function("() => window.__mf.stamps.filtered", timeout=60_000)
        filtered_at, clicked_at = page.evaluate("() => [window.__mf.stamps.filtered, window.__mf.click]")
        return Visit(nav[0] / 1000, nav[1] / 1000, nav[2] / 1000, (filtered_at - clicked_at) / 1000,
                     int(nav[3]), external)
    finally:
        context.close()


def run(name: str, board: Dashboard, rows: int, repeat: int, browser, workdir: Path) -> tuple[float, float]:
    root = workdir / f"{name}_{rows}"
    t = time.perf_counter()
    sample = board.write_sample(root, rows, 3)
    print(f"{name}, {rows:,} rows: sample data written in {time.perf_counter() - t:.1f} s")
    server = PanelServer(root, workdir / f"panel_{name}_{rows}.log", app=board.app)
    renders, filters = [], []
    try:
        server.wait_ready(120)
        for i in range(repeat + 1):  # the first visit warms the server (imports, data parse)
            v = visit(browser, server, board, sample)
            note = " (warm-up)" if not i else ""
            print(f"  visit {i}: first rows {v.first_rows_s:.2f} s (HTML {v.html_s:.2f} s, scripts run "
                  f"{v.scripts_s:.2f} s, then {v.first_rows_s - v.scripts_s:.2f} s to render), filter "
                  f"{v.filter_s:.3f} s; {v.script_bytes / 1e6:.1f} MB of JS/CSS, "
                  f"{len(v.external)} external requests{note}")
            for url in v.external:
                print(f"    external request: {url}")
            if i:
                renders.append(v.first_rows_s)
                filters.append(v.filter_s)
    finally:
        server.stop()
    return statistics.median(renders), statistics.median(filters)


def report(name: str, rows: int, baseline_rows: int, repeat: int, big: tuple[float, float],
           base: tuple[float, float]) -> bool:
    print()
    print(f"| {name} (median of {repeat}) | {rows:,} rows | target | ratio to target "
          f"| {baseline_rows:,} rows (baseline) | ratio to baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, value, target, baseline in (("first rows", big[0], TARGET_FIRST_ROWS_S, base[0]),
                                           ("filter applied", big[1], TARGET_FILTER_S, base[1])):
        print(f"| {label} | {value:.3f} s | {target:.1f} s | {value / target:.2f} | {baseline:.3f} s "
              f"| {value / baseline:.2f} |")
    ok = big[0] <= TARGET_FIRST_ROWS_S and big[1] <= TARGET_FILTER_S
    print(f"{name}: {'targets met' if ok else 'TARGETS MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard", choices=[*DASHBOARDS, "all"], default="all")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--baseline-rows", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    names = list(DASHBOARDS) if args.dashboard == "all" else [args.dashboard]
    results: dict[str, bool | None] = {}
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name in names:
                board = DASHBOARDS[name]
                if board.missing:
                    print(f"{name}: NOT MEASURED: {board.missing}")
                    results[name] = None
                    continue
                base = run(name, board, args.baseline_rows, args.repeat, browser, Path(tmp))
                big = run(name, board, args.rows, args.repeat, browser, Path(tmp))
                results[name] = report(name, args.rows, args.baseline_rows, args.repeat, big, base)
        finally:
            browser.close()
    print()
    for name, ok in results.items():
        print(f"{name}: {'not measured (' + DASHBOARDS[name].missing + ')' if ok is None else 'targets met' if ok else 'TARGETS MISSED'}")
    measured = [ok for ok in results.values() if ok is not None]
    return 0 if measured and all(measured) else 1


if __name__ == "__main__":
    sys.exit(main())
