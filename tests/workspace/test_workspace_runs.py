"""Job runs as real subprocesses: outcomes, environment, stop, timeout, code dir.

Every test runs twice: runs started as fresh interpreters, and runs forked from a warm
engine (``serve --preload``) — the two must be indistinguishable from outside."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from workspace_helpers import Api


@pytest.fixture(scope="module", params=["cold", "warm"])
def engine_ws(request):
    return request.getfixturevalue("shared_ws" if request.param == "cold" else "warm_ws")


@pytest.fixture
def api(engine_ws):
    with engine_ws.client() as http:
        yield Api(engine_ws, http)

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
RUN_FIELDS = {"id", "job_id", "project_id", "status", "created_at", "scheduling_at", "starting_at",
              "running_at", "finished_at", "cpu", "memory", "arguments", "environment"}

ENV_DUMP = """
    import json, os, sys
    keys = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "CML_CPU", "CML_MEMORY_GB",
            "PYTHONPATH", "JOB_ONLY", "SHARED", "RUN_ONLY", "CDSW_PROJECT_ID", "CML_WORKSPACE_API_KEY"]
    out = {k: os.environ.get(k) for k in keys}
    out["argv"] = sys.argv[1:]
    out["cwd"] = os.getcwd()
    json.dump(out, open(os.environ.get("OUT", "env.json"), "w"))
"""


def test_successful_run(api):
    script = api.script("ok.py", """
        import pathlib, sys
        pathlib.Path("outputs").mkdir(exist_ok=True)
        pathlib.Path("outputs/ok.txt").write_text("done")
        print("hello from the run")
    """)
    job = api.job(script, cpu=1, memory=1)
    run = api.run(job)
    assert RUN_FIELDS <= set(run)
    assert run["status"] == "ENGINE_SCHEDULING" and run["job_id"] == job["id"] and run["project_id"] == api.project_id
    done = api.wait(run)
    assert done["status"] == "ENGINE_SUCCEEDED"
    for key in ("created_at", "scheduling_at", "starting_at", "running_at", "finished_at"):
        assert TS.match(done[key]), (key, done[key])
    assert done["created_at"] <= done["starting_at"] <= done["running_at"] <= done["finished_at"]
    assert api.read_file("outputs/ok.txt") == b"done"  # cwd is the project folder
    log = api.ws.run_log(run["id"])
    assert "hello from the run" in log and "ENGINE_SUCCEEDED" in log
    assert ("forked from the warm engine" in log) == ("--preload" in api.ws.extra_args)
    assert not any(f["path"].endswith(".log") for f in api.http.get(f"{api.base}/files/.").json()["files"])


def test_failing_run_records_the_exit_code(api):
    job = api.job(api.script("fail.py", "import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n"))
    done = api.wait(api.run(job))
    assert done["status"] == "ENGINE_FAILED" and done["finished_at"]
    log = api.ws.run_log(done["id"])
    assert "boom" in log and "exit code 3" in log


def test_exception_fails_the_run(api):
    job = api.job(api.script("raise.py", "raise RuntimeError('bad input')\n"))
    done = api.wait(api.run(job))
    assert done["status"] == "ENGINE_FAILED"
    assert "RuntimeError: bad input" in api.ws.run_log(done["id"])


def test_environment_arguments_and_thread_limits(api):
    job = api.job(api.script("env.py", ENV_DUMP), cpu=2.7, memory=3,
                  environment={"JOB_ONLY": "j", "SHARED": "from-job", "OMP_NUM_THREADS": "99"},
                  arguments="--job-args")
    run = api.run(job, environment={"SHARED": "from-run", "RUN_ONLY": "r"}, arguments="--alpha 'two words'")
    assert json.loads(run["environment"]) == {"JOB_ONLY": "j", "SHARED": "from-run", "OMP_NUM_THREADS": "99",
                                              "RUN_ONLY": "r"}
    assert run["arguments"] == "--alpha 'two words'" and run["cpu"] == 2.7 and run["memory"] == 3
    assert api.wait(run)["status"] == "ENGINE_SUCCEEDED"
    env = api.read_json("env.json")
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"  # floor(2.7)
    assert env["CML_CPU"] == "2.7" and env["CML_MEMORY_GB"] == "3"
    assert env["JOB_ONLY"] == "j" and env["SHARED"] == "from-run" and env["RUN_ONLY"] == "r"
    assert env["argv"] == ["--alpha", "two words"]
    assert os.path.realpath(env["cwd"]) == os.path.realpath(api.files_dir)
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert os.path.realpath(paths[0]) == os.path.realpath(api.files_dir)
    assert env["CDSW_PROJECT_ID"] == api.project_id
    assert env["CML_WORKSPACE_API_KEY"] is None  # the server's secret does not leak into runs

    # no run arguments: the job's arguments; a fractional CPU still gets one thread
    small = api.job("env.py", name="env-small", cpu=0.5, arguments="--job-args", environment={"OUT": "small.json"})
    assert api.wait(api.run(small))["status"] == "ENGINE_SUCCEEDED"
    env = api.read_json("small.json")
    assert env["argv"] == ["--job-args"] and env["OMP_NUM_THREADS"] == "1" and env["CML_CPU"] == "0.5"


THREADS_AND_ORIGIN = """
    import json, os, sys
    import numpy, threadpoolctl, warm_probe
    json.dump({"pools": [p["num_threads"] for p in threadpoolctl.threadpool_info()],
               "forked": warm_probe.IMPORTED_BY_PID != os.getpid(), "main": __name__,
               "path0": sys.path[0]}, open("threads.json", "w"))
"""


def test_thread_pools_follow_the_cpu_request(api):
    """numpy's BLAS pool has the run's size, whether the engine loaded it with one thread or not."""
    job = api.job(api.script("threads.py", THREADS_AND_ORIGIN), cpu=2)
    assert api.wait(api.run(job))["status"] == "ENGINE_SUCCEEDED"
    seen = api.read_json("threads.json")
    assert seen["pools"] and set(seen["pools"]) == {2}
    assert seen["forked"] == ("--preload" in api.ws.extra_args)
    assert seen["main"] == "__main__"
    assert os.path.realpath(seen["path0"]) == os.path.realpath(api.files_dir)


def test_script_from_the_code_dir_and_its_pythonpath(api, shared_code_dir):
    job = api.job("from_repo.py")  # not in the project folder: found in the code dir
    assert api.wait(api.run(job))["status"] == "ENGINE_SUCCEEDED"
    assert api.read_json("from_repo.json") == {"greeting": "from the code dir"}
    # the project folder wins over the code dir
    api.script("from_repo.py", "open('from_repo.json', 'w').write('{\"greeting\": \"project\"}')\n")
    assert api.wait(api.run(job))["status"] == "ENGINE_SUCCEEDED"
    assert api.read_json("from_repo.json") == {"greeting": "project"}


def test_missing_script_fails_with_a_reason(api):
    job = api.job("does/not/exist.py")
    done = api.wait(api.run(job))
    assert done["status"] == "ENGINE_FAILED" and done["starting_at"] is None
    assert "not found" in api.ws.run_log(done["id"])


def test_timeout_kills_the_run_only_with_kill_on_timeout(api):
    slow = api.job(api.script("slow.py", "import time\ntime.sleep(30)\n"), timeout=1, kill_on_timeout=True)
    # CML semantics: without kill_on_timeout a timeout does not stop the run
    lenient = api.job(api.script("bit_slow.py", "import time\ntime.sleep(1.5)\n"), timeout=1)
    started = time.monotonic()
    killed, finished = api.run(slow), api.run(lenient)
    assert api.wait(killed, timeout=15)["status"] == "ENGINE_TIMEDOUT"
    assert time.monotonic() - started < 10
    assert "timeout of 1 s exceeded" in api.ws.run_log(killed["id"])
    assert api.wait(finished)["status"] == "ENGINE_SUCCEEDED"


def test_stop_kills_the_whole_process_group(api):
    api.script("stubborn.py", """
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open("stubborn.pids", "w").write(f"{os.getpid()} {child.pid}")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignores SIGTERM: needs the SIGKILL escalation
        time.sleep(60)
    """)
    job = api.job("stubborn.py")
    run = api.run(job)
    api.wait_status(run, {"ENGINE_RUNNING"})
    deadline = time.monotonic() + 10
    while not (api.files_dir / "stubborn.pids").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [int(p) for p in (api.files_dir / "stubborn.pids").read_text().split()]
    stopping = api.stop(run)
    assert stopping.status_code == 200 and stopping.json()["status"] == "ENGINE_STOPPING"
    done = api.wait(run, timeout=15)
    assert done["status"] == "ENGINE_STOPPED" and done["finished_at"]
    time.sleep(0.2)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    # stopping a finished run is harmless and changes nothing
    again = api.stop(run)
    assert again.status_code == 200 and again.json()["status"] == "ENGINE_STOPPED"


def test_stop_route_accepts_an_encoded_colon(api):
    job = api.job(api.script("sleepy.py", "import time\ntime.sleep(20)\n"))
    run = api.run(job)
    api.wait_status(run, {"ENGINE_RUNNING"})
    resp = api.http.post(f"{api.base}/jobs/{job['id']}/runs/{run['id']}%3Astop")
    assert resp.status_code == 200 and resp.json()["status"] in ("ENGINE_STOPPING", "ENGINE_STOPPED")
    assert api.wait(run)["status"] == "ENGINE_STOPPED"


def test_dependent_job_runs_after_its_parent_succeeds(api):
    parent = api.job(api.script("parent.py", "open('parent.done', 'w').write('1')\n"))
    child = api.job(api.script("child.py", "import os\nassert os.path.exists('parent.done')\n"),
                    parent_job_id=parent["id"])
    assert api.wait(api.run(parent))["status"] == "ENGINE_SUCCEEDED"
    deadline = time.monotonic() + 10
    while not (runs := api.http.get(f"{api.base}/jobs/{child['id']}/runs").json()["job_runs"]):
        assert time.monotonic() < deadline, "the dependent job never ran"
        time.sleep(0.05)
    assert api.wait(runs[0])["status"] == "ENGINE_SUCCEEDED"


def test_deleting_a_job_stops_its_runs(api):
    job = api.job(api.script("forever.py", "import time\ntime.sleep(60)\n"))
    run = api.run(job)
    api.wait_status(run, {"ENGINE_RUNNING"})
    assert api.http.delete(f"{api.base}/jobs/{job['id']}").status_code == 200
    deadline = time.monotonic() + 10
    while api.ws.run_log(run["id"]).count("ENGINE_STOPPED") == 0:
        assert time.monotonic() < deadline, api.ws.run_log(run["id"])
        time.sleep(0.05)
