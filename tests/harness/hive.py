"""A real HiveServer2 endpoint on one machine: Spark's Thrift Server from the ``pyspark`` wheel.

Tests and benchmarks use it where no Hive cluster exists. It speaks the HiveServer2 Thrift
protocol, so Airflow's ``HiveServer2Hook`` (PyHive underneath) talks to it exactly as it would
to a production HiveServer2. Everything it writes (warehouse files, the Derby metastore, logs,
scratch space) stays under the ``work_dir`` it is given.

    with hiveserver2(tmp_path) as server:
        os.environ["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] = server.conn_uri

Needs Java 17 (``JAVA_HOME`` or ``java`` on ``PATH``) and ``pyspark`` (test extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

THRIFT_SERVER_CLASS = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"
DEFAULT_DRIVER_MEMORY = "1g"
USER = "airflow"


class HiveServerError(RuntimeError):
    """The local HiveServer2 could not be started (the message carries its log tail)."""


def find_java_home() -> Path:
    """``JAVA_HOME`` if set, else the installation behind ``java`` on ``PATH``."""
    env = os.environ.get("JAVA_HOME")
    if env and (Path(env) / "bin" / "java").exists():
        return Path(env)
    java = shutil.which("java")
    if not java:
        raise HiveServerError(
            "Java not found: set JAVA_HOME or put java (17) on PATH "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    return Path(os.path.realpath(java)).parent.parent


def find_spark_home() -> Path:
    """The Spark distribution bundled inside the installed ``pyspark`` package."""
    try:
        import pyspark
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise HiveServerError("pyspark is not installed (pip install pyspark==4.3.0)") from exc
    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-submit").exists():
        raise HiveServerError(f"no bin/spark-submit in the pyspark package at {home}")
    return home


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class HiveServer:
    """A running Spark Thrift Server; stop it with :meth:`stop` (or use it as a context manager)."""

    host: str
    port: int
    pid: int
    log_path: Path
    work_dir: Path
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def conn_uri(self) -> str:
        """An Airflow connection URI for ``HiveServer2Hook`` (conn type ``hiveserver2``)."""
        return f"hiveserver2://{USER}@{self.host}:{self.port}/default?auth_mechanism=NONE"

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server: SIGTERM to its own process group, SIGKILL if it lingers."""
        _stop_group(self.pid, self._process, timeout_s)

    def __enter__(self) -> "HiveServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop_group(pid: int, process: subprocess.Popen | None, timeout_s: float) -> None:
    # The server was started in its own session, so its process group id is its pid: this
    # reaches the JVM and anything it spawned, and nothing else.
    def alive() -> bool:
        if process is not None:
            return process.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not alive():
            break
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # stragglers of the group, if any


def _probe(host: str, port: int) -> None:
    """Open a HiveServer2 session and run ``SELECT 1`` (raises if the server is not ready)."""
    from pyhive import hive

    conn = hive.connect(host=host, port=port, username=USER, auth="NONE", database="default")
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT 1")
        if cursor.fetchall() != [(1,)]:
            raise HiveServerError("SELECT 1 did not answer 1")
    finally:
        conn.close()


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def start_hiveserver2(
    work_dir: Path,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 120,
    driver_memory: str = DEFAULT_DRIVER_MEMORY,
) -> HiveServer:
    """Start a Spark Thrift Server and return once it answers ``SELECT 1`` over HiveServer2.

    Raises :class:`HiveServerError` (with the server's log tail) if Java or Spark is missing,
    the process exits, or it does not answer within ``timeout_s``; the process is stopped then.
    """
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("warehouse", "tmp", "logs"):
        (work_dir / sub).mkdir(exist_ok=True)
    java_home = find_java_home()
    spark_home = find_spark_home()
    port = port or free_port(host)
    if _port_open(host, port):
        raise HiveServerError(f"port {port} on {host} is already in use")

    log_path = work_dir / "logs" / f"hiveserver2-{port}.log"
    derby_url = f"jdbc:derby:;databaseName={work_dir / 'metastore_db'};create=true"
    java_opts = f"-Dderby.system.home={work_dir} -Djava.io.tmpdir={work_dir / 'tmp'}"
    confs = {
        "spark.sql.warehouse.dir": str(work_dir / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": derby_url,
        "spark.hadoop.hive.server2.thrift.port": str(port),
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.driver.extraJavaOptions": java_opts,
        "spark.driver.host": host,
        "spark.driver.bindAddress": host,
        "spark.local.dir": str(work_dir / "tmp"),
        "spark.ui.enabled": "false",
        # Small writes and reads: few tasks per statement keep each statement fast.
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.sql.adaptive.enabled": "true",
    }
    cmd = [
        str(spark_home / "bin" / "spark-submit"),
        "--class", THRIFT_SERVER_CLASS,
        "--master", "local[2]",
        "--driver-memory", driver_memory,
        "--name", f"model-factory-hiveserver2-{port}",
    ]
    for key, value in confs.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd.append("spark-internal")

    env = dict(os.environ)
    env.update(
        JAVA_HOME=str(java_home),
        SPARK_HOME=str(spark_home),
        SPARK_LOCAL_IP=host,
        SPARK_LOG_DIR=str(work_dir / "logs"),
        SPARK_NO_DAEMONIZE="1",
    )
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    env.pop("SPARK_CONF_DIR", None)

    started = time.monotonic()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            cmd,
            cwd=work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches only it
        )
    server = HiveServer(host, port, process.pid, log_path, work_dir, process)
    log.info("starting HiveServer2 (Spark Thrift Server) pid %s on %s:%s", process.pid, host, port)

    deadline = started + timeout_s
    last_error: Exception | None = None
    try:
        while True:
            if process.poll() is not None:
                raise HiveServerError(
                    f"HiveServer2 exited with code {process.returncode} before answering; "
                    f"log {log_path}:\n{server.log_tail()}"
                )
            if _port_open(host, port):
                try:
                    _probe(host, port)
                    break
                except Exception as exc:  # not ready yet: the session or query failed
                    last_error = exc
            if time.monotonic() > deadline:
                raise HiveServerError(
                    f"HiveServer2 on {host}:{port} did not answer SELECT 1 within {timeout_s:.0f}s"
                    f" (last error: {last_error!r}); log {log_path}:\n{server.log_tail()}"
                )
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    log.info("HiveServer2 on %s:%s answered after %.1fs", host, port, time.monotonic() - started)
    return server


@contextlib.contextmanager
def hiveserver2(work_dir: Path, port: int | None = None, **kwargs) -> Iterator[HiveServer]:
    """Run a HiveServer2 for the duration of a ``with`` block."""
    server = start_hiveserver2(work_dir, port, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.harness.hive [work_dir] [--port N]`` (from the repository): run a server until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("work_dir", nargs="?", default="var/hive")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with hiveserver2(Path(args.work_dir), args.port) as server:
        print(f"HiveServer2 ready: {server.conn_uri} (pid {server.pid}, log {server.log_path})")
        print(f"export AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE='{server.conn_uri}'", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
