"""Model builds: a real check of the entry point, in the background.

Life of a build (CML's status strings): ``queued`` (the create call's answer) → ``pushing``
(the build runs) → ``built`` | ``build failed`` | ``timedout``. A build, in the project folder
as working directory with the replicas' ``PYTHONPATH`` (project folder, code dir, the ``cml``
stand-in) and no deployment environment:

1. fails on a nested ``.git`` folder (CML builds do);
2. finds ``file_path`` in the project folder, else in the code dir (as runs find scripts);
3. runs the project's ``cdsw-build.sh`` with bash if there is one (CML does, e.g.
   ``pip3 install -r requirements.txt``);
4. imports the file in a fresh interpreter and checks ``function_name`` is a callable
   (``model_replica.py check``). ``build_check()`` is not called here: the model files are not
   in a build (CML builds skip gitignored files); a replica calls it when it starts.

The outcome is in the build's ``status_message`` (a local extension) and the whole output in
``<root>/builds/<build_id>.log``. Not modelled: the git snapshot (``.gitignore``) and the
image; replicas run the live project folder. Builds under way when the server stops are run
again when it starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from . import files
from .config import WorkspaceConfig
from .errors import ApiError
from .model_pool import REPLICA_SCRIPT
from .scheduler import group_has_members
from .store import Doc, Store
from .util import now_ts

log = logging.getLogger("cml_workspace.builds")

#: the folder holding the ``cml`` stand-in package (on replicas' and builds' PYTHONPATH)
SHIM_DIR = Path(__file__).with_name("model_shim")
#: builds running at once (they are mostly imports; the machine may be small)
MAX_PARALLEL_BUILDS = 2


class BuildStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    PUSHING = "pushing"
    BUILT = "built"
    BUILD_FAILED = "build failed"
    TIMEDOUT = "timedout"


IN_PROGRESS = (BuildStatus.PENDING.value, BuildStatus.QUEUED.value, BuildStatus.PUSHING.value)
SUCCESSFUL = (BuildStatus.BUILT.value, "succeeded")


# -- shared with deployments ----------------------------------------------------------------
def find_entry_point(config: WorkspaceConfig, project_dir: Path, file_path: str) -> Path | None:
    """The entry point file: in the project folder, else in the code dir (the repository)."""
    bases = [project_dir] + ([config.code_dir] if config.code_dir is not None else [])
    for base in bases:
        try:
            path = files.resolve(base, file_path)
        except ApiError:
            return None
        if path.is_file():
            return path
    return None


def model_environment(config: WorkspaceConfig, project: Doc, *, cpu: float, memory: float,
                      extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a build or a replica gets: the server's environment (minus its key), ``extra``
    (a deployment's environment), thread limits, ``PYTHONPATH`` = project folder, code dir,
    the ``cml`` stand-in, then any existing value; and what a CML engine offers."""
    env = dict(os.environ)
    env.pop("CML_WORKSPACE_API_KEY", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    threads = str(max(1, math.floor(cpu)))
    env.update({"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "CML_CPU": f"{cpu:g}", "CML_MEMORY_GB": f"{memory:g}"})
    project_dir = config.project_files_dir(project["id"])
    env["PYTHONPATH"] = os.pathsep.join(
        str(p) for p in (project_dir, config.code_dir, SHIM_DIR, env.get("PYTHONPATH")) if p)
    env.update({
        "CDSW_PROJECT": project.get("name", ""),
        "CDSW_PROJECT_ID": project["id"],
        "CDSW_CPU_MILLICORES": str(int(round(cpu * 1000))),
        "CDSW_MEMORY_MB": str(int(round(memory * 1024))),
        "CDSW_API_URL": f"{config.url}/api/v1",
        "CDSW_APIV2_KEY": config.api_key,
        "CML_WORKSPACE_URL": config.url,
    })
    return env


def nested_git(project_dir: Path) -> Path | None:
    """A ``.git`` below the project's top level (the project's own ``.git`` is fine)."""
    for current, dirs, names in os.walk(project_dir):
        here = Path(current)
        if here != project_dir and (".git" in dirs or ".git" in names):
            return (here / ".git").relative_to(project_dir)
        if here == project_dir and ".git" in dirs:
            dirs.remove(".git")
    return None


class BuildRunner:
    """Runs builds in background threads (``MAX_PARALLEL_BUILDS`` at once)."""

    def __init__(self, config: WorkspaceConfig, store: Store, *, on_built: Callable[[Doc], None] | None = None):
        self.config = config
        self.store = store
        self.on_built = on_built
        self._slots = threading.Semaphore(MAX_PARALLEL_BUILDS)
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancelled: set[str] = set()
        self._closing = threading.Event()

    def log_path(self, build_id: str) -> Path:
        return self.config.builds_dir / f"{build_id}.log"

    def start(self) -> None:
        self.config.builds_dir.mkdir(parents=True, exist_ok=True)
        again = self.store.list("builds", statuses=IN_PROGRESS)
        for build in again:
            self.store.update("builds", build["id"], {
                "status": BuildStatus.QUEUED.value, "status_message": "queued again: the workspace restarted"})
            self.submit(build["id"])
        if again:
            log.info("%d model build(s) under way at the last stop queued again", len(again))

    def submit(self, build_id: str) -> None:
        threading.Thread(target=self._run, args=(build_id,), name=f"build-{build_id}", daemon=True).start()

    def cancel(self, build_id: str) -> None:
        """Kill a build's process (its model is being deleted)."""
        with self._lock:
            self._cancelled.add(build_id)
            proc = self._procs.get(build_id)
        if proc is not None:
            _killpg(proc.pid)

    def close(self) -> None:
        """Stop the builds under way; they stay queued/pushing and run again at the next start."""
        self._closing.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            _killpg(proc.pid)

    # -- one build -----------------------------------------------------------------------------
    def _run(self, build_id: str) -> None:
        with self._slots:
            if self._closing.is_set():
                return
            doc = self.store.get("builds", build_id)
            if doc is None or doc["status"] not in IN_PROGRESS:
                return
            self.store.update("builds", build_id, {
                "status": BuildStatus.PUSHING.value, "status_message": "building: checking the entry point",
                "updated_at": now_ts()})
            self._append_log(build_id, f"[cml_workspace] {now_ts()} build {build_id} of model {doc['model_id']}: "
                                       f"{doc['file_path']}:{doc['function_name']}")
            try:
                status, message = self._build(doc)
            except Exception as exc:
                log.exception("build %s failed inside the workspace", build_id)
                status, message = BuildStatus.BUILD_FAILED, f"internal error: {exc}"
            if self._closing.is_set() or build_id in self._cancelled:
                return  # killed by the shutdown (built again at the next start) or its model is gone
            self._append_log(build_id, f"[cml_workspace] {now_ts()} build {build_id} {status.value}: {message}")
            log.info("build %s %s: %s", build_id, status.value, message)
            now = now_ts()
            changes = {"status": status.value, "status_message": message, "updated_at": now}
            if status == BuildStatus.BUILT:
                changes["built_at"] = now
            doc = self.store.update("builds", build_id, changes)
        if doc is not None and status == BuildStatus.BUILT and self.on_built is not None:
            try:
                self.on_built(doc)
            except Exception:
                log.exception("after build %s", build_id)

    def _build(self, doc: Doc) -> tuple[BuildStatus, str]:
        cfg = self.config
        build_id = doc["id"]
        project = self.store.get("projects", doc["project_id"]) or {"id": doc["project_id"]}
        project_dir = cfg.project_files_dir(doc["project_id"])
        nested = nested_git(project_dir)
        if nested is not None:
            return BuildStatus.BUILD_FAILED, (f"the project holds a nested git repository ({nested}): "
                                              "CML builds fail on a nested .git folder")
        entry = find_entry_point(cfg, project_dir, doc["file_path"])
        if entry is None:
            where = "the project" + (" or the code dir" if cfg.code_dir else "")
            return BuildStatus.BUILD_FAILED, f"file_path {doc['file_path']!r} not found in {where}"
        env = model_environment(cfg, project, cpu=1, memory=2)
        deadline = time.monotonic() + cfg.model_build_timeout_s
        timed_out = (BuildStatus.TIMEDOUT, f"the build took longer than {cfg.model_build_timeout_s:g} s")
        if (project_dir / "cdsw-build.sh").is_file():
            self._append_log(build_id, "[cml_workspace] running cdsw-build.sh")
            code = self._exec(build_id, ["bash", "cdsw-build.sh"], project_dir, env, deadline)
            if code is None:
                return timed_out
            if code != 0:
                return BuildStatus.BUILD_FAILED, f"cdsw-build.sh exited with code {code} (see builds/{build_id}.log)"
        result = cfg.builds_dir / f"{build_id}.check.json"
        result.unlink(missing_ok=True)
        command = [cfg.python, str(REPLICA_SCRIPT), "check", "--file", str(entry), "--display", doc["file_path"],
                   "--function", doc["function_name"], "--result", str(result)]
        code = self._exec(build_id, command, project_dir, env, deadline)
        if code is None:
            return timed_out
        try:
            outcome = json.loads(result.read_text())
        except (OSError, ValueError):
            return BuildStatus.BUILD_FAILED, f"the entry point check ended with code {code} without an outcome"
        finally:
            result.unlink(missing_ok=True)
        if code == 0 and outcome.get("ok"):
            return BuildStatus.BUILT, outcome.get("message") or "built"
        return BuildStatus.BUILD_FAILED, f"{doc['file_path']}: {outcome.get('message') or f'exit code {code}'}"

    def _exec(self, build_id: str, command: list[str], cwd: Path, env: dict, deadline: float) -> int | None:
        """Run a build step (own process group, output to the build log); None on timeout."""
        with open(self.log_path(build_id), "ab") as out:
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        with self._lock:
            self._procs[build_id] = proc
        try:
            return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait()
            return None
        finally:
            with self._lock:
                self._procs.pop(build_id, None)
            if group_has_members(proc.pid):
                _killpg(proc.pid)  # leftovers of the step

    def _append_log(self, build_id: str, text: str) -> None:
        try:
            self.config.builds_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_path(build_id), "a") as fh:
                fh.write(text.rstrip("\n") + "\n")
        except OSError:
            log.exception("cannot write the log of build %s", build_id)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
