"""Start, stop and restart a local workspace server as a subprocess (``make run``, the stack
commands, benchmarks and tests).

    from cml_workspace.server_process import running_workspace

    with running_workspace(root, cpus=2, memory_gb=8, code_dir=REPO) as ws:
        ws.url, ws.api_key, ws.project_id, ws.root
        ws.model_service_url                 # POST <it>/model (the model service's own port)
        ws.restart()                         # same ports, same root: state survives

The server is a real subprocess (``python -m cml_workspace serve``) on a free port, with a
random API key passed through the environment. Waits are bounded; if the server does not
come up, :class:`WorkspaceStartError` carries the tail of its log (``<root>/server.log``);
:class:`WorkspaceBusyError` says that another server already uses the root.

This module speaks no CML API beyond ``/health`` and finding the project's id: clients use
the provider's hook (``cml_provider``) or, in tests, the helpers in ``tests/workspace``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

#: the folder holding this package (``local/`` in the repository), put first on the server's
#: PYTHONPATH so that ``python -m cml_workspace`` imports this copy of it
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
#: the error a server logs when another server holds the root's lock (``Workspace._lock_root``)
_BUSY = re.compile(r"^\w*Error: (another workspace server \(.*\) is using .+)$", re.MULTILINE)


class WorkspaceStartError(RuntimeError):
    """The server did not answer /health in time (the message holds its log tail)."""


class WorkspaceBusyError(WorkspaceStartError):
    """Another workspace server already uses this root (one server per root)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(no server log)"


class RunningWorkspace:
    """A handle on a workspace server subprocess; also a context manager (start, then stop
    and, with ``kill_runs_on_exit``, kill the runs still alive)."""

    def __init__(
        self,
        root: Path,
        *,
        cpus: float = 2,
        memory_gb: float = 8,
        code_dir: Path | None = None,
        project: str = "model-factory",
        port: int | None = None,
        model_port: int | None = None,
        host: str = "127.0.0.1",
        api_key: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        kill_runs_on_exit: bool = True,
        detached: bool = False,
        pass_fds: Sequence[int] = (),
    ):
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.memory_gb = memory_gb
        self.code_dir = Path(code_dir).resolve() if code_dir is not None else None
        self.project = project
        self.host = host
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.kill_runs_on_exit = kill_runs_on_exit
        #: the server in its own session (a terminal's Ctrl-C does not reach it), for a server
        #: that outlives the process that started it (``make up``)
        self.detached = detached
        self.pass_fds = tuple(pass_fds)
        self._fixed_port = port is not None or model_port is not None
        self.port = port if port is not None else free_port(host)
        self.model_port = model_port if model_port is not None else self._other_free_port()
        self.project_id = ""
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._log_start = 0

    # -- public ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def model_service_url(self) -> str:
        """Base URL of the model service: ``POST <it>/model`` calls a deployed model."""
        return f"http://{self.host}:{self.model_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The server's exit code if it has ended, else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                return
            except WorkspaceBusyError:
                raise
            except WorkspaceStartError as exc:
                port_taken = "address already in use" in str(exc).lower()
                if attempt + 1 >= attempts or not port_taken:
                    raise
                self.port = free_port(self.host)  # lost a race for a free port: take others
                self.model_port = self._other_free_port()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL). Runs keep going (a restart adopts them)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def restart(self) -> None:
        """Stop and start again on the same ports and root."""
        self.stop()
        self._start_once()

    def kill_runs(self) -> int:
        """Kill live runs' process groups (use with the server stopped)."""
        from .scheduler import kill_active_runs

        return kill_active_runs(self.root)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self.kill_runs_on_exit:
            self.kill_runs()

    # -- internals ---------------------------------------------------------------------------
    def _other_free_port(self) -> int:
        while True:
            port = free_port(self.host)
            if port != self.port:
                return port

    def _command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "cml_workspace", "serve",
            "--root", str(self.root), "--host", self.host, "--port", str(self.port),
            "--model-port", str(self.model_port),
            "--cpus", str(self.cpus), "--memory-gb", str(self.memory_gb),
        ]
        if self.project:
            cmd += ["--project", self.project]
        if self.code_dir is not None:
            cmd += ["--code-dir", str(self.code_dir)]
        return cmd + list(self.extra_args)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["CML_WORKSPACE_API_KEY"] = self.api_key
        pythonpath = [str(PACKAGE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        return env

    def _start_once(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")
        self._log_start = self._log_fh.tell()
        self._log_fh.write(f"--- starting workspace on {self.url} ---\n".encode())
        self._log_fh.flush()
        self._proc = subprocess.Popen(
            self._command(), env=self._env(), stdin=subprocess.DEVNULL,
            stdout=self._log_fh, stderr=subprocess.STDOUT, start_new_session=self.detached, pass_fds=self.pass_fds,
        )
        try:
            self._wait_healthy()
            self.project_id = self._find_project_id() if self.project else ""
        except BaseException:
            self.stop()
            raise

    def _start_error(self, what: str) -> WorkspaceStartError:
        log = _read_from(self.log_path, self._log_start)  # only what this start wrote
        busy = _BUSY.findall(log)
        if busy:
            return WorkspaceBusyError(busy[-1].strip())
        return WorkspaceStartError(f"{what}\n--- {self.log_path} (tail) ---\n{_tail(log)}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise self._start_error(f"workspace server exited with code {code} before answering /health")
            try:
                resp = httpx.get(f"{self.url}/health", timeout=1.0)
                if resp.status_code == 200:
                    return
                last_error = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise self._start_error(
            f"workspace server did not answer {self.url}/health within {self.startup_timeout} s (last: {last_error})"
        )

    def _find_project_id(self) -> str:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10.0) as http:
            token = ""
            while True:
                resp = http.get("/api/v2/projects", params={
                    "search_filter": json.dumps({"name": self.project}), "page_size": 100, "page_token": token,
                })
                resp.raise_for_status()
                body = resp.json()
                for project in body["projects"]:
                    if project["name"] == self.project:
                        return project["id"]
                token = body.get("next_page_token") or ""
                if not token:
                    raise WorkspaceStartError(f"project {self.project!r} not found after start")


@contextmanager
def running_workspace(root: Path, **options) -> Iterator[RunningWorkspace]:
    """Start a workspace server subprocess, wait for /health, yield its handle, stop it.

    ``options`` go to :class:`RunningWorkspace` (``cpus``, ``memory_gb``, ``code_dir``,
    ``project``, ``port``, ``model_port``, ``host``, ``api_key``, ``extra_args`` such as
    ``["--oversize", "clamp"]``, ``env``, ``startup_timeout``, ``kill_runs_on_exit``: by
    default runs still alive at the end are killed too; ``detached`` and ``pass_fds`` for a
    server that outlives its starter). A server that fails to start stops
    nothing else: the runs of another server on the same root are left alone.
    """
    with RunningWorkspace(root, **options) as handle:
        yield handle
