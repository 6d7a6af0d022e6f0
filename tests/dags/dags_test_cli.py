"""One DAG run with ``airflow dags test`` (``dag.test()``), for the tests that debug one DAG,
and what became of it, read from the metadata DB.

``dag.test()`` is not the scheduler: it runs one task at a time and every deferral inline,
enforces no pool, and never times out a required action (HITL) — a deploy run under it must
pick its experiment (param ``experiment_id``). What needs the scheduler runs on make up's stack.

The run is found by its logical date, which the test chooses (a DAG has at most one run per
logical date); ``dags test`` names the run after the clock, not after that date.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

AIRFLOW = [sys.executable, "-m", "airflow"]


def dags_test(dag_id: str, conf: dict, env: dict[str, str], log_path: Path, *, timeout_s: float,
              logical_date: datetime | None = None) -> int:
    """Run ``airflow dags test`` in its own process group, its output appended to ``log_path``;
    its exit code. Past ``timeout_s`` the whole group is killed (``dags test`` ignores SIGTERM)
    and the test fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = ["dags", "test", dag_id, *([logical_date.isoformat()] if logical_date else []), "-c", json.dumps(conf)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(AIRFLOW + args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


@dataclass(frozen=True)
class DagRun:
    run_id: str
    state: str
    #: task id -> the states of its instances (one for an unmapped task), in map index order
    tasks: dict[str, list[str | None]]


def _utc(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def dag_run(env: dict[str, str], dag_id: str, logical_date: datetime) -> DagRun | None:
    """The run of ``dag_id`` at ``logical_date`` in the SQLite metadata DB of ``env``, or None."""
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert url.startswith("sqlite:///"), url
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        runs = db.execute("SELECT run_id, state, logical_date FROM dag_run WHERE dag_id = ? AND logical_date IS NOT NULL",
                          (dag_id,)).fetchall()
        found = [(run_id, state) for run_id, state, at in runs if _utc(at) == logical_date]
        if not found:
            return None
        [(run_id, state)] = found
        tasks: dict[str, list[str | None]] = {}
        for task_id, task_state in db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
                (dag_id, run_id)):
            tasks.setdefault(task_id, []).append(task_state)
    return DagRun(run_id, state, tasks)
