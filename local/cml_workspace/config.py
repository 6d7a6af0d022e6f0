"""Workspace configuration: where state lives, the compute budget, the API key."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: What to do with a run whose job asks for more CPU or memory than the whole workspace has.
OVERSIZE_FAIL = "fail"  # the run ends ENGINE_FAILED at once, the reason in its log (default)
OVERSIZE_CLAMP = "clamp"  # the run reserves (and gets thread limits for) the whole budget
OVERSIZE_POLICIES = (OVERSIZE_FAIL, OVERSIZE_CLAMP)


def physical_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8.0


def default_cpus() -> float:
    return float(os.cpu_count() or 1)


def default_memory_gb() -> float:
    return round(0.75 * physical_memory_gb(), 2)


@dataclass(frozen=True)
class WorkspaceConfig:
    """Everything the server needs. ``api_key`` never comes from the command line."""

    root: Path
    api_key: str
    host: str = "127.0.0.1"
    port: int = 8090
    cpus: float = field(default_factory=default_cpus)
    memory_gb: float = field(default_factory=default_memory_gb)
    code_dir: Path | None = None
    projects: tuple[str, ...] = ()
    oversize: str = OVERSIZE_FAIL
    #: reject jobs without ``runtime_identifier`` in ML Runtimes projects, as CML does
    #: (off by default: the local workspace then only logs a warning)
    require_runtime_identifier: bool = False
    python: str = sys.executable
    #: modules a warm engine imports once; runs are then forked from it (see warm_engine.py).
    #: Empty: every run is a fresh ``python script.py``.
    preload: tuple[str, ...] = ()
    #: how often the scheduler looks at processes and the queue (it is also woken on changes)
    poll_interval_s: float = 0.1
    #: SIGTERM to SIGKILL escalation when stopping or timing out a run (and a model replica)
    kill_grace_s: float = 3.0
    #: the model service (``POST /model``) listens on its own port, as CML's is its own host
    #: (``modelservice.<domain>``). None: ``port + 1``; 0: any free port (see ``/health``)
    model_port: int | None = None
    #: None: the API's host
    model_host: str | None = None
    #: a model call waits this long for a free replica, then gets HTTP 429 ``model.busy`` (CML: 30 s)
    model_busy_timeout_s: float = 30.0
    #: a replica that has not answered a call after this long: the caller gets HTTP 504
    model_request_timeout_s: float = 60.0
    #: a replica must have loaded its entry point (and passed ``build_check()``) within this
    model_start_timeout_s: float = 300.0
    #: a model build (``cdsw-build.sh`` + the entry-point check) longer than this ends ``timedout``
    model_build_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("an API key is required")
        if self.cpus <= 0 or self.memory_gb <= 0:
            raise ValueError("cpus and memory_gb must be positive")
        if self.oversize not in OVERSIZE_POLICIES:
            raise ValueError(f"oversize must be one of {OVERSIZE_POLICIES}, not {self.oversize!r}")
        for name in ("model_busy_timeout_s", "model_request_timeout_s", "model_start_timeout_s",
                     "model_build_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.model_port is None:
            object.__setattr__(self, "model_port", self.port + 1)
        if self.model_port == self.port and self.port:
            raise ValueError(f"the model service needs its own port, not the API's ({self.port})")
        if self.model_host is None:
            object.__setattr__(self, "model_host", self.host)
        object.__setattr__(self, "root", Path(self.root).resolve())
        if self.code_dir is not None:
            object.__setattr__(self, "code_dir", Path(self.code_dir).resolve())

    @property
    def db_path(self) -> Path:
        return self.root / "workspace.db"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def projects_dir(self) -> Path:
        return self.root / "projects"

    def project_files_dir(self, project_id: str) -> Path:
        """The folder standing in for ``/home/cdsw`` of a project."""
        return self.projects_dir / project_id / "files"

    @property
    def builds_dir(self) -> Path:
        return self.root / "builds"

    @property
    def deployments_dir(self) -> Path:
        return self.root / "deployments"

    @property
    def metrics_db_path(self) -> Path:
        return self.root / "model_metrics.db"

    @property
    def url(self) -> str:
        return f"http://{reachable_host(self.host)}:{self.port}"


def reachable_host(host: str) -> str:
    """The address a local client uses for a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
