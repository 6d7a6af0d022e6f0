"""Benchmark: one monitoring run over 1,000,000 logged predictions and their delayed labels (SQLite).

    .venv/bin/python benchmarks/monitoring_window.py [--rows 1000000] [--repeat 3]

The embedded warehouse holds ``--rows`` simulated predictions (``prediction_log``) decided in
the cohort 00:00-01:00 and their responses (``customer_responses``: attached, expired and
duplicate deliveries). The monitoring run for 03:00-04:00 reads the open cohorts (all labels
of the 00:00 cohort have matured by 04:00, so every metric is computed on every row: realised
AUC, calibration, three policy estimators, blasts, exploration, differences, drift against a
64,000-row training snapshot, the CBPE estimates) and replaces its ``model_monitoring``
partition — read + compute + write.

Baseline, measured in the same run: plain pandas on the same rows — ``pd.read_sql`` of the same
prediction columns and range and of the attached responses, a merge on the uuid, and a
group-by of the offer and of the score decile (volume, mean score, conversion, share).
Target: monitoring / baseline <= 1.5. Median of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from factory_tasks.core.schema import CUSTOMER_COLUMNS, DEFAULT_ECONOMICS  # noqa: E402
from factory_tasks.loop.alerts import monitor_window  # noqa: E402
from factory_tasks.loop.config import LoopConfig  # noqa: E402
from factory_tasks.loop.cohorts import PREDICTION_COLUMNS  # noqa: E402
from factory_tasks.loop.windows import MonitoringWindow, iso
from factory_tasks.loop.simulator import simulate_customers
from factory_tasks.warehouse.loop_tables import CUSTOMER_RESPONSES, PREDICTION_LOG  # noqa: E402
from tests.monitoring_window import HOUR_MS, T0_MS, SqliteHook, record_feed, simulate_window, write_window  # noqa: E402


def pandas_baseline(db: Path, window: MonitoringWindow) -> pd.DataFrame:
    """The same rows with pandas, then a plain group-by of the basic aggregates."""
    low, high = window.cohorts()[0][0], window.end_ms
    with sqlite3.connect(db) as conn:
        predictions = pd.read_sql(
            f"SELECT {', '.join(PREDICTION_COLUMNS)} FROM {PREDICTION_LOG} "
            "WHERE decided_at_ms >= ? AND decided_at_ms < ?", conn, params=(low, high))
        responses = pd.read_sql(
            f"SELECT prediction_uuid, responded_at_ms FROM {CUSTOMER_RESPONSES} "
            "WHERE responded_at_ms >= ? AND responded_at_ms < ? AND status = 'attached'", conn, params=(low, high))
    first = responses.groupby("prediction_uuid", as_index=False)["responded_at_ms"].min()
    frame = predictions.merge(first, on="prediction_uuid", how="left")
    frame["conversion"] = frame["responded_at_ms"].notna().astype(np.int64)
    proba = frame[["p_bogo", "p_discount", "p_none"]].to_numpy()
    codes = frame["offer"].map({"Buy One Get One": 0, "Discount": 1, "No Offer": 2}).to_numpy()
    frame["score"] = proba[np.arange(len(frame)), codes]
    frame["decile"] = pd.qcut(frame["score"].rank(method="first"), 10, labels=False) + 1
    by_offer = frame.groupby("offer").agg(volume=("score", "size"), score=("score", "mean"),
                                          conversion=("conversion", "mean"))
    by_offer["share"] = by_offer["volume"] / len(frame)
    by_decile = frame.groupby("decile").agg(volume=("score", "size"), score=("score", "mean"),
                                            conversion=("conversion", "mean"))
    return pd.concat([by_offer, by_decile])


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="mf-bench-monitoring-") as tmp:
        db = Path(tmp) / "warehouse.db"
        hook = SqliteHook(db)
        started = time.perf_counter()
        sim = simulate_window(T0_MS, args.rows, seed=1)
        write_window(hook, sim)
        record_feed(hook, T0_MS + 4 * HOUR_MS)  # every response of the window delivered
        print(f"warehouse: {args.rows:,} predictions, {len(sim.responses):,} responses "
              f"({time.perf_counter() - started:.1f}s to simulate and write)")
        del sim
        config = LoopConfig()
        window = MonitoringWindow.from_interval(iso(T0_MS + 3 * HOUR_MS), iso(T0_MS + 4 * HOUR_MS),
                                                config.responses.window_minutes)
        reference = {"v1": simulate_customers(64_000, 7)[list(CUSTOMER_COLUMNS)]}

        baseline_s, groups = timed(lambda: pandas_baseline(db, window), args.repeat)
        monitor_s, summary = timed(lambda: monitor_window(hook, window, config, DEFAULT_ECONOMICS, reference),
                                   args.repeat)
    ratio = monitor_s / baseline_s
    print(f"monitoring run: {summary['rows']} model_monitoring rows for {len(summary['cohorts'])} cohort(s) "
          f"of {summary['predictions']:,} predictions, alerts {summary['alert_ids'] or 'none'}")
    print(f"pandas baseline: {len(groups)} group rows")
    print(f"| rows | monitoring s/window | pandas group-by s | ratio (target <= 1.5) |")
    print(f"| {args.rows:,} | {monitor_s:.2f} | {baseline_s:.2f} | {ratio:.2f} |")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
