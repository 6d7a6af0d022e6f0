"""Durable promotion records: a reviewer's pick of the experiment to deploy for a factory run.

Records are JSON lines appended to one file (``settings.promotions_path()``). Writers take an
exclusive ``flock`` on the file, write one whole line and fsync it, so concurrent reviewers
never interleave. The file is append-only: the latest line for a factory run is the decision.
A line that is not a valid record is reported (:class:`CorruptPromotionsError`, or in
:attr:`PromotionLog.problems`), never silently skipped.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd


class PromotionRefused(ValueError):
    """A promotion request that breaks a rule; the message says which, for the reviewer."""


class CorruptPromotionsError(Exception):
    """The promotions file holds lines that are not valid promotion records."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        super().__init__(f"{path}: {len(problems)} corrupt promotion record(s): {shown}")


@dataclass(frozen=True)
class Promotion:
    experiment_id: str
    factory_run_id: str
    reviewer: str
    reason: str
    promoted_at: str  # ISO 8601, UTC
    family: str
    estimator: str
    ranking_metric: str
    ranking_score: float | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> "Promotion":
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - data.keys())
        if missing:
            raise ValueError(f"missing fields: {', '.join(missing)}")
        for name in names - {"ranking_score"}:
            if not isinstance(data[name], str) or not data[name]:
                raise ValueError(f"field {name!r} must be a non-empty string")
        score = data["ranking_score"]
        if score is not None and not isinstance(score, (int, float)):
            raise ValueError("field 'ranking_score' must be a number or null")
        datetime.fromisoformat(data["promoted_at"])
        return cls(**{n: data[n] for n in names})


@dataclass(frozen=True)
class PromotionLog:
    promotions: list[Promotion]
    problems: list[str]  # "line N: what is wrong"


def _text(value: object) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def promote(
    summary_frame: pd.DataFrame,
    experiment_id: str,
    factory_run_id: str | None,
    reviewer: str,
    reason: str,
    path: str | os.PathLike[str],
    now: datetime,
) -> Promotion:
    """Record that ``reviewer`` picked ``experiment_id`` of ``factory_run_id`` for deployment.

    ``factory_run_id`` may be None when the experiment appears in exactly one factory run.
    Raises :class:`PromotionRefused` for an empty reviewer or reason, an unknown experiment,
    an ambiguous one, or one that did not succeed.
    """
    reviewer = (reviewer or "").strip()
    reason = (reason or "").strip()
    if not reviewer:
        raise PromotionRefused("A promotion needs the reviewer's name.")
    if not reason:
        raise PromotionRefused("A promotion needs a reason (why this experiment?).")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    rows = summary_frame[summary_frame["experiment_id"] == experiment_id]
    if factory_run_id is not None:
        rows = rows[rows["factory_run_id"] == factory_run_id]
    if rows.empty:
        where = f" in factory run {factory_run_id}" if factory_run_id is not None else ""
        raise PromotionRefused(f"Experiment {experiment_id}{where} is not in the summary.")
    if len(rows) > 1:
        runs = sorted(rows["factory_run_id"].astype(str).unique())
        raise PromotionRefused(
            f"Experiment {experiment_id} appears in several factory runs ({', '.join(runs)}); "
            f"say which one."
        )
    row = rows.iloc[0]
    status = _text(row["status"])
    if status != "succeeded":
        error = _text(row.get("error"))
        raise PromotionRefused(
            f"Experiment {experiment_id} {status or 'has no status'} and cannot be promoted"
            + (f" (error: {error})." if error else ".")
        )
    score = row["ranking_score"]
    promotion = Promotion(
        experiment_id=str(experiment_id),
        factory_run_id=str(row["factory_run_id"]),
        reviewer=reviewer,
        reason=reason,
        promoted_at=now.astimezone(timezone.utc).isoformat(),
        family=str(row["family"]),
        estimator=str(row["estimator"]),
        ranking_metric=str(row["ranking_metric"]),
        ranking_score=None if pd.isna(score) else float(score),
    )
    _append(Path(path), promotion.to_json())
    return promotion


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # A previous writer that crashed mid-line must not glue its fragment to ours.
            size = os.fstat(fd).st_size
            prefix = b""
            if size:
                with open(path, "rb") as reader:
                    reader.seek(size - 1)
                    if reader.read(1) != b"\n":
                        prefix = b"\n"
            os.write(fd, prefix + line.encode("utf-8") + b"\n")
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_promotions(path: str | os.PathLike[str]) -> PromotionLog:
    """Every record in file order, plus a description of each corrupt line. Missing file: empty."""
    path = Path(path)
    promotions: list[Promotion] = []
    problems: list[str] = []
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return PromotionLog([], [])
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw_lines = handle.read().split(b"\n")
    finally:
        os.close(fd)
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            promotions.append(Promotion.from_json(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, TypeError) as exc:
            problems.append(f"line {number}: {exc}")
    return PromotionLog(promotions, problems)


def latest_promotion(
    path: str | os.PathLike[str], factory_run_id: str | None = None
) -> Promotion | None:
    """The most recent promotion (of one factory run, if given), or None if there is none.

    Raises :class:`CorruptPromotionsError` if any line is corrupt: a deploy must not act on a
    log it cannot fully read.
    """
    log = load_promotions(path)
    if log.problems:
        raise CorruptPromotionsError(Path(path), log.problems)
    matching = [
        p for p in log.promotions if factory_run_id is None or p.factory_run_id == factory_run_id
    ]
    return matching[-1] if matching else None
