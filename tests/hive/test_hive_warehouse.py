"""The warehouse on a real HiveServer2: outcomes and training data, the same as on SQLite.

Every test talks to the session's Spark Thrift Server through Airflow's ``HiveServer2Hook``.
Every Spark statement is planned and run as a Spark job, so each test sends only a few.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core.contracts import ExperimentResult, ExperimentSpec
from factory_tasks.core.metrics import METRICS
from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.hive import HiveDialect, bind
from factory_tasks.warehouse.outcomes import (
    OUTCOME_COLUMNS,
    OutcomeSchemaError,
    OutcomeStore,
    RunContext,
    outcome_row,
)
from factory_tasks.warehouse.sql import Column, WarehouseError
from factory_tasks.warehouse.sqlite import SqliteDialect
from factory_tasks.warehouse.training_data import read_training_frame
from tests.contract_factories import make_result, make_spec

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.hive

NASTY = [
    "it's",
    "'; DROP TABLE x; --",
    'double "quotes" and `backticks`',
    "line one\nline two\r\nthree\tand a tab",
    "back\\slash, trailing backslash \\",
    "\\' escaped quote? \\n not a newline \\u0041",
    "unicode: Zürich, 日本語, emoji 🎉, RTL עברית",
    "${spark.app.name} ${hiveconf:x} ${env:HOME} $dollar",
    "percent %s %(name)s %% 100%",
    "",
]


def spec_for(i: int, family: str = "random_forest") -> ExperimentSpec:
    return make_spec("RandomForestClassifier", {"n_estimators": 100 + i, "max_depth": (i % 5) or None},
                     family=family, cv_folds=5, random_state=42, resources={"cpu": 1.0 + i % 2, "memory_gb": 2.0})


def result_for(spec: ExperimentSpec, i: int, rng: random.Random) -> ExperimentResult | None:
    if i % 7 == 3:
        return None  # the job run left no result file
    if i % 7 == 5:
        return ExperimentResult(experiment_id=spec.experiment_id, status="failed",
                                error=f"ValueError: bad param {i}", code_version="0.1.0")
    metrics = {}
    for name in METRICS:
        folds = [rng.random() for _ in range(5)]
        metrics[name] = {"mean": sum(folds) / 5, "std": rng.random() / 10, "folds": folds}
    return make_result(spec, metrics=metrics,
                       fit_time={"mean": rng.random() * 10, "std": 0.1, "total": 50.0},
                       score_time={"mean": rng.random(), "std": 0.01, "total": 5.0},
                       wall_time_s=rng.random() * 100)


def outcome_rows(run_id: str, n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    ctx = RunContext(
        factory_run_id=run_id,
        grid_hash="cd" * 8,
        recorded_at="2026-11-27T11:00:00+00:00",
        job_id="job-1",
        job_run_id=f"run-{seed}",
        run_status="succeeded",
    )
    specs = [spec_for(i) for i in range(start, start + n)]
    return [outcome_row(spec, result_for(spec, i, rng), ctx) for i, spec in zip(range(start, start + n), specs)]


def query(hook, sql: str) -> list[tuple]:
    """Run one statement on its own connection (the hook's get_records only fetches SELECT/SHOW)."""
    conn = hook.get_conn()
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
    finally:
        conn.close()


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["factory_run_id", "experiment_id"]).reset_index(drop=True)


def test_schema_creation_is_idempotent_and_keeps_rows(hive_hook, unique_table):
    store = OutcomeStore(hive_hook, table=unique_table)
    assert isinstance(store.dialect, HiveDialect)
    assert not store.dialect.table_exists(hive_hook, unique_table)
    store.replace_run("run_a", outcome_rows("run_a", 2))  # creates the table, then writes
    store.ensure_schema()  # again: must neither fail nor drop anything
    assert store.dialect.table_exists(hive_hook, unique_table)
    assert len(store.read()) == 2

    described = query(hive_hook, f"DESCRIBE FORMATTED {unique_table}")
    text = "\n".join(" ".join(str(v) for v in row) for row in described).lower()
    assert "parquet" in text
    assert "# partition information" in text and "factory_run_id" in text.split("# partition information")[1]


def test_outcomes_read_back_equal_sqlite_and_rewrite_replaces_only_that_run(
    hive_hook, sqlite_hook, unique_table
):
    hive = OutcomeStore(hive_hook, table=unique_table)
    lite = OutcomeStore(sqlite_hook, table=unique_table)
    assert isinstance(lite.dialect, SqliteDialect)
    first_a, rows_b = outcome_rows("run_a", 8, seed=1), outcome_rows("run_b", 4, seed=2)
    second_a = outcome_rows("run_a", 5, seed=3, start=100)  # other experiments, other values
    for store in (hive, lite):
        assert store.replace_run("run_a", first_a) == 8
        store.replace_run("run_b", rows_b)
        store.replace_run("run_a", second_a)  # the rerun: only this set may remain

    from_hive, from_sqlite = sorted_frame(hive.read()), sorted_frame(lite.read())
    assert list(from_hive.columns) == list(OUTCOME_COLUMN_NAMES)
    pd.testing.assert_frame_equal(from_hive, from_sqlite)
    expected = sorted_frame(pd.DataFrame(second_a + rows_b, columns=list(OUTCOME_COLUMN_NAMES)))
    pd.testing.assert_frame_equal(from_hive, expected, check_dtype=False)
    assert sorted(from_hive.loc[from_hive.factory_run_id == "run_a", "experiment_id"]) == sorted(
        spec_for(i).experiment_id for i in range(100, 105))
    # Typed where it matters: counts as ints, scores as floats, failures as NULL scores.
    assert from_hive["cv_folds"].dtype.kind == "i"
    assert from_hive["roc_auc_mean"].dtype.kind == "f"
    one_run = hive.read("run_b")
    assert set(one_run.factory_run_id) == {"run_b"} and len(one_run) == 4


@pytest.mark.parametrize("mode", ["json", "values"])
def test_nasty_strings_round_trip(hive_hook, unique_table, monkeypatch, mode):
    """Both ways rows travel (Spark's JSON payload, portable VALUES) keep every string intact."""
    monkeypatch.setattr(HiveDialect, "_load_mode", lambda self, cursor: mode)
    store = OutcomeStore(hive_hook, table=unique_table)
    rows = outcome_rows("run_nasty", len(NASTY))
    for row, text in zip(rows, NASTY):
        row["error"] = text
        row["params_json"] = text[::-1]
    run_id = "manual__2026-11-27T11:00:00+00:00 'quoted' %s ${x}"
    for row in rows:
        row["factory_run_id"] = run_id
    store.replace_run(run_id, rows)

    back = store.read(run_id).set_index("experiment_id").loc[[r["experiment_id"] for r in rows]]
    assert list(back["error"]) == NASTY
    assert list(back["params_json"]) == [t[::-1] for t in NASTY]
    assert set(back["factory_run_id"]) == {run_id}
    assert HiveDialect().table_exists(hive_hook, unique_table)  # and nothing got dropped


def test_null_nan_and_infinities_become_null(hive_hook, unique_table):
    rows = outcome_rows("run_nan", 3)
    rows[0].update(ranking_score=float("nan"), roc_auc_std=float("inf"), log_loss_mean=float("-inf"))
    rows[1].update(error=None, job_id=None, wall_time_s=None, ranking_score=np.float64("nan"))
    rows[2].update(cv_folds=np.int64(3), ranking_score=np.float64(0.25), fit_time_mean=pd.NA)
    OutcomeStore(hive_hook, table=unique_table).replace_run("run_nan", rows)

    back = OutcomeStore(hive_hook, table=unique_table).read().set_index("experiment_id")
    first, second, third = (back.loc[r["experiment_id"]] for r in rows)
    assert all(math.isnan(v) for v in (first.ranking_score, first.roc_auc_std, first.log_loss_mean))
    assert pd.isna(second.error) and pd.isna(second.job_id) and math.isnan(second.wall_time_s)
    assert third.cv_folds == 3 and third.ranking_score == 0.25 and math.isnan(third.fit_time_mean)
    raw = HiveDialect().select(hive_hook, unique_table, ["ranking_score", "roc_auc_std"])
    assert sum(1 for score, std in raw if score is None) == 2  # SQL NULL, not NaN
    assert any(std is None for score, std in raw)


@pytest.mark.parametrize(
    "table, column",
    [
        ("outcomes; DROP TABLE x", "ok"),
        ("ok_table", "a b"),
        ("ok_table", "x) --"),
        ("1starts_with_digit", "ok"),
        ("ok_table", ""),
    ],
)
def test_identifiers_are_validated_before_any_statement(table, column):
    class NoServer:  # any statement attempt would blow up loudly
        conn_type = "hiveserver2"

        def get_conn(self):
            raise AssertionError("a statement was attempted with an invalid identifier")

    dialect = HiveDialect()
    with pytest.raises(ValueError, match="not a valid SQL identifier"):
        cols = [Column("factory_run_id", "string"), Column(column, "string")]
        dialect.create_table(NoServer(), table, cols, partition_by="factory_run_id")
    with pytest.raises(ValueError, match="not a valid SQL identifier"):
        dialect.select(NoServer(), table, ["factory_run_id", column])
    with pytest.raises(ValueError):
        dialect.replace_partition(NoServer(), "ok_table", OUTCOME_COLUMNS, column or "x y", "r", [])


def test_unreachable_server_raises_warehouse_error_after_bounded_retries(monkeypatch, fast_retries):
    from airflow.providers.apache.hive.hooks.hive import HiveServer2Hook

    from tests.harness.hive import free_port

    closed = free_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_DOWN_WAREHOUSE", f"hiveserver2://airflow@127.0.0.1:{closed}/default?auth_mechanism=NONE"
    )
    hook = HiveServer2Hook(hiveserver2_conn_id="down_warehouse")
    attempts = []
    real_get_conn = hook.get_conn
    monkeypatch.setattr(hook, "get_conn", lambda *a: attempts.append(1) or real_get_conn(*a))

    rows = outcome_rows("run_down", 2)
    rows[0]["error"] = "SECRET-VALUE-42"
    with pytest.raises(WarehouseError) as info:
        HiveDialect().replace_partition(
            hook, "experiment_outcomes", OUTCOME_COLUMNS, "factory_run_id", "run_down", rows
        )
    message = str(info.value)
    assert len(attempts) == 3 and info.value.attempts == 3
    assert "'down_warehouse'" in message and "hiveserver2" in message
    assert "replace factory_run_id 'run_down' in experiment_outcomes" in message
    assert "TTransportException" in message and "SECRET-VALUE-42" not in message


def test_rejected_statement_is_not_retried_and_leaves_previous_rows(
    hive_hook, unique_table, monkeypatch, fast_retries
):
    """A table someone created with another schema: the write is rejected, nothing changes."""
    query(
        hive_hook,
        f"CREATE TABLE {unique_table} (experiment_id STRING, status STRING) "
        "PARTITIONED BY (factory_run_id STRING) STORED AS PARQUET",
    )
    query(
        hive_hook,
        f"INSERT INTO TABLE {unique_table} PARTITION (factory_run_id = 'run_a') VALUES ('old', 'ok')",
    )
    attempts = []
    real_get_conn = hive_hook.get_conn
    monkeypatch.setattr(hive_hook, "get_conn", lambda *a: attempts.append(1) or real_get_conn(*a))
    rows = outcome_rows("run_a", 3)
    rows[0]["error"] = "SECRET-VALUE-43"

    # the store notices the other layout before writing, and says what to do
    with pytest.raises(OutcomeSchemaError, match=f"{unique_table} .* lacks column.*ALTER TABLE {unique_table} ADD COLUMNS"):
        OutcomeStore(hive_hook, table=unique_table).replace_run("run_a", rows)
    # a statement Hive rejects is not retried
    attempts.clear()
    with pytest.raises(WarehouseError) as info:
        HiveDialect().replace_partition(hive_hook, unique_table, OUTCOME_COLUMNS, "factory_run_id", "run_a", rows)
    assert f"replace factory_run_id 'run_a' in {unique_table}" in str(info.value)
    assert "SECRET-VALUE-43" not in str(info.value)
    assert info.value.attempts == 1
    assert len(attempts) == 1  # one write attempt
    monkeypatch.setattr(hive_hook, "get_conn", real_get_conn)
    rows_now = HiveDialect().select(hive_hook, unique_table, ["experiment_id", "status", "factory_run_id"])
    assert rows_now == [("old", "ok", "run_a")]


def interactions_frame(n_rows: int) -> pd.DataFrame:
    try:
        from factory_tasks.loop.simulator import simulate_interactions

        return simulate_interactions(n_rows=n_rows, seed=7)
    except ImportError:  # the simulator is another package's; a look-alike frame will do
        rng = np.random.default_rng(7)
        return pd.DataFrame(
            {
                "recency": rng.integers(1, 13, n_rows),
                "history": np.round(29.99 + rng.lognormal(5, 1, n_rows), 2),
                "used_discount": rng.integers(0, 2, n_rows),
                "used_bogo": rng.integers(0, 2, n_rows),
                "zip_code": rng.choice(["Surburban", "Urban", "Rural"], n_rows),
                "is_referral": rng.integers(0, 2, n_rows),
                "channel": rng.choice(["Web", "Phone", "Multichannel"], n_rows),
                "offer": rng.choice(["Buy One Get One", "Discount", "No Offer"], n_rows),
                "conversion": rng.integers(0, 2, n_rows),
            }
        )


INTERACTIONS = (
    Column("recency", "bigint"),
    Column("history", "double"),
    Column("used_discount", "bigint"),
    Column("used_bogo", "bigint"),
    Column("zip_code", "string"),
    Column("is_referral", "bigint"),
    Column("channel", "string"),
    Column("offer", "string"),
    Column("conversion", "bigint"),
)


def test_training_table_load_and_read_frame_round_trip(hive_hook, sqlite_hook, unique_table, monkeypatch):
    """Loaded in several staged statements (small bound), published by one INSERT."""
    monkeypatch.setattr(HiveDialect, "max_rows_per_statement", 400)
    frame = interactions_frame(1000)
    names = [c.name for c in INTERACTIONS]
    frame = frame[names]
    key = names  # rows have no id: compare as sorted multisets
    for hook in (hive_hook, sqlite_hook):
        dialect = dialect_for(hook)
        dialect.create_table(hook, unique_table, INTERACTIONS)
        dialect.append_rows(hook, unique_table, INTERACTIONS, frame.itertuples(index=False, name=None))

    hive_frame = HiveDialect().read_frame(hive_hook, unique_table, INTERACTIONS)
    lite_frame = SqliteDialect().read_frame(sqlite_hook, unique_table, INTERACTIONS)
    assert {c: str(t) for c, t in hive_frame.dtypes.items()} == {
        c.name: {"bigint": "int64", "double": "float64", "string": "str"}[c.type] for c in INTERACTIONS
    }
    ordered = [x.sort_values(key).reset_index(drop=True) for x in (hive_frame, lite_frame, frame)]
    pd.testing.assert_frame_equal(ordered[0], ordered[1])
    pd.testing.assert_frame_equal(ordered[0], ordered[2], check_dtype=False)
    staging = query(hive_hook, f"SELECT count(*) FROM {unique_table}__staging")
    assert staging == [(0,)]  # the staged batches were cleaned up


def test_the_seed_command_creates_the_training_table_once(hive_server, hive_hook, unique_table):
    """docker compose's training-table-init: ``python -m stack seed-training-table`` against
    HiveServer2; a second run (a restarted stack) leaves the rows alone."""
    command = [sys.executable, "-m", "stack", "seed-training-table", "--rows", "300", "--table", unique_table]
    env = {**os.environ, "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE": hive_server.conn_uri}
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{unique_table}: created with 300 simulated rows" in first.stdout
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"{unique_table}: already there" in again.stdout, again.stderr[-3000:]
    assert len(read_training_frame(hive_hook, unique_table)) == 300


def test_the_seed_command_names_the_missing_connection():
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"}
    done = subprocess.run([sys.executable, "-m", "stack", "seed-training-table"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "set AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE" in done.stderr


def test_airflow_connection_id_gives_the_hive_hook_and_dialect(warehouse_conn):
    from airflow.providers.apache.hive.hooks.hive import HiveServer2Hook
    from airflow.sdk import BaseHook

    hook = BaseHook.get_connection(warehouse_conn).get_hook()
    assert isinstance(hook, HiveServer2Hook)
    assert hook.hiveserver2_conn_id == warehouse_conn
    assert isinstance(dialect_for(hook), HiveDialect)
    assert hook.get_records("SELECT 1") == [(1,)]


def test_binding_is_pyformat_with_hardened_escaping():
    """No server: what reaches the wire for awkward values."""
    assert bind("x = %(v)s", {"v": "a'b\\c\nd"}) == "x = 'a\\'b\\\\c\\nd'"
    assert bind("x = %s", ("${hiveconf:x}",)) == "x = '\\u0024{hiveconf:x}'"
    assert bind("%s, %s, %s, %s", (None, True, 3, 0.1)) == "NULL, 1, 3, 0.1e0"
    with pytest.raises(ValueError):
        bind("%s", (float("nan"),))


def test_promotions_append_and_read_back_on_hive(hive_hook):
    """model_promotions on HiveServer2: created if absent (Parquet, unpartitioned), one
    INSERT INTO per promotion, awkward text and a NULL score read back equal to the contract."""
    from datetime import datetime, timedelta, timezone

    from factory_tasks.core.contracts import Promotion
    from factory_tasks.warehouse.promotions import (
        PROMOTIONS_TABLE,
        latest_promotion,
        load_promotions,
        promote,
    )

    summary = pd.DataFrame([
        {"factory_run_id": "hive_run", "experiment_id": f"{i:016x}", "family": "random_forest",
         "estimator": "RandomForestClassifier", "status": "succeeded", "error": None,
         "ranking_metric": "roc_auc", "ranking_score": None if i == 2 else 0.5 + i / 10}
        for i in range(3)
    ]).reindex(columns=list(OUTCOME_COLUMN_NAMES))
    before = load_promotions(hive_hook)
    assert before.problems == []
    now = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    reasons = [NASTY[0], NASTY[7], NASTY[6] + "\n" + NASTY[8]]  # quotes; ${...} and $; unicode, newline, %
    made = [promote(summary, f"{i:016x}", "hive_run", "reviewer-é", reason, hive_hook, now + timedelta(minutes=i))
            for i, reason in enumerate(reasons)]
    log = load_promotions(hive_hook)
    assert log.problems == []
    assert [p for p in log.promotions if p.factory_run_id == "hive_run"] == made
    assert made[2].ranking_score is None and all(isinstance(p, Promotion) for p in made)
    assert latest_promotion(hive_hook, "hive_run") == made[-1]
    described = query(hive_hook, f"DESCRIBE FORMATTED {PROMOTIONS_TABLE}")
    text = "\n".join(" ".join(str(v) for v in row) for row in described).lower()
    assert "parquet" in text and "# partition information" not in text


def test_a_contract_table_of_an_older_version_gains_new_optional_columns_on_hive(hive_hook, unique_table):
    """ALTER TABLE … ADD COLUMNS on HiveServer2: the old row reads the new field's default, the
    new row round-trips it."""
    from factory_tasks.core.contracts import DeploymentRecord, PairedDifference
    from factory_tasks.warehouse.contract_table import ContractTable
    from factory_tasks.warehouse.dialects import dialect_for

    table = ContractTable(DeploymentRecord, unique_table)
    record = dict(
        model_version="v1", model_name="next-best-offer", model_id="m1", build_id="b1", deployment_id="d1",
        access_key_ref="CML model m1", artifact_path="models/v1/model.skops",
        metadata_path="models/v1/model.metadata.json", experiment_id="0123456789abcdef",
        factory_run_id="manual__1", grid_hash="g", data_snapshot_hash="h", code_version="0.1.0+x",
        chosen_by="automatic", choice_reason="best", gate_reason="first deployment", gate_override=False,
        deployed_at="2026-12-01T10:00:00+00:00")
    old_columns = [c for c in table.columns if c.name != "gate_evidence"]
    dialect_for(hive_hook).create_table(hive_hook, unique_table, old_columns)
    dumped = DeploymentRecord(**record).model_dump(mode="json")
    dialect_for(hive_hook).append_rows(hive_hook, unique_table, old_columns, [tuple(
        json.dumps(dumped[c.name]) if c.name in ("replaced_deployment_ids", "gate_override") else dumped[c.name]
        for c in old_columns)])
    evidence = [PairedDifference(measure="roc_auc", source="holdout", challenger=0.66, champion=0.65,
                                 difference=0.01, low=-0.002, high=0.021, n_rows=800, method="paired bootstrap")]
    table.append(hive_hook, DeploymentRecord(**{**record, "model_version": "v2", "gate_evidence": evidence}))
    rows = sorted(table.read_all(hive_hook), key=lambda r: r.model_version)
    assert [r.gate_evidence for r in rows] == [[], evidence]
