"""The embedded default stack as one context manager: local CML workspace + Airflow home +
SQLite warehouse. Used by `make run`, the Airflow UI command, the benchmarks and the e2e tests."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from stack.airflow_cli import migrate_once
from stack.env import PROJECT_NAME, REPO, StackPaths, airflow_env, workspace_api_key

if TYPE_CHECKING:
    from cml_workspace.server_process import RunningWorkspace


class StackBusyError(RuntimeError):
    """Another stack command (``make run``, ``make airflow-ui``, ...) uses the same ``var/``."""


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


def acquire_stack_lock(paths: StackPaths, holder: str | None = None) -> IO[str]:
    """Take the ``var/`` lock without waiting and return its open file: the lock is held until
    that file is closed. No child process inherits it (Python opens files close-on-exec; the
    stack's processes are never handed it), so a stack command's orphan cannot keep it.
    ``holder`` is what a refused command is told (default: this pid and command). Raises
    :class:`StackBusyError` naming the holder."""
    paths.var.mkdir(parents=True, exist_ok=True)
    fh = open(paths.var / "stack.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        found = fh.read().strip() or "another process"
        fh.close()
        raise StackBusyError(f"{paths.var} is in use by another stack command ({found})") from None
    fh.seek(0)
    fh.truncate()
    if holder is None:
        holder = f"pid {os.getpid()}: {' '.join(['python -m stack', *sys.argv[1:]])}"
    fh.write(f"{holder}, since {time.strftime('%H:%M:%S')}\n")
    fh.flush()
    return fh


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
