"""The state store: one SQLite file (``<root>/workspace.db``) of JSON documents.

Each resource kind (``projects``, ``jobs``, ``runs``, ``models``, ``builds``, ``deployments``)
is a table of documents with a few indexed columns (``project_id``, ``parent_id``,
``status``) and the document itself as JSON. Documents are plain dicts: keys starting with
``_`` are internal (process ids, exit codes, ...) and never leave the server.

One connection guarded by a lock: the API thread pool and the run scheduler both use it;
every read-modify-write (:meth:`Store.update`) is atomic.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Doc = dict[str, Any]

#: Resource kinds and the document keys copied into indexed columns.
KINDS = ("projects", "jobs", "runs", "models", "builds", "deployments")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {kind} (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    project_id TEXT,
    parent_id  TEXT,
    status     TEXT,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS {kind}_scope ON {kind} (project_id, parent_id);
CREATE INDEX IF NOT EXISTS {kind}_status ON {kind} (status);
"""


class Store:
    """Documents by kind. ``parent_key`` names the document field used as ``parent_id``."""

    PARENT_KEYS = {"projects": None, "jobs": None, "runs": "job_id", "models": None, "builds": "model_id",
                   "deployments": "build_id"}

    def __init__(self, path: Path, kinds: Iterable[str] = KINDS):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self.kinds = tuple(kinds)
        with self._lock:
            for kind in self.kinds:
                self._conn.executescript(_SCHEMA.format(kind=kind))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- helpers ---------------------------------------------------------------------------
    def _check(self, kind: str) -> None:
        if kind not in self.kinds:
            raise KeyError(f"unknown kind {kind!r}")

    def _columns(self, kind: str, doc: Doc) -> tuple[Any, Any, Any]:
        parent_key = self.PARENT_KEYS.get(kind)
        return doc.get("project_id"), doc.get(parent_key) if parent_key else None, doc.get("status")

    # -- API -------------------------------------------------------------------------------
    def insert(self, kind: str, doc: Doc) -> Doc:
        self._check(kind)
        project_id, parent_id, status = self._columns(kind, doc)
        with self._lock:
            self._conn.execute(
                f"INSERT INTO {kind} (id, project_id, parent_id, status, data) VALUES (?,?,?,?,?)",
                (doc["id"], project_id, parent_id, status, json.dumps(doc)),
            )
        return doc

    def get(self, kind: str, doc_id: str) -> Doc | None:
        self._check(kind)
        with self._lock:
            row = self._conn.execute(f"SELECT data FROM {kind} WHERE id = ?", (doc_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def list(
        self,
        kind: str,
        *,
        project_id: str | None = None,
        parent_id: str | None = None,
        statuses: Iterable[str] | None = None,
    ) -> list[Doc]:
        """Documents in insertion order, optionally scoped and filtered by status."""
        self._check(kind)
        clauses, params = _scope(project_id, parent_id)
        if statuses is not None:
            statuses = list(statuses)
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._conn.execute(f"SELECT data FROM {kind}{where} ORDER BY seq", params).fetchall()
        return [json.loads(row[0]) for row in rows]

    def update(self, kind: str, doc_id: str, change: Callable[[Doc], Doc | None] | Doc) -> Doc | None:
        """Atomically apply ``change`` (a dict to merge, or a function editing the document
        in place / returning a new one). Returns the new document, None if it is gone."""
        self._check(kind)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(f"SELECT data FROM {kind} WHERE id = ?", (doc_id,)).fetchone()
                if row is None:
                    self._conn.execute("ROLLBACK")
                    return None
                doc = json.loads(row[0])
                if callable(change):
                    doc = change(doc) or doc
                else:
                    doc.update(change)
                project_id, parent_id, status = self._columns(kind, doc)
                self._conn.execute(
                    f"UPDATE {kind} SET project_id=?, parent_id=?, status=?, data=? WHERE id=?",
                    (project_id, parent_id, status, json.dumps(doc), doc_id),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return doc

    def delete(self, kind: str, doc_id: str) -> bool:
        self._check(kind)
        with self._lock:
            cur = self._conn.execute(f"DELETE FROM {kind} WHERE id = ?", (doc_id,))
        return cur.rowcount > 0

    def delete_where(self, kind: str, *, project_id: str | None = None, parent_id: str | None = None) -> int:
        self._check(kind)
        clauses, params = _scope(project_id, parent_id)
        if not clauses:
            raise ValueError("refusing to delete a whole table")
        with self._lock:
            cur = self._conn.execute(f"DELETE FROM {kind} WHERE {' AND '.join(clauses)}", params)
        return cur.rowcount


def _scope(project_id: str | None, parent_id: str | None) -> tuple[list[str], list[str]]:
    """WHERE clauses and parameters limiting a query to a project and/or a parent document."""
    clauses, params = [], []
    if project_id is not None:
        clauses.append("project_id = ?")
        params.append(project_id)
    if parent_id is not None:
        clauses.append("parent_id = ?")
        params.append(parent_id)
    return clauses, params
