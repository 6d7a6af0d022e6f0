"""Triggers: serialisation, and exactly one event per run, driven against the real workspace."""

from __future__ import annotations

import asyncio
import time
import typing

import pytest
from airflow.jobs.triggerer_job_runner import ToTriggerSupervisor
from airflow.triggers.base import TaskFailedEvent, TaskSuccessEvent, TriggerEvent
from cml_provider.triggers.cml import CmlCapacityTrigger, CmlJobRunTrigger, CmlSubmittedRunTrigger

MARKER = "MF_AIRFLOW_DAG_RUN_KEY"


def collect(trigger) -> list[TriggerEvent]:
    """Drive the trigger's async generator to its end (bounded by the trigger's deadline)."""

    async def run() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(run(), timeout=60))


def run_trigger(conn_id, project_id, job_id, run_id, *, deadline_in=30.0):
    return CmlJobRunTrigger(
        cml_conn_id=conn_id,
        project_id=project_id,
        job_id=job_id,
        run_id=run_id,
        poll_interval=0.1,
        deadline=time.time() + deadline_in,
        retry_delay=0.01,
    )


def test_job_run_trigger_serialize_mirrors_init():
    trigger = CmlJobRunTrigger("cml_x", "p", "j", "r", poll_interval=5, deadline=1234.5)
    path, kwargs = trigger.serialize()
    assert path == "cml_provider.triggers.cml.CmlJobRunTrigger"
    clone = CmlJobRunTrigger(**kwargs)
    assert clone.serialize() == (path, kwargs)
    assert kwargs["deadline"] == 1234.5 and kwargs["run_id"] == "r"
    assert all(isinstance(v, (str, int, float)) for v in kwargs.values())


def test_capacity_trigger_serialize_mirrors_init():
    trigger = CmlCapacityTrigger("cml_x", "p", ["j1", "j2"], MARKER, "d/r", 3, 5, 99.0, job_name_filter="mf-")
    path, kwargs = trigger.serialize()
    assert path == "cml_provider.triggers.cml.CmlCapacityTrigger"
    assert CmlCapacityTrigger(**kwargs).serialize() == (path, kwargs)
    with pytest.raises(ValueError):
        CmlCapacityTrigger("cml_x", "p", None, MARKER, "d/r", 0, 5, 99.0)


@pytest.mark.integration
def test_success_event(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-ok-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "0.3"})
    [event] = collect(run_trigger(cml_conn, hook.get_project_id(), job.id, run.id))
    assert event.payload["status"] == "success"
    assert event.payload["run_status"] == "ENGINE_SUCCEEDED"
    assert (event.payload["run_id"], event.payload["job_id"]) == (run.id, job.id)
    assert event.payload["project_id"] == hook.get_project_id()
    assert run.id in event.payload["message"]


@pytest.mark.integration
def test_error_event_for_a_failed_run(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-fail-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_FAIL_WITH": "bad data"})
    [event] = collect(run_trigger(cml_conn, hook.get_project_id(), job.id, run.id))
    assert event.payload["status"] == "error"
    assert event.payload["run_status"] == "ENGINE_FAILED"
    assert "ENGINE_FAILED" in event.payload["message"]


@pytest.mark.integration
def test_timeout_event_at_the_deadline(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-slow-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "60"})
    try:
        started = time.monotonic()
        [event] = collect(run_trigger(cml_conn, hook.get_project_id(), job.id, run.id, deadline_in=1.0))
        assert time.monotonic() - started < 10
        assert event.payload["status"] == "timeout"
        assert event.payload["run_status"] in {"ENGINE_SCHEDULING", "ENGINE_STARTING", "ENGINE_RUNNING"}
    finally:
        hook.stop_job_run(job.id, run.id)


@pytest.mark.integration
def test_error_event_for_an_unknown_run(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-404-{unique}", "job.py", 0.5, 0.5)
    [event] = collect(run_trigger(cml_conn, hook.get_project_id(), job.id, "no-such-run"))
    assert event.payload["status"] == "error"
    assert "404" in event.payload["message"]


@pytest.mark.integration
def test_trigger_sleeps_with_asyncio_sleep_between_polls(cml_conn, hook, unique, monkeypatch):
    job = hook.get_or_create_job(f"trig-sleep-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "0.5"})
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds, *args, **kwargs):
        sleeps.append(seconds)
        await real_sleep(0.05)

    monkeypatch.setattr("cml_provider.triggers.cml.asyncio.sleep", fake_sleep)
    trigger = CmlJobRunTrigger(
        cml_conn, hook.get_project_id(), job.id, run.id, poll_interval=7, deadline=time.time() + 60
    )
    [event] = collect(trigger)
    assert event.payload["status"] == "success"
    assert sleeps and all(s == 7 for s in sleeps)


@pytest.mark.integration
def test_capacity_trigger_waits_for_runs_of_the_same_dag_run(cml_conn, hook, unique, wait_terminal):
    key = f"capdag/{unique}"
    jobs = [hook.get_or_create_job(f"cap-{unique}-{i}", "job.py", 0.25, 0.25) for i in range(2)]
    runs = [hook.create_job_run(job.id, environment={MARKER: key, "MF_TEST_SLEEP": "60"}) for job in jobs]
    other = hook.create_job_run(jobs[0].id, environment={MARKER: "capdag/other", "MF_TEST_SLEEP": "60"})
    pid = hook.get_project_id()

    def capacity(max_active, deadline_in=1.0, job_ids=None, name_filter=f"cap-{unique}"):
        return CmlCapacityTrigger(
            cml_conn,
            pid,
            job_ids,
            MARKER,
            key,
            max_active,
            0.1,
            time.time() + deadline_in,
            job_name_filter=name_filter,
            retry_delay=0.01,
        )

    try:
        [event] = collect(capacity(2))
        assert event.payload["status"] == "timeout" and event.payload["active"] == 2
        [event] = collect(capacity(3))
        assert event.payload["status"] == "success" and event.payload["active"] == 2
        [event] = collect(capacity(1, job_ids=[jobs[1].id], name_filter=None))
        assert event.payload["status"] == "timeout" and event.payload["active"] == 1

        hook.stop_job_run(jobs[0].id, runs[0].id)
        [event] = collect(capacity(2, deadline_in=30))
        assert event.payload["status"] == "success" and event.payload["active"] == 1
    finally:
        for run in (*runs, other):
            hook.stop_job_run(run.job_id, run.id)


def _gather(triggers) -> list[dict]:
    """Run triggers side by side in one event loop, as the triggerer does; their events' payloads."""

    async def one(trigger):
        return [event.payload async for event in trigger.run()]

    async def run():
        return await asyncio.gather(*(one(t) for t in triggers))

    return [events[0] for events in asyncio.run(asyncio.wait_for(run(), timeout=60))]


@pytest.mark.integration
def test_capacity_triggers_of_one_dag_run_share_a_count_per_poll(cml_conn, hook, unique, monkeypatch, wait_terminal):
    from cml_provider.hooks.cml import CmlHook
    from cml_provider.hooks.endpoints import LIST_JOB_RUNS, LIST_JOBS

    key = f"capshare/{unique}"
    job = hook.get_or_create_job(f"capshare-{unique}", "job.py", 0.25, 0.25)
    busy = hook.create_job_run(job.id, environment={MARKER: key, "MF_TEST_SLEEP": "60"})
    pid = hook.get_project_id()
    calls = []
    real = CmlHook._a_do_api_call

    async def spy(self, endpoint, **kwargs):
        calls.append(endpoint)
        return await real(self, endpoint, **kwargs)

    monkeypatch.setattr(CmlHook, "_a_do_api_call", spy)

    def capacity(max_active, poll_interval, deadline_in):
        return CmlCapacityTrigger(cml_conn, pid, None, MARKER, key, max_active, poll_interval,
                                  time.time() + deadline_in, job_name_filter=f"capshare-{unique}", retry_delay=0.01)

    try:
        # five deferred tasks of one DAG run, polling every 0.2 s for 1 s: one count per interval
        # between them (about 6), not one per task and interval (about 30)
        events = _gather([capacity(1, 0.2, 1.0) for _ in range(5)])
        assert [(e["status"], e["active"]) for e in events] == [("timeout", 1)] * 5
        assert calls.count(LIST_JOB_RUNS) == calls.count(LIST_JOBS) <= 9, calls
    finally:
        hook.stop_job_run(job.id, busy.id)
    wait_terminal(hook, job.id, busy.id)
    # a free slot goes to one trigger only: with 2 slots free, the third waits for a new count
    events = _gather([capacity(2, 30.0, 1.0) for _ in range(3)])
    assert sorted((e["status"], e["active"]) for e in events) == [("success", 0), ("success", 1), ("timeout", 2)]
    from cml_provider.triggers.cml import _SHARED_COUNTS

    assert not _SHARED_COUNTS  # nothing is kept once no trigger waits


#: the requests the triggerer's supervisor decodes (Airflow's own union, not a copy)
_TRIGGERER_REQUESTS = {cls.__name__ for cls in typing.get_args(typing.get_args(ToTriggerSupervisor)[0])}


def test_the_triggerer_answers_single_xcom_reads_only():
    """What the test double below stands for: GetXCom is answered, a sequence slice is not."""
    assert "GetXCom" in _TRIGGERER_REQUESTS and "GetXComSequenceSlice" not in _TRIGGERER_REQUESTS


class TriggererTaskInstance:
    """The part of the triggerer's task instance a start-from-trigger trigger uses (its map
    index and XCom reads), holding the XComs the upstream tasks pushed."""

    task_id = "wait_for_run"
    task = None  # the triggerer's has the serialized sensor; nothing here is templated

    def __init__(self, map_index: int, xcoms: dict):
        self.map_index = map_index
        self.xcoms = xcoms
        self.pulls: list[tuple] = []

    def xcom_pull(self, task_ids, map_indexes=None):
        self.pulls.append((task_ids, map_indexes))
        if map_indexes is None:
            # the SDK would send GetXComSequenceSlice, which the triggerer cannot decode: it
            # logs "Unable to decode message" and the trigger waits for an answer forever
            assert "GetXComSequenceSlice" not in _TRIGGERER_REQUESTS
            raise AssertionError("a trigger pulled an XCom without a map index: the triggerer never answers that")
        value = self.xcoms[task_ids]
        if isinstance(value, Exception):
            raise value
        return value if map_indexes == -1 else value[map_indexes]


def submitted_run_trigger(conn_id, ti, *, result_files_task_id="planned"):
    trigger = CmlSubmittedRunTrigger(conn_id, "submit", poll_interval=0.1,
                                     result_files_task_id=result_files_task_id, retry_delay=0.01)
    trigger.task_instance = ti
    return trigger


def test_submitted_run_trigger_serialize_mirrors_init():
    trigger = CmlSubmittedRunTrigger("cml_x", "submit_long", poll_interval=5, result_files_task_id="long")
    path, kwargs = trigger.serialize()
    assert path == "cml_provider.triggers.cml.CmlSubmittedRunTrigger"
    assert CmlSubmittedRunTrigger(**kwargs).serialize() == (path, kwargs)
    assert all(isinstance(v, (str, int, float)) for v in kwargs.values())


@pytest.mark.integration
def test_submitted_run_trigger_ends_the_task_with_the_run_of_its_own_map_index(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-sub-{unique}", "job.py", 0.5, 0.5)
    runs = [hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "0.3"}) for _ in range(2)]
    refs = [{"project_id": hook.get_project_id(), "job_id": job.id, "run_id": r.id} for r in runs]
    ti = TriggererTaskInstance(1, {"submit": refs})
    [event] = collect(submitted_run_trigger(cml_conn, ti))
    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms == {"return_value": {**refs[1], "status": "ENGINE_SUCCEEDED"}}
    assert ti.pulls == [("submit", 1)]  # nothing read about the other instances
    assert hook.get_job_run(job.id, runs[1].id).status.is_terminal


@pytest.mark.integration
def test_submitted_run_trigger_fails_the_task_logging_the_result_file_error(cml_conn, hook, unique, capsys):
    job = hook.get_or_create_job(f"trig-subfail-{unique}", "job.py", 0.5, 0.5)
    result_file = f"trigger-results/{unique}.json"
    run = hook.create_job_run(job.id, environment={"MF_TEST_FAIL_WITH": "training diverged",
                                                   "MF_TEST_RESULT_FILE": result_file})
    ref = {"project_id": hook.get_project_id(), "job_id": job.id, "run_id": run.id}
    ti = TriggererTaskInstance(0, {"submit": [ref], "planned": [{"result_file": result_file}]})
    [event] = collect(submitted_run_trigger(cml_conn, ti))
    logged = capsys.readouterr().out  # the trigger logs through structlog
    assert isinstance(event, TaskFailedEvent)
    assert f"CML job run {run.id} ended with ENGINE_FAILED" in logged
    assert f"Error from {result_file}: training diverged" in logged


@pytest.mark.integration
def test_submitted_run_trigger_with_a_missing_result_file_still_fails_naming_it(cml_conn, hook, unique, capsys):
    job = hook.get_or_create_job(f"trig-subnofile-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_FAIL_WITH": "oom"})
    ref = {"project_id": hook.get_project_id(), "job_id": job.id, "run_id": run.id}
    ti = TriggererTaskInstance(0, {"submit": [ref], "planned": ["trigger-results/never-written.json"]})
    [event] = collect(submitted_run_trigger(cml_conn, ti))
    logged = capsys.readouterr().out  # the trigger logs through structlog
    assert isinstance(event, TaskFailedEvent)
    assert "Result file 'trigger-results/never-written.json' does not exist" in logged


def test_submitted_run_trigger_without_a_run_succeeds_without_calling_cml(capsys):
    # a submit that had nothing to submit returns None: nothing to wait for (the connection
    # does not even exist, so any CML call would fail the task)
    ti = TriggererTaskInstance(0, {"submit": [None]})
    [event] = collect(submitted_run_trigger("no_such_connection", ti))
    logged = capsys.readouterr().out  # the trigger logs through structlog
    assert isinstance(event, TaskSuccessEvent) and event.xcoms is None
    assert "No CML run to wait for" in logged


def test_submitted_run_trigger_that_cannot_read_its_run_fails_naming_the_task(capsys):
    ti = TriggererTaskInstance(3, {"submit": RuntimeError("execution API unavailable")})
    [event] = collect(submitted_run_trigger("no_such_connection", ti))
    logged = capsys.readouterr().out  # the trigger logs through structlog
    assert isinstance(event, TaskFailedEvent)
    assert "Could not read the run submit[3] submitted: RuntimeError: execution API unavailable" in logged


def test_submitted_run_trigger_with_a_reference_missing_its_job_fails_naming_it(capsys):
    ti = TriggererTaskInstance(0, {"submit": [{"project_id": "p", "run_id": "r1"}]})
    [event] = collect(submitted_run_trigger("no_such_connection", ti))
    logged = capsys.readouterr().out
    assert isinstance(event, TaskFailedEvent)
    assert "submit[0] returned no run reference" in logged and "has a run_id but no job_id" in logged
