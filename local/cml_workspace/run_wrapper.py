"""The tiny process between the workspace and a job script (stdlib only).

    python run_wrapper.py --run-id ID --state-dir DIR -- <command...>

It is the leader of the run's session/process group. It starts the command, writes
``<state-dir>/<run-id>.started`` (start time + child pid) once the command runs, waits for
it, and writes its exit code to ``<state-dir>/<run-id>.exit`` (atomically; negative = killed
by that signal). A restarted workspace finds the outcome of runs that ended while it was
down in those files. SIGTERM/SIGINT sent to the wrapper alone are forwarded to the command,
so the exit code is still recorded.

:func:`supervise` is that protocol; the warm engine (``warm_engine.py``) runs it too, with a
forked child instead of a started command.

Run by file path, not ``-m``: it must not depend on the package being importable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime


def _now() -> str:
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def supervise(base: str, start: Callable[[], int], what: str) -> int:
    """Start the run's process with ``start()`` (returns its pid), record ``<base>.started``,
    wait for it and record ``<base>.exit``. Returns the wrapper's own exit status."""
    child: int | None = None

    def forward(signum, _frame):  # a Python handler (not SIG_IGN): the child gets defaults
        if child is not None:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        child = start()
    except OSError as exc:
        print(f"[cml_workspace] could not start {what}: {exc}", file=sys.stderr, flush=True)
        _write_atomic(f"{base}.exit", "127\n")
        return 127
    _write_atomic(f"{base}.started", f"{_now()} {child}\n")
    _, status = os.waitpid(child, 0)  # PEP 475: retried after a forwarded signal
    code = os.waitstatus_to_exitcode(status)
    _write_atomic(f"{base}.exit", f"{code}\n")
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    # posix_spawn, not subprocess: the wrapper itself waits for (and reaps) the pid
    return supervise(
        os.path.join(args.state_dir, args.run_id),
        lambda: os.posix_spawnp(command[0], command, os.environ),
        repr(command[0]),
    )


if __name__ == "__main__":
    sys.exit(main())
