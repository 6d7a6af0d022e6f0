"""Triggers: serialisation, and exactly one event per run, driven against the real workspace."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from airflow.jobs.triggerer_job_runner import TriggerEventEntry, TriggerRunnerSupervisor, messages
from airflow.sdk.execution_time.comms import _new_encoder, _RequestFrame
from airflow.triggers.base import BaseTaskEndEvent, TaskSuccessEvent, TriggerEvent
from cml_provider.states import JobRunStatus
from cml_provider.triggers.cml import CmlJobRunTrigger


def collect(trigger) -> list[TriggerEvent]:
    """Drive the trigger's async generator to its end (bounded by the trigger's deadline)."""

    async def run() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(run(), timeout=60))


def run_trigger(conn_id, project_id, job_id, run_id, *, deadline_in=30.0, end_task_on_success=False):
    return CmlJobRunTrigger(
        cml_conn_id=conn_id,
        project_id=project_id,
        job_id=job_id,
        run_id=run_id,
        poll_interval=0.1,
        deadline=time.time() + deadline_in,
        retry_delay=0.01,
        end_task_on_success=end_task_on_success,
    )


def through_the_triggerer(event: TriggerEvent) -> TriggerEvent:
    """``event`` as the triggerer's supervisor receives it from its trigger runner process: in a
    ``TriggerStateChanges`` message, msgpack-encoded, decoded by the supervisor's own decoder."""
    body = messages.TriggerStateChanges(events=[TriggerEventEntry(7, event, None)]).model_dump()
    frame = msgspec.msgpack.decode(_new_encoder().encode(_RequestFrame(id=1, body=body)), type=_RequestFrame)
    [entry] = TriggerRunnerSupervisor.decoder.validate_python(frame.body).events
    assert entry.trigger_id == 7
    return entry.event


@pytest.mark.parametrize("end_task_on_success", [False, True])
def test_job_run_trigger_serialize_mirrors_init(end_task_on_success):
    trigger = CmlJobRunTrigger("cml_x", "p", "j", "r", poll_interval=5, deadline=1234.5,
                               end_task_on_success=end_task_on_success)
    path, kwargs = trigger.serialize()
    assert path == "cml_provider.triggers.cml.CmlJobRunTrigger"
    clone = CmlJobRunTrigger(**kwargs)
    assert clone.serialize() == (path, kwargs)
    assert kwargs["deadline"] == 1234.5 and kwargs["run_id"] == "r"
    assert kwargs["end_task_on_success"] is end_task_on_success
    assert all(isinstance(v, (str, int, float)) for v in kwargs.values())


def test_a_trigger_row_written_without_the_flag_still_inflates():
    """A trigger row written before ``end_task_on_success`` existed still inflates, as before."""
    _, kwargs = CmlJobRunTrigger("cml_x", "p", "j", "r", poll_interval=5, deadline=1.0).serialize()
    del kwargs["end_task_on_success"]
    assert CmlJobRunTrigger(**kwargs).end_task_on_success is False


class TriggererTaskInstance:
    """The triggerer's task instance, which a wait on a run never needs: its XCom reads go
    through the triggerer's supervisor, which answers some requests only (an unanswered one
    left a failed run's wait deferred until its timeout). Records what a trigger reads of it."""

    task_id = "run_experiment"
    task = None  # the triggerer's has the serialized task; nothing here is templated

    def __init__(self):
        self.used: list[str] = []

    def __getattr__(self, name):
        self.used.append(name)
        raise AttributeError(name)


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
    assert not isinstance(event, BaseTaskEndEvent)


@pytest.mark.integration
def test_a_succeeded_run_ends_the_task_in_the_triggerer_with_its_xcom(cml_conn, hook, unique, capfd):
    job = hook.get_or_create_job(f"trig-end-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "0.3"})
    trigger = run_trigger(cml_conn, hook.get_project_id(), job.id, run.id, end_task_on_success=True)
    trigger.task_instance = ti = TriggererTaskInstance()
    [event] = collect(trigger)
    assert ti.used == []
    outcome = {"project_id": hook.get_project_id(), "job_id": job.id, "run_id": run.id, "status": "ENGINE_SUCCEEDED"}
    assert type(event) is TaskSuccessEvent
    assert event.xcoms == {"return_value": outcome}
    received = through_the_triggerer(event)
    assert type(received) is TaskSuccessEvent and received.xcoms == {"return_value": outcome}
    # the trigger's log (the task's trigger log in Airflow) says why the task ended there
    assert f"CML job run {run.id} succeeded; the task ends here" in capfd.readouterr().out


@pytest.mark.integration
def test_error_event_for_a_failed_run(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-fail-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_FAIL_WITH": "bad data"})
    trigger = run_trigger(cml_conn, hook.get_project_id(), job.id, run.id, end_task_on_success=True)
    trigger.task_instance = ti = TriggererTaskInstance()
    [event] = collect(trigger)
    assert ti.used == []
    # the task resumes on a worker, to fail with the run's own error
    assert type(event) is TriggerEvent
    assert event.payload["status"] == "error"
    assert event.payload["run_status"] == "ENGINE_FAILED"
    assert "ENGINE_FAILED" in event.payload["message"]
    received = through_the_triggerer(event)
    assert type(received) is TriggerEvent and received.payload == event.payload


@pytest.mark.integration
def test_timeout_event_at_the_deadline(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-slow-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "60"})
    try:
        started = time.monotonic()
        [event] = collect(run_trigger(cml_conn, hook.get_project_id(), job.id, run.id, deadline_in=1.0,
                                      end_task_on_success=True))
        assert time.monotonic() - started < 10
        assert type(event) is TriggerEvent and event.payload["status"] == "timeout"
        assert event.payload["run_status"] in {"ENGINE_SCHEDULING", "ENGINE_STARTING", "ENGINE_RUNNING"}
    finally:
        hook.stop_job_run(job.id, run.id)


@pytest.mark.integration
def test_error_event_for_an_unknown_run(cml_conn, hook, unique):
    job = hook.get_or_create_job(f"trig-404-{unique}", "job.py", 0.5, 0.5)
    [event] = collect(run_trigger(cml_conn, hook.get_project_id(), job.id, "no-such-run", end_task_on_success=True))
    assert type(event) is TriggerEvent and event.payload["status"] == "error"
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
    # waits ramp from FIRST_POLL_S, doubling, up to poll_interval: a short run is seen to end
    # soon, a long one is checked every poll_interval
    expected = [0.25, 0.5, 1, 2, 4, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7][:len(sleeps)]
    assert len(sleeps) >= 3 and sleeps == expected


@pytest.mark.integration
def test_on_kill_stops_the_run(cml_conn, hook, unique, wait_terminal):
    """A user kills the deferred task (mark failed, clear): the run it waited for is stopped."""
    job = hook.get_or_create_job(f"trig-kill-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "60"})
    asyncio.run(run_trigger(cml_conn, hook.get_project_id(), job.id, run.id).on_kill())
    assert wait_terminal(hook, job.id, run.id, timeout=30).status is JobRunStatus.STOPPED
