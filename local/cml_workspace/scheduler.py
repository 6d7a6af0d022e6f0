"""The run scheduler: turns job runs into real subprocesses under a CPU/memory budget.

Life of a run (statuses exactly as CML API v2):

``ENGINE_SCHEDULING``  waits, FIFO, until its job's ``cpu`` and ``memory`` fit in what the
                     workspace has left of ``--cpus`` / ``--memory-gb`` (strict FIFO: a
                     waiting head blocks later runs, so big runs are not starved).
``ENGINE_STARTING``    the wrapper process is started (new session = new process group).
``ENGINE_RUNNING``     the wrapper reports the script is running.
``ENGINE_SUCCEEDED`` / ``ENGINE_FAILED``   exit code 0 / anything else.
``ENGINE_TIMEDOUT``    ran longer than the job's ``timeout`` with ``kill_on_timeout``: killed.
``ENGINE_STOPPING`` → ``ENGINE_STOPPED``   after ``:stop`` (a scheduling run stops at once).

A run asking for more than the whole budget either fails at once (``oversize="fail"``, the
default; the reason is in its log) or is clamped to the budget (``oversize="clamp"``).

With ``--preload`` the wrapper and the script are forked from a warm engine (see
``warm_engine.py``) instead of started as fresh interpreters; everything above holds either way.

Stopping or timing out sends SIGTERM to the whole process group, then SIGKILL after
``kill_grace_s``. Everything the scheduler needs is in the store (pids, reservations, stop
reasons), so a restarted workspace reconciles: live wrappers keep being watched, finished
ones are completed from their exit-code files, runs that never started are rescheduled.
Shutting the server down never kills runs.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from . import files
from .config import OVERSIZE_CLAMP, WorkspaceConfig
from .errors import ApiError
from .store import Doc, Store
from .util import now_ts, parse_ts
from .warm_engine import EngineError, WarmEngine

log = logging.getLogger("cml_workspace.scheduler")

WRAPPER = Path(__file__).with_name("run_wrapper.py")
_EPS = 1e-9


class RunStatus(StrEnum):
    SCHEDULING = "ENGINE_SCHEDULING"
    STARTING = "ENGINE_STARTING"
    RUNNING = "ENGINE_RUNNING"
    STOPPING = "ENGINE_STOPPING"
    STOPPED = "ENGINE_STOPPED"
    UNKNOWN = "ENGINE_UNKNOWN"
    SUCCEEDED = "ENGINE_SUCCEEDED"
    FAILED = "ENGINE_FAILED"
    TIMEDOUT = "ENGINE_TIMEDOUT"
    SKIPPED = "ENGINE_SKIPPED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMEDOUT, RunStatus.STOPPED, RunStatus.SKIPPED})
#: statuses in which a run holds a process and a share of the budget
PROCESS_STATES = (RunStatus.STARTING.value, RunStatus.RUNNING.value, RunStatus.STOPPING.value)

STOP_REASON_STOP = "stop"
STOP_REASON_TIMEOUT = "timeout"


# -- process helpers (Linux /proc, with a portable fallback) ------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, a process's identity."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def wrapper_alive(pid: int, run_id: str, start_ticks: int | None = None) -> bool:
    """Is ``pid`` still the wrapper of ``run_id`` (not a zombie, not a reused pid)?

    A cold wrapper carries the run id on its command line; a warm one (forked, so it has the
    engine's command line) is recognised by its recorded start time."""
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    if start_ticks is not None:
        return fields[19] == str(start_ticks)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return run_id.encode() in fh.read()
    except OSError:
        return False


def group_has_members(pgid: int) -> bool:
    """Does process group ``pgid`` still have live members? (A group id is not reused while
    it has members, so signalling it is then safe.)"""
    if not os.path.isdir("/proc/self"):
        return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            return True
    return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class RunScheduler:
    """Starts, watches, stops and times out runs. One background thread; all state
    transitions happen under one lock (the API's ``stop`` takes it too)."""

    def __init__(
        self,
        config: WorkspaceConfig,
        store: Store,
        *,
        on_finished: Callable[[Doc], None] | None = None,
    ):
        self.config = config
        self.store = store
        self.on_finished = on_finished
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._kill_at: dict[str, float] = {}  # run id -> monotonic time for the next SIGKILL
        self._engine: WarmEngine | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.config.runs_dir.mkdir(parents=True, exist_ok=True)
        self.reconcile()
        if self.config.preload:
            base = self._base_environment()
            if pythonpath := self._pythonpath(base):
                base["PYTHONPATH"] = pythonpath
            self._engine = WarmEngine(self.config.python, self.config.preload, base,
                                      str(self.config.code_dir or self.config.root))
            self._engine.start()
        self._thread = threading.Thread(target=self._loop, name="run-scheduler", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop watching. Runs keep going; a restarted workspace adopts them."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._engine is not None:
            with self._lock:
                self._engine.close()

    def wake(self) -> None:
        self._wake.set()

    def reconcile(self) -> None:
        """After a (re)start: adopt live runs, requeue runs that never got a process."""
        with self._lock:
            adopted = requeued = 0
            for run in self.store.list("runs", statuses=PROCESS_STATES):
                pid = run.get("_pid")
                if not pid:
                    self.store.update("runs", run["id"], {
                        "status": RunStatus.SCHEDULING.value, "starting_at": None, "running_at": None,
                    })
                    requeued += 1
                    continue
                if wrapper_alive(pid, run["id"], run.get("_pid_start")):
                    adopted += 1
                    if run.get("_stop_reason"):  # it was being stopped / timed out: finish that
                        self._terminate(run)
                # dead wrappers are completed by the first tick, from their exit-code files
            queued = len(self.store.list("runs", statuses=[RunStatus.SCHEDULING.value]))
            log.info("reconciled runs: %d live adopted, %d requeued, %d scheduling", adopted, requeued, queued)

    # -- API-facing operations -------------------------------------------------------------
    def enqueue(self, run: Doc) -> Doc:
        self.store.insert("runs", run)
        self.wake()
        return run

    def stop(self, run_id: str) -> Doc | None:
        """``:stop``: a scheduling run stops at once; a live one goes STOPPING and its
        process group gets SIGTERM (SIGKILL after the grace period). Terminal runs are
        returned unchanged (stopping is idempotent)."""
        with self._lock:
            run = self.store.get("runs", run_id)
            if run is None:
                return None
            status = run["status"]
            if status == RunStatus.SCHEDULING.value:
                run = self.store.update("runs", run_id, {
                    "status": RunStatus.STOPPED.value, "finished_at": now_ts(), "_stop_reason": STOP_REASON_STOP,
                    "_message": "stopped while scheduling",
                })
                self._append_log(run_id, "[cml_workspace] run stopped before it started")
            elif status in (RunStatus.STARTING.value, RunStatus.RUNNING.value):
                run = self.store.update("runs", run_id, lambda d: d.update(
                    status=RunStatus.STOPPING.value,
                    _stop_reason=d.get("_stop_reason") or STOP_REASON_STOP,
                ))
                self._append_log(run_id, "[cml_workspace] stop requested: SIGTERM to the process group")
                self._terminate(run)
        self.wake()
        return run

    def stop_job_runs(self, job_id: str) -> None:
        for run in self.store.list("runs", parent_id=job_id):
            if not RunStatus(run["status"]).is_terminal:
                self.stop(run["id"])

    def usage(self) -> dict:
        active = self.store.list("runs", statuses=PROCESS_STATES)
        return {
            "cpus": self.config.cpus,
            "memory_gb": self.config.memory_gb,
            "cpu_in_use": sum(r.get("_reserved_cpu") or 0 for r in active),
            "memory_in_use_gb": sum(r.get("_reserved_memory") or 0 for r in active),
            "runs_active": len(active),
            "runs_scheduling": len(self.store.list("runs", statuses=[RunStatus.SCHEDULING.value])),
            "engine": "cold" if self._engine is None else self._engine.state,
        }

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # keep scheduling whatever one run did
                log.exception("scheduler tick failed")
            self._wake.wait(self.config.poll_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        finished: list[Doc] = []
        with self._lock:
            active = self.store.list("runs", statuses=PROCESS_STATES)
            for run in active:
                done = self._watch(run)
                if done is not None:
                    finished.append(done)
            self._reap_forgotten({r["id"] for r in active})
            self._schedule()
        for run in finished:
            if self.on_finished is not None:
                try:
                    self.on_finished(run)
                except Exception:
                    log.exception("on_finished hook failed for run %s", run["id"])

    def _schedule(self) -> None:
        cfg = self.config
        if self._engine is not None and self._engine.is_loading():
            return  # runs wait the seconds until the engine is warm rather than import cold
        active = self.store.list("runs", statuses=PROCESS_STATES)
        used_cpu = sum(r.get("_reserved_cpu") or 0 for r in active)
        used_mem = sum(r.get("_reserved_memory") or 0 for r in active)
        for run in self.store.list("runs", statuses=[RunStatus.SCHEDULING.value]):
            cpu, mem = float(run["cpu"]), float(run["memory"])
            if cpu > cfg.cpus + _EPS or mem > cfg.memory_gb + _EPS:
                if cfg.oversize != OVERSIZE_CLAMP:
                    self._finish(run, RunStatus.FAILED, message=(
                        f"the job asks for {cpu:g} vCPU / {mem:g} GB but the whole workspace has "
                        f"{cfg.cpus:g} vCPU / {cfg.memory_gb:g} GB: it can never be scheduled "
                        "(lower the job's cpu/memory, or start the workspace with more "
                        "--cpus/--memory-gb or --oversize clamp)"
                    ))
                    continue
                cpu, mem = min(cpu, cfg.cpus), min(mem, cfg.memory_gb)
            if used_cpu + cpu > cfg.cpus + _EPS or used_mem + mem > cfg.memory_gb + _EPS:
                break  # strict FIFO: later runs wait behind the head
            if self._launch(run, cpu, mem):
                used_cpu += cpu
                used_mem += mem

    # -- starting a run ----------------------------------------------------------------------
    def _find_script(self, script: str, project_dir: Path) -> Path | None:
        candidates = [project_dir]
        if self.config.code_dir is not None:
            candidates.append(self.config.code_dir)
        for base in candidates:
            try:
                path = files.resolve(base, script)
            except ApiError:
                return None
            if path.is_file():
                return path
        return None

    @staticmethod
    def _base_environment() -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CML_WORKSPACE_API_KEY", None)  # the workspace's own secret; runs get CDSW_APIV2_KEY
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _pythonpath(self, env: dict[str, str], *first: Path) -> str:
        """``first``, then the code dir, then whatever ``env``'s PYTHONPATH already held."""
        return os.pathsep.join(str(p) for p in (*first, self.config.code_dir, env.get("PYTHONPATH")) if p)

    def _environment(self, run: Doc, cpu: float, mem: float, project_dir: Path) -> dict[str, str]:
        cfg = self.config
        env = self._base_environment()
        env.update(run.get("environment") or {})  # job environment merged with run environment
        threads = str(max(1, math.floor(cpu)))
        env.update({
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "CML_CPU": f"{cpu:g}",
            "CML_MEMORY_GB": f"{mem:g}",
        })
        env["PYTHONPATH"] = self._pythonpath(env, project_dir)
        project = self.store.get("projects", run["project_id"]) or {}
        env.update({  # what a CML engine offers its scripts
            "CDSW_PROJECT": project.get("name", ""),
            "CDSW_PROJECT_ID": run["project_id"],
            "CDSW_JOB_ID": run["job_id"],
            "CDSW_ENGINE_ID": run["id"],
            "CDSW_CPU_MILLICORES": str(int(round(cpu * 1000))),
            "CDSW_MEMORY_MB": str(int(round(mem * 1024))),
            "CDSW_API_URL": f"{cfg.url}/api/v1",
            "CDSW_APIV2_KEY": cfg.api_key,
            "CML_WORKSPACE_URL": cfg.url,
        })
        return env

    def _launch(self, run: Doc, cpu: float, mem: float) -> bool:
        cfg = self.config
        run_id = run["id"]
        project_dir = cfg.project_files_dir(run["project_id"])
        project_dir.mkdir(parents=True, exist_ok=True)
        script = self._find_script(run["_script"], project_dir)
        if script is None:
            where = "the project folder" + (" or the code dir" if cfg.code_dir else "")
            self._finish(run, RunStatus.FAILED, message=f"script {run['_script']!r} not found in {where}")
            return False
        try:
            arguments = shlex.split(run.get("arguments") or "")
        except ValueError as exc:
            self._finish(run, RunStatus.FAILED, message=f"cannot split arguments {run.get('arguments')!r}: {exc}")
            return False
        for suffix in (".exit", ".started"):
            (cfg.runs_dir / f"{run_id}{suffix}").unlink(missing_ok=True)
        command = [cfg.python, str(script), *arguments]
        env = self._environment(run, cpu, mem, project_dir)
        warm = self._engine is not None and self._engine.ready
        starting_at = now_ts()
        self._append_log(run_id, (
            f"[cml_workspace] {starting_at} run {run_id} of job {run['job_id']}: {shlex.join(command)}\n"
            f"[cml_workspace] cwd {project_dir}; cpu {cpu:g}, memory {mem:g} GB; "
            + ("forked from the warm engine" if warm else "fresh interpreter")
        ))
        pid = self._spawn_warm(run_id, command[1:], project_dir, env) if warm else None
        if pid is None:
            wrapper = [cfg.python, str(WRAPPER), "--run-id", run_id, "--state-dir", str(cfg.runs_dir), "--", *command]
            try:
                with open(self._log_path(run_id), "ab") as out:
                    proc = subprocess.Popen(
                        wrapper, cwd=project_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )
            except OSError as exc:
                self._finish(run, RunStatus.FAILED, message=f"could not start the run: {exc}")
                return False
            self._procs[run_id] = proc
            pid = proc.pid
        self.store.update("runs", run_id, {
            "status": RunStatus.STARTING.value, "starting_at": starting_at, "_pid": pid,
            "_pid_start": process_start_ticks(pid), "_reserved_cpu": cpu, "_reserved_memory": mem,
        })
        log.info("run %s started (pid %d, %g cpu, %g GB)", run_id, pid, cpu, mem)
        return True

    def _spawn_warm(self, run_id: str, argv: list[str], project_dir: Path, env: dict[str, str]) -> int | None:
        """Fork the run from the warm engine; None (the caller starts it cold) if that fails."""
        assert self._engine is not None
        try:
            return self._engine.spawn(run_id=run_id, state_dir=str(self.config.runs_dir), argv=argv,
                                      cwd=str(project_dir), env=env, log_path=str(self._log_path(run_id)))
        except EngineError as exc:
            self._append_log(run_id, f"[cml_workspace] the warm engine failed ({exc}): fresh interpreter")
            return None

    # -- watching ----------------------------------------------------------------------------
    def _watch(self, run: Doc) -> Doc | None:
        """Advance one live run; returns its final document if it just finished."""
        run_id, pid = run["id"], run.get("_pid")
        proc = self._procs.get(run_id)
        if proc is not None:
            done = proc.poll() is not None
        else:
            done = not pid or not wrapper_alive(pid, run_id, run.get("_pid_start"))
        if done:
            return self._complete(run, proc)

        if run["status"] == RunStatus.STARTING.value:
            started = self._started_at(run_id)
            if started:
                running = {"status": RunStatus.RUNNING.value, "running_at": started}
                run = self.store.update("runs", run_id, running) or run

        kill_at = self._kill_at.get(run_id)
        if kill_at is not None and time.monotonic() >= kill_at:
            log.warning("run %s did not end after SIGTERM: SIGKILL", run_id)
            _killpg(pid, signal.SIGKILL)
            self._kill_at[run_id] = time.monotonic() + self.config.kill_grace_s

        timeout = int(run.get("_timeout") or 0)
        if timeout > 0 and run.get("_kill_on_timeout") and not run.get("_stop_reason"):
            since = run.get("running_at") or run.get("starting_at")
            if since and time.time() - parse_ts(since).timestamp() >= timeout:
                run = self.store.update("runs", run_id, {"_stop_reason": STOP_REASON_TIMEOUT}) or run
                self._append_log(run_id, f"[cml_workspace] timeout of {timeout} s exceeded: killing the run")
                self._terminate(run)
        return None

    def _complete(self, run: Doc, proc: subprocess.Popen | None) -> Doc | None:
        run_id, pid = run["id"], run.get("_pid")
        exit_code = self._exit_code(run_id)
        if exit_code is None and proc is not None:
            exit_code = proc.returncode
        if pid and (proc is not None or group_has_members(pid)):
            _killpg(pid, signal.SIGKILL)  # leftovers of the script's process group
        reason = run.get("_stop_reason")
        if reason == STOP_REASON_STOP:
            status, message = RunStatus.STOPPED, "stopped"
        elif reason == STOP_REASON_TIMEOUT:
            status, message = RunStatus.TIMEDOUT, f"killed after its timeout of {run.get('_timeout')} s"
        elif exit_code == 0:
            status, message = RunStatus.SUCCEEDED, "exit code 0"
        elif exit_code is None:
            status, message = RunStatus.FAILED, "the run's process ended without recording an exit code"
        else:
            status, message = RunStatus.FAILED, f"exit code {exit_code}"
        self._procs.pop(run_id, None)
        self._kill_at.pop(run_id, None)
        return self._finish(run, status, message=message, exit_code=exit_code)

    def _finish(self, run: Doc, status: RunStatus, *, message: str, exit_code: int | None = None) -> Doc | None:
        run_id = run["id"]
        finished_at = now_ts()
        started = self._started_at(run_id)

        def change(doc: Doc) -> None:
            doc["status"] = status.value
            doc["finished_at"] = finished_at
            if doc.get("starting_at") and not doc.get("running_at") and started:
                doc["running_at"] = started
            doc["_exit_code"] = exit_code
            doc["_message"] = message

        self._append_log(run_id, f"[cml_workspace] {finished_at} run {run_id} {status.value}: {message}")
        log.info("run %s %s: %s", run_id, status.value, message)
        return self.store.update("runs", run_id, change)

    def _reap_forgotten(self, active_ids: set[str]) -> None:
        """Processes whose run document vanished (its job was deleted): reap them."""
        for run_id in list(self._procs):
            if run_id not in active_ids and self._procs[run_id].poll() is not None:
                self._procs.pop(run_id)
                self._kill_at.pop(run_id, None)

    def _terminate(self, run: Doc) -> None:
        pid = run.get("_pid")
        if not pid:
            return
        proc = self._procs.get(run["id"])
        alive = proc.poll() is None if proc is not None else wrapper_alive(pid, run["id"], run.get("_pid_start"))
        if alive:
            _killpg(pid, signal.SIGTERM)
            self._kill_at.setdefault(run["id"], time.monotonic() + self.config.kill_grace_s)

    # -- files of a run ----------------------------------------------------------------------
    def _log_path(self, run_id: str) -> Path:
        return self.config.runs_dir / f"{run_id}.log"

    def _append_log(self, run_id: str, text: str) -> None:
        try:
            self.config.runs_dir.mkdir(parents=True, exist_ok=True)
            with open(self._log_path(run_id), "a") as fh:
                fh.write(text.rstrip("\n") + "\n")
        except OSError:
            log.exception("cannot write the log of run %s", run_id)

    def _exit_code(self, run_id: str) -> int | None:
        try:
            return int((self.config.runs_dir / f"{run_id}.exit").read_text().strip())
        except (OSError, ValueError):
            return None

    def _started_at(self, run_id: str) -> str | None:
        try:
            return (self.config.runs_dir / f"{run_id}.started").read_text().split()[0]
        except (OSError, IndexError):
            return None


def kill_active_runs(root: Path) -> int:
    """Kill the process groups of a workspace's live runs (for when the server is down and
    its runs must not outlive it, e.g. at the end of a test). They are recorded as stopping,
    so a later server on the same root completes them as ENGINE_STOPPED. Returns how many
    were killed."""
    db = Path(root) / "workspace.db"
    if not db.exists():
        return 0
    store = Store(db)
    killed = 0
    try:
        for run in store.list("runs", statuses=PROCESS_STATES):
            pid = run.get("_pid")
            if pid and wrapper_alive(pid, run["id"], run.get("_pid_start")):
                _killpg(pid, signal.SIGKILL)
                killed += 1
                store.update("runs", run["id"], lambda d: d.update(
                    status=RunStatus.STOPPING.value, _stop_reason=d.get("_stop_reason") or STOP_REASON_STOP,
                ))
    finally:
        store.close()
    return killed
