"""``stop_processes`` against real processes: one that exits on SIGTERM, one that needs it twice
(as Airflow's LocalExecutor does while it waits for tasks), one that ignores it."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
from stack import processes
from stack.processes import kill_workers_once_idle, stop_processes

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


#: a LocalExecutor stand-in: starts an idle worker and a worker whose task (a child process)
#: runs ``argv[1]`` seconds; on SIGTERM it joins its workers, which never end by themselves
#: (the workers Airflow 3.3.2's LocalExecutor sometimes waits on for ever), and ignores any
#: further SIGTERM
EXECUTOR = """
import signal, subprocess, sys
idle = subprocess.Popen(["sleep", "120"])
busy = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; subprocess.run(['sleep', sys.argv[1]]);"
    "open(sys.argv[2], 'w').write('task ended'); time.sleep(120)", sys.argv[1], sys.argv[2]])
def on_term(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for worker in (idle, busy):
        worker.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
signal.pause()
"""


def test_a_stopping_executors_workers_are_killed_once_all_idle_and_not_before(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "SIGNAL_AGAIN_S", 20.0)
    marker = tmp_path / "task-ended"
    proc = subprocess.Popen([sys.executable, "-c", EXECUTOR, "1.5", str(marker)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    executor = psutil.Process(proc.pid)
    time.sleep(0.3)  # the busy worker has started its task
    assert len(executor.children()) == 2 and any(w.children() for w in executor.children())
    begin = time.monotonic()
    killed = stop_processes([executor], grace_s=30.0, while_waiting=kill_workers_once_idle([executor]))
    took = time.monotonic() - begin
    assert killed == [] and executor.returncode == 0  # it ended itself once its workers were gone
    assert marker.read_text() == "task ended"  # the busy worker was left to finish its task
    assert 1.2 <= took < 5  # the task's 1.5 s (from its start), two idle checks; not the grace


def test_workers_are_not_killed_while_one_runs_a_task(tmp_path):
    marker = tmp_path / "task-ended"
    proc = subprocess.Popen([sys.executable, "-c", EXECUTOR, "30", str(marker)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    executor = psutil.Process(proc.pid)
    time.sleep(0.3)
    workers = executor.children()
    try:
        check = kill_workers_once_idle([executor])
        for _ in range(4):
            check()
            time.sleep(0.05)
        assert all(w.is_running() for w in workers)  # one runs a task: nobody is killed
    finally:
        for p in [*workers, *(c for w in workers if w.is_running() for c in w.children()), executor]:
            try:
                p.kill()
            except psutil.Error:
                pass
