"""``experiments_summary.csv``: the outcome table as one flat, ordered, atomically written file.

The summary is what the dashboard reads. It has exactly the columns of the outcome table, in
their documented order (:data:`SUMMARY_COLUMNS`), one row per experiment per factory run.

Row order is stable: by ``recorded_at`` (oldest first), then ``factory_run_id``, then the
ranking (best first, taking each row's ranking metric direction into account; rows with no
score last), then ``experiment_id``.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from factory_tasks.metrics import METRICS
from factory_tasks.outcome_store import OUTCOME_COLUMNS, OutcomeStore
from factory_tasks.sql_dialects import Column

SUMMARY_COLUMNS: tuple[Column, ...] = OUTCOME_COLUMNS
SUMMARY_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SUMMARY_COLUMNS)

# pandas dtype for each warehouse type; "Int64" keeps integer columns integral with nulls.
_PANDAS_DTYPES = {"string": "string", "double": "float64", "bigint": "Int64"}
SUMMARY_DTYPES: dict[str, str] = {c.name: _PANDAS_DTYPES[c.type] for c in SUMMARY_COLUMNS}


class SummaryError(Exception):
    """The summary file is missing, empty or not a valid summary."""


def _coerce(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast every summary column to its documented dtype (raises ValueError/TypeError)."""
    out = pd.DataFrame(index=frame.index)
    for name, dtype in SUMMARY_DTYPES.items():
        col = frame[name]
        if dtype == "string":
            out[name] = col.astype("string")
        elif dtype == "float64":
            out[name] = pd.to_numeric(col, errors="raise").astype("float64")
        else:
            numeric = pd.to_numeric(col, errors="raise")
            out[name] = numeric.astype("Int64")
    return out


def rank_key(frame: pd.DataFrame) -> pd.Series:
    """A score where larger is always better (NaN where there is no usable score)."""
    signs = {name: 1.0 if m.greater_is_better else -1.0 for name, m in METRICS.items()}
    sign = frame["ranking_metric"].astype("object").map(signs).astype("float64")
    return pd.to_numeric(frame["ranking_score"], errors="coerce").astype("float64") * sign


def build_summary(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The summary frame: documented columns and dtypes, stable row order, fresh RangeIndex."""
    missing = [c for c in SUMMARY_COLUMN_NAMES if c not in outcomes.columns]
    if missing:
        raise ValueError(f"outcome frame lacks summary columns: {', '.join(missing)}")
    frame = _coerce(outcomes[list(SUMMARY_COLUMN_NAMES)])
    if frame.empty:
        return frame.reset_index(drop=True)
    keyed = frame.assign(
        _recorded=pd.to_datetime(frame["recorded_at"], utc=True, errors="coerce", format="ISO8601"),
        _rank=-rank_key(frame),  # ascending sort puts the best first; NaN goes last
    )
    keyed = keyed.sort_values(
        ["_recorded", "factory_run_id", "_rank", "experiment_id"],
        kind="mergesort",
        na_position="last",
    )
    return keyed.drop(columns=["_recorded", "_rank"]).reset_index(drop=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_summary_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` as CSV so readers see the old file or the new one, never a torn one.

    The data goes to a temporary file in the same directory, is fsynced, then renamed over
    ``path`` with ``os.replace``. An empty frame still gives a header line.
    """
    path = Path(path)
    if tuple(frame.columns) != SUMMARY_COLUMN_NAMES:
        raise ValueError("summary frame columns differ from SUMMARY_COLUMNS; use build_summary()")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            frame.to_csv(handle, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def read_summary(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a summary CSV written by :func:`write_summary_atomic`, or raise :class:`SummaryError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SummaryError(
            f"The experiments summary {path} does not exist yet. It is written by the "
            f"experiments_summary DAG after the first factory run records outcomes."
        ) from None
    if size == 0:
        raise SummaryError(f"The experiments summary {path} is empty (no header line).")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SummaryError(f"The experiments summary {path} is not readable CSV: {exc}") from None
    if tuple(header) != SUMMARY_COLUMN_NAMES:
        missing = [c for c in SUMMARY_COLUMN_NAMES if c not in header]
        extra = [c for c in header if c not in SUMMARY_COLUMN_NAMES]
        detail = []
        if missing:
            detail.append(f"missing columns: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if extra:
            detail.append(f"unexpected columns: {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else ""))
        if not detail:
            detail.append("columns are in the wrong order")
        raise SummaryError(
            f"The experiments summary {path} does not have the expected header ({'; '.join(detail)})."
        )
    try:
        raw = pd.read_csv(
            path,
            dtype=SUMMARY_DTYPES,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
            on_bad_lines="error",
        )
        return _coerce(raw)
    except (ValueError, TypeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SummaryError(f"The experiments summary {path} could not be parsed: {first_line}") from None


def refresh_summary(hook: Any, path: str | os.PathLike[str]) -> int:
    """Rebuild the summary file from the outcome table behind ``hook``; returns the row count."""
    frame = build_summary(OutcomeStore(hook).read())
    write_summary_atomic(frame, path)
    return len(frame)
