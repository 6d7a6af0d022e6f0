"""State and runs survive a server restart (SQLite state; the run wrapper's pid and
exit-code files let the new server adopt or complete runs)."""

from __future__ import annotations

import json
import time

import pytest
from workspace_helpers import WARM_ARGS, Api, running_workspace, watch

from cml_workspace.store import Store

# Scripts that wait for a release file from the test (bounded), so what happens before,
# during and after the restart is decided by the test, not by timing.
WAIT_FOR = """
import os, sys, time
deadline = time.monotonic() + 30
while not os.path.exists({name!r}):
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.05)
"""
LONG = WAIT_FOR.format(name="release.long") + "open('long.done', 'w').write('ok')\n"
SHORT_FAIL = WAIT_FOR.format(name="release.fail") + "sys.exit(4)\n"


def _wait_for(path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("engine", ["cold", "warm"])
def test_restart_preserves_state_and_runs(new_workspace, shared_code_dir, engine):
    warm = engine == "warm"
    ws = new_workspace(cpus=4, memory_gb=8, code_dir=shared_code_dir, extra_args=WARM_ARGS if warm else ())
    with ws.client() as http:
        api = Api(ws, http)
        api.script("forever.py", "import time\ntime.sleep(60)\n")
        long_run = api.run(api.job(api.script("long.py", LONG), cpu=1, memory=1, environment={"KIND": "long"}),
                           arguments="--x")
        fail_run = api.run(api.job(api.script("short_fail.py", SHORT_FAIL),
                                   cpu=1, memory=1))
        to_stop = api.run(api.job("forever.py", name="stop-me", cpu=1, memory=1))
        to_time_out = api.run(api.job("forever.py", name="time-me-out", cpu=1, memory=1, timeout=3,
                                      kill_on_timeout=True))
        queued = api.run(api.job(api.script("queued.py", "open('queued.done', 'w').write('ok')\n"), cpu=1, memory=1))
        for run in (long_run, fail_run, to_stop, to_time_out):
            api.wait_status(run, {"ENGINE_RUNNING"})
        assert api.get_run(queued)["status"] == "ENGINE_SCHEDULING"  # the budget is full
        api.script("kept/file.txt", "a project file\n")
        jobs_before = http.get(f"{api.base}/jobs").json()
        projects_before = http.get("/api/v2/projects").json()
        running_at = api.get_run(long_run)["running_at"]

    ws.stop()
    files = ws.root / "projects" / ws.project_id / "files"
    (files / "release.fail").touch()  # the failing run ends while the server is down
    _wait_for(ws.root / "runs" / f"{fail_run['id']}.exit")
    assert (ws.root / "runs" / f"{fail_run['id']}.exit").read_text().strip() == "4"
    ws.restart()

    with ws.client() as http:
        api = Api(ws, http)
        # state: projects (--project is idempotent), jobs and files are all still there
        assert http.get("/api/v2/projects").json() == projects_before
        assert http.get(f"{api.base}/jobs").json() == jobs_before
        assert api.read_file("kept/file.txt") == b"a project file\n"
        # live runs were adopted: still running, still stoppable, still timed
        adopted = api.get_run(long_run)
        assert adopted["status"] == "ENGINE_RUNNING" and adopted["running_at"] == running_at
        assert api.stop(to_stop).json()["status"] == "ENGINE_STOPPING"
        (files / "release.long").touch()
        timeline = watch(api, [long_run, fail_run, to_stop, to_time_out, queued], timeout=30)
        final = {r["id"]: api.get_run(r) for r in (long_run, fail_run, to_stop, to_time_out, queued)}

    assert final[fail_run["id"]]["status"] == "ENGINE_FAILED"  # from its exit-code file
    assert final[long_run["id"]]["status"] == "ENGINE_SUCCEEDED"
    assert final[to_stop["id"]]["status"] == "ENGINE_STOPPED"
    assert final[to_time_out["id"]]["status"] == "ENGINE_TIMEDOUT"
    assert final[queued["id"]]["status"] == "ENGINE_SUCCEEDED"  # rescheduled after the restart
    # it started only once the new server had freed budget (the failed run was completed first)
    assert final[queued["id"]]["starting_at"] >= final[fail_run["id"]]["finished_at"]
    assert {"ENGINE_STOPPING", "ENGINE_STOPPED"} & set(timeline.statuses(to_stop["id"]))
    assert final[long_run["id"]]["arguments"] == "--x"
    assert json.loads(final[long_run["id"]]["environment"]) == {"KIND": "long"}
    assert "exit code 4" in ws.run_log(fail_run["id"])
    assert ("forked from the warm engine" in ws.run_log(long_run["id"])) == warm
    assert (ws.root / "projects" / ws.project_id / "files" / "long.done").read_text() == "ok"


@pytest.mark.parametrize("engine", ["cold", "warm"])
def test_runs_left_at_exit_are_killed(tmp_path, shared_code_dir, engine):
    extra = WARM_ARGS if engine == "warm" else ()
    with running_workspace(tmp_path / "ws", cpus=1, code_dir=shared_code_dir, extra_args=extra) as ws, \
            ws.client() as http:
        api = Api(ws, http)
        run = api.run(api.job(api.script("forever.py", "import time\ntime.sleep(60)\n")))
        api.wait_status(run, {"ENGINE_RUNNING"})
        script_pid = int((ws.root / "runs" / f"{run['id']}.started").read_text().split()[1])
    deadline = time.monotonic() + 5
    while _alive(script_pid):  # the context exit killed the run's process group
        assert time.monotonic() < deadline, "the run outlived its workspace"
        time.sleep(0.05)
    # recorded as being stopped: the next server on this root completes it as ENGINE_STOPPED
    store = Store(ws.root / "workspace.db")
    try:
        doc = store.get("runs", run["id"])
    finally:
        store.close()
    assert doc["status"] == "ENGINE_STOPPING" and doc["_stop_reason"] == "stop"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
