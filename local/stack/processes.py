"""The processes of ``make up``: ``var/stack-up.json`` naming them, and every process that
belongs to the stack, found even after the one that started it ended.

A process belongs to the stack under ``var/`` if it is one recorded in the state file (pid
*and* start time: a recycled pid is never taken for it), lives in the session of one (each is
started in its own session: LocalExecutor workers and task runners stay in the scheduler's,
also once a SIGKILL of the scheduler has orphaned them), or carries ``MODEL_FACTORY_STACK_UP=
<var>`` in its environment (given to everything ``make up`` starts and inherited by what those
start in sessions of their own, e.g. the workspace's model replicas). ``make down``,
``make status`` and ``make up`` all look for them this way, so they agree on whether the stack
runs; none of them holds the ``var/`` lock (:func:`stack.local.acquire_stack_lock`), which is
held only while a stack starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from stack.env import StackPaths

SCHEMA_VERSION = 1
STATE_FILE = "stack-up.json"
#: in the environment of every process ``make up`` starts: the ``var/`` folder of its stack
MEMBER_ENV = "MODEL_FACTORY_STACK_UP"


class ProcessRecord(BaseModel):
    """One background process of ``make up``."""

    model_config = ConfigDict(extra="forbid")
    name: str
    pid: int
    create_time: float  # psutil's, seconds since the epoch: with the pid, the process's identity
    cmdline: list[str]
    log: str
    url: str | None = None


class UpState(BaseModel):
    """``var/stack-up.json``: what ``make up`` started; read by ``make down`` and ``make status``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    var: str
    host: str
    started_at: str
    airflow_url: str
    dashboard_urls: list[str] = []
    workspace_url: str = ""
    model_service_url: str = ""
    processes: list[ProcessRecord] = []

    def record(self, name: str) -> ProcessRecord | None:
        return next((p for p in self.processes if p.name == name), None)


class StateFileError(RuntimeError):
    pass


def state_path(paths: StackPaths) -> Path:
    return paths.var / STATE_FILE


def read_state(paths: StackPaths) -> UpState | None:
    path = state_path(paths)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        state = UpState.model_validate_json(text)
    except ValidationError as exc:
        raise StateFileError(f"{path} is not a valid state file ({exc.errors()[0]['loc']}: "
                             f"{exc.errors()[0]['msg']}); stop its processes by hand and remove it") from None
    if state.schema_version != SCHEMA_VERSION:
        raise StateFileError(f"{path}: schema_version {state.schema_version}, expected {SCHEMA_VERSION}")
    return state


def write_state(paths: StackPaths, state: UpState) -> None:
    path = state_path(paths)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=1) + "\n")
    os.replace(tmp, path)


def process_of(record: ProcessRecord):
    """The live process a record names, or None if it ended or its pid now belongs to another
    process (a different start time)."""
    import psutil

    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def record_process(name: str, pid: int, log: Path, url: str | None = None) -> ProcessRecord:
    import psutil

    proc = psutil.Process(pid)
    return ProcessRecord(name=name, pid=pid, create_time=proc.create_time(), cmdline=proc.cmdline(),
                         log=str(log), url=url)


def stack_processes(paths: StackPaths, state: UpState | None) -> list:
    """Every live process of the stack under ``paths.var`` but this one (psutil processes)."""
    import psutil

    # a session id is its leader's pid: a member started after the leader, whose pid is not reused meanwhile
    sessions = {r.pid: r.create_time for r in (state.processes if state else [])}
    found = []
    for proc in psutil.process_iter(["create_time", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            sid = os.getsid(proc.pid)
            if sid in sessions and proc.info["create_time"] >= sessions[sid] - 0.05:
                found.append(proc)
            elif proc.environ().get(MEMBER_ENV) == str(paths.var):
                found.append(proc)
        except (OSError, psutil.Error):  # ended meanwhile, or another user's
            continue
    return found


def describe(procs: list) -> str:
    """``pid 123 (airflow scheduler -- LocalExecutor), ...``: processes as a user finds them in ``ps``."""
    import psutil

    parts = []
    for proc in procs:
        try:
            name = " ".join(" ".join(proc.cmdline()[:4]).split())[:60] or proc.name()
        except psutil.Error:
            name = "ended"
        parts.append(f"pid {proc.pid} ({name})")
    return ", ".join(parts)


#: seconds after the first SIGTERM that a process still running gets a second one
SIGNAL_AGAIN_S = 5.0
#: how often a stop checks on what it waits for
POLL_S = 0.25


def stop_processes(procs: list, grace_s: float, while_waiting: Callable[[], None] | None = None) -> list:
    """SIGTERM ``procs`` (psutil processes, identity checked by psutil), SIGTERM again those
    still running after :data:`SIGNAL_AGAIN_S` (at most half the grace), SIGKILL what is left
    at ``grace_s``; ``while_waiting`` is called every :data:`POLL_S` meanwhile. Returns those
    that had to be killed.

    The second SIGTERM is Airflow's own way out: its LocalExecutor, shutting down, waits for
    running tasks and logs "Signal again if you don't want to wait"; a handler's ``sys.exit`` is
    also lost when the signal lands in a garbage-collector callback ("Exception ignored in:
    _collection_gced").
    """
    import psutil

    def terminate(targets: list) -> None:
        for proc in targets:
            try:
                proc.terminate()
            except psutil.Error:
                pass

    def wait(targets: list, until: float) -> list:
        alive = targets
        while alive and (left := until - time.monotonic()) > 0:
            _gone, alive = psutil.wait_procs(alive, timeout=min(POLL_S, left))
            if alive and while_waiting is not None:
                while_waiting()
        return alive

    started = time.monotonic()
    terminate(procs)
    again_s = min(SIGNAL_AGAIN_S, grace_s / 2)
    alive = wait(procs, started + again_s)
    terminate(alive)
    alive = wait(alive, started + grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return alive


def kill_workers_once_idle(executors: list) -> Callable[[], None]:
    """A ``while_waiting`` for :func:`stop_processes` that SIGKILLs the LocalExecutor workers
    of ``executors`` (schedulers being stopped) once none of them has run a task for two
    checks in a row.

    Airflow 3.3.2's LocalExecutor, stopping, sends each live worker a "stop" message on its
    task queue and joins them all. Now and then idle workers never get theirs: their stacks
    show them waiting on the queue's read lock, and the lock's holder reading an empty pipe;
    the scheduler then ignores both SIGTERMs until the SIGKILL, and Python's exit joins the
    workers again. A worker running a task is the parent of the task's process, so busy ones
    are left to finish; once all idle, none has anything left to do, and a lock's holder is
    killed only when nobody else needs the lock.
    """
    import psutil

    idle_checks: dict[int, int] = {}

    def check() -> None:
        for executor in executors:
            try:
                workers = executor.children()
                busy = any(worker.children() for worker in workers)
            except psutil.Error:
                continue
            idle_checks[executor.pid] = 0 if busy or not workers else idle_checks.get(executor.pid, 0) + 1
            if idle_checks[executor.pid] >= 2:
                for worker in workers:
                    try:
                        worker.kill()
                    except psutil.Error:
                        pass

    return check
