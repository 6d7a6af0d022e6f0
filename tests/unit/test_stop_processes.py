"""``stop_processes`` against real processes: one that exits on SIGTERM, one that needs it twice
(as Airflow's LocalExecutor does while it waits for tasks), one that ignores it."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
from stack import processes
from stack.processes import stop_processes

#: counts SIGTERMs and exits on the n-th (0: never)
PROGRAM = """
import signal, sys, time
n, seen = int(sys.argv[1]), []
def on_term(signum, frame):
    seen.append(signum)
    if len(seen) == n:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def started(terms_to_exit: int) -> psutil.Process:
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, str(terms_to_exit)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # its handler is in place
    return psutil.Process(proc.pid)  # psutil reaps it: its returncode is the exit status


def test_a_process_that_waits_for_a_second_sigterm_gets_it_and_is_not_killed(monkeypatch):
    monkeypatch.setattr(processes, "SIGNAL_AGAIN_S", 0.5)
    polite, twice, deaf = started(1), started(2), started(0)
    begin = time.monotonic()
    killed = stop_processes([polite, twice, deaf], grace_s=3.0)
    took = time.monotonic() - begin
    assert killed == [deaf]  # only the one that ignores SIGTERM
    assert (polite.returncode, twice.returncode, deaf.returncode) == (0, 0, -9)  # the first two exited themselves
    assert 3.0 <= took < 10


def test_the_second_sigterm_comes_at_most_halfway_through_the_grace():
    twice = started(2)
    begin = time.monotonic()
    assert stop_processes([twice], grace_s=2.0) == []  # signalled again after 1 s, not killed at 2
    assert twice.returncode == 0 and time.monotonic() - begin >= 0.9
