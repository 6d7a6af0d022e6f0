"""Warm engines: job runs forked from an interpreter that has already imported the modules
the jobs need (``serve --preload MODULE ...``), instead of a fresh ``python script.py``.

Why: a fresh interpreter spends CPU importing sklearn, pandas and friends before a job does
any work, and more tearing itself down after; with many short experiments on a few cores that
is a large share of the machine. (A CML engine pays this too, plus a container start; this is
a local speed-up, not a CML feature.) A warm run is still its own
process: own session and process group, the run's environment, working directory, argv,
log and exit code, started and recorded by the same wrapper protocol
(:func:`run_wrapper.supervise`), stopped and timed out the same way, and it outlives a
restart of the workspace like a cold run.

The engine process (``python -m cml_workspace.warm_engine MODULE ...``):

1. imports the modules with thread-starting libraries held back (:data:`ENGINE_ENV`), checks it is still
   single-threaded (forking a process with live threads is unsafe) and reports ``ready``;
2. for each request line on stdin (JSON: ``run_id``, ``state_dir``, ``argv``, ``cwd``,
   ``env``, ``log``) forks a wrapper that starts a new session, points stdio at the run's
   log and supervises a second fork that runs the script as ``python script args`` would
   (``sys.argv``, ``sys.path[0]``, ``PYTHONPATH``, ``__main__``, exit status, atexit), with
   its BLAS/OpenMP pools resized to the run's ``OMP_NUM_THREADS``;
3. answers each request with the wrapper's pid; exits when stdin closes.

:class:`WarmEngine` is the workspace's side of that conversation.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from .run_wrapper import supervise

log = logging.getLogger("cml_workspace.warm_engine")

#: the engine's environment while it imports: libraries that would start threads at load time
#: must not (BLAS/OpenMP pools stay at one thread until a run resizes them; Arrow's jemalloc
#: would start a background purge thread). A thread alive at fork time is unsafe.
ENGINE_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}


class EngineError(RuntimeError):
    """The warm engine is not usable (it failed to start, died, or answered nonsense)."""


# -- the workspace's side -------------------------------------------------------------------
class WarmEngine:
    """Starts the engine process and asks it for runs. Not thread-safe: the scheduler calls
    it under its lock. States: ``loading`` → ``ready`` | ``failed`` (failed is final; the
    scheduler then starts runs cold)."""

    def __init__(self, python: str, preload: Sequence[str], env: Mapping[str, str], cwd: str,
                 *, ready_timeout_s: float = 120.0, reply_timeout_s: float = 30.0):
        self.command = [python, "-m", "cml_workspace.warm_engine", *preload]
        self.preload = tuple(preload)
        self.env = {**env, **ENGINE_ENV}
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.state = "loading"
        self.problem: str | None = None
        self._proc: subprocess.Popen | None = None
        self._deadline = 0.0

    def start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.cwd, env=self.env,
                start_new_session=True,  # terminal signals to the server do not reach it
            )
        except OSError as exc:
            self._fail(f"could not start it: {exc}")
            return
        self._deadline = time.monotonic() + self.ready_timeout_s
        log.info("warm engine starting (pid %d), preloading %s", self._proc.pid, ", ".join(self.preload))

    def is_loading(self) -> bool:
        """Still importing? Checks (without blocking) whether it has become ready meanwhile."""
        if self.state != "loading":
            return False
        if self._proc is None:
            self._fail("it was never started")
            return False
        if self._readable(0):
            try:
                reply = self._read_reply()
            except EngineError as exc:
                self._fail(str(exc))
                return False
            if reply.get("ready"):
                self.state = "ready"
                log.info("warm engine ready (pid %d): %s preloaded%s", self._proc.pid,
                         ", ".join(reply.get("preloaded") or []) or "nothing",
                         f"; could not preload {reply['failed']}" if reply.get("failed") else "")
            else:
                self._fail(reply.get("error") or f"unexpected first message {reply!r}")
            return False
        if self._proc.poll() is not None:
            self._fail(f"it exited with code {self._proc.returncode} while preloading")
        elif time.monotonic() > self._deadline:
            self._fail(f"it was not ready after {self.ready_timeout_s:g} s")
        return self.state == "loading"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def spawn(self, *, run_id: str, state_dir: str, argv: Sequence[str], cwd: str,
              env: Mapping[str, str], log_path: str) -> int:
        """Start one run; returns its wrapper's pid. Raises EngineError (and goes ``failed``)."""
        if not self.ready or self._proc is None or self._proc.stdin is None:
            raise EngineError(f"the warm engine is {self.state}")
        request = {"run_id": run_id, "state_dir": state_dir, "argv": list(argv), "cwd": cwd,
                   "env": dict(env), "log": log_path}
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            if not self._readable(self.reply_timeout_s):
                raise EngineError(f"no answer within {self.reply_timeout_s:g} s")
            reply = self._read_reply()
        except (OSError, EngineError) as exc:
            self._fail(f"starting run {run_id}: {exc}")
            raise EngineError(self.problem) from None
        pid = reply.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            self._fail(f"starting run {run_id}: {reply.get('error') or reply!r}")
            raise EngineError(self.problem)
        return pid

    def close(self, timeout: float = 5.0) -> None:
        """Stop the engine (runs it started keep going)."""
        proc, self._proc = self._proc, None
        if self.state != "failed":
            self.state = "closed"
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def _readable(self, timeout: float) -> bool:
        assert self._proc is not None and self._proc.stdout is not None
        return bool(select.select([self._proc.stdout], [], [], timeout)[0])

    def _read_reply(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise EngineError("it closed its output (it died)")
        try:
            reply = json.loads(line)
        except ValueError:
            raise EngineError(f"unreadable answer {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise EngineError(f"unexpected answer {reply!r}")
        return reply

    def _fail(self, problem: str) -> None:
        self.state, self.problem = "failed", problem
        log.warning("warm engine unusable, runs start cold from now on: %s", problem)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


# -- the engine process -----------------------------------------------------------------------
def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _limit_threads(env: Mapping[str, str]) -> None:
    """Resize the BLAS/OpenMP pools the engine loaded with one thread to the run's request.
    (The environment variables alone come too late: the libraries read them when loaded.)"""
    try:
        threads = int(env.get("OMP_NUM_THREADS", "1").split(",")[0])
        from threadpoolctl import threadpool_limits
    except (ImportError, ValueError):
        return
    threadpool_limits(limits=max(1, threads))


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_script(request: Mapping[str, Any]) -> int:
    """In the run's process: become ``python argv[0] argv[1:]`` and run it. Returns the status."""
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    argv = list(request["argv"])
    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # what `python script` puts first
    for entry in reversed([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]):
        if entry not in sys.path:
            sys.path.insert(1, entry)
    sys.stdout.reconfigure(line_buffering=True)
    _limit_threads(env)
    import runpy

    try:
        runpy.run_path(argv[0], run_name="__main__")
        return 0
    except SystemExit as exc:
        return _exit_status(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        return 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - what the interpreter would print, then exit 1
        traceback.print_exc()
        return 1


def _fork_script(request: Mapping[str, Any]) -> int:
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        status = _run_script(request)
        shutdown_threads = getattr(threading, "_shutdown", None)  # what interpreter exit does
        if shutdown_threads is not None:
            shutdown_threads()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - nothing left to report it to
                pass
        os._exit(status)


def _become_wrapper(request: Mapping[str, Any], channel_fds: Sequence[int]) -> None:
    """In the forked wrapper: new session, stdio to the run's log, supervise the script."""
    status = 1
    try:
        for fd in channel_fds:
            os.close(fd)
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the wrapper reaps its own child
        out = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        os.chdir(request["cwd"])
        base = os.path.join(request["state_dir"], request["run_id"])
        status = supervise(base, lambda: _fork_script(request), repr(request["argv"][0]))
    except BaseException:  # noqa: BLE001 - never fall back into the engine's loop
        traceback.print_exc()
    finally:
        os._exit(status)


def serve(modules: Sequence[str]) -> int:
    # The protocol gets private descriptors; fd 0/1 become /dev/null and stderr, so a stray
    # print during an import cannot corrupt it.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message).encode() + b"\n")
        replies.flush()

    preloaded, failed = [], {}
    for name in modules:
        try:
            importlib.import_module(name)
            preloaded.append(name)
        except Exception as exc:  # noqa: BLE001 - reported; the run will hit it itself
            failed[name] = f"{type(exc).__name__}: {exc}"
    threads = _thread_count()
    if threads > 1:
        reply({"error": f"after preloading {', '.join(preloaded)} the engine has {threads} threads; "
                        "forking it would be unsafe"})
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished wrappers
    reply({"ready": True, "preloaded": preloaded, "failed": failed})
    channels = (requests.fileno(), replies.fileno())
    for line in requests:
        try:
            request = json.loads(line)
            for key in ("run_id", "state_dir", "argv", "cwd", "env", "log"):
                if key not in request:
                    raise ValueError(f"the request lacks {key!r}")
        except ValueError as exc:
            reply({"error": f"bad request: {exc}"})
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            reply({"error": f"fork failed: {exc}"})
            continue
        if pid == 0:
            _become_wrapper(request, channels)
        reply({"pid": pid})
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
