"""Running Airflow commands for the embedded stack: migrate once, run a DAG, bounded in time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

AIRFLOW = [sys.executable, "-m", "airflow"]


class AirflowCommandError(RuntimeError):
    pass


def _airflow(args: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.run(AIRFLOW + args, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0:
        raise AirflowCommandError(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}); see {log_path}")


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
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 2.0,
) -> int:
    """Run ``airflow dags test`` in its own process group, calling ``on_tick`` while it runs.

    ``dags test`` ignores SIGTERM, so a run past ``timeout_s`` is ended with SIGKILL on the
    whole group (its task subprocesses included).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            AIRFLOW + ["dags", "test", dag_id, "-c", json.dumps(conf)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
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
