"""The warm engine degrades to fresh interpreters, never to lost runs: an engine that cannot
be forked safely, a module it cannot import, an engine that dies."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from workspace_helpers import Api

PROBE = "import os, warm_probe\nprint('forked' if warm_probe.IMPORTED_BY_PID != os.getpid() else 'fresh')\n"


def _health(http) -> dict:
    return http.get("/health").json()


def _wait_engine(http, states: set[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while (state := _health(http)["engine"]) not in states:
        assert time.monotonic() < deadline, f"engine stayed {state}"
        time.sleep(0.05)
    return state


def _engine_pid(server_pid: int) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if ppid == server_pid and b"cml_workspace.warm_engine" in cmdline:
            return int(entry)
    raise AssertionError("no warm engine process under the server")


def _run_probe(api: Api, name: str) -> str:
    job = api.job(api.script(f"{name}.py", PROBE), name=name)
    done = api.wait(api.run(job))
    assert done["status"] == "ENGINE_SUCCEEDED", api.ws.run_log(done["id"])
    return api.ws.run_log(done["id"])


def test_an_engine_with_threads_is_refused_and_runs_start_fresh(new_workspace, shared_code_dir, tmp_path):
    (tmp_path / "threaded.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    ws = new_workspace(cpus=2, code_dir=shared_code_dir, extra_args=["--preload", "warm_probe", "threaded"],
                       env={"PYTHONPATH": str(tmp_path)})
    with ws.client() as http:
        assert _wait_engine(http, {"ready", "failed"}) == "failed"
        log = _run_probe(Api(ws, http), "probe")
    assert "fresh interpreter" in log and "\nfresh\n" in log
    assert "2 threads; forking it would be unsafe" in ws.log_path.read_text()


def test_a_module_that_fails_to_import_is_reported_not_fatal(new_workspace, shared_code_dir):
    ws = new_workspace(cpus=2, code_dir=shared_code_dir, extra_args=["--preload", "warm_probe", "no_such_module"])
    with ws.client() as http:
        assert _wait_engine(http, {"ready", "failed"}) == "ready"
        log = _run_probe(Api(ws, http), "probe")
    assert "forked from the warm engine" in log and "\nforked\n" in log
    assert "could not preload {'no_such_module': \"ModuleNotFoundError" in ws.log_path.read_text()


def test_a_dead_engine_falls_back_to_fresh_interpreters(new_workspace, shared_code_dir):
    ws = new_workspace(cpus=2, code_dir=shared_code_dir, extra_args=["--preload", "warm_probe"])
    with ws.client() as http:
        api = Api(ws, http)
        _wait_engine(http, {"ready"})
        assert "\nforked\n" in _run_probe(api, "before")
        os.kill(_engine_pid(ws.pid), signal.SIGKILL)
        log = _run_probe(api, "after")
        assert "the warm engine failed" in log and "\nfresh\n" in log
        assert _health(http)["engine"] == "failed"
        assert "\nfresh\n" in _run_probe(api, "later")  # no second attempt at a dead engine


@pytest.mark.parametrize("reply", ["not json", '{"pid": -1}', '{"error": "fork failed"}'])
def test_engine_client_rejects_nonsense(tmp_path, reply):
    """The client alone, against a fake engine that is ready but then answers nonsense."""
    from cml_workspace.warm_engine import EngineError, WarmEngine

    fake = tmp_path / "fake.py"
    fake.write_text(f"import sys\nprint('{{\"ready\": true}}', flush=True)\nsys.stdin.readline()\n"
                    f"print({reply!r}, flush=True)\nsys.stdin.readline()\n")
    engine = WarmEngine(sys.executable, (), os.environ, str(tmp_path))
    engine.command = [sys.executable, str(fake)]
    engine.start()
    try:
        deadline = time.monotonic() + 10
        while engine.is_loading():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert engine.ready
        with pytest.raises(EngineError):
            engine.spawn(run_id="r", state_dir=str(tmp_path), argv=["x.py"], cwd=str(tmp_path), env={},
                         log_path=str(tmp_path / "r.log"))
        assert engine.state == "failed" and engine.problem
    finally:
        engine.close()
