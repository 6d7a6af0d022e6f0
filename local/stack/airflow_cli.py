"""Running Airflow commands for the embedded stack: migrate once, run a DAG, bounded in time,
and find out afterwards what became of that DAG run.

Which DAG run is ours: ``airflow dags test`` names its run ``manual__<run_after>``, and
``run_after`` is the clock when ``dag.test()`` creates the run; the CLI takes neither a run id
nor a ``run_after``. It does take a logical date, and a DAG has at most one run per logical
date (``dag_run_dag_id_logical_date_key``). So :func:`dags_test` passes a fresh logical date,
and :func:`find_dag_run` resolves the run id from it afterwards (``airflow dags list-runs``).

Why a task failed is not in Airflow's metadata (task instances keep states, not exception
messages) and ``dags test`` writes no task log files: each task's traceback is in its output,
the run's log. :func:`task_errors` reads the last exception of each task from there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from stack.env import open_log

AIRFLOW = [sys.executable, "-m", "airflow"]


class AirflowCommandError(RuntimeError):
    pass


def _airflow(args: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> None:
    with open_log(log_path) as log:
        proc = subprocess.run(AIRFLOW + args, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0:
        raise AirflowCommandError(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}); see {log_path}")


def _airflow_json(args: list[str], env: dict[str, str], timeout_s: float = 120) -> list[dict]:
    """The ``-o json`` answer of an Airflow CLI command (log lines around it are skipped)."""
    proc = subprocess.run(AIRFLOW + args + ["-o", "json"], env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise AirflowCommandError(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}): {last}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("["):
            try:
                return json.loads(line)
            except ValueError:
                continue
    if "No data found" in proc.stdout or not proc.stdout.strip():
        return []
    raise AirflowCommandError(f"`airflow {' '.join(args)}` printed no JSON list")


def migrate_once(env: dict[str, str], log_path: Path) -> bool:
    """`airflow db migrate` unless this AIRFLOW_HOME was already migrated by this Airflow version."""
    import airflow

    stamp = Path(env["AIRFLOW_HOME"]) / f".migrated-{airflow.__version__}"
    if stamp.exists():
        return False
    _airflow(["db", "migrate"], env, log_path, timeout_s=600)
    stamp.touch()
    return True


def dags_test(
    dag_id: str,
    conf: dict,
    env: dict[str, str],
    log_path: Path,
    *,
    timeout_s: float,
    logical_date: datetime | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 2.0,
) -> int:
    """Run ``airflow dags test DAG LOGICAL_DATE`` in its own process group, calling ``on_tick``
    while it runs; returns its exit code.

    ``logical_date`` (timezone-aware, unique per run: e.g. now; by default the CLI takes now)
    identifies the run afterwards (:func:`find_dag_run`). ``dags test`` ignores SIGTERM, so a
    run past ``timeout_s``, or one whose ``on_tick`` raises (Ctrl-C included), is ended with
    SIGKILL on the whole group (its task subprocesses included) and the exception propagates.
    """
    with open_log(log_path) as log:
        proc = subprocess.Popen(
            AIRFLOW + ["dags", "test", dag_id, *([logical_date.isoformat()] if logical_date else []),
                       "-c", json.dumps(conf)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise AirflowCommandError(f"`airflow dags test {dag_id}` exceeded {timeout_s:.0f}s; see {log_path}")
                if on_tick:
                    on_tick()
                time.sleep(tick_s)
        except BaseException:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
    return proc.returncode


@dataclass(frozen=True)
class DagRunInfo:
    run_id: str
    state: str


def _same_instant(iso: str | None, when: datetime) -> bool:
    if not iso:
        return False
    return datetime.fromisoformat(iso.replace("Z", "+00:00")) == when


def find_dag_run(dag_id: str, logical_date: datetime, env: dict[str, str]) -> DagRunInfo | None:
    """The run of ``dag_id`` at ``logical_date`` (there is at most one), or None if there is
    none (e.g. the DAG did not parse, so ``dags test`` never created it)."""
    for run in _airflow_json(["dags", "list-runs", dag_id], env):
        if _same_instant(run.get("logical_date"), logical_date):
            return DagRunInfo(run_id=run["run_id"], state=run["state"])
    return None


@dataclass(frozen=True)
class TaskState:
    task_id: str
    state: str | None
    end_date: str | None


def task_states(dag_id: str, run_id: str, env: dict[str, str]) -> list[TaskState]:
    """The task instances of a DAG run (mapped ones once per instance), in no particular order."""
    return [
        TaskState(task_id=ti["task_id"], state=ti.get("state"), end_date=ti.get("end_date"))
        for ti in _airflow_json(["tasks", "states-for-dag-run", dag_id, run_id], env)
    ]


# -- reading the `dags test` output ---------------------------------------------------------
#: a new log record (structlog console format: ISO timestamp with Z, then the level in brackets)
_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z \[")
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_TASK_FAILED = "Task failed with exception"


_CHAINED = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def _one_exception(lines: list[str]) -> tuple[str, str] | None:
    """(type name, message) of one traceback (no chain), or None."""
    frame = None
    for i, line in enumerate(lines):
        if line.startswith("  File "):
            frame = i
    if frame is None:
        return None
    rest = lines[frame + 1:]
    while rest and (rest[0].startswith("    ") or not rest[0].strip()):  # the frame's source and carets
        rest = rest[1:]
    if not rest:
        return None
    first = rest[0].strip()
    kind, sep, message = first.partition(": ")
    if " " in kind:  # free text, not "pkg.Error: ..." nor a bare "pkg.Error"
        kind, message = "", first
    elif not sep:
        kind, message = first, ""
    text = "\n".join([message, *rest[1:]]).strip("\n").rstrip()
    return kind.rsplit(".", 1)[-1], text


def exception_message(traceback_lines: list[str]) -> str | None:
    """``Type: message`` (all its lines, module path dropped) of the exception a Python
    traceback ends with, or None if the lines hold none. An Airflow exception that only
    repeats its cause's message (``raise AirflowFailException(str(exc)) from exc``) gives way
    to the cause, whose type says more."""
    chain: list[list[str]] = [[]]
    for line in traceback_lines:
        if line.strip() in _CHAINED:
            chain.append([])
        else:
            chain[-1].append(line)
    found = [e for e in (_one_exception(part) for part in chain) if e is not None]
    if not found:
        return None
    name, text = found[-1]
    if name.startswith("Airflow"):
        for cause_name, cause_text in reversed(found[:-1]):
            if cause_text == text:
                name = cause_name
                break
    if not name:
        return text
    return f"{name}: {text}" if text else name


def _tracebacks(log_path: Path, offset: int) -> list[tuple[str, str, list[str]]]:
    """Every traceback of a ``dags test`` output from ``offset``: (task, the record line
    before it, its lines). ``task`` is the task running then (``task_id`` or
    ``task_id[map_index]``; ``""`` outside tasks)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    task, record = "", ""
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if _RECORD.match(line):
            record = line
            started = _TASK_START.search(line)
            if started:
                task_id, map_index = started.groups()
                task = task_id if map_index == "-1" else f"{task_id}[{map_index}]"
        elif line.startswith("Traceback (most recent call last)"):
            block = [line]
            while i < len(lines) and not _RECORD.match(lines[i]):
                block.append(lines[i])
                i += 1
            found.append((task, record, block))
    return found


def task_errors(log_path: Path, offset: int = 0) -> dict[str, str]:
    """The last exception each failed task attempt of a ``dags test`` run logged (from
    ``offset`` of its output), by task (mapped tasks: ``task_id[map_index]``)."""
    errors: dict[str, str] = {}
    for task, record, block in _tracebacks(log_path, offset):
        message = exception_message(block) if _TASK_FAILED in record else None
        if task and message:
            errors[task] = message
    return errors


def log_errors(log_path: Path, offset: int = 0) -> list[str]:
    """Every distinct exception in a log from ``offset``, in order (e.g. why the DAG file did
    not import, then why ``dags test`` gave up)."""
    messages: list[str] = []
    for _task, _record, block in _tracebacks(log_path, offset):
        message = exception_message(block)
        if message and message not in messages:
            messages.append(message)
    return messages
