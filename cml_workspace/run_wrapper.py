"""The tiny process between the workspace and a job script (stdlib only).

    python run_wrapper.py --run-id ID --state-dir DIR -- <command...>

It is the leader of the run's session/process group. It starts the command, writes
``<state-dir>/<run-id>.started`` (start time + child pid) once the command runs, waits for
it, and writes its exit code to ``<state-dir>/<run-id>.exit`` (atomically; negative = killed
by that signal). A restarted workspace finds the outcome of runs that ended while it was
down in those files. SIGTERM/SIGINT sent to the wrapper alone are forwarded to the command,
so the exit code is still recorded.

Run by file path, not ``-m``: it must not depend on the package being importable.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    base = os.path.join(args.state_dir, args.run_id)

    child: subprocess.Popen | None = None

    def forward(signum, _frame):  # a Python handler (not SIG_IGN): the child gets defaults
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"[cml_workspace] could not start {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        _write_atomic(f"{base}.exit", "127\n")
        return 127
    _write_atomic(f"{base}.started", f"{_now()} {child.pid}\n")
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    _write_atomic(f"{base}.exit", f"{code}\n")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
