"""Reading the training table (and the closed loop's interactions table) on a real SQLite file
through Airflow's SqliteHook, and the snapshot made of them.

One negative test per rule: each asserts that the TrainingDataError names the table and what
is wrong with it.
"""

from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from airflow.providers.sqlite.hooks.sqlite import SqliteHook

from factory_tasks.core.schema import (
    FEATURE_COLUMNS,
    HISTORY_PROPENSITY,
    INTERACTION_COLUMNS,
    PREDICTION_UUID_COLUMN,
    PROPENSITY_COLUMN,
    TRAINING_TABLE,
    TrainingDataError,
)
from factory_tasks.loop.history import ensure_training_table
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.stages.model_factory import snapshot_to_project
from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA
from factory_tasks.warehouse.sqlite import SqliteDialect
from factory_tasks.warehouse.training_data import (
    INTERACTION_SCHEMA,
    content_hash,
    read_training_frame,
    snapshot_parquet,
    training_frame,
)


def create(hook, table: str, frame, columns=INTERACTION_SCHEMA) -> None:
    dialect = SqliteDialect()
    dialect.create_table(hook, table, columns)
    names = [c.name for c in columns]
    dialect.append_rows(hook, table, columns, frame[names].itertuples(index=False, name=None))


def error_of(hook, table: str = TRAINING_TABLE) -> str:
    with pytest.raises(TrainingDataError) as info:
        read_training_frame(hook, table)
    message = str(info.value)
    assert repr(table) in message or f"table {table}" in message  # names the table
    return message


def test_reads_the_table_in_the_interaction_schema(hook):
    assert ensure_training_table(hook, n_rows=200, seed=1)
    frame = read_training_frame(hook)
    assert list(frame.columns) == list(INTERACTION_COLUMNS) and len(frame) == 200


def test_missing_table(hook):
    assert "does not exist in the warehouse" in error_of(hook, "no_such_table")


def test_missing_column_names_the_column_and_the_expected_schema(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2),
           [c for c in INTERACTION_SCHEMA if c.name != "channel"])
    message = error_of(hook)
    assert f"training table {TRAINING_TABLE!r} lacks column(s) channel " in message
    assert "(it has recency, history," in message
    assert "expected schema: recency bigint, history double," in message and "conversion bigint" in message


def test_several_missing_columns_are_named_together(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2),
           [c for c in INTERACTION_SCHEMA if c.name not in ("offer", "zip_code")])
    assert "lacks column(s) zip_code, offer " in error_of(hook)


def test_column_names_compare_case_insensitively(hook):
    conn = hook.get_conn()
    with conn:
        conn.execute(f"CREATE TABLE {TRAINING_TABLE} (RECENCY INTEGER)")
    conn.close()
    assert "lacks column(s) history, used_discount," in error_of(hook)  # RECENCY is recency


def test_other_database_errors_become_training_data_errors_naming_the_table(hook, monkeypatch):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2))

    def locked(self, *args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqliteDialect, "select", locked)
    with pytest.raises(TrainingDataError) as info:
        read_training_frame(hook)
    assert str(info.value) == (f"training table {TRAINING_TABLE!r}: could not read it: "
                               "OperationalError: database is locked")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


def test_an_unreadable_database_file_is_a_training_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE",
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}),
    )
    (tmp_path / "warehouse.db").write_bytes(b"this is not a database" * 100)
    message = error_of(SqliteHook(sqlite_conn_id="model_factory_warehouse"))
    assert ("could not read it: WarehouseError: sqlite connection 'model_factory_warehouse': could not look up "
            f"table {TRAINING_TABLE}: DatabaseError: file is not a database") in message


def test_a_table_name_that_is_not_an_identifier(hook):
    assert "is not a valid SQL identifier" in error_of(hook, "interactions; DROP TABLE x")


def test_an_empty_table(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2).iloc[:0])
    assert "the table has no rows" in error_of(hook)


def test_text_in_a_numeric_column_is_a_schema_error(hook):
    frame = simulate_interactions(50, seed=2)
    typed = [c if c.name != "history" else type(c)("history", "string") for c in INTERACTION_SCHEMA]
    create(hook, TRAINING_TABLE, frame.assign(history="a lot"), typed)
    assert "history must be numeric" in error_of(hook)


def test_missing_values_are_a_schema_error(hook):
    frame = simulate_interactions(50, seed=2)
    create(hook, TRAINING_TABLE, frame.assign(history=np.where(frame.index == 3, np.nan, frame["history"])))
    assert "history has 1 missing value(s)" in error_of(hook)


def test_a_single_class_target_is_refused(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(50, seed=2).assign(conversion=0))
    assert "'conversion' has a single class" in error_of(hook)


# --------------------------------------------------------------------------------------------
# History plus the closed loop's matured interactions (the grid's data.interactions_table)

#: the content hash of simulate_interactions(300, seed=7)'s snapshot before interactions existed
#: (re-pinned when the simulator's ground truth became non-linear: its conversions changed):
#: a run without interactions must keep it (the same experiment ids, so reuse keeps working)
HISTORY_ONLY_HASH = "aad37cd2a6898e36df3f7c55ef82240d3faedd8847944387cdf16f45c4f2c764"


class FakeProject:
    """The CML hook's project-file calls."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def file_exists(self, path: str) -> bool:
        return path in self.files

    def upload_file(self, path: str, data: bytes, overwrite: bool = False) -> str:
        self.files[path] = data
        return path


def interactions(n: int, seed: int, eps: float = 0.1):
    """Matured ε-greedy decisions in the customer_interactions schema."""
    frame = simulate_interactions(n, seed=seed)
    rng = np.random.default_rng(seed)
    explored = rng.random(n) < eps
    return frame.assign(
        propensity=np.where(explored, eps / 3, 1 - eps + eps / 3),
        prediction_uuid=[f"uuid-{seed}-{i}" for i in range(n)],
        decided_at_ms=np.arange(n, dtype=np.int64) * 1000,
        window_start="2026-12-01T06:00:00Z",
    )


def history_snapshot(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    project = FakeProject()
    return snapshot_to_project(hook, project, TRAINING_TABLE), project


def test_without_interactions_the_snapshot_is_what_it_always_was(hook):
    ref, project = history_snapshot(hook)
    assert ref["hash"] == HISTORY_ONLY_HASH and ref["n_rows"] == 300
    assert ref["project_path"] == f"snapshots/{TRAINING_TABLE}-{HISTORY_ONLY_HASH[:16]}.parquet"
    assert (ref["interactions_table"], ref["interaction_rows"]) == (None, 0)
    # byte for byte the snapshot of the history frame, with no propensity column
    _, data = snapshot_parquet(read_training_frame(hook))
    assert project.files == {ref["project_path"]: data}
    assert PROPENSITY_COLUMN not in pd.read_parquet(io.BytesIO(data)).columns


def test_with_interactions_the_snapshot_holds_history_and_matured_rows_with_their_propensity(hook):
    history, _ = history_snapshot(hook)
    logged = interactions(120, seed=8)
    create(hook, CUSTOMER_INTERACTIONS, logged, CUSTOMER_INTERACTIONS_SCHEMA)
    project = FakeProject()
    ref = snapshot_to_project(hook, project, TRAINING_TABLE, interactions_table=CUSTOMER_INTERACTIONS)
    assert (ref["n_rows"], ref["interaction_rows"], ref["interactions_table"]) == (420, 120, CUSTOMER_INTERACTIONS)
    assert ref["hash"] != history["hash"]
    assert ref["project_path"] == f"snapshots/{TRAINING_TABLE}-and-{CUSTOMER_INTERACTIONS}-{ref['hash'][:16]}.parquet"
    snap = pd.read_parquet(io.BytesIO(project.files[ref["project_path"]]))
    # the decision's uuid rides along; no other lineage column (decided_at_ms, window_start)
    assert list(snap.columns) == [*INTERACTION_COLUMNS, PROPENSITY_COLUMN, PREDICTION_UUID_COLUMN]
    assert content_hash(snap) == ref["hash"]
    # the history first (propensity 1/3, no uuid), then the interactions with their logged propensity
    pd.testing.assert_frame_equal(snap.iloc[:300].drop(columns=[PROPENSITY_COLUMN, PREDICTION_UUID_COLUMN]),
                                  read_training_frame(hook))
    assert (snap[PROPENSITY_COLUMN].iloc[:300] == HISTORY_PROPENSITY).all()
    mine = snap.iloc[300:].reset_index(drop=True)
    expected = (logged[list(mine.columns)].astype(mine.dtypes.to_dict())
                .sort_values(list(mine.columns), kind="mergesort").reset_index(drop=True))
    pd.testing.assert_frame_equal(mine, expected)


def test_the_interactions_snapshot_does_not_depend_on_the_read_order(hook, tmp_path):
    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    logged = interactions(80, seed=9)
    twins = list(INTERACTION_COLUMNS) + [PROPENSITY_COLUMN]
    logged.loc[[5, 6, 7], twins] = logged.loc[[4, 4, 4], twins].to_numpy()  # the same row but for the uuid
    create(hook, CUSTOMER_INTERACTIONS, logged, CUSTOMER_INTERACTIONS_SCHEMA)
    create(hook, "shuffled", logged.sample(frac=1.0, random_state=1), CUSTOMER_INTERACTIONS_SCHEMA)
    assert content_hash(training_frame(hook, TRAINING_TABLE, CUSTOMER_INTERACTIONS)[0]) == content_hash(
        training_frame(hook, TRAINING_TABLE, "shuffled")[0])


@pytest.mark.parametrize("empty", [False, True], ids=["missing", "empty"])
def test_a_missing_or_empty_interactions_table_gives_the_history_only_snapshot(hook, caplog, empty):
    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    if empty:
        create(hook, CUSTOMER_INTERACTIONS, interactions(10, seed=8).iloc[:0], CUSTOMER_INTERACTIONS_SCHEMA)
    with caplog.at_level("WARNING"):
        ref = snapshot_to_project(hook, FakeProject(), TRAINING_TABLE, interactions_table=CUSTOMER_INTERACTIONS)
    assert ref["hash"] == HISTORY_ONLY_HASH and ref["interaction_rows"] == 0 and ref["interactions_table"] is None
    said = caplog.text
    assert f"interactions table {CUSTOMER_INTERACTIONS!r} {'has no rows' if empty else 'does not exist'}" in said
    assert f"trains on {TRAINING_TABLE} only" in said


def interactions_error(hook, frame, columns=CUSTOMER_INTERACTIONS_SCHEMA) -> str:
    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    create(hook, CUSTOMER_INTERACTIONS, frame, columns)
    project = FakeProject()
    with pytest.raises(TrainingDataError) as info:
        snapshot_to_project(hook, project, TRAINING_TABLE, interactions_table=CUSTOMER_INTERACTIONS)
    assert project.files == {}  # nothing recorded
    message = str(info.value)
    assert message.startswith(f"interactions table {CUSTOMER_INTERACTIONS!r}")
    return message


@pytest.mark.parametrize("column", ["propensity", "channel", "conversion", "prediction_uuid"])
def test_an_interactions_table_lacking_a_column_names_the_table_and_the_column(hook, column):
    message = interactions_error(hook, interactions(20, seed=8),
                                 [c for c in CUSTOMER_INTERACTIONS_SCHEMA if c.name != column])
    assert f"lacks column(s) {column} " in message and "expected schema: recency bigint," in message
    assert "propensity double" in message


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.5, np.nan])
def test_a_propensity_outside_zero_one_names_the_table_and_the_column(hook, bad):
    frame = interactions(20, seed=8)
    frame.loc[3, "propensity"] = bad
    message = interactions_error(hook, frame)
    assert "column 'propensity' must lie in (0, 1]" in message and "1 row(s) do not" in message


def test_a_propensity_of_one_is_valid(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    create(hook, CUSTOMER_INTERACTIONS, interactions(20, seed=8).assign(propensity=1.0), CUSTOMER_INTERACTIONS_SCHEMA)
    frame, n = training_frame(hook, TRAINING_TABLE, CUSTOMER_INTERACTIONS)
    assert n == 20 and (frame[PROPENSITY_COLUMN].iloc[300:] == 1.0).all()


def test_a_bad_interaction_row_names_the_table(hook):
    message = interactions_error(hook, interactions(20, seed=8).assign(offer="Free Lunch"))
    assert "offer has unknown value(s) ['Free Lunch']" in message


def test_each_interaction_row_names_its_decision_and_the_uuid_is_never_a_feature(hook, tmp_path):
    from factory_tasks.jobs.experiment import read_snapshot
    from factory_tasks.training.features import feature_frame

    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    logged = interactions(60, seed=10)
    create(hook, CUSTOMER_INTERACTIONS, logged, CUSTOMER_INTERACTIONS_SCHEMA)
    project = FakeProject()
    ref = snapshot_to_project(hook, project, TRAINING_TABLE, interactions_table=CUSTOMER_INTERACTIONS)
    (tmp_path / "snap.parquet").write_bytes(project.files[ref["project_path"]])
    snap = read_snapshot(tmp_path / "snap.parquet", ref["hash"])  # what the experiment and retrain jobs get
    assert list(snap.columns) == [*INTERACTION_COLUMNS, PROPENSITY_COLUMN, PREDICTION_UUID_COLUMN]
    uuids = snap[PREDICTION_UUID_COLUMN]
    assert uuids.iloc[:300].isna().all()  # history rows: null, not "None" or ""
    mine = snap.iloc[300:]
    assert mine[PREDICTION_UUID_COLUMN].notna().all() and sorted(mine[PREDICTION_UUID_COLUMN]) == sorted(
        logged["prediction_uuid"])
    # each uuid sits on its own decision's row
    by_uuid = logged.set_index("prediction_uuid")
    for uuid, row in mine.set_index(PREDICTION_UUID_COLUMN).iterrows():
        assert row[list(INTERACTION_COLUMNS)].tolist() == by_uuid.loc[uuid, list(INTERACTION_COLUMNS)].tolist()
        assert row[PROPENSITY_COLUMN] == pytest.approx(by_uuid.loc[uuid, "propensity"])
    assert list(feature_frame(snap).columns) == list(FEATURE_COLUMNS)


@pytest.mark.parametrize("bad", [None, ""], ids=["missing", "empty"])
def test_an_interaction_row_without_a_uuid_names_the_table_and_the_column(hook, bad):
    frame = interactions(20, seed=8).astype({"prediction_uuid": object})
    frame.loc[3, "prediction_uuid"] = bad
    message = interactions_error(hook, frame)
    assert f"column 'prediction_uuid' has 1 {'missing' if bad is None else 'empty'} value(s)" in message


def test_a_snapshot_written_before_the_uuid_column_still_reads_and_hashes_as_it_did(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    create(hook, CUSTOMER_INTERACTIONS, interactions(40, seed=8), CUSTOMER_INTERACTIONS_SCHEMA)
    frame, n = training_frame(hook, TRAINING_TABLE, CUSTOMER_INTERACTIONS)
    old = frame.drop(columns=PREDICTION_UUID_COLUMN)
    ref, data = snapshot_parquet(old, interactions_table=CUSTOMER_INTERACTIONS, interaction_rows=n)
    read = pd.read_parquet(io.BytesIO(data))
    assert list(read.columns) == [*INTERACTION_COLUMNS, PROPENSITY_COLUMN] and content_hash(read) == ref.hash
    assert content_hash(frame) != ref.hash  # the uuid is part of the content


def test_the_uuid_column_belongs_to_the_interaction_rows_only(hook):
    create(hook, TRAINING_TABLE, simulate_interactions(300, seed=7))
    create(hook, CUSTOMER_INTERACTIONS, interactions(40, seed=8), CUSTOMER_INTERACTIONS_SCHEMA)
    frame, n = training_frame(hook, TRAINING_TABLE, CUSTOMER_INTERACTIONS)
    with pytest.raises(ValueError, match="names 41 row.* 40 interaction row"):
        snapshot_parquet(frame.assign(**{PREDICTION_UUID_COLUMN: frame[PREDICTION_UUID_COLUMN].fillna("x", limit=1)}),
                         interactions_table=CUSTOMER_INTERACTIONS, interaction_rows=n)
    history = read_training_frame(hook)
    with pytest.raises(ValueError, match="only a snapshot with interaction rows has the 'prediction_uuid' column"):
        snapshot_parquet(history.assign(**{PREDICTION_UUID_COLUMN: None}))
    with pytest.raises(TrainingDataError, match="'prediction_uuid' must hold text"):
        snapshot_parquet(frame.assign(**{PREDICTION_UUID_COLUMN: 7}), interactions_table=CUSTOMER_INTERACTIONS,
                         interaction_rows=n)
