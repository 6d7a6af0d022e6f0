"""One stack of ``make up`` for the e2e tests that only need *a* running stack: started once per
session on a tmp ``MODEL_FACTORY_VAR`` and free ports (minutes on 2 cores, so not once per
test), stopped at the end like the tests that own a stack stop theirs (``Stack.shut_down``).

Tests that own a stack's lifecycle (up/down, a crash, ``make run`` starting one) keep their own.
Between tests the shared stack is settled: every unfinished DAG run is marked failed and every
active CML run stopped, so the next test finds it idle (the factory's DAGs run one at a time).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_local_stack_up import Stack, _print, free_port


@pytest.fixture(scope="session")
def session_stack(tmp_path_factory) -> Stack:
    # make run's training table (a refit must agree with its CV estimate: the deploy gate checks it)
    s = Stack(tmp_path_factory.mktemp("session-stack") / "var", free_port(), free_port(), rows=4000)
    result = s.up()
    try:
        assert result.returncode == 0, _print(result)
        yield s
    finally:
        s.shut_down()


@pytest.fixture
def shared_stack(session_stack: Stack) -> Stack:
    """The session's stack, alive when the test starts and settled after it."""
    running = session_stack.running()
    assert running is not None, f"the session's stack under {session_stack.var} is no longer up"
    yield session_stack
    settle(session_stack)


def settle(stack: Stack, rounds: int = 2, pause_s: float = 3.0) -> None:
    """Mark every unfinished DAG run failed and stop every active CML run; again after a pause,
    for a run the scheduler created meanwhile (e.g. from an asset event)."""
    running = stack.running()
    if running is None:
        return
    api, cml = running.api, running.cml_hook(retry_limit=2)
    for round_ in range(rounds):
        if round_:
            time.sleep(pause_s)
        for dag in api.get("/api/v2/dags", limit=100)["dags"]:
            for run in api.dag_runs(dag["dag_id"], state=["queued", "running"]):
                api.mark_failed(dag["dag_id"], run["dag_run_id"])
        for job in cml.list_jobs():
            for run in cml.list_job_runs(job.id, max_pages=2):
                if run.status.is_active:
                    cml.stop_job_run(job.id, run.id)
