"""The production topology on one machine, for the CI test of ``tests/topology`` (a test
harness, not part of the product): PostgreSQL (Debian's package) as Airflow's metadata DB,
Redis (Debian's package) as the Celery broker,
``CeleryExecutor`` with two Celery workers standing in for two machines (each its own working
directory, ``TMPDIR``, ``HOME``, ``AIRFLOW_HOME`` and artifacts folder, and its own identity:
``[core] hostname_callable`` is :func:`worker_hostname`), plus the api-server, scheduler,
dag-processor and triggerer of ``make up`` and the local CML workspace.

What the workers share is what machines share in production: the metadata DB, the broker, the
api-server's execution API, the CML project, the warehouse (the SQLite file standing in for
Hive), the object store (``MODEL_FACTORY_OBJECT_STORE``, a ``file://`` folder standing in for
S3) and the task-log folder (standing in for remote task logging; the api-server reads it).

Every password and signing key is made at start-up and lives only in the processes'
environment (and 0600 files in the temporary folders); nothing is printed. Process handling is
``stack.up``'s: each child in its own session with its log, stopped by pid (identity checked)
with SIGTERM, then SIGKILL, then whatever it left behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stack.env import PROJECT_NAME, REPO, StackPaths, workspace_api_key
from stack.up import (
    AIRFLOW_COMPONENTS,
    ProcessRecord,
    airflow_health,
    api_token,
    record_process,
    stack_airflow_env,
    stop_processes,
    tail,
    wait_until,
)

WORKER_NAME_ENV = "MODEL_FACTORY_WORKER_NAME"
WORKERS = ("worker-a", "worker-b")
FACTORY_DAGS = ("model_factory", "experiments_summary", "deploy_best_model")
#: the scheduling side first, the workers (warm shutdown: they finish what runs), the api-server last
STOP_PHASES = (("scheduler", "dag-processor", "triggerer"), WORKERS, ("api-server",))


def worker_hostname() -> str:
    """``[core] hostname_callable``: the worker's name (``$MODEL_FACTORY_WORKER_NAME``), else the FQDN."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def postgres_bin() -> Path | None:
    """The bin folder of Debian's newest PostgreSQL (``/usr/lib/postgresql/<N>/bin``), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def redis_bin() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TopologyError(RuntimeError):
    pass


def _spawn(name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path, **popen) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"--- topology: starting {name} at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        fh.flush()
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, **popen)


def _wait(what: str, ready, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise TopologyError(f"{what} exited with code {proc.returncode} while starting; its log {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise TopologyError(f"{what} was not ready after {timeout_s:.0f}s; its log {log}:\n{tail(log)}")
        time.sleep(0.3)


def _end(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Postgres:
    url: str  # SQLAlchemy URL (psycopg2) of the ``airflow`` database
    port: int
    data: Path
    log: Path
    proc: subprocess.Popen
    password: str


@contextlib.contextmanager
def postgres(log_dir: Path, env: dict[str, str], timeout_s: float = 60) -> Iterator[Postgres]:
    """A throw-away PostgreSQL on a free loopback port: ``initdb`` and ``postgres`` run as the
    ``postgres`` user (the server refuses root) in a temporary data folder, scram-sha-256 with
    a generated password, no fsync (a test database). Fast shutdown and removal on exit."""
    import psycopg2

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise TopologyError("PostgreSQL is not installed (scripts/ensure-system-deps.sh installs it in CI)")
    root = Path(tempfile.mkdtemp(prefix="mf-postgres-"))  # not under a root-only pytest folder
    password = secrets.token_urlsafe(24)
    log = log_dir / "postgres.log"
    proc = None
    try:
        shutil.chown(root, "postgres", "postgres")
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        shutil.chown(pwfile, "postgres", "postgres")
        as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
        pg_env = {**env, "HOME": str(root), "LC_ALL": "C.UTF-8"}
        with open(log, "ab") as fh:
            subprocess.run([str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "airflow", f"--pwfile={pwfile}",
                            "-A", "scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                           env=pg_env, cwd=root, stdout=fh, stderr=subprocess.STDOUT, check=True, timeout=120,
                           **as_postgres)
        pwfile.unlink()
        port = free_port()
        proc = _spawn("postgres", [str(bin_dir / "postgres"), "-D", str(root / "data"), "-p", str(port),
                                   "-h", "127.0.0.1", "-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off",
                                   "-c", "full_page_writes=off", "-c", "max_connections=200"],
                      pg_env, log, root, **as_postgres)

        def connects() -> bool:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="airflow", password=password, dbname="postgres",
                                 connect_timeout=2).close()
                return True
            except psycopg2.OperationalError:
                return False

        _wait("postgres", connects, proc, log, timeout_s)
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="airflow", password=password, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()
        yield Postgres(f"postgresql+psycopg2://airflow:{password}@127.0.0.1:{port}/airflow", port, root / "data", log,
                       proc, password)
    finally:
        if proc is not None:
            _end(proc, signal.SIGINT)  # fast shutdown: clients are disconnected
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Redis:
    url: str
    port: int
    log: Path
    proc: subprocess.Popen
    password: str


@contextlib.contextmanager
def redis(folder: Path, env: dict[str, str], timeout_s: float = 30) -> Iterator[Redis]:
    """``redis-server`` in the foreground on a free loopback port, no persistence, a generated
    password (in a 0600 config file, not on the command line)."""
    binary = redis_bin()
    if binary is None:
        raise TopologyError("redis-server is not installed (scripts/ensure-system-deps.sh installs it in CI)")
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    port = free_port()
    conf = folder / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {folder}\n"
                 f"requirepass {password}\n")
    log = folder / "redis.log"
    proc = _spawn("redis", [binary, str(conf)], env, log, folder)
    try:
        import redis as redis_client  # celery[redis]'s client

        def pongs() -> bool:
            try:
                return redis_client.Redis(port=port, password=password, socket_timeout=2).ping()
            except redis_client.RedisError:
                return False

        _wait("redis-server", pongs, proc, log, timeout_s)
        yield Redis(f"redis://:{password}@127.0.0.1:{port}/0", port, log, proc, password)
    finally:
        _end(proc)


@dataclass
class Topology:
    paths: StackPaths
    api_url: str
    env: dict[str, str]
    workers: dict[str, Path]  # name -> that "machine's" folder
    records: dict[str, ProcessRecord] = field(default_factory=dict)
    postgres: Postgres | None = None
    redis: Redis | None = None
    workspace: object | None = None

    @property
    def logs(self) -> list[str]:
        extra = [str(p.log) for p in (self.postgres, self.redis) if p is not None]
        return sorted([r.log for r in self.records.values()] + extra)

    @property
    def secrets(self) -> list[str]:
        """Every secret of this topology (a test can check no log shows one)."""
        found = [s.password for s in (self.postgres, self.redis) if s is not None]
        return found + [self.env["AIRFLOW__API_AUTH__JWT_SECRET"], self.env["AIRFLOW__API__SECRET_KEY"]]


def _worker_env(env: dict[str, str], name: str, folder: Path) -> dict[str, str]:
    """The worker's own disk: nothing there is seen by another worker."""
    for sub in ("cwd", "tmp", "home", "airflow", "artifacts"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {**env, WORKER_NAME_ENV: name, "TMPDIR": str(folder / "tmp"), "HOME": str(folder / "home"),
            "AIRFLOW_HOME": str(folder / "airflow"), "MODEL_FACTORY_ARTIFACTS": str(folder / "artifacts")}


def _stop_records(records: dict[str, ProcessRecord], grace_s: float) -> None:
    import psutil

    from stack.up import process_of

    for phase in STOP_PHASES:
        mains, children = [], []
        for name in phase:
            proc = process_of(records[name]) if name in records else None
            if proc is None:
                continue
            with contextlib.suppress(psutil.Error):
                children += proc.children(recursive=True)
            mains.append(proc)
        stop_processes(mains, grace_s)
        stop_processes([c for c in children if c.is_running()], 3.0)


@contextlib.contextmanager
def celery_topology(paths: StackPaths, *, dags: tuple[str, ...] = FACTORY_DAGS, rows: int = 2000,
                    api_port: int | None = None, timeout_s: float = 240,
                    stop_grace_s: float = 20.0) -> Iterator[Topology]:
    """Start everything (bounded by ``timeout_s``), unpause ``dags`` (the others stay paused),
    yield the :class:`Topology`, stop everything."""
    from cml_workspace.scheduler import kill_active_runs
    from cml_workspace.server_process import running_workspace
    from stack.airflow_cli import _airflow

    deadline = time.monotonic() + timeout_s
    paths.make()
    base = {**os.environ, "MODEL_FACTORY_VAR": str(paths.var)}  # every child is findable by it
    api_port = api_port or free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    records: dict[str, ProcessRecord] = {}
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres(paths.logs, base))
        rd = stack.enter_context(redis(paths.var / "redis", base))
        ws = stack.enter_context(running_workspace(
            paths.workspace_root, code_dir=REPO, project=PROJECT_NAME, api_key=workspace_api_key(paths),
            cpus=os.cpu_count() or 2, memory_gb=8, extra_args=["--preload", "factory_tasks.jobs.preload"],
            env={"MODEL_FACTORY_VAR": str(paths.var)}, startup_timeout=60.0))
        stack.callback(kill_active_runs, paths.workspace_root)
        env = stack_airflow_env(paths, ws, "127.0.0.1", api_port)  # MODEL_FACTORY_VAR included
        env.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url,
            "AIRFLOW__CELERY__BROKER_URL": rd.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            # that callable lives in this harness, under tests/: the repository on the path
            # lets every Airflow process import it
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            # shared by all "machines", as remote task logging would be; the api-server reads it
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(paths.logs / "tasks"),
            "MODEL_FACTORY_OBJECT_STORE": f"file://{paths.var / 'object-store'}",
            # production's: every experiment defers, and the triggerer ends it (make up's stack
            # follows its short runs from the worker first)
            "MODEL_FACTORY_CML_WAIT_BEFORE_DEFER_S": "0",
            # only the DAGs asked for run (the closed-loop ones would compete for the 2 cores)
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        })
        topo = Topology(paths, api_url, env, {w: paths.var / "machines" / w for w in WORKERS}, records, pg, rd, ws)
        _airflow(["db", "migrate"], env, paths.logs / "airflow-setup.log", timeout_s=max(30.0, deadline - time.monotonic()))
        _ensure_training_table(env, rows)

        procs: dict[str, subprocess.Popen] = {}
        stack.callback(_stop_records, records, stop_grace_s)
        for name in AIRFLOW_COMPONENTS:
            cmd = [sys.executable, "-m", "airflow", name]
            if name in ("scheduler", "triggerer"):
                cmd.append("--skip-serve-logs")
            log = paths.logs / f"{name}.log"
            procs[name] = _spawn(name, cmd, env, log, REPO)
            records[name] = record_process(name, procs[name].pid, log, api_url if name == "api-server" else None)
        for name, folder in topo.workers.items():
            cmd = [sys.executable, "-m", "airflow", "celery", "worker", "--concurrency", "2",
                   "--celery-hostname", f"{name}@%h", "--skip-serve-logs", "--without-mingle", "--without-gossip"]
            log = paths.logs / f"{name}.log"
            procs[name] = _spawn(name, cmd, _worker_env(env, name, folder), log, folder / "cwd")
            records[name] = record_process(name, procs[name].pid, log)

        def show() -> str:
            health = airflow_health(api_url) or {"api-server": "no answer"}
            ready = [w for w in WORKERS if _worker_ready(records[w].log, w)]
            return "; ".join([f"{k} {v}" for k, v in health.items()] + [f"workers ready: {ready}"])

        def ready() -> bool:
            health = airflow_health(api_url)
            return (all(health.get(k) == "healthy" for k in ("metadatabase", "scheduler", "triggerer"))
                    and health.get("dag_processor", "healthy") == "healthy"
                    and all(_worker_ready(records[w].log, w) for w in WORKERS))

        wait_until("the Celery topology", ready, procs, records, deadline, show)
        _unpause(api_url, paths, dags, deadline)
        yield topo


def _unpause(url: str, paths: StackPaths, dag_ids: tuple[str, ...], deadline: float) -> None:
    """Wait until the dag-processor has parsed ``dag_ids``, then unpause them."""
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_token(url, paths)}"}, timeout=10) as http:
        for dag_id in dag_ids:
            while (resp := http.get(f"/api/v2/dags/{dag_id}")).status_code == 404:
                if time.monotonic() > deadline:
                    raise TopologyError(f"the dag-processor had not parsed {dag_id} before the deadline; "
                                        f"its log {paths.logs / 'dag-processor.log'}")
                time.sleep(1)
            resp.raise_for_status()
            http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()


def _worker_ready(log: str, name: str) -> bool:
    try:
        return f"{name}@" in (text := Path(log).read_text(errors="replace")) and " ready." in text
    except OSError:
        return False


def _ensure_training_table(env: dict[str, str], rows: int) -> bool:
    """The simulated training table in the (shared) warehouse, made in this process."""
    from stack.up import ensure_training_table as ensure

    key = "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"
    before = os.environ.get(key)
    try:
        return ensure(env, rows)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
