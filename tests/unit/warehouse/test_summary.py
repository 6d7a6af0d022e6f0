"""factory_tasks.warehouse.summary: build, atomic write, strict read (a torn file is corrupt, naming the
line), object storage locations, refresh from a real SQLite store."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.warehouse.outcomes import OutcomeStore
from factory_tasks.warehouse.summary import (
    SUMMARY_COLUMN_NAMES,
    SUMMARY_DTYPES,
    SummaryError,
    build_summary,
    read_summary,
    refresh_summary,
    summary_version,
    write_summary,
)
from tests.sqlite_warehouse import SqliteWarehouse


def _row(run: str, recorded_at: str, experiment_id: str, score: float | None, metric: str = "roc_auc",
         **values) -> dict:
    """One outcome row with every column of the table (None where a test does not care)."""
    row = dict.fromkeys(OUTCOME_COLUMN_NAMES)
    row.update(factory_run_id=run, experiment_id=experiment_id, family="random_forest",
               estimator="RandomForestClassifier", params_json=json.dumps({"n_estimators": 100}),
               status="succeeded" if score is not None else "failed", cv_folds=3, ranking_metric=metric,
               ranking_score=score, recorded_at=recorded_at, artifact_path="experiments/x/model.skops",
               started_at="2026-03-01T00:00:00+00:00", finished_at="2026-03-01T00:01:00+00:00")
    if score is not None:
        row[f"{metric}_mean"], row[f"{metric}_std"] = score, 0.01
        row[f"{metric}_folds"] = json.dumps([score - 0.01, score, score + 0.01])
    row.update(values)
    return row


def _rows():
    a, b = "2026-03-01T10:00:00+00:00", "2026-03-02T10:00:00+00:00"
    return [
        _row("run_b", b, "b0", 0.70),
        _row("run_a", a, "a1", 0.60),
        _row("run_a", a, "a2", 0.80),
        _row("run_a", a, "a3", None, error="the job run ended failed and left no result file",
             run_status="failed"),
        _row("run_a", a, "a4", 0.30, metric="log_loss"),
        _row("run_a", a, "a5", 0.20, metric="log_loss"),
    ]


def test_build_summary_has_documented_columns_dtypes_and_stable_order():
    frame = build_summary(pd.DataFrame(_rows(), columns=list(OUTCOME_COLUMN_NAMES)))
    assert tuple(frame.columns) == SUMMARY_COLUMN_NAMES
    assert {c: str(frame[c].dtype) for c in frame.columns} == {
        c: ("string" if d == "string" else d) for c, d in SUMMARY_DTYPES.items()
    }
    # Oldest recorded first; within a run the best first (log_loss: lower is better); failed last.
    assert list(frame["experiment_id"]) == ["a2", "a1", "a5", "a4", "a3", "b0"]
    run_a = frame[frame["factory_run_id"] == "run_a"]
    assert run_a["experiment_id"].iloc[-1] == "a3"  # no score: last
    assert list(run_a[run_a["ranking_metric"] == "log_loss"]["experiment_id"]) == ["a5", "a4"]
    assert frame["experiment_id"].iloc[-1] == "b0"
    # Same input in another order gives the same output.
    shuffled = pd.DataFrame(list(reversed(_rows())), columns=list(OUTCOME_COLUMN_NAMES))
    pd.testing.assert_frame_equal(build_summary(shuffled), frame)


def test_build_summary_rejects_missing_columns():
    with pytest.raises(ValueError, match="lacks summary columns: status"):
        build_summary(pd.DataFrame(_rows()).drop(columns=["status"]))


def test_write_then_read_round_trips(tmp_path):
    frame = build_summary(pd.DataFrame(_rows(), columns=list(OUTCOME_COLUMN_NAMES)))
    path = tmp_path / "nested" / "experiments_summary.csv"
    write_summary(frame, path)
    back = read_summary(path)
    pd.testing.assert_frame_equal(back, frame)
    assert json.loads(back.loc[back["experiment_id"] == "a2", "roc_auc_folds"].iat[0]) == pytest.approx([0.79, 0.8, 0.81])
    assert back.loc[back["experiment_id"] == "a3", "error"].iat[0].startswith("the job run ended failed")
    assert [p.name for p in path.parent.iterdir()] == ["experiments_summary.csv"]  # no temp left


def test_empty_table_gives_a_valid_csv_with_headers(tmp_path):
    path = tmp_path / "s.csv"
    write_summary(build_summary(pd.DataFrame(columns=list(OUTCOME_COLUMN_NAMES))), path)
    assert path.read_text().strip().split(",") == list(SUMMARY_COLUMN_NAMES)
    back = read_summary(path)
    assert back.empty and tuple(back.columns) == SUMMARY_COLUMN_NAMES


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "s.csv"
    frame = build_summary(pd.DataFrame(_rows(), columns=list(OUTCOME_COLUMN_NAMES)))
    write_summary(frame, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("factory_tasks.core.atomic.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_summary(frame.iloc[:1], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_write_rejects_a_frame_with_other_columns(tmp_path):
    with pytest.raises(ValueError, match="SUMMARY_COLUMNS"):
        write_summary(pd.DataFrame({"a": [1]}), tmp_path / "s.csv")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist yet"),
        ("", "is empty"),
        ("timestamp,classifier,accuracy\n1,2,3\n", "does not have the expected header"),
        (",".join(reversed(SUMMARY_COLUMN_NAMES)) + "\n", "wrong order"),
        (",".join(SUMMARY_COLUMN_NAMES) + "\n" + ",".join(["x"] * len(SUMMARY_COLUMN_NAMES)) + "\n",
         "corrupt at line 2: cv_folds is 'x', not an integer"),
        (",".join(SUMMARY_COLUMN_NAMES) + "\n" + "a,b,c\n" + ",".join(["1"] * (len(SUMMARY_COLUMN_NAMES) + 3)) + "\n",
         f"corrupt at line 2: 3 fields, expected {len(SUMMARY_COLUMN_NAMES)} \\(a short row"),
        (",".join(SUMMARY_COLUMN_NAMES) + "\n" + ",".join(["1"] * (len(SUMMARY_COLUMN_NAMES) + 3)) + "\n",
         f"corrupt at line 2: {len(SUMMARY_COLUMN_NAMES) + 3} fields, expected {len(SUMMARY_COLUMN_NAMES)}"),
        (",".join(SUMMARY_COLUMN_NAMES), "corrupt at line 1: the line has no line break"),
        (b"\xff\xfe".decode("latin-1"), "corrupt at line 1: not UTF-8"),
    ],
    ids=["missing", "empty", "wrong-header", "wrong-order", "bad-number", "ragged", "long-row",
         "header-cut-off", "not-utf8"],
)
def test_read_summary_explains_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "s.csv"
    if content is not None:
        path.write_bytes(content.encode("latin-1" if content.startswith("\xff") else "utf-8"))
    with pytest.raises(SummaryError, match=message) as info:
        read_summary(path)
    assert str(path) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_refresh_summary_reads_the_real_store(tmp_path):
    hook = SqliteWarehouse(tmp_path / "warehouse.db")
    store = OutcomeStore(hook)
    rows = _rows()
    store.replace_run("run_a", [r for r in rows if r["factory_run_id"] == "run_a"])
    store.replace_run("run_b", [r for r in rows if r["factory_run_id"] == "run_b"])
    path = tmp_path / "out" / "experiments_summary.csv"
    assert refresh_summary(hook, path) == 6
    back = read_summary(path)
    assert set(back["experiment_id"]) == {"a1", "a2", "a3", "a4", "a5", "b0"}
    # Idempotent; and an empty warehouse gives a header-only file.
    assert refresh_summary(hook, path) == 6
    empty_hook = SqliteWarehouse(tmp_path / "empty.db")
    assert refresh_summary(empty_hook, path) == 0
    assert read_summary(path).empty


def _summary_bytes(tmp_path) -> tuple[pd.DataFrame, bytes]:
    frame = build_summary(pd.DataFrame(_rows(), columns=list(OUTCOME_COLUMN_NAMES)))
    frame.loc[frame["experiment_id"] == "a3", "error"] = 'Traceback:\n  line "one"\nValueError: two, three'
    path = tmp_path / "whole.csv"
    write_summary(frame, path)
    return frame, path.read_bytes()


def test_a_value_spanning_lines_round_trips(tmp_path):
    frame, data = _summary_bytes(tmp_path)
    assert data.count(b"\n") > len(frame) + 1  # the error text spans lines inside its quotes
    pd.testing.assert_frame_equal(read_summary(tmp_path / "whole.csv"), frame)


def test_a_summary_cut_mid_row_is_corrupt_naming_the_line(tmp_path):
    frame, data = _summary_bytes(tmp_path)
    lines = data.split(b"\n")
    # Cut the 4th data row (file line 5) in half: pandas would fill its missing cells with NaN
    # and show it as a succeeded experiment.
    assert all(len(next(csv.reader([line.decode()]))) == len(SUMMARY_COLUMN_NAMES) for line in lines[1:5])
    cut = len(b"\n".join(lines[:4])) + 1 + len(lines[4]) // 2
    path = tmp_path / "s.csv"
    path.write_bytes(data[:cut])
    with pytest.raises(SummaryError) as info:
        read_summary(path)
    message = str(info.value)
    assert str(path) in message and "corrupt at line 5" in message, message
    assert f"expected {len(SUMMARY_COLUMN_NAMES)}" in message
    assert "truncated" in message


@pytest.mark.parametrize("cut", [1, 5, 30], ids=["last-line-break", "inside-last-value", "last-values"])
def test_a_summary_cut_at_its_end_is_corrupt_even_with_every_field_present(tmp_path, cut):
    frame, data = _summary_bytes(tmp_path)
    path = tmp_path / "s.csv"
    path.write_bytes(data[:-cut])
    last_line = data.count(b"\n")  # every line ends with a line break; the last row is one line
    with pytest.raises(SummaryError, match=f"corrupt at line {last_line}: "):
        read_summary(path)


def test_a_cut_inside_a_quoted_value_and_an_empty_line_are_corrupt(tmp_path):
    frame, data = _summary_bytes(tmp_path)
    path = tmp_path / "s.csv"
    start = data.index(b'"Traceback')
    path.write_bytes(data[: start + 15] + b"\n")
    with pytest.raises(SummaryError, match=r"corrupt at line \d+: unexpected end of data"):
        read_summary(path)
    lines = data.split(b"\n")
    path.write_bytes(b"\n".join([*lines[:3], b"", *lines[3:]]))
    with pytest.raises(SummaryError, match="corrupt at line 4: an empty line"):
        read_summary(path)


def test_a_malformed_value_names_its_line_and_column(tmp_path):
    frame, data = _summary_bytes(tmp_path)
    lines = data.split(b"\n")
    fields = lines[3].split(b",")
    fields[SUMMARY_COLUMN_NAMES.index("cv_folds")] = b"3.5"
    path = tmp_path / "s.csv"
    path.write_bytes(b"\n".join([*lines[:3], b",".join(fields), *lines[4:]]))
    with pytest.raises(SummaryError, match="corrupt at line 4: cv_folds is '3.5', not an integer"):
        read_summary(path)


def test_object_store_location_round_trips_and_versions(tmp_path):
    frame, _ = _summary_bytes(tmp_path)
    url = "memory://mf-test-bucket/model-factory/experiments_summary/experiments_summary.csv"
    assert summary_version(url) is None
    with pytest.raises(SummaryError, match="memory://mf-test-bucket/.* does not exist yet"):
        read_summary(url)
    location = write_summary(frame, url)
    assert str(location) == url
    pd.testing.assert_frame_equal(read_summary(url), frame)
    first = summary_version(url)
    write_summary(frame.iloc[:2], url)
    assert summary_version(url) != first and len(read_summary(url)) == 2
    location.write_bytes(location.read_bytes()[:-3])
    with pytest.raises(SummaryError, match="memory://.*corrupt at line 3"):
        read_summary(url)


def test_file_urls_are_written_atomically_and_versioned(tmp_path):
    frame, _ = _summary_bytes(tmp_path)
    url = f"file://{tmp_path}/store/experiments_summary/experiments_summary.csv"
    write_summary(frame, url)
    local = tmp_path / "store" / "experiments_summary" / "experiments_summary.csv"
    assert [p.name for p in local.parent.iterdir()] == ["experiments_summary.csv"]
    st = local.stat()
    assert summary_version(url) == summary_version(local) == (st.st_mtime_ns, st.st_size)
    pd.testing.assert_frame_equal(read_summary(url), frame)


def test_summary_location_is_under_the_object_store(monkeypatch, tmp_path):
    from factory_tasks.core import settings

    monkeypatch.delenv("MODEL_FACTORY_OBJECT_STORE", raising=False)
    monkeypatch.delenv("MODEL_FACTORY_ARTIFACTS", raising=False)
    assert str(settings.object_store()) == f"file://{settings.REPO_ROOT / 'var' / 'artifacts'}"
    assert str(settings.summary_location()) == (
        f"file://{settings.REPO_ROOT}/var/artifacts/experiments_summary/experiments_summary.csv")
    monkeypatch.setenv("MODEL_FACTORY_ARTIFACTS", str(tmp_path / "a b"))
    assert str(settings.summary_location()) == f"file://{tmp_path}/a b/experiments_summary/experiments_summary.csv"
    monkeypatch.setenv("MODEL_FACTORY_OBJECT_STORE", "s3://bucket/model-factory")
    location = settings.summary_location()
    assert location.protocol == "s3"
    assert str(location) == "s3://bucket/model-factory/experiments_summary/experiments_summary.csv"
