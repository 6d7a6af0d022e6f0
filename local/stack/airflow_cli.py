"""The Airflow command line where the stack still needs it: ``airflow db migrate``, once per
Airflow version and home. Everything else — triggering runs, following them, reading a task's
error — goes through the REST API of the running stack (:mod:`stack.airflow_api`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stack.env import open_log

AIRFLOW = [sys.executable, "-m", "airflow"]


class AirflowCommandError(RuntimeError):
    pass


def _airflow(args: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> None:
    with open_log(log_path) as log:
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
