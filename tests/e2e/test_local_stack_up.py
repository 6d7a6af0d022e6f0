"""`make up` / `make down` (``python -m stack up|down``) as a user runs them, on a tmp
``MODEL_FACTORY_VAR`` and free ports: the real workspace, Airflow api-server, scheduler,
dag-processor, triggerer and the dashboard as background processes.

Up: the api-server answers health on 127.0.0.1 with every component healthy and listens on
nothing else; ``model_factory`` is unpaused (REST API with a simple-auth-manager token); the
experiment pool exists (the default grid's max_parallel slots, deferred tasks counted) and the
Airflow processes carry the connection ``airflow_api`` that signs in to this api-server; a
triggered run of ``experiments_summary`` succeeds; the dashboard answers; ``up`` again says it
is already up. Down: every recorded pid is gone, the ports are free, no process
of this ``var/`` is left; a second ``up`` reuses the state. Whatever happens, the finalizer
stops everything by recorded pid (and anything else carrying the tmp folder).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from stack.env import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(330)]

COMPONENTS = {"workspace", "api-server", "scheduler", "dag-processor", "triggerer", "dashboard"}
UP_TIMEOUT_S = 150  # the stack's own bound; the command's is a bit longer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def other_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def processes_of(var: Path) -> list[psutil.Process]:
    """Every process whose command line or environment names the tmp var folder."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            cmdline = " ".join(proc.cmdline())
            environ = proc.environ()
        except psutil.Error:
            continue
        if str(var) in cmdline or environ.get("MODEL_FACTORY_VAR") == str(var):
            found.append(proc)
    return found


def recorded(var: Path) -> list[dict]:
    path = var / "stack-up.json"
    return json.loads(path.read_text())["processes"] if path.exists() else []


def live(record: dict) -> bool:
    try:
        proc = psutil.Process(record["pid"])
        return abs(proc.create_time() - record["create_time"]) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Stack:
    def __init__(self, var: Path, api_port: int, dashboard_port: int, rows: int = 2000):
        self.var = var
        self.rows = rows
        self.api_port = api_port
        self.dashboard_port = dashboard_port
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "MODEL_FACTORY_"))}
        self.env["MODEL_FACTORY_VAR"] = str(var)
        self.api = f"http://127.0.0.1:{api_port}"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def up(self) -> subprocess.CompletedProcess:
        return self.cli("up", "--port", str(self.api_port), "--dashboard-port", str(self.dashboard_port),
                        "--rows", str(self.rows), "--timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 60)

    def running(self):
        """The stack as ``make run`` finds it (``stack.running.RunningStack``), None if not up."""
        from stack.env import stack_paths
        from stack.running import RunningStack

        return RunningStack.find(stack_paths(self.var))

    def token(self) -> str:
        password = json.loads((self.var / "secrets" / "airflow_passwords.json").read_text())["admin"]
        resp = httpx.post(f"{self.api}/auth/token", json={"username": "admin", "password": password}, timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()["access_token"]

    def shut_down(self) -> None:
        """``make down`` if the stack is recorded as up, then :meth:`kill_everything` whatever it left."""
        try:
            if (self.var / "stack-up.json").exists():
                self.cli("down", timeout=90)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill_everything()

    def kill_everything(self) -> None:
        """The last resort: recorded pids (identity checked) and their children, then whatever
        still names the tmp folder."""
        procs = []
        for record in recorded(self.var):
            if live(record):
                proc = psutil.Process(record["pid"])
                procs += [proc, *proc.children(recursive=True)]
        procs += processes_of(self.var)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "var", free_port(), free_port())
    yield s
    s.shut_down()


def _print(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    print(out)
    return out


def test_up_status_down_and_up_again(stack: Stack):
    started = time.monotonic()
    result = stack.up()
    out = _print(result)
    assert result.returncode == 0, out
    assert "The stack is up" in out and stack.api in out and "make down" in out
    assert "secrets/airflow_passwords.json" in out and "dashboard_users.json" in out
    records = recorded(stack.var)
    assert {r["name"] for r in records} == COMPONENTS
    assert all(live(r) for r in records), records
    first_up_s = time.monotonic() - started

    # health: every component healthy, through 127.0.0.1
    health = httpx.get(f"{stack.api}/api/v2/monitor/health", timeout=10).json()
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", health

    # listening on loopback only: the api-server's and the dashboard's sockets, and `ss`
    by_name = {r["name"]: r for r in records}
    for name, port in (("api-server", stack.api_port), ("dashboard", stack.dashboard_port)):
        listening = [c.laddr for c in psutil.Process(by_name[name]["pid"]).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, (name, listening)
        assert {addr.port for addr in listening} == {port}
    ss = subprocess.run(["ss", "-ltnH", f"sport = :{stack.api_port}"], capture_output=True, text=True)
    if ss.returncode == 0:
        local = {line.split()[3] for line in ss.stdout.splitlines() if line.strip()}
        assert local == {f"127.0.0.1:{stack.api_port}"}, ss.stdout
    for address in other_addresses():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}:{stack.api_port}/api/v2/monitor/health", timeout=3)

    # the factory's DAGs are ready to run
    headers = {"Authorization": f"Bearer {stack.token()}"}
    for dag_id in ("model_factory", "experiments_summary", "deploy_best_model"):
        dag = httpx.get(f"{stack.api}/api/v2/dags/{dag_id}", headers=headers, timeout=10)
        assert dag.status_code == 200, dag.text
        assert dag.json()["is_paused"] is False, dag.json()

    # the experiment pool, sized from config/grid.yaml, and the connection the plan task resizes it through
    pool = httpx.get(f"{stack.api}/api/v2/pools/model_factory_experiments", headers=headers, timeout=10)
    assert pool.status_code == 200, pool.text
    assert pool.json()["slots"] == 4 and pool.json()["include_deferred"] is True, pool.json()
    conn = json.loads(psutil.Process(by_name["scheduler"]["pid"]).environ()["AIRFLOW_CONN_AIRFLOW_API"])
    assert (conn["conn_type"], conn["host"], conn["port"], conn["login"]) == ("http", "127.0.0.1", stack.api_port, "admin")
    signed_in = httpx.post(f"{conn['schema']}://{conn['host']}:{conn['port']}/auth/token",
                           json={"username": conn["login"], "password": conn["password"]}, timeout=10)
    assert signed_in.status_code == 201, signed_in.text
    assert "pool model_factory_experiments: 4 slots" in out

    # a triggered run starts and finishes (scheduler, LocalExecutor, the execution API's tokens),
    # triggered as make run triggers: SQLite's metadata DB may be locked by the scheduled runs
    # that start with the stack ("database is locked", a 500, once in CI), and the named retry
    # of the driver's client never makes a second run
    api = stack.running().api
    triggered = api.trigger("experiments_summary", {})
    run = api.wait_for_run("experiments_summary", triggered["dag_run_id"], timeout_s=90)
    api.close()  # closed from our side: a keep-alive the server closes at down would hold its port in TIME_WAIT
    assert run["state"] == "success", run

    # the dashboards answer (behind their login: no page without signing in)
    urls = json.loads((stack.var / "stack-up.json").read_text())["dashboard_urls"]
    assert f"http://127.0.0.1:{stack.dashboard_port}/experiments_app" in urls
    for url in urls:
        page = httpx.get(url, timeout=10)
        assert page.status_code in (200, 302), (url, page.status_code)
        assert page.status_code == 302 or "login" in page.text.lower(), url
    # ... and the printed credentials file signs in
    user, password = next(iter(json.loads((stack.var / "secrets" / "dashboard_users.json").read_text()).items()))
    login = httpx.post(f"http://127.0.0.1:{stack.dashboard_port}/login", data={"username": user, "password": password},
                       timeout=10)
    assert login.status_code == 302 and "user" in login.cookies, (login.status_code, dict(login.cookies))

    # up again: already up, with the URLs
    again = stack.up()
    out = _print(again)
    assert again.returncode == 0 and "already up" in out and stack.api in out, out

    status = stack.cli("status")
    assert status.returncode == 0 and status.stdout.count("running") >= len(COMPONENTS), _print(status)

    # down: exactly those, and what they started
    stopped = stack.cli("down", timeout=120)
    out = _print(stopped)
    assert stopped.returncode == 0 and "Stopped 6 processes" in out, out
    assert not any(live(r) for r in records)
    assert not (stack.var / "stack-up.json").exists()
    assert port_free(stack.api_port) and port_free(stack.dashboard_port)
    assert processes_of(stack.var) == []
    assert stack.cli("status").returncode == 3

    # a second up reuses the state under var/ (metadata DB, training table, secrets)
    result = stack.up()
    out = _print(result)
    assert result.returncode == 0, out
    assert "metadata DB  ready" in out and "already present" in out, out
    stopped = stack.cli("down", timeout=120)
    assert stopped.returncode == 0, _print(stopped)
    assert processes_of(stack.var) == []
    print(f"first up took {first_up_s:.0f}s; the whole test {time.monotonic() - started:.0f}s")
