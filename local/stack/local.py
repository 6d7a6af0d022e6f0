"""What a stack command holds on ``var/`` — its locks and its signals — and the embedded default
stack as one context manager (local CML workspace + Airflow home + SQLite warehouse), for the
tests and benchmarks that drive Airflow without ``make up``.

Two locks, two jobs. ``var/stack.lock`` (:func:`acquire_stack_lock`) is held by whoever starts
the stack (``make up``, or ``make run`` finding none up) and only while it starts: then the stack
runs on its own and anyone may use it. ``var/run.lock`` (:func:`acquire_driver_lock`) is held by
``make run`` for as long as it drives a factory run, so two of them never share one stack's
workspace, pool and report. Both are ``flock``s: a crashed holder never leaves one behind.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from stack.airflow_cli import migrate_once
from stack.env import PROJECT_NAME, REPO, StackPaths, airflow_env, workspace_api_key

if TYPE_CHECKING:
    from cml_workspace.server_process import RunningWorkspace

STACK_LOCK = "stack.lock"
DRIVER_LOCK = "run.lock"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: unwinds like KeyboardInterrupt, so everything started is stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """The first SIGINT/SIGTERM raises :class:`Interrupted`; later ones, while stopping, are
    only acknowledged, so the clean-up is not cut short. Nested in another, it leaves the outer
    one's handlers in place: the first signal is raised once, where the code then runs."""

    def stopping(_signum, _frame):
        print("  (stopping, please wait…)", flush=True)

    def first(signum, _frame):
        signal.signal(signal.SIGINT, stopping)
        signal.signal(signal.SIGTERM, stopping)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    if getattr(signal.getsignal(signal.SIGINT), "interruptible", False):
        yield
        return
    stopping.interruptible = first.interruptible = True
    previous = {s: signal.signal(s, first) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StackBusyError(RuntimeError):
    """Another stack command (``make run``, ``make up``, ...) holds a lock of the same ``var/``."""


@dataclass
class LocalStack:
    paths: StackPaths
    workspace: RunningWorkspace
    env: dict[str, str]
    migrated_now: bool

    def warehouse_hook(self):
        """The DB-API hook of the warehouse connection (SQLite or HiveServer2), in this process."""
        os.environ["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] = self.env["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"]
        from airflow.sdk import BaseHook

        from factory_tasks.core.names import WAREHOUSE_CONN_ID

        return BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()

    def cml_hook(self, **options: Any):
        """A :class:`CmlHook` on the local workspace's project (``options`` go to the hook,
        e.g. ``retry_limit=1``)."""
        from cml_provider.hooks.cml import CmlHook

        return CmlHook.from_url(self.workspace.url, self.workspace.api_key, project_name=PROJECT_NAME, **options)


def _flock(path: Path, holder: str | None, busy: str) -> IO[str]:
    """Lock ``path`` without waiting and return its open file: the lock is held until that file
    is closed. No child process inherits it (Python opens files close-on-exec; the stack's
    processes are never handed it), so a stack command's orphan cannot keep it. ``holder`` is
    what a refused command is told (default: this pid and command); ``busy`` starts the
    :class:`StackBusyError` a refused one gets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        found = fh.read().strip() or "another process"
        fh.close()
        raise StackBusyError(f"{busy} ({found})") from None
    fh.seek(0)
    fh.truncate()
    if holder is None:
        holder = f"pid {os.getpid()}: {' '.join(['python -m stack', *sys.argv[1:]])}"
    fh.write(f"{holder}, since {time.strftime('%H:%M:%S')}\n")
    fh.flush()
    return fh


def acquire_stack_lock(paths: StackPaths, holder: str | None = None) -> IO[str]:
    """The ``var/`` lock of whoever starts (or, for the tests' :func:`local_stack`, runs) a stack
    on it. Raises :class:`StackBusyError` naming the holder."""
    return _flock(paths.var / STACK_LOCK, holder, f"{paths.var} is in use by another stack command")


def wait_for_stack_lock(paths: StackPaths, holder: str, timeout_s: float,
                        waiting: Callable[[str], None] | None = None) -> IO[str]:
    """:func:`acquire_stack_lock`, waiting up to ``timeout_s`` while another command holds it
    (``make up`` starting the stack: once up, it is there to be used); ``waiting(message)`` is
    called once if it must wait."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            return acquire_stack_lock(paths, holder)
        except StackBusyError as exc:
            if time.monotonic() > deadline:
                raise
            if not told and waiting is not None:
                waiting(str(exc))
                told = True
            time.sleep(0.5)


def acquire_driver_lock(paths: StackPaths) -> IO[str]:
    """``make run``'s lock, held while it drives a factory run. Raises :class:`StackBusyError`
    naming the ``make run`` holding it."""
    return _flock(paths.var / DRIVER_LOCK, None, f"{paths.var} is in use by another make run")


@contextmanager
def stack_lock(paths: StackPaths) -> Iterator[None]:
    """One stack command per ``var/`` at a time (they would share the workspace, the Airflow
    home and the warehouse), nor while ``make up``'s stack runs on it. Raises
    :class:`StackBusyError` naming the holder."""
    from stack.processes import StateFileError, describe, read_state, stack_processes

    fh = acquire_stack_lock(paths)
    try:
        running = stack_processes(paths, read_state(paths))
    except StateFileError as exc:
        fh.close()
        raise StackBusyError(str(exc)) from None
    if running:
        fh.close()
        raise StackBusyError(f"{paths.var} is in use by make up, the long-running stack ({describe(running[:3])}"
                             f"{', …' if len(running) > 3 else ''}); `make down` stops it")
    try:
        yield
    finally:
        fh.close()  # releases the flock


@contextmanager
def local_stack(
    paths: StackPaths, *, cpus: float | None = None, memory_gb: float = 8, warehouse_conn: str | None = None
) -> Iterator[LocalStack]:
    """Take the ``var/`` lock, start the workspace, prepare the Airflow home once; stop the
    workspace (and kill its runs still alive) on exit.

    ``warehouse_conn`` (an Airflow connection URI or JSON) replaces the SQLite warehouse.
    """
    from cml_workspace.server_process import running_workspace

    with stack_lock(paths):
        paths.make()
        with running_workspace(
            paths.workspace_root, code_dir=REPO, project=PROJECT_NAME, api_key=workspace_api_key(paths),
            cpus=cpus or os.cpu_count() or 2, memory_gb=memory_gb,
            extra_args=["--preload", "factory_tasks.jobs.preload"],
        ) as ws:
            env = airflow_env(paths, workspace_url=ws.url, api_key=ws.api_key, model_service_url=ws.model_service_url,
                              warehouse_conn=warehouse_conn)
            migrated = migrate_once(env, paths.logs / "airflow-setup.log")
            yield LocalStack(paths, ws, env, migrated)
