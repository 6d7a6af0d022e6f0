"""``experiments_summary.csv``: the outcome table as one flat, ordered, atomically written file.

The summary is what the dashboard reads. It has exactly the columns of the outcome table, in
their documented order (:data:`SUMMARY_COLUMNS`), one row per experiment per factory run. It
lives in object storage, at ``settings.summary_location()``
(``$MODEL_FACTORY_OBJECT_STORE/experiments_summary/experiments_summary.csv``); the functions
here take a URL, a local path or a ``UPath``.

Row order is stable: by ``recorded_at`` (oldest first), then ``factory_run_id``, then the
ranking (best first, taking each row's ranking metric direction into account; rows with no
score last), then ``experiment_id``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import pandas as pd

from factory_tasks.core.atomic import write_atomic
from factory_tasks.core.metrics import METRICS
from factory_tasks.warehouse.outcomes import OUTCOME_COLUMNS, OutcomeStore
from factory_tasks.warehouse.sql import Column

if TYPE_CHECKING:
    from upath import UPath

SUMMARY_COLUMNS: tuple[Column, ...] = OUTCOME_COLUMNS
SUMMARY_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SUMMARY_COLUMNS)

# pandas dtype for each warehouse type; "Int64" keeps integer columns integral with nulls.
_PANDAS_DTYPES = {"string": "string", "double": "float64", "bigint": "Int64"}
SUMMARY_DTYPES: dict[str, str] = {c.name: _PANDAS_DTYPES[c.type] for c in SUMMARY_COLUMNS}


class SummaryError(Exception):
    """The summary file is missing, empty or not a valid summary (the message names the file,
    and for a corrupt file the line)."""


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


SummaryLocation = Union[str, "os.PathLike[str]", "UPath"]


def summary_location(where: SummaryLocation) -> "UPath":
    """``where`` as a UPath: a URL (``s3://...``, ``file:///...``), a local path, or a UPath."""
    from upath import UPath

    return where if isinstance(where, UPath) else UPath(where)


def _local_path(location: "UPath") -> Path | None:
    """The local file behind a ``file://`` (or plain path) location; None for remote stores."""
    from upath.implementations.local import LocalPath

    return Path(location.path) if isinstance(location, LocalPath) else None


def _display(location: "UPath") -> str:
    local = _local_path(location)
    return str(local) if local is not None else str(location)


def summary_version(where: SummaryLocation) -> tuple[int, int] | None:
    """(mtime_ns, size) of the summary object, or None if there is none: changes when it does."""
    location = summary_location(where)
    local = _local_path(location)
    try:
        if local is not None:
            st = local.stat()
            return (st.st_mtime_ns, st.st_size)
        info = location.fs.info(location.path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    # Object stores name the modification time differently (S3: LastModified, GCS: updated,
    # memory: created); an ETag stands in where there is no time at all.
    stamp = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "created")
                  if info.get(k) is not None), None)
    if hasattr(stamp, "timestamp"):
        mtime_ns = int(stamp.timestamp() * 1e9)
    elif isinstance(stamp, (int, float)):
        mtime_ns = int(stamp * 1e9)
    elif info.get("ETag"):
        mtime_ns = int(hashlib.sha256(str(info["ETag"]).encode()).hexdigest()[:15], 16)
    else:
        mtime_ns = 0
    return (mtime_ns, int(info.get("size") or 0))


def summary_csv(frame: pd.DataFrame) -> bytes:
    """The summary file's bytes: a header line, one line per row, every line ends with ``\\n``."""
    if tuple(frame.columns) != SUMMARY_COLUMN_NAMES:
        raise ValueError("summary frame columns differ from SUMMARY_COLUMNS; use build_summary()")
    return frame.to_csv(index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n").encode("utf-8")


def write_summary(frame: pd.DataFrame, where: SummaryLocation) -> "UPath":
    """Write ``frame`` as the summary CSV at ``where`` so readers see the old file or the new one.

    A local (``file://``) location is written with :func:`factory_tasks.core.atomic.write_atomic`
    (temporary file, fsync, rename); a remote object store gets one PUT of the whole object,
    which such stores apply atomically. An empty frame still gives a header line.
    """
    location = summary_location(where)
    payload = summary_csv(frame)
    local = _local_path(location)
    if local is not None:
        write_atomic(local, payload)
    else:
        location.parent.mkdir(parents=True, exist_ok=True)  # a no-op on bucket stores
        location.write_bytes(payload)
    return location


def _corrupt(where: str, line: int, detail: str) -> SummaryError:
    return SummaryError(f"The experiments summary {where} is corrupt at line {line}: {detail}.")


def _check_header(text: str, where: str) -> None:
    try:
        header = next(csv.reader(io.StringIO(text, newline=""), strict=True), [])
    except csv.Error as exc:
        raise SummaryError(f"The experiments summary {where} is not readable CSV: {exc}") from None
    if tuple(header) == SUMMARY_COLUMN_NAMES:
        return
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
        f"The experiments summary {where} does not have the expected header ({'; '.join(detail)})."
    )


_ARROW_TYPES = {"string": "string", "float64": "float64", "Int64": "int64"}


def _read_fast(data: bytes) -> pd.DataFrame:
    """Parse with Arrow's CSV reader: strict about the number of fields in every row and about
    each column's type (raises ``pyarrow.ArrowInvalid``), and fast on 50,000 rows."""
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    table = pa_csv.read_csv(
        io.BytesIO(data),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(
            column_types={n: pa.type_for_alias(_ARROW_TYPES[SUMMARY_DTYPES[n]]) for n in SUMMARY_COLUMN_NAMES},
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True,
        ),
    )
    return _coerce(table.to_pandas())


def _diagnose(text: str, where: str) -> None:
    """Walk the rows with the strict ``csv`` module and raise :class:`SummaryError` naming the
    line of the first problem: a short or long row, an empty line, a torn quote, a value that
    is not of its column's type, a last line without its line break (the file was cut off)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    next(reader)  # the header, already checked
    width = len(SUMMARY_COLUMN_NAMES)
    numeric = [(i, name, SUMMARY_DTYPES[name]) for i, name in enumerate(SUMMARY_COLUMN_NAMES)
               if SUMMARY_DTYPES[name] != "string"]
    start = reader.line_num + 1  # the line the next record starts on (values may span lines)
    last = 1  # the line the last complete record started on (1: the header)
    try:
        for record in reader:
            if len(record) != width:
                what = "an empty line" if not record else f"{len(record)} fields, expected {width}"
                hint = " (a short row: the file may be truncated)" if 0 < len(record) < width else ""
                raise _corrupt(where, start, what + hint)
            for i, name, dtype in numeric:
                value = record[i]
                if not value:
                    continue
                try:
                    number = float(value)
                except ValueError:
                    number = None
                if number is None or (dtype == "Int64" and not number.is_integer()):
                    kind = "an integer" if dtype == "Int64" else "a number"
                    raise _corrupt(where, start, f"{name} is {value!r}, not {kind}")
            last = start
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _corrupt(where, start, f"{exc} (the file may be truncated)") from None
    if not text.endswith("\n"):
        # Every line the writer emits ends with a line break: a row without one was cut off,
        # even where the cut fell inside its last value and left every field in place.
        raise _corrupt(where, last, "the line has no line break: the file was cut off")


def read_summary(where: SummaryLocation) -> pd.DataFrame:
    """Read a summary written by :func:`write_summary`, or raise :class:`SummaryError`.

    The object is fetched once and checked whole: the header, then every row's field count
    and value types, then that the last line ends with a line break. A short, torn or
    malformed row makes the file corrupt (the error names the file and the line); it never
    becomes a row of NaN.
    """
    import pyarrow as pa

    location = summary_location(where)
    shown = _display(location)
    local = _local_path(location)
    try:
        data = local.read_bytes() if local is not None else location.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise SummaryError(
            f"The experiments summary {shown} does not exist yet. It is written by the "
            f"experiments_summary DAG after the first factory run records outcomes."
        ) from None
    except OSError as exc:
        raise SummaryError(f"The experiments summary {shown} could not be read: {exc}") from None
    if not data:
        raise SummaryError(f"The experiments summary {shown} is empty (no header line).")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _corrupt(shown, data[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None
    _check_header(text, shown)
    try:
        frame = _read_fast(data)
    except (pa.ArrowInvalid, ValueError, TypeError) as exc:
        _diagnose(text, shown)  # names the line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SummaryError(f"The experiments summary {shown} could not be parsed: {first}") from None
    if not text.endswith("\n") or "\n\n" in text:
        _diagnose(text, shown)  # a cut-off last line, or empty lines (unless inside quoted values)
    return frame


def refresh_summary(hook: Any, where: SummaryLocation) -> int:
    """Rebuild the summary at ``where`` from the outcome table behind ``hook``; returns the row count."""
    frame = build_summary(OutcomeStore(hook).read())
    write_summary(frame, where)
    return len(frame)
