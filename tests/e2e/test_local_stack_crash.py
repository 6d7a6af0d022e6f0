"""`make up` as an attacker and a crash see it, on one real stack (started once for the module,
as ``test_local_stack_up`` starts it):

* the Airflow admin password is in a file only its owner reads, named by ``make up``, and in
  no log; the secrets and log folders are the owner's only;
* after a SIGKILL of the scheduler (its LocalExecutor workers orphaned) and of the triggerer,
  ``make status`` says neither is healthy and names what is left, ``make down`` stops
  everything of the stack, orphans included, and the ``var/`` lock is free again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import httpx
import psutil
import pytest
from stack.env import stack_paths
from stack.local import StackBusyError, acquire_stack_lock

from tests.e2e.test_local_stack_up import Stack, _print, free_port, processes_of, recorded

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("crash") / "var", free_port(), free_port())
    result = s.up()
    s.up_output = _print(result)
    try:
        assert result.returncode == 0, s.up_output
        yield s
    finally:
        s.shut_down()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_admin_password_is_private_and_never_logged(stack: Stack):
    found = re.search(r"user admin, password in (\S+)", stack.up_output)
    assert found, stack.up_output
    password_file = Path(found.group(1))
    password = json.loads(password_file.read_text())["admin"]
    token = httpx.post(f"{stack.api}/auth/token", json={"username": "admin", "password": password}, timeout=10)
    assert token.status_code == 201, token.text  # the file named is the one the api-server uses
    assert mode(password_file) == 0o600, oct(mode(password_file))
    assert mode(password_file.parent) == 0o700, oct(mode(password_file.parent))
    for folder in (stack.var / "secrets", stack.var / "logs"):
        assert mode(folder) == 0o700, (folder, oct(mode(folder)))
    logs = [p for p in (stack.var / "logs").rglob("*") if p.is_file()]
    assert logs
    for log in logs:
        assert mode(log) == 0o600, (log, oct(mode(log)))
    everything = [p for p in stack.var.rglob("*") if p.is_file() and p != password_file
                  and p.suffix not in (".db", ".parquet", ".joblib")]
    for path in everything:
        assert password.encode() not in path.read_bytes(), f"the admin password is in {path}"


def _session_members(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def test_after_sigkill_status_down_and_the_lock_agree(stack: Stack):
    by_name = {r["name"]: r for r in recorded(stack.var)}
    # a run makes the scheduler's LocalExecutor fork its workers
    headers = {"Authorization": f"Bearer {stack.token()}"}
    run = httpx.post(f"{stack.api}/api/v2/dags/experiments_summary/dagRuns", headers=headers,
                     json={"logical_date": None}, timeout=10)
    assert run.status_code == 200, run.text
    run_url = f"{stack.api}/api/v2/dags/experiments_summary/dagRuns/{run.json()['dag_run_id']}"
    deadline = time.monotonic() + 90
    while httpx.get(run_url, headers=headers, timeout=10).json()["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(1)
    scheduler = psutil.Process(by_name["scheduler"]["pid"])
    workers = scheduler.children(recursive=True)
    assert workers, "the scheduler has no worker processes to orphan"

    for name in ("scheduler", "triggerer"):
        os.kill(by_name[name]["pid"], signal.SIGKILL)
    psutil.wait_procs([scheduler], timeout=10)
    orphans = [p for p in _session_members(by_name["scheduler"]["pid"]) if p.is_running()]
    assert orphans, "no worker outlived the scheduler"

    status = stack.cli("status")
    out = _print(status)
    assert status.returncode == 1, out
    triggerer = next(line for line in out.splitlines() if line.strip().startswith("triggerer"))
    assert "NOT RUNNING" in triggerer and "healthy" not in triggerer.replace("unhealthy", ""), triggerer
    assert str(orphans[0].pid) in out, out  # the leftovers are named

    stopped = stack.cli("down", timeout=120)
    out = _print(stopped)
    assert stopped.returncode == 0, out
    assert not any(p.is_running() for p in orphans + workers), [p.pid for p in orphans if p.is_running()]
    assert processes_of(stack.var) == []
    assert not (stack.var / "stack-up.json").exists()
    try:
        acquire_stack_lock(stack_paths(stack.var)).close()
    except StackBusyError as exc:
        pytest.fail(f"the var/ lock is still held after make down: {exc}")
    after = stack.cli("status")
    assert after.returncode == 3, _print(after)
    again = stack.cli("down")
    assert again.returncode == 0 and "Nothing to stop" in again.stdout, _print(again)
