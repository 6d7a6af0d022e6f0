"""CmlJobRunSensor against the real workspace: poke, defer, failure messages with the result file."""

from __future__ import annotations

import asyncio

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from cml_provider.sensors.cml import CmlJobRunSensor
from cml_provider.states import JobRunStatus
from cml_provider.triggers.cml import CmlJobRunTrigger


def sensor(run, **kwargs) -> CmlJobRunSensor:
    kwargs.setdefault("poll_interval", 0.1)
    return CmlJobRunSensor(task_id="wait", run=run, retry_delay=0.01, **kwargs)


def drive(trigger) -> dict:
    async def run():
        return [e async for e in trigger.run()]

    [event] = asyncio.run(asyncio.wait_for(run(), timeout=60))
    return event.payload


@pytest.fixture
def start(hook, unique):
    """Start a run of the test job with the given environment; returns the run reference dict."""
    job = hook.get_or_create_job(f"sensor-{unique}", "job.py", 0.5, 0.5)
    started = []

    def _start(**env) -> dict:
        run = hook.create_job_run(job.id, environment={k: str(v) for k, v in env.items()})
        started.append(run)
        return run.to_ref()

    yield _start
    for run in started:
        hook.stop_job_run(run.job_id, run.id)


@pytest.mark.parametrize("run", [None, {"project_id": "p", "job_id": "j", "run_id": None}])
@pytest.mark.parametrize("deferrable", [True, False])
def test_nothing_to_wait_for_succeeds_at_once(run, deferrable, make_context):
    assert sensor(run, deferrable=deferrable).execute(make_context()) is None


def test_template_fields():
    assert set(CmlJobRunSensor.template_fields) == {"run", "result_file"}


@pytest.mark.integration
def test_poke_mode_waits_for_success(cml_conn, start, make_context):
    ref = start(MF_TEST_SLEEP=0.3)
    waiting = sensor(ref, deferrable=False)
    result = waiting.execute(make_context())
    assert result == {**ref, "status": "ENGINE_SUCCEEDED"}


@pytest.mark.integration
def test_poke_mode_failure_names_the_run_and_the_result_file_error(
    cml_conn, hook, start, unique, make_context, wait_terminal
):
    result_file = f"sensor-results/{unique}.json"
    ref = start(MF_TEST_FAIL_WITH="ValueError: column 'offer' missing", MF_TEST_RESULT_FILE=result_file)
    wait_terminal(hook, ref["job_id"], ref["run_id"])
    with pytest.raises(AirflowException) as info:
        sensor(ref, deferrable=False, result_file=result_file).poke(make_context())
    message = str(info.value)
    assert ref["run_id"] in message and "ENGINE_FAILED" in message
    assert "ValueError: column 'offer' missing" in message


@pytest.mark.integration
def test_deferrable_mode_defers_then_succeeds(cml_conn, start, make_context):
    ref = start(MF_TEST_SLEEP=1)
    waiting = sensor(ref, timeout=120)
    with pytest.raises(TaskDeferred) as info:
        waiting.execute(make_context())
    trigger = info.value.trigger
    assert isinstance(trigger, CmlJobRunTrigger)
    assert info.value.method_name == "execute_complete"
    assert (trigger.project_id, trigger.job_id, trigger.run_id) == (
        ref["project_id"],
        ref["job_id"],
        ref["run_id"],
    )
    event = drive(trigger)
    assert sensor(ref).execute_complete(make_context(), event=event) == {**ref, "status": "ENGINE_SUCCEEDED"}


@pytest.mark.integration
def test_deferrable_failure_message_contains_the_result_file_error(cml_conn, start, unique, make_context):
    result_file = f"sensor-results/{unique}-deferred.json"
    ref = start(MF_TEST_SLEEP=0.5, MF_TEST_FAIL_WITH="training diverged", MF_TEST_RESULT_FILE=result_file)
    with pytest.raises(TaskDeferred) as info:
        sensor(ref, result_file=result_file).execute(make_context())
    event = drive(info.value.trigger)
    assert event["status"] == "error"
    with pytest.raises(AirflowException) as failure:
        sensor(ref, result_file=result_file).execute_complete(make_context(), event=event)
    message = str(failure.value)
    assert ref["run_id"] in message and "ENGINE_FAILED" in message and "training diverged" in message


@pytest.mark.integration
def test_missing_result_file_is_reported_not_raised(cml_conn, hook, start, make_context, wait_terminal):
    ref = start(MF_TEST_FAIL_WITH="x")
    wait_terminal(hook, ref["job_id"], ref["run_id"])
    with pytest.raises(AirflowException, match="Result file 'nowhere/result.json' does not exist"):
        sensor(ref, result_file="nowhere/result.json").execute(make_context())


@pytest.mark.integration
def test_timeout_event_raises_naming_the_run(cml_conn, start, make_context):
    ref = start(MF_TEST_SLEEP=60)
    waiting = sensor(ref, timeout=1)
    with pytest.raises(TaskDeferred) as info:
        waiting.execute(make_context())
    event = drive(info.value.trigger)
    assert event["status"] == "timeout"
    with pytest.raises(AirflowException, match=f"Timed out waiting for CML job run {ref['run_id']}"):
        sensor(ref).execute_complete(make_context(), event=event)


def test_execute_complete_rejects_invalid_events(make_context):
    with pytest.raises(AirflowException, match="Invalid event"):
        sensor({"job_id": "j", "run_id": "r"}).execute_complete(
            make_context(), event={"status": "maybe", "run_id": "r"}
        )
    with pytest.raises(AirflowException, match="Invalid event"):
        sensor({"job_id": "j", "run_id": "r"}).execute_complete(make_context(), event=None)


@pytest.mark.integration
def test_poke_returns_xcom_value(cml_conn, hook, start, make_context, wait_terminal):
    ref = start()
    wait_terminal(hook, ref["job_id"], ref["run_id"])
    result = sensor(ref, deferrable=False).poke(make_context())
    assert isinstance(result, PokeReturnValue) and result.xcom_value["status"] == "ENGINE_SUCCEEDED"


@pytest.mark.integration
def test_on_kill_stops_the_remote_run(cml_conn, hook, start, make_context, wait_terminal):
    ref = start(MF_TEST_SLEEP=60)
    waiting = sensor(ref)
    with pytest.raises(TaskDeferred):
        waiting.execute(make_context())
    waiting.on_kill()
    assert wait_terminal(hook, ref["job_id"], ref["run_id"], timeout=30).status is JobRunStatus.STOPPED
