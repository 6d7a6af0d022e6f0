"""`make up` / `make down` / `make status`: the embedded stack as long-running background
processes, for using the factory from the Airflow UI and the dashboards.

``up`` starts, each as a detached process (its own session, so closing the terminal or a
Ctrl-C there does not reach it; output appended to a log under ``var/logs/``):

* the local CML workspace (``python -m cml_workspace serve``, the same root, project, API key,
  budget and warm engine as ``make run``: one state under ``var/``),
* ``airflow api-server`` (UI and REST API, bound to 127.0.0.1 unless ``--host`` or
  ``MODEL_FACTORY_BIND`` says otherwise), ``airflow scheduler`` (LocalExecutor: Airflow 3
  has no SequentialExecutor, and LocalExecutor is what ``airflow standalone`` picks for its
  SQLite metadata DB), ``airflow dag-processor`` and ``airflow triggerer``, with the
  execution API URL pointing at that api-server and the factory's DAGs unpaused,
* the dashboards (``panel serve`` behind its login, :mod:`stack.dashboard`),

records each one's pid, start time, command line, log and port in ``var/stack-up.json``
(:class:`UpState`), waits until each answers (workspace ``/health``; api-server
``/api/v2/monitor/health`` with the metadata DB, scheduler, triggerer and dag-processor
healthy; the dashboard port) and prints where everything is.

The ``var/`` lock (:func:`stack.local.acquire_stack_lock`) is held by ``up`` while it starts;
none of those processes holds it. Once up, the stack is there to be used: ``make run`` drives
its factory runs over the REST API (:mod:`stack.run`), and starts the stack itself with
:func:`start_stack` when none is up. ``up`` also makes the Airflow pool the experiments run in
(:data:`EXPERIMENT_POOL`, deferred task instances counted) and gives every Airflow process the
connection ``airflow_api`` to its own api-server, through which ``plan_experiments`` sizes that
pool per factory run. ``down`` stops the recorded processes — each one's identity (pid *and*
start time) checked first, so a recycled pid is never signalled — and everything else of the
stack, also what outlived its parent (the LocalExecutor workers of a killed scheduler, the
workspace's warm engine and model replicas): SIGTERM, again after 5 s, then SIGKILL after a grace period, then
the workspace's runs still alive. ``up`` stops such leftovers of a stack whose recorded
processes have all ended before it starts again.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from factory_tasks.core.names import EXPERIMENT_POOL
from stack.airflow_api import airflow_api_connection, api_token
from stack.env import (
    DEFAULT_ROWS,
    DEFAULT_SEED,
    PROJECT_NAME,
    REPO,
    StackPaths,
    airflow_env,
    airflow_passwords_file,
    create_secret_file,
    open_log,
    stack_paths,
    workspace_api_key,
)
from stack.local import Interrupted, StackBusyError, acquire_stack_lock, interruptible
from stack.processes import (
    MEMBER_ENV,
    ProcessRecord,
    StateFileError,
    UpState,
    describe,
    kill_workers_once_idle,
    process_of,
    read_state,
    record_process,
    stack_processes,
    state_path,
    stop_processes,
    write_state,
)

DEFAULT_API_PORT = 8080
DEFAULT_DASHBOARD_PORT = 5006
START_TIMEOUT_S = 300.0
#: SIGTERM to SIGKILL, per stop phase. A component that exits at all does so within ~3 s of
#: the second SIGTERM (sent after 5 s); one that ignored both is stuck, and waiting longer
#: only delays the stop
STOP_GRACE_S = 10.0
#: SIGTERM to SIGKILL for what outlived its parent (LocalExecutor workers ignore SIGTERM)
LEFTOVER_GRACE_S = 3.0
#: the experiment pool is made with the default grid's max_parallel; each factory run's
#: plan_experiments resizes it to the run's
DEFAULT_GRID = REPO / "config" / "grid.yaml"
DEFAULT_POOL_SLOTS = 4
POOL_DESCRIPTION = ("model_factory's experiments in flight (deferred ones count); each factory run's "
                    "plan_experiments sizes it to the run's max_parallel")
#: DAG files of the factory are in dags/; every DAG parsed from there is unpaused by ``up``
DAGS_FOLDER = REPO / "dags"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: ``down`` stops in this order: what schedules and serves first (a task being stopped can
#: still report to the api-server and stop its CML run), the workspace last
STOP_PHASES = (("dashboard", "scheduler", "dag-processor", "triggerer"), ("api-server",), ("workspace",))
#: components whose children get the first SIGTERM with them. Airflow 3.3.2's triggerer, stopping,
#: SIGINTs its trigger runner and sometimes waits out that runner for ten seconds; the runner's own
#: SIGTERM handler stops it at once. (Not the scheduler: its LocalExecutor workers run tasks it
#: lets finish.)
SIGNAL_CHILDREN_TOO = frozenset({"triggerer"})
CHILD_GRACE_S = 1.0
#: components whose LocalExecutor workers are killed once they all idle while it stops (see
#: :func:`stack.processes.kill_workers_once_idle`)
KILL_IDLE_WORKERS = frozenset({"scheduler"})


def _say(msg: str = "") -> None:
    print(msg, flush=True)


# -- processes -------------------------------------------------------------------------------
def _spawn(name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``cmd`` in a session of its own (its session id is its pid: what it starts is found from
    it), output appended to ``log`` (0600), no descriptor of this process inherited."""
    with open_log(log) as fh:
        fh.write(f"--- make up: starting {name} at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        fh.flush()
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_bytes()[-20_000:].decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the servers bind (uvicorn, tornado): the connections of a stack just stopped, still
        # in TIME_WAIT, do not keep the next one from starting
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _client_host(host: str) -> str:
    """Where this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _secret(paths: StackPaths, name: str) -> str:
    """A random secret made once under var/secrets (0600), e.g. the JWT signing key every
    Airflow component must share (Airflow makes a different one per process when unset)."""
    path = paths.secrets_dir / name
    create_secret_file(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def password_file(paths: StackPaths) -> Path:
    """The Airflow admin's password (``{"admin": ...}``), made by us so Airflow never prints one."""
    return airflow_passwords_file(paths)


def stack_airflow_env(paths: StackPaths, ws, host: str, port: int) -> dict[str, str]:
    """``airflow_env`` plus what a long-running stack needs."""
    env = airflow_env(paths, workspace_url=ws.url, api_key=ws.api_key, model_service_url=ws.model_service_url)
    env.update({
        "AIRFLOW_CONN_AIRFLOW_API": airflow_api_connection(paths, _client_host(host), port),
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",  # one process: 2 cores, and no worker outliving a kill
        # Task runners call this; the default (port 8080 on localhost) is wrong on another port.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{_client_host(host)}:{port}/execution/",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # LocalExecutor forks this many workers; the factory's tasks submit and defer (the work
        # runs in the workspace), so 8 is plenty on a laptop (Airflow's default: 32)
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "8"),
        # every hand-off between tasks waits for the scheduler's next loop; idle, it sleeps this
        # long between loops (Airflow's default 1 s): as in docker-compose.yaml
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        # Tokens signed by one component (the scheduler's for tasks, the api-server's for the UI)
        # are checked by another: one key for all, kept across restarts (UI sessions survive).
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(paths, "airflow_jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": _secret(paths, "airflow_api_secret_key"),
        "MODEL_FACTORY_VAR": str(paths.var),
    })
    return env


def dashboard_apps() -> list[Path]:
    """The Panel apps under dashboards/ (the experiments explorer, and monitoring once it exists)."""
    from stack import dashboard

    apps = getattr(dashboard, "APPS", None) or (dashboard.APP, REPO / "dashboards" / "monitoring_app.py")
    return [Path(app) for app in apps if Path(app).exists()]


# -- health ----------------------------------------------------------------------------------
def _health_body(url: str, timeout: float = 3.0) -> dict[str, dict]:
    """``/api/v2/monitor/health``'s answer (``{}`` if none)."""
    try:
        resp = httpx.get(f"{url}/api/v2/monitor/health", timeout=timeout)
        if resp.status_code != 200:
            return {}
        body = resp.json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {name: info for name, info in body.items() if isinstance(info, dict)} if isinstance(body, dict) else {}


def airflow_health(url: str, timeout: float = 3.0) -> dict[str, str]:
    """Each component's status from ``/api/v2/monitor/health`` (``{}`` if no answer)."""
    return {name: info.get("status") or "unknown" for name, info in _health_body(url, timeout).items()}


def heartbeat(health: dict[str, dict], component: str, alive: bool) -> tuple[bool, str]:
    """Whether a scheduler, triggerer or dag-processor beats (its process alive *and* Airflow
    finds its latest heartbeat recent) and a line saying so. A killed one's last heartbeat
    stays "recent" in Airflow's eyes for up to 30 s: the process decides first."""
    key = component.replace("-", "_")
    info = health.get(key) or {}
    beat = info.get(f"latest_{key}_heartbeat")
    try:
        age = f"{time.time() - datetime.fromisoformat(beat).timestamp():.0f}s ago" if beat else "none yet"
    except (TypeError, ValueError):
        age = str(beat)
    if not alive:
        return False, f"last heartbeat {age}: stale, the process ended"
    if not health:
        return False, "heartbeat unknown (the api-server does not answer)"
    healthy = info.get("status") == "healthy"
    return healthy, f"heartbeat {age} ({'healthy' if healthy else 'unhealthy: not recent'})"


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=3.0, follow_redirects=False)
        return True
    except httpx.HTTPError:
        return False


def unpause_factory_dags(url: str, paths: StackPaths, timeout_s: float) -> list[str]:
    """Wait until the dag-processor has parsed ``model_factory``, then unpause every DAG from
    the factory's dags/ folder still paused (a paused one never runs what ``make run`` triggers,
    nor the asset-triggered deployment). Returns the DAG ids of dags/."""
    headers = {"Authorization": f"Bearer {api_token(url, paths)}"}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        while True:
            resp = http.get("/api/v2/dags", params={"limit": 1000})
            resp.raise_for_status()
            dags = [d for d in resp.json()["dags"]
                    if (d.get("fileloc") or "").startswith(str(DAGS_FOLDER) + os.sep)]
            if any(d["dag_id"] == "model_factory" for d in dags):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dag-processor had not parsed model_factory after {timeout_s:.0f}s")
            time.sleep(1)
        for dag in dags:
            if dag.get("is_paused"):
                http.patch(f"/api/v2/dags/{dag['dag_id']}", json={"is_paused": False}).raise_for_status()
    return sorted(d["dag_id"] for d in dags)


class StartError(RuntimeError):
    pass


def wait_until(what: str, ready: Callable[[], bool], procs: dict[str, subprocess.Popen],
               records: dict[str, ProcessRecord], deadline: float, show: Callable[[], str]) -> None:
    """Poll ``ready`` until it holds; fail if a started process ends or time runs out."""
    last = ""
    started = time.monotonic()
    while not ready():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise StartError(f"{name} exited with code {proc.returncode} while starting; "
                                 f"its log {records[name].log}:\n{tail(records[name].log)}")
        if time.monotonic() > deadline:
            raise StartError(f"{what} was not ready before the deadline (--timeout): {show()}; "
                             f"the logs: {', '.join(sorted(r.log for r in records.values()))}")
        line = show()
        if line != last:
            _say(f"  … {time.monotonic() - started:4.0f}s {line}")
            last = line
        time.sleep(1)


# -- commands --------------------------------------------------------------------------------
def up(*, host: str | None = None, port: int | None = None, dashboard_port: int | None = None,
       workspace_port: int | None = None, model_port: int | None = None,
       timeout_s: float = START_TIMEOUT_S, rows: int | None = None) -> int:
    """Start the stack in the background (or say it is already up); the exit code. ``rows``:
    the simulated training table's size if it is absent (``make run``'s default)."""
    paths = stack_paths()
    try:
        lock = acquire_stack_lock(paths, holder="make up, starting the long-running stack")
    except StackBusyError as exc:
        _say(f"make up refused: {exc}.\nWait for it to end (or stop it), or set MODEL_FACTORY_VAR "
             "to another folder.")
        return 75
    with lock:
        return start_stack(paths, host=host, port=port, dashboard_port=dashboard_port, workspace_port=workspace_port,
                           model_port=model_port, timeout_s=timeout_s, rows=rows)


def start_stack(paths: StackPaths, *, host: str | None = None, port: int | None = None,
                dashboard_port: int | None = None, workspace_port: int | None = None, model_port: int | None = None,
                timeout_s: float = START_TIMEOUT_S, rows: int | None = None, command: str = "make up",
                announce: bool = True) -> int:
    """``up`` under the ``var/`` lock (the caller holds it): start the stack unless it is up;
    the exit code (0: up, 128 + signal number: interrupted, nothing left running). ``command``
    names the caller in its messages; ``announce`` prints where everything is at the end."""
    from cml_workspace.server_process import WorkspaceStartError

    host = host or os.environ.get("MODEL_FACTORY_BIND") or "127.0.0.1"
    port = port or int(os.environ.get("MODEL_FACTORY_API_PORT") or DEFAULT_API_PORT)
    dashboard_port = dashboard_port or int(os.environ.get("MODEL_FACTORY_DASHBOARD_PORT") or DEFAULT_DASHBOARD_PORT)
    rc = _before_start(paths, command)
    for what, p in (("Airflow api-server", port), ("dashboard", dashboard_port)):
        if rc is None and not _port_free(host, p):
            _say(f"{command} refused: port {p} on {host} ({what}) is in use; free it or choose another "
                 f"(python -m stack up --port N --dashboard-port M, or MODEL_FACTORY_API_PORT and "
                 f"MODEL_FACTORY_DASHBOARD_PORT).")
            rc = 1
    if rc is not None:
        return rc
    state = UpState(var=str(paths.var), host=host, started_at=time.strftime("%Y-%m-%d %H:%M:%S"),
                    airflow_url=f"http://{_client_host(host)}:{port}")
    try:
        with interruptible():
            _start(paths, state, host=host, port=port, dashboard_port=dashboard_port,
                   workspace_port=workspace_port, model_port=model_port, timeout_s=timeout_s,
                   rows=rows or DEFAULT_ROWS)
    except Interrupted as exc:
        _say("\nInterrupted: stopping what was started…")
        down(quiet=True)
        return 128 + exc.signum
    except Exception as exc:  # whatever went wrong, nothing started is left running
        known = isinstance(exc, (StartError, WorkspaceStartError))
        _say(f"{command} failed: {exc if known else f'{type(exc).__name__}: {exc}'}\nStopping what was started…")
        down(quiet=True)
        return 1
    if announce:
        _say(f"\nThe stack is up (var {paths.var}).")
        _print_where(paths, state)
    return 0


def _before_start(paths: StackPaths, command: str) -> int | None:
    """Under the ``var/`` lock: the exit code if ``up`` must not start (already up, partly
    up, a broken state file), else None, once what an ended stack left running is stopped."""
    try:
        state = read_state(paths)
    except StateFileError as exc:
        _say(f"{command} refused: {exc}")
        return 1
    if state is not None:
        alive = {p.name: process_of(p) is not None for p in state.processes}
        if alive and all(alive.values()):
            _say(f"The stack is already up (since {state.started_at}; var {paths.var}).")
            _print_where(paths, state)
            return 0
        if any(alive.values()):
            dead = ", ".join(name for name, ok in alive.items() if not ok)
            _say(f"The stack is partly up: {dead} not running (logs under {paths.logs}).\n"
                 "Run `make down`, then `make up`.")
            return 1
    # every recorded process has ended (a crash, a kill, a reboot): what they left goes too
    leftovers = stack_processes(paths, state)
    if leftovers:
        _say(f"Stopping what an earlier `make up` left running: {describe(leftovers)}")
        stop_processes(leftovers, LEFTOVER_GRACE_S)
        if still := [p for p in leftovers if p.is_running()]:
            _say(f"{command} refused: could not stop {describe(still)}")
            return 1
    state_path(paths).unlink(missing_ok=True)
    return None


def _start(paths: StackPaths, state: UpState, *, host: str, port: int, dashboard_port: int,
           workspace_port: int | None, model_port: int | None, timeout_s: float, rows: int) -> None:
    from cml_workspace.server_process import RunningWorkspace

    from stack.airflow_cli import migrate_once
    from stack.dashboard import ensure_secrets, serve_command, serve_env

    deadline = time.monotonic() + timeout_s
    paths.make()
    os.environ["AIRFLOW_HOME"] = str(paths.airflow_home)  # before this process imports Airflow
    records: dict[str, ProcessRecord] = {}
    procs: dict[str, subprocess.Popen] = {}

    def keep(record: ProcessRecord) -> None:
        records[record.name] = record
        state.processes.append(record)
        write_state(paths, state)  # at once: an interrupted `up` leaves what `down` needs

    _say(f"Starting the Model Factory stack under {paths.var} (logs in {paths.logs})")
    ws = RunningWorkspace(
        paths.workspace_root, code_dir=REPO, project=PROJECT_NAME, api_key=workspace_api_key(paths),
        cpus=os.cpu_count() or 2, memory_gb=8, extra_args=["--preload", "factory_tasks.jobs.preload"],
        port=workspace_port, model_port=model_port, startup_timeout=min(60.0, timeout_s),
        env={MEMBER_ENV: str(paths.var)}, detached=True,
    )
    ws.start()  # waits for /health; on free ports, retried if another process takes one first
    keep(record_process("workspace", ws.pid, ws.log_path, ws.url))
    state.workspace_url, state.model_service_url = ws.url, ws.model_service_url
    write_state(paths, state)
    _say(f"  local CML workspace  {ws.url} (pid {ws.pid})")

    env = stack_airflow_env(paths, ws, host, port)
    env[MEMBER_ENV] = str(paths.var)  # and so what each starts: stack.processes finds it
    migrated = migrate_once(env, paths.logs / "airflow-setup.log")
    _say(f"  Airflow metadata DB  {'created' if migrated else 'ready'} in {paths.airflow_home}")
    created = ensure_training_table(env, rows)
    _say(f"  training table       historical_customer_interactions "
         f"{f'simulated ({rows} rows)' if created else 'already present'} ({paths.warehouse_db})")
    for name in AIRFLOW_COMPONENTS:
        cmd = [sys.executable, "-m", "airflow", name]
        if name in ("scheduler", "triggerer"):
            # their log servers listen on every interface (8793/8794); the api-server reads the
            # task and trigger logs from the files on this machine instead
            cmd.append("--skip-serve-logs")
        log = paths.logs / f"{name}.log"
        procs[name] = _spawn(name, cmd, env, log)
        keep(record_process(name, procs[name].pid, log, state.airflow_url if name == "api-server" else None))

    dashboard = ensure_secrets(paths)
    apps = dashboard_apps()
    cmd = serve_command(dashboard_port, app=tuple(apps), address=host)  # every app from one panel serve
    base = f"http://{_client_host(host)}:{dashboard_port}"
    state.dashboard_urls = [f"{base}/{app.stem}" for app in apps]
    procs["dashboard"] = _spawn("dashboard", cmd, serve_env(paths, dashboard, base=env), paths.logs / "dashboard.log")
    keep(record_process("dashboard", procs["dashboard"].pid, paths.logs / "dashboard.log", state.dashboard_urls[0]))
    _say(f"  started {', '.join(procs)}; waiting until each answers…")

    def show() -> str:
        health = airflow_health(state.airflow_url) or {"api-server": "no answer"}
        parts = [f"{k} {v}" for k, v in health.items()]
        return "; ".join(parts + [f"dashboard {'answers' if _answers(base) else 'no answer'}"])

    def ready() -> bool:
        health = airflow_health(state.airflow_url)
        # dag_processor is reported once it has heartbeaten; the DAG wait below checks it too
        return (all(health.get(k) == "healthy" for k in ("metadatabase", "scheduler", "triggerer"))
                and health.get("dag_processor", "healthy") == "healthy" and _answers(state.dashboard_urls[0]))

    wait_until("the stack", ready, procs, records, deadline, show)
    slots = default_pool_slots()
    # before the DAGs run (a factory run's experiments queue in this pool), with the code and
    # the connection the plan task resizes it with
    os.environ["AIRFLOW_CONN_AIRFLOW_API"] = env["AIRFLOW_CONN_AIRFLOW_API"]
    from cml_provider.hooks.airflow_pool import AirflowPoolHook

    AirflowPoolHook().size_pool(EXPERIMENT_POOL, slots, description=POOL_DESCRIPTION)
    _say(f"  pool {EXPERIMENT_POOL}: {slots} slots (deferred tasks count)")
    dag_ids = unpause_factory_dags(state.airflow_url, paths, max(10.0, deadline - time.monotonic()))
    _say(f"  DAGs unpaused: {', '.join(dag_ids)}")


def default_pool_slots() -> int:
    """The default grid's ``max_parallel`` (:data:`DEFAULT_POOL_SLOTS` if the grid is invalid)."""
    from factory_tasks.training.grid import GridError, load_grid

    try:
        return load_grid(DEFAULT_GRID, check_fit=False).max_parallel
    except GridError:
        return DEFAULT_POOL_SLOTS


def ensure_training_table(env: dict[str, str], rows: int, table: str | None = None) -> bool:
    """The simulated training table (``table``, default the factory's), as ``make run`` makes it
    (True: created now)."""
    os.environ["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] = env["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"]
    from airflow.sdk import BaseHook

    from factory_tasks.core.names import WAREHOUSE_CONN_ID
    from factory_tasks.core.schema import TRAINING_TABLE
    from factory_tasks.loop.history import ensure_training_table

    hook = BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()
    return ensure_training_table(hook, n_rows=rows, seed=DEFAULT_SEED, table=table or TRAINING_TABLE)


def _print_where(paths: StackPaths, state: UpState) -> None:
    from stack.dashboard import ensure_secrets

    dashboard = ensure_secrets(paths)
    _say(f"  Airflow UI    {state.airflow_url}   user admin, password in {password_file(paths)}")
    for url in state.dashboard_urls:
        _say(f"  dashboard     {url}")
    _say(f"                user {', '.join(dashboard.users)}, passwords in {dashboard.credentials}")
    _say(f"  CML workspace {state.workspace_url} (API key in {paths.api_key_file}); "
         f"model service {state.model_service_url}/model")
    _say(f"  logs          {paths.logs}/ (workspace: {paths.workspace_root / 'server.log'})")
    _say("Run the factory: `make run` (runs it on this stack, which keeps running), or Airflow UI → Dags → "
         "model_factory → Trigger. Its deploy_best_model run waits for a reviewer: Browse → Required Actions "
         "(or Promote in the dashboard).")
    _say("`make status` shows what runs; `make down` stops it.")


def down(*, quiet: bool = False, grace_s: float = STOP_GRACE_S) -> int:
    """Stop what ``up`` recorded, what those processes started and whatever else of the stack
    still runs (:func:`stack.processes.stack_processes`); the exit code."""
    import psutil
    from cml_workspace.scheduler import kill_active_runs

    paths = stack_paths()
    try:
        state = read_state(paths)
    except StateFileError as exc:
        _say(f"make down: {exc}")
        return 1
    records = state.processes if state is not None else []
    names = {r.pid: r.name for r in records}
    stopped: list[str] = []
    ended: list[str] = []
    children_stopped = 0
    killed: list[str] = []
    for phase in STOP_PHASES:
        mains, children, signalled_too, executors = [], [], [], []
        for record in records:
            if record.name not in phase:
                continue
            proc = process_of(record)
            if proc is None:
                ended.append(f"{record.name} (pid {record.pid})")
                continue
            try:  # before the signal: once it has ended its orphans have another parent
                tree = proc.children(recursive=True)
            except psutil.Error:
                tree = []
            children += tree
            if record.name in SIGNAL_CHILDREN_TOO:
                signalled_too += tree
            if record.name in KILL_IDLE_WORKERS:
                executors.append(proc)
            mains.append(proc)
            stopped.append(f"{record.name} (pid {record.pid})")
        for child in signalled_too:
            try:
                child.terminate()
            except psutil.Error:
                pass
        if signalled_too:
            _gone, stuck = psutil.wait_procs(signalled_too, timeout=CHILD_GRACE_S)
            for child in stuck:
                try:
                    child.kill()
                except psutil.Error:
                    pass
        stuck_workers = kill_workers_once_idle(executors)
        killed += [f"{names[p.pid]} (pid {p.pid})" for p in stop_processes(mains, grace_s, while_waiting=stuck_workers)]
        leftovers = [c for c in children if c.is_running()]  # is_running also checks the start time
        if leftovers:
            stop_processes(leftovers, LEFTOVER_GRACE_S)
        children_stopped += len(leftovers)
    # what outlived its parent: the workers of a killed scheduler, a dead workspace's replicas
    orphans = stack_processes(paths, state)
    orphans_text = describe(orphans)
    stop_processes(orphans, LEFTOVER_GRACE_S)
    if state is None and not orphans:
        if not quiet:
            _say(f"Nothing to stop: no {state_path(paths)} and no process of a stack under {paths.var}.")
        return 0
    # runs adopted from an earlier server, if any (not without a state file: `make run` may own them)
    runs = kill_active_runs(paths.workspace_root) if state is not None else 0
    if still := stack_processes(paths, state):
        _say(f"make down: could not stop {describe(still)}; {state_path(paths)} kept.")
        return 1
    state_path(paths).unlink(missing_ok=True)
    if not quiet or killed:
        _say(f"Stopped {len(stopped)} processes: {', '.join(stopped) or 'none'}"
             + (f"; {children_stopped} child processes they left" if children_stopped else "")
             + (f"; {runs} workspace job runs" if runs else "") + ".")
        if ended:
            _say(f"  had already ended: {', '.join(ended)}")
        if orphans:
            _say(f"  left behind by what ended, stopped too: {orphans_text}")
        if killed:
            _say(f"  SIGKILL after {grace_s:.0f}s for: {', '.join(killed)}")
        _say(f"State kept under {paths.var}: `make up` again reuses it; `make clean` removes it.")
    return 0


def status() -> int:
    """What runs: 0 all up, 1 partly (or leftovers of an ended stack), 3 not up."""
    import psutil

    paths = stack_paths()
    try:
        state = read_state(paths)
    except StateFileError as exc:
        _say(str(exc))
        return 1
    members = stack_processes(paths, state)
    if state is None:
        if members:
            _say(f"The stack is not up, but processes of an earlier `make up` still run: {describe(members)}.\n"
                 "`make down` stops them.")
            return 1
        _say(f"The stack is not up (no {state_path(paths)}). `make up` starts it.")
        return 3
    health = _health_body(state.airflow_url)
    up_count = beating = 0
    _say(f"Stack under {paths.var}, started {state.started_at}:")
    for record in state.processes:
        alive = process_of(record) is not None
        up_count += alive
        detail, ok = record.url or "", alive
        if record.name in ("scheduler", "triggerer", "dag-processor"):
            ok, detail = heartbeat(health, record.name, alive)
        beating += ok
        _say(f"  {record.name:<14} pid {record.pid:<8} {'running' if alive else 'NOT RUNNING':<12} {detail}"
             f"   log {record.log}")
    recorded = {r.pid for r in state.processes}
    member_pids = {p.pid for p in members}
    orphans = []
    for proc in members:
        try:
            if proc.pid not in recorded and proc.ppid() not in member_pids:
                orphans.append(proc)
        except psutil.Error:
            continue
    if orphans:
        _say(f"  left behind by a process that ended: {describe(orphans)}")
    if up_count == len(state.processes) and beating == len(state.processes) and not orphans:
        _print_where(paths, state)
        return 0
    if up_count == len(state.processes) and not orphans:
        _say("Every process runs, but not every heartbeat is recent: see their logs.")
        return 1
    _say("Some processes are not running: `make down`, then `make up`." if up_count or orphans else
         "Nothing recorded is running any more: `make up` starts it again.")
    return 1 if up_count or orphans else 3


def foreground(**options) -> int:
    """``make airflow-ui``: ``up``, then wait in the foreground; Ctrl-C (or SIGTERM) runs ``down``."""
    rc = up(**options)
    if rc != 0:
        return rc
    _say("Ctrl-C stops it (this is `make up` in the foreground).")
    try:
        with interruptible():
            while True:
                state = read_state(stack_paths())
                if state is None:  # `make down` elsewhere
                    return 0
                if not all(process_of(p) for p in state.processes):
                    _say("A process of the stack ended: `make status` says which.")
                    return 1
                time.sleep(2)
    except Interrupted:
        _say("\nStopping…")
        return down()
