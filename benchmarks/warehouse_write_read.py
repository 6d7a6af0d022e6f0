"""Benchmark: record N outcome rows and read the summary back, on Hive and on SQLite.

    .venv/bin/python benchmarks/warehouse_write_read.py [--rows 10000] [--hive-uri URI]

Both warehouses go through the same code path (``OutcomeStore`` over an Airflow hook:
``HiveServer2Hook`` / ``SqliteHook``). Without ``--hive-uri`` a local HiveServer2 (Spark
Thrift Server, ``tests/harness/hive.py``) is started for the run and stopped afterwards. The rows are
realistic (``outcome_row`` of generated specs and result files: ~15% failed runs with NULL
scores). Each warehouse writes one factory run of N rows (``replace_run``), then rewrites it
(the idempotent retry path), then reads the outcomes and builds the summary. SQLite is the
baseline measured in the same run; the ratio is Hive / SQLite.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory_tasks.core.config_types import Economics  # noqa: E402
from factory_tasks.core.contracts import ExperimentResult, ExperimentSpec, compute_experiment_id  # noqa: E402
from factory_tasks.core.metrics import METRICS  # noqa: E402
from factory_tasks.core.schema import DEFAULT_ECONOMICS  # noqa: E402
from factory_tasks.warehouse.outcomes import OutcomeStore, RunContext, outcome_row  # noqa: E402

RUN_ID = "benchmark__2026-11-27T00:00:00+00:00"


def outcome_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    families = [("random_forest", "RandomForestClassifier"), ("logistic", "LogisticRegression"),
                ("gbm", "HistGradientBoostingClassifier")]
    economics = Economics.model_validate(DEFAULT_ECONOMICS)
    ctx = RunContext(factory_run_id=RUN_ID, grid_hash="ab" * 8, recorded_at="2026-11-27T01:00:00+00:00",
                     job_id="job-1", job_run_id="run-1", run_status="ENGINE_SUCCEEDED", run_reason="new experiment")
    rows = []
    for i in range(n):
        family, estimator = families[i % 3]
        params = ({"C": rng.random() * 10, "max_iter": i} if estimator == "LogisticRegression"
                  else {"max_depth": rng.choice([None, 4, 8]), "random_state": i})
        fields = {"estimator": estimator, "params": params, "cv_folds": 5, "metrics": list(METRICS),
                  "random_state": 0, "economics": economics, "data_snapshot_hash": "cd" * 32}
        spec = ExperimentSpec(
            experiment_id=compute_experiment_id(**fields), family=family, ranking_metric="roc_auc",
            resources={"cpu": rng.choice([1.0, 2.0]), "memory_gb": 2.0},
            data_snapshot={"path": "snapshots/h.parquet", "hash": "cd" * 32},
            **{k: v for k, v in fields.items() if k != "data_snapshot_hash"})
        if rng.random() < 0.15:
            result = ExperimentResult(experiment_id=spec.experiment_id, status="failed",
                                      error=f"ValueError: Invalid parameter {i} for estimator",
                                      traceback="Traceback ...", code_version="0.1.0")
        else:
            metrics = {}
            for name in METRICS:
                folds = [rng.random() for _ in range(5)]
                metrics[name] = {"mean": sum(folds) / 5, "std": rng.random() / 10, "folds": folds}
            result = ExperimentResult(
                experiment_id=spec.experiment_id, status="succeeded", family=family, estimator=estimator,
                params=params, cv_folds=5, ranking_metric="roc_auc", metrics=metrics,
                fit_time={"mean": rng.random() * 30, "std": 1.0, "total": 100.0},
                score_time={"mean": rng.random(), "std": 0.1, "total": 5.0},
                wall_time_s=rng.random() * 200, n_rows=64_000, threads=1,
                artifact_path=f"experiments/{spec.experiment_id}/model.skops",
                metadata_path=f"experiments/{spec.experiment_id}/model.metadata.json",
                data_snapshot_hash="cd" * 32, code_version="0.1.0+0123456789abcdef",
                library_versions={lib: "1.0" for lib in ("sklearn", "numpy", "pandas", "skops")},
                started_at="2026-11-27T00:10:00+00:00", finished_at="2026-11-27T00:20:00+00:00")
        rows.append(outcome_row(spec, result, ctx))
    return rows


def measure(name: str, hook, rows: list[dict]) -> dict[str, float]:
    store = OutcomeStore(hook, table="experiment_outcomes_benchmark")
    store.ensure_schema()
    timings = {}
    started = time.perf_counter()
    store.replace_run(RUN_ID, rows)
    timings["write"] = time.perf_counter() - started
    started = time.perf_counter()
    store.replace_run(RUN_ID, rows)  # a retry of the same run: replaces, never duplicates
    timings["rewrite"] = time.perf_counter() - started
    started = time.perf_counter()
    outcomes = store.read(RUN_ID)
    try:
        from factory_tasks.warehouse.summary import build_summary
    except ImportError:  # pragma: no cover - summary belongs to another package
        summary = outcomes
    else:
        summary = build_summary(outcomes)
    timings["read"] = time.perf_counter() - started
    if len(summary) != len(rows):
        raise SystemExit(f"{name}: read back {len(summary)} rows, wrote {len(rows)}")
    print(f"{name:7s} write {timings['write']:7.2f}s ({len(rows) / timings['write']:9.0f} rows/s)  "
          f"rewrite {timings['rewrite']:7.2f}s  read+summary {timings['read']:6.2f}s "
          f"({len(rows) / timings['read']:9.0f} rows/s)", flush=True)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--hive-uri", help="an Airflow hiveserver2:// connection URI; default: start one")
    parser.add_argument("--work-dir", type=Path, help="for the SQLite file and a started server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="warehouse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(work / "airflow"))
    os.environ["AIRFLOW_CONN_BENCH_SQLITE"] = f"sqlite:///{(work / 'bench.db').resolve().as_posix().lstrip('/')}"

    rows = outcome_rows(args.rows)
    print(f"{args.rows} outcome rows x {len(rows[0])} columns", flush=True)

    from airflow.providers.apache.hive.hooks.hive import HiveServer2Hook
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    sqlite = measure("sqlite", SqliteHook(sqlite_conn_id="bench_sqlite"), rows)

    server = None
    if args.hive_uri:
        os.environ["AIRFLOW_CONN_BENCH_HIVE"] = args.hive_uri
    else:
        from tests.harness.hive import start_hiveserver2

        started = time.perf_counter()
        server = start_hiveserver2(work / "hive")
        print(f"HiveServer2 (Spark Thrift Server) started in {time.perf_counter() - started:.1f}s "
              f"on port {server.port}", flush=True)
        os.environ["AIRFLOW_CONN_BENCH_HIVE"] = server.conn_uri
    try:
        hive = measure("hive", HiveServer2Hook(hiveserver2_conn_id="bench_hive"), rows)
    finally:
        if server is not None:
            server.stop()

    print("ratio Hive/SQLite: " + "  ".join(
        f"{k} {hive[k] / sqlite[k]:.0f}x" for k in ("write", "rewrite", "read")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
