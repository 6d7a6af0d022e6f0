"""Model metrics (what ``cml.metrics_v1`` tracks), in ``<root>/model_metrics.db`` (SQLite).

The hot path never waits for the disk: a replica returns the predictions it recorded with its
answer, the router hands the bytes to :meth:`MetricsStore.buffer`, and a periodic
:meth:`MetricsStore.flush` writes them in one transaction. Every read or update flushes first,
so whatever a model call answered before is visible to ``read_metrics``.

Rows are CML's: ``modelDeploymentCrn``, ``modelBuildCrn``, ``modelCrn``, ``startTimeStampMs``,
``endTimeStampMs``, ``predictionUuid`` (null for aggregate rows) and ``metrics`` (an object).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

from .model_replica import unpack_records

log = logging.getLogger("cml_workspace.model_metrics")

#: (deployment CRN, build CRN, model CRN)
Crns = tuple[str, str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_metrics (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_crn  TEXT NOT NULL,
    build_crn       TEXT NOT NULL,
    model_crn       TEXT NOT NULL,
    prediction_uuid TEXT,
    start_ms        INTEGER NOT NULL,
    end_ms          INTEGER NOT NULL,
    metrics         TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS model_metrics_uuid ON model_metrics (prediction_uuid)
    WHERE prediction_uuid IS NOT NULL;
CREATE INDEX IF NOT EXISTS model_metrics_deployment ON model_metrics (deployment_crn, start_ms);
"""


class UnknownPrediction(KeyError):
    """``track_delayed_metrics`` for a prediction uuid the store has never seen."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MetricsStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._db_lock = threading.Lock()  # the connection; held from taking the buffer to committing it
        self._pending_lock = threading.Lock()
        self._pending: list[tuple[Crns, bytes]] = []

    def close(self) -> None:
        self.flush()
        with self._db_lock:
            self._conn.close()

    # -- writes --------------------------------------------------------------------------------
    def buffer(self, crns: Crns, records: bytes) -> None:
        """Keep a replica's recorded predictions (``model_replica.pack_records``) for the next
        flush (hot path)."""
        with self._pending_lock:
            self._pending.append((crns, records))

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write the buffered predictions; returns how many rows were written."""
        with self._db_lock:
            with self._pending_lock:
                pending, self._pending = self._pending, []
            if not pending:
                return 0
            rows = []
            for crns, blob in pending:
                try:
                    rows.extend((*crns, *record) for record in unpack_records(blob))
                except (struct.error, UnicodeDecodeError):
                    log.warning("dropped unreadable metrics of %s: %.200r", crns[0], blob)
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO model_metrics (deployment_crn, build_crn, model_crn, prediction_uuid,"
                    " start_ms, end_ms, metrics) VALUES (?,?,?,?,?,?,?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return len(rows)

    def track_delayed(self, prediction_uuid: str, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` into that prediction's metrics (later keys win)."""
        self.flush()
        with self._db_lock:
            row = self._conn.execute("SELECT seq, metrics FROM model_metrics WHERE prediction_uuid = ?",
                                     (prediction_uuid,)).fetchone()
            if row is None:
                raise UnknownPrediction(prediction_uuid)
            merged = {**json.loads(row[1]), **metrics}
            self._conn.execute("UPDATE model_metrics SET metrics = ? WHERE seq = ?", (json.dumps(merged), row[0]))

    def track_aggregate(self, crns: Crns, metrics: dict[str, Any], start_ms: int, end_ms: int) -> None:
        with self._db_lock:
            self._conn.execute(
                "INSERT INTO model_metrics (deployment_crn, build_crn, model_crn, prediction_uuid, start_ms,"
                " end_ms, metrics) VALUES (?,?,?,NULL,?,?,?)", (*crns, int(start_ms), int(end_ms), json.dumps(metrics)))

    # -- reads ---------------------------------------------------------------------------------
    def read(
        self,
        *,
        deployment_crn: str | None = None,
        build_crn: str | None = None,
        model_crn: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows inside ``[start_ms, end_ms]`` (default ``[0, now]``), oldest first."""
        self.flush()
        clauses = ["start_ms >= ?", "end_ms <= ?"]
        params: list[Any] = [int(start_ms or 0), int(end_ms if end_ms is not None else now_ms())]
        for column, value in (("deployment_crn", deployment_crn), ("build_crn", build_crn), ("model_crn", model_crn)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT deployment_crn, build_crn, model_crn, prediction_uuid, start_ms, end_ms, metrics"
                f" FROM model_metrics WHERE {' AND '.join(clauses)} ORDER BY start_ms, seq", params).fetchall()
        return [
            {"modelDeploymentCrn": d, "modelBuildCrn": b, "modelCrn": m, "startTimeStampMs": s,
             "endTimeStampMs": e, "predictionUuid": u, "metrics": json.loads(metrics)}
            for d, b, m, u, s, e, metrics in rows
        ]
