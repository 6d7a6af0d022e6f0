"""The CPU/memory budget: runs wait in ENGINE_SCHEDULING until their job's resources fit,
and start FIFO. Assertions are on observed status timelines (runs of one job are sampled
atomically) and on the recorded timestamps, not on sleeps alone.

One workspace (2 vCPU / 8 GB) for the module: each test waits for its runs to finish, so
every test starts with the whole budget free.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from workspace_helpers import Api, running_workspace, watch

SLEEPER = "import time\ntime.sleep(0.6)\n"
# Waits until the test creates gates/<run id> (bounded): the test, not the clock, decides
# when each run ends, so the assertions hold however loaded the machine is.
GATED = """
import os, sys, time
gate = os.path.join("gates", os.environ["CDSW_ENGINE_ID"])
deadline = time.monotonic() + 30
while not os.path.exists(gate):
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.02)
"""


@pytest.fixture(scope="module")
def budget_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_workspace(tmp_path_factory.mktemp("budget"), cpus=2, memory_gb=8) as ws, ws.client() as http:
        api = Api(ws, http)
        api.script("sleep.py", SLEEPER)
        api.script("gated.py", GATED)
        (api.files_dir / "gates").mkdir()
        yield api


def release(api: Api, run: dict) -> None:
    (api.files_dir / "gates" / run["id"]).touch()


def stays(api: Api, run: dict, status: str, seconds: float = 0.5) -> None:
    """The run is in ``status`` now and for the next ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert api.get_run(run)["status"] == status
        time.sleep(0.05)


def _overlaps(runs: list[dict]) -> int:
    """Most runs whose [starting_at, finished_at] intervals overlap at one instant."""
    events = sorted([(r["starting_at"], 1) for r in runs] + [(r["finished_at"], -1) for r in runs],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def _budget_free(api: Api) -> None:
    health = api.http.get("/health").json()
    assert health["cpu_in_use"] == 0 and health["memory_in_use_gb"] == 0 and health["runs_active"] == 0


def test_cpu_budget_limits_parallel_runs(budget_api):
    api = budget_api
    job = api.job("gated.py", name="one-cpu", cpu=1, memory=1)
    first, second, third = runs = [api.run(job) for _ in range(3)]
    api.wait_status(first, {"ENGINE_RUNNING"})
    api.wait_status(second, {"ENGINE_RUNNING"})
    stays(api, third, "ENGINE_SCHEDULING")  # 1 + 1 vCPU used of 2: the third waits
    release(api, first)
    api.wait_status(third, {"ENGINE_STARTING", "ENGINE_RUNNING"})
    assert api.get_run(first)["status"] == "ENGINE_SUCCEEDED"
    assert api.get_run(second)["status"] == "ENGINE_RUNNING"
    release(api, second)
    release(api, third)
    timeline = watch(api, runs)
    final = [api.get_run(r) for r in runs]

    assert [r["status"] for r in final] == ["ENGINE_SUCCEEDED"] * 3
    assert timeline.max_concurrent() == 2
    assert final[2]["starting_at"] >= final[0]["finished_at"]
    assert _overlaps(final) == 2
    _budget_free(api)


def test_parallel_runs_observed_without_gates(budget_api):
    """The same limit seen on free-running sleeps: never more than two at once (each
    snapshot of one job's runs is a single list call, hence consistent)."""
    api = budget_api
    job = api.job("sleep.py", name="sleep-one-cpu", cpu=1, memory=1)
    runs = [api.run(job) for _ in range(3)]
    timeline = watch(api, runs)
    final = [api.get_run(r) for r in runs]
    assert [r["status"] for r in final] == ["ENGINE_SUCCEEDED"] * 3
    assert timeline.max_concurrent() <= 2
    assert timeline.statuses(runs[2]["id"])[0] == "ENGINE_SCHEDULING"
    assert _overlaps(final) == 2
    assert final[2]["starting_at"] >= min(final[0]["finished_at"], final[1]["finished_at"])


def test_memory_budget_limits_parallel_runs(budget_api):
    api = budget_api
    job = api.job("gated.py", name="five-gb", cpu=0.5, memory=5)
    first, second = runs = [api.run(job) for _ in range(2)]
    api.wait_status(first, {"ENGINE_RUNNING"})
    stays(api, second, "ENGINE_SCHEDULING")  # 5 GB + 5 GB > 8 GB, although the CPU would fit
    release(api, first)
    api.wait_status(second, {"ENGINE_RUNNING"})
    release(api, second)
    watch(api, runs)
    final = [api.get_run(r) for r in runs]
    assert [r["status"] for r in final] == ["ENGINE_SUCCEEDED"] * 2
    assert final[1]["starting_at"] >= final[0]["finished_at"]
    _budget_free(api)


def test_fifo_a_big_waiting_run_is_not_overtaken(budget_api):
    api = budget_api
    small = api.job("gated.py", name="small", cpu=1, memory=1)
    big = api.job("gated.py", name="big", cpu=2, memory=1)
    first = api.run(small)
    api.wait_status(first, {"ENGINE_RUNNING"})
    waiting_big = api.run(big)  # needs the whole budget: waits for `first`
    later_small = api.run(small)  # would fit now, but must not overtake the big run
    stays(api, later_small, "ENGINE_SCHEDULING")
    assert api.get_run(waiting_big)["status"] == "ENGINE_SCHEDULING"
    release(api, first)
    api.wait_status(waiting_big, {"ENGINE_RUNNING"})
    stays(api, later_small, "ENGINE_SCHEDULING", seconds=0.2)
    release(api, waiting_big)
    release(api, later_small)
    watch(api, [first, waiting_big, later_small])
    final = {r["id"]: api.get_run(r) for r in (first, waiting_big, later_small)}
    assert all(r["status"] == "ENGINE_SUCCEEDED" for r in final.values())
    assert final[waiting_big["id"]]["starting_at"] >= final[first["id"]]["finished_at"]
    assert final[later_small["id"]]["starting_at"] >= final[waiting_big["id"]]["finished_at"]


def test_stop_a_scheduling_run(budget_api):
    api = budget_api
    job = api.job("gated.py", name="whole-budget", cpu=2, memory=1)
    running = api.run(job)
    queued = api.run(job)
    api.wait_status(running, {"ENGINE_RUNNING"})
    assert api.get_run(queued)["status"] == "ENGINE_SCHEDULING"
    stopped = api.stop(queued).json()
    assert stopped["status"] == "ENGINE_STOPPED" and stopped["starting_at"] is None and stopped["finished_at"]
    release(api, running)
    assert api.wait(running)["status"] == "ENGINE_SUCCEEDED"
    assert api.get_run(queued)["status"] == "ENGINE_STOPPED"  # never started afterwards
    assert "stopped before it started" in api.ws.run_log(queued["id"])


def test_run_larger_than_the_workspace_fails_fast(budget_api):
    api = budget_api
    job = api.job("sleep.py", name="too-big", cpu=3, memory=1)
    done = api.wait(api.run(job), timeout=5)
    assert done["status"] == "ENGINE_FAILED" and done["starting_at"] is None
    assert "can never be scheduled" in api.ws.run_log(done["id"])


def test_oversize_clamp_policy(new_workspace):
    ws = new_workspace(cpus=1, memory_gb=2, extra_args=["--oversize", "clamp"])
    with ws.client() as http:
        api = Api(ws, http)
        job = api.job(api.script("env.py", "import os\nopen('t.txt','w').write(os.environ['OMP_NUM_THREADS'])\n"),
                      cpu=4, memory=16)
        assert api.wait(api.run(job))["status"] == "ENGINE_SUCCEEDED"
        assert api.read_file("t.txt") == b"1"  # clamped to the workspace's single vCPU
