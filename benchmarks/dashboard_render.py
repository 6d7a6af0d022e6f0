"""Experiments dashboard: time to first leaderboard rows and time for a filter to apply.

    .venv/bin/python benchmarks/dashboard_render.py [--rows 50000] [--baseline-rows 1000] [--repeat 3]

Serves ``dashboards/experiments_app.py`` with ``make dashboard``'s ``panel serve`` command
(behind Panel's login) against a generated summary of ``--rows`` rows and against a baseline
summary of ``--baseline-rows`` rows (same run, same machine), drives headless Chromium, and
prints the medians, the ratios to the targets (first render <= 3 s, filter <= 0.5 s) and the
ratios to the baseline.

First render: navigation start -> the first leaderboard row is in the DOM (fresh session,
already signed in: the session cookie from one login is given to each new browser context, so
the login page is not timed; the server's cache already holds the parsed file, as it does for
every visitor after the first).
Filter: click on the "failed" status toggle -> the row count text shows the narrowed count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "browser"))

from dashboards.experiments.sample_data import synthetic_outcomes  # noqa: E402
from factory_tasks.summary import build_summary, write_summary  # noqa: E402
from test_experiments_dashboard import CHROMIUM, CHROMIUM_ARGS, PanelServer, summary_file  # noqa: E402

TARGET_RENDER_S = 3.0
TARGET_FILTER_S = 0.5


def measure(browser, server: PanelServer, succeeded: int, total: int, repeat: int) -> tuple[list[float], list[float]]:
    renders, filters = [], []
    url = server.url
    cookies = server.session_cookies()
    for i in range(repeat + 1):  # the first visit warms the server (imports, file parse)
        context = browser.new_context(viewport={"width": 1500, "height": 1200})
        context.add_cookies(cookies)
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_selector(".mf-leaderboard .tabulator-row", timeout=120_000)
        render = time.perf_counter() - start
        page.get_by_text(f"Showing {total:,} of {total:,}").wait_for(timeout=60_000)
        button = page.locator("button", has_text="failed").first
        start = time.perf_counter()
        button.click()
        page.get_by_text(f"Showing {succeeded:,} of {total:,}").wait_for(timeout=60_000)
        filt = time.perf_counter() - start
        context.close()
        if i:
            renders.append(render)
            filters.append(filt)
        print(f"  visit {i}: first rows {render:.2f} s, filter {filt:.3f} s{' (warm-up)' if not i else ''}")
    return renders, filters


def run(rows: int, repeat: int, browser, workdir: Path) -> tuple[float, float]:
    root = workdir / f"rows_{rows}"
    path = summary_file(root)
    t = time.perf_counter()
    summary = build_summary(synthetic_outcomes(rows, seed=3))
    write_summary(summary, path)
    print(f"{rows:,} rows: generated in {time.perf_counter() - t:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
    succeeded = int((summary["status"] == "succeeded").sum())
    server = PanelServer(root, workdir / f"panel_{rows}.log")
    try:
        server.wait_ready(120)
        renders, filters = measure(browser, server, succeeded, rows, repeat)
    finally:
        server.stop()
    return statistics.median(renders), statistics.median(filters)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--baseline-rows", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            base_render, base_filter = run(args.baseline_rows, args.repeat, browser, Path(tmp))
            big_render, big_filter = run(args.rows, args.repeat, browser, Path(tmp))
        finally:
            browser.close()
    print()
    print(f"| measure (median of {args.repeat}) | {args.rows:,} rows | target | ratio to target "
          f"| {args.baseline_rows:,} rows (baseline) | ratio to baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| first leaderboard rows | {big_render:.2f} s | {TARGET_RENDER_S:.1f} s | "
          f"{big_render / TARGET_RENDER_S:.2f} | {base_render:.2f} s | {big_render / base_render:.2f} |")
    print(f"| filter applied | {big_filter:.3f} s | {TARGET_FILTER_S:.1f} s | "
          f"{big_filter / TARGET_FILTER_S:.2f} | {base_filter:.3f} s | {big_filter / base_filter:.2f} |")
    ok = big_render <= TARGET_RENDER_S and big_filter <= TARGET_FILTER_S
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
