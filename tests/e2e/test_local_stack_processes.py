"""``make status`` / ``make down`` and the Airflow admin password, in seconds rather than the
minutes of a whole stack (``test_local_stack_up``, ``test_local_stack_crash``):

* a recorded "scheduler" (a real process in a session of its own, as ``make up`` starts each)
  whose workers ignore SIGTERM is SIGKILLed: ``make status`` names the orphaned workers,
  ``make down`` stops them, and then both say the stack is not up;
* Airflow's real simple auth manager, started with the stack's environment, finds the admin's
  password in a 0600 file under ``var/secrets`` and prints no password.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from stack.env import REPO, airflow_env, stack_paths

pytestmark = pytest.mark.timeout(120)

#: a LocalExecutor in miniature: two forked workers that ignore SIGTERM
SCHEDULER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(2):
    if os.fork() == 0:
        while True:
            time.sleep(1)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def cli(var: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "MODEL_FACTORY_"))}
    env["MODEL_FACTORY_VAR"] = str(var)
    result = subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    print(result.stdout + result.stderr)
    return result


@pytest.fixture
def orphans(tmp_path):
    """A state file recording one "scheduler", SIGKILLed after forking its workers; the workers."""
    var = tmp_path / "var"
    (var / "logs").mkdir(parents=True)
    scheduler = subprocess.Popen([sys.executable, "-c", SCHEDULER], stdout=subprocess.PIPE, text=True,
                                 start_new_session=True)
    assert scheduler.stdout.readline().strip() == "ready"
    proc = psutil.Process(scheduler.pid)
    workers = proc.children()
    assert len(workers) == 2
    state = {"schema_version": 1, "var": str(var), "host": "127.0.0.1", "started_at": "2026-01-01 00:00:00",
             "airflow_url": "http://127.0.0.1:9", "processes": [
                 {"name": "scheduler", "pid": proc.pid, "create_time": proc.create_time(), "cmdline": proc.cmdline(),
                  "log": str(var / "logs" / "scheduler.log")}]}
    (var / "stack-up.json").write_text(json.dumps(state))
    scheduler.send_signal(signal.SIGKILL)
    scheduler.wait()
    yield var, workers
    for worker in workers:
        try:
            worker.kill()
        except psutil.Error:
            pass


def test_orphans_of_a_killed_component_are_reported_and_stopped(orphans):
    var, workers = orphans
    assert all(w.is_running() for w in workers)
    status = cli(var, "status")
    assert status.returncode == 1, status.stdout
    assert "NOT RUNNING" in status.stdout
    for worker in workers:
        assert str(worker.pid) in status.stdout, status.stdout

    started = time.monotonic()
    down = cli(var, "down")
    assert down.returncode == 0, down.stdout
    assert not any(w.is_running() for w in workers), "make down left the orphaned workers running"
    assert time.monotonic() - started < 30
    assert not (var / "stack-up.json").exists()
    assert str(workers[0].pid) in down.stdout  # says what it stopped
    assert cli(var, "status").returncode == 3
    assert "Nothing to stop" in cli(var, "down").stdout


INIT_AUTH_MANAGER = """
import json
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
SimpleAuthManager().init()
print(json.dumps({"password_file": SimpleAuthManager.get_generated_password_file()}))
"""


def test_airflow_admin_password_is_ours_private_and_not_printed(tmp_path):
    paths = stack_paths(tmp_path / "var").make()
    env = airflow_env(paths, workspace_url="http://127.0.0.1:9", api_key="unused",
                      base={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    env["AIRFLOW__CORE__AUTH_MANAGER"] = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    result = subprocess.run([sys.executable, "-c", INIT_AUTH_MANAGER], env=env, capture_output=True, text=True,
                            timeout=90, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    *printed, last = result.stdout.strip().splitlines()
    password_file = Path(json.loads(last)["password_file"])
    password = json.loads(password_file.read_text())["admin"]
    assert len(password) >= 16
    assert password not in "\n".join(printed) + result.stderr, "the admin password was printed"
    assert password_file.is_relative_to(paths.var / "secrets"), password_file
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(password_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.logs.stat().st_mode) == 0o700
