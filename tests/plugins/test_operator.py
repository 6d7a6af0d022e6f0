"""CmlJobRunOperator against the real workspace: submit, idempotent retries, the wait and its outcomes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from airflow.triggers.base import BaseTaskEndEvent, TaskSuccessEvent, TriggerEvent
from cml_provider.operators.cml import DAG_RUN_KEY_ENV, TI_KEY_ENV, CmlJobRunOperator
from cml_provider.states import JobRunStatus
from cml_provider.triggers.cml import CmlJobRunTrigger

pytestmark = pytest.mark.integration


def operator(unique: str, **kwargs) -> CmlJobRunOperator:
    kwargs.setdefault("job_name", f"op-{unique}-0.5cpu")
    kwargs.setdefault("script", "job.py")
    task_id = kwargs.pop("task_id", "submit")
    return CmlJobRunOperator(task_id=task_id, cpu=0.5, memory_gb=0.5, retry_delay=0.01, **kwargs)


def fire(trigger) -> TriggerEvent:
    async def run():
        return [e async for e in trigger.run()]

    [event] = asyncio.run(asyncio.wait_for(run(), timeout=60))
    return event


def drive(trigger) -> dict:
    """The payload of the event that resumes the task on a worker."""
    event = fire(trigger)
    assert not isinstance(event, BaseTaskEndEvent), event
    return event.payload


def api_calls(op: CmlJobRunOperator, monkeypatch) -> list:
    """The endpoints of the API calls ``op``'s hook makes from now on (the real calls, recorded)."""
    calls = []
    real = op.hook._do_api_call

    def spy(endpoint, **kwargs):
        calls.append(endpoint)
        return real(endpoint, **kwargs)

    monkeypatch.setattr(op.hook, "_do_api_call", spy)
    return calls


def test_init_only_assigns_and_templates_environment_and_arguments():
    op = CmlJobRunOperator(task_id="t", job_name="j", script="s.py", environment={"A": "{{ ds }}"})
    assert {"environment", "arguments", "job_name", "script", "result_file"} <= set(op.template_fields)
    assert "hook" not in op.__dict__  # created lazily, at execute time
    assert op.run_id is None


def test_execute_submits_with_markers_and_returns_ids(cml_conn, hook, unique, make_context):
    context = make_context(dag_id="dag_a", run_id=f"manual__{unique}", task_id="submit", map_index=3)
    op = operator(unique, environment={"MF_EXPERIMENT": "exp-1", "MF_N": 2}, arguments=["--name", "a b"])
    ref = op.execute(context)
    assert set(ref) == {"project_id", "job_id", "run_id"}
    assert op.run_id == ref["run_id"] and op.job_id == ref["job_id"]
    run = hook.get_job_run(ref["job_id"], ref["run_id"])
    assert run.environment[TI_KEY_ENV] == f"dag_a/manual__{unique}/submit/3"
    assert run.environment[DAG_RUN_KEY_ENV] == f"dag_a/manual__{unique}"
    assert run.environment["MF_EXPERIMENT"] == "exp-1" and run.environment["MF_N"] == "2"
    assert run.arguments == "--name 'a b'"


def test_retry_with_the_same_ti_key_creates_one_run(cml_conn, hook, unique, make_context):
    context = make_context(run_id=f"manual__{unique}")
    first = operator(unique, environment={"MF_TEST_SLEEP": "30"}).execute(context)
    second = operator(unique, environment={"MF_TEST_SLEEP": "30"}).execute(
        make_context(run_id=f"manual__{unique}", try_number=2)
    )  # the retry: a fresh instance
    try:
        assert second == first
        runs = hook.list_job_runs(first["job_id"])
        assert [r.id for r in runs] == [first["run_id"]]
        other_index = operator(unique).execute(make_context(run_id=f"manual__{unique}", map_index=1))
        assert other_index["run_id"] != first["run_id"]
    finally:
        hook.stop_job_run(first["job_id"], first["run_id"])


def test_a_cleared_map_index_that_now_asks_for_other_work_gets_its_own_run(cml_conn, hook, unique, make_context):
    # a re-planned DAG run can give a map index another experiment (earlier results reused shift
    # the indexes): the run of the same TI key for the old experiment is not this one's
    first = operator(unique, environment={"MF_EXPERIMENT_ID": "exp-a", "MF_TEST_SLEEP": "30"}).execute(
        make_context(run_id=f"manual__{unique}"))
    try:
        second = operator(unique, environment={"MF_EXPERIMENT_ID": "exp-b"}).execute(
            make_context(run_id=f"manual__{unique}", try_number=2))
        assert second["run_id"] != first["run_id"]
        assert hook.get_job_run(second["job_id"], second["run_id"]).environment["MF_EXPERIMENT_ID"] == "exp-b"
    finally:
        hook.stop_job_run(first["job_id"], first["run_id"])


def test_retry_after_a_failed_run_starts_a_new_one(cml_conn, hook, unique, make_context, wait_terminal):
    first = operator(unique, environment={"MF_TEST_FAIL_WITH": "nope"}).execute(make_context(run_id=f"manual__{unique}"))
    assert wait_terminal(hook, first["job_id"], first["run_id"]).status is JobRunStatus.FAILED
    context = make_context(run_id=f"manual__{unique}", try_number=2)  # a retry (or a clear)
    second = operator(unique).execute(context)
    assert second["run_id"] != first["run_id"]
    assert wait_terminal(hook, second["job_id"], second["run_id"]).status is JobRunStatus.SUCCEEDED
    # a succeeded run is reused too, unless the task asks for a fresh one (e.g. when cleared)
    assert operator(unique).execute(context) == second
    third = operator(unique, reuse_succeeded_run=False).execute(context)
    assert third["run_id"] != second["run_id"]


def test_a_retry_after_the_run_failed_reports_that_failure_without_running_it_again(
        cml_conn, hook, unique, make_context, wait_terminal):
    # e.g. Airflow failed the resumed task (its quick-trigger race) after the run itself failed
    first = operator(unique, environment={"MF_TEST_FAIL_WITH": "bad hyperparameter"}).execute(
        make_context(run_id=f"manual__{unique}"))
    assert wait_terminal(hook, first["job_id"], first["run_id"]).status is JobRunStatus.FAILED
    retry = operator(unique, environment={"MF_TEST_FAIL_WITH": "bad hyperparameter"}, wait_for_completion=True,
                     reuse_failed_run=True)
    with pytest.raises(AirflowFailException, match=f"{first['run_id']}.*ENGINE_FAILED"):
        retry.execute(make_context(run_id=f"manual__{unique}", try_number=2))
    assert [r.id for r in hook.list_job_runs(first["job_id"])] == [first["run_id"]]


def test_wait_for_completion_defers_to_the_run_trigger(cml_conn, hook, unique, make_context):
    op = operator(unique, wait_for_completion=True, poll_interval=0.1, environment={"MF_TEST_SLEEP": "0.5"})
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context(run_id=f"manual__{unique}"))
    deferred = info.value
    assert isinstance(deferred.trigger, CmlJobRunTrigger)
    assert deferred.method_name == "execute_complete"
    trigger = deferred.trigger
    assert (trigger.run_id, trigger.job_id, trigger.project_id) == (op.run_id, op.job_id, op.project_id)
    assert trigger.cml_conn_id == "cml_default" and trigger.poll_interval == 0.1
    assert time.time() < trigger.deadline <= time.time() + 24 * 3600
    assert trigger.end_task_on_success is True

    # the run succeeded: the trigger ends the task, with the XCom the task itself would return
    outcome = {"project_id": op.project_id, "job_id": op.job_id, "run_id": op.run_id, "status": "ENGINE_SUCCEEDED"}
    event = fire(trigger)
    assert type(event) is TaskSuccessEvent and event.xcoms == {"return_value": outcome}
    # a retry after the run succeeded returns it without waiting again
    retry = operator(unique, wait_for_completion=True).execute(make_context(run_id=f"manual__{unique}", try_number=2))
    assert retry == outcome
    # a success event of a trigger row written without the flag still resumes the task to return it
    _, kwargs = trigger.serialize()
    success = drive(CmlJobRunTrigger(**{**kwargs, "end_task_on_success": False}))
    assert operator(unique, wait_for_completion=True).execute_complete(make_context(), event=success) == outcome
    # a runner that resumes the task with the task-end event's payload (``airflow dags test``)
    assert operator(unique, wait_for_completion=True).execute_complete(make_context(), event=event.payload) is None


def test_a_run_that_ends_within_wait_before_defer_ends_the_task_on_the_worker(
    cml_conn, hook, unique, make_context, monkeypatch
):
    """No deferral, so no round trip through the triggerer: the same XCom, the same failure."""
    from cml_provider.hooks.endpoints import CREATE_JOB_RUN, GET_JOB_RUN

    op = operator(unique, wait_for_completion=True, poll_interval=1, wait_before_defer=30,
                  environment={"MF_TEST_SLEEP": "0.3"})
    calls = api_calls(op, monkeypatch)
    outcome = op.execute(make_context(run_id=f"manual__{unique}"))
    assert outcome == {"project_id": op.project_id, "job_id": op.job_id, "run_id": op.run_id,
                       "status": "ENGINE_SUCCEEDED"}
    # checks after 0.25 s, then doubling: a run of well under 30 s is seen ending in a few checks
    assert calls[calls.index(CREATE_JOB_RUN) + 1:] == [GET_JOB_RUN] * len(calls[calls.index(CREATE_JOB_RUN) + 1:])
    assert 1 <= calls.count(GET_JOB_RUN) <= 4, calls

    result_file = f"op-results/{unique}.json"
    failing = operator(unique, task_id="fails", wait_for_completion=True, poll_interval=1, wait_before_defer=30,
                       result_file=result_file, environment={"MF_TEST_FAIL_WITH": "ValueError: no rows",
                                                             "MF_TEST_RESULT_FILE": result_file})
    with pytest.raises(AirflowFailException, match=f"ended with ENGINE_FAILED. Error from {result_file}: "
                                                   "ValueError: no rows$"):
        failing.execute(make_context(run_id=f"manual__{unique}", task_id="fails"))


def test_a_run_still_going_after_wait_before_defer_defers_and_a_lost_api_defers_at_once(
    cml_conn, hook, unique, make_context, free_port, monkeypatch
):
    from cml_provider.hooks.endpoints import GET_JOB_RUN

    op = operator(unique, wait_for_completion=True, poll_interval=0.2, wait_before_defer=0.6,
                  environment={"MF_TEST_SLEEP": "60"})
    calls = api_calls(op, monkeypatch)
    lost = None
    start = time.monotonic()
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context(run_id=f"manual__{unique}"))
    try:
        assert time.monotonic() - start >= 0.6
        assert calls.count(GET_JOB_RUN) == 3, calls  # after 0.25 s, 0.45 s and 0.6 s
        assert isinstance(info.value.trigger, CmlJobRunTrigger) and info.value.trigger.run_id == op.run_id

        # the API is lost while the worker follows the run: the triggerer follows it instead
        lost = operator(unique, task_id="lost", wait_for_completion=True, poll_interval=0.2, wait_before_defer=30,
                        environment={"MF_TEST_SLEEP": "60"})
        real = lost.hook._do_api_call

        def down_for_reads(endpoint, **kwargs):
            if endpoint == GET_JOB_RUN:
                kwargs["service_url"] = f"http://127.0.0.1:{free_port}"  # nothing listens there
            return real(endpoint, **kwargs)

        monkeypatch.setattr(lost.hook, "_do_api_call", down_for_reads)
        start = time.monotonic()
        with pytest.raises(TaskDeferred) as info:
            lost.execute(make_context(run_id=f"manual__{unique}", task_id="lost"))
        assert time.monotonic() - start < 15  # not the 30 s it was allowed
        assert info.value.trigger.run_id == lost.run_id
    finally:
        hook.stop_job_run(op.job_id, op.run_id)
        if lost is not None and lost.run_id:
            hook.stop_job_run(lost.job_id, lost.run_id)


def test_a_failed_run_fails_the_task_for_good_with_the_result_files_error(cml_conn, hook, unique, make_context):
    result_file = f"op-results/{unique}.json"
    kwargs = dict(wait_for_completion=True, poll_interval=0.1, result_file=result_file,
                  environment={"MF_TEST_FAIL_WITH": "ValueError: column 'offer' missing",
                               "MF_TEST_RESULT_FILE": result_file})
    op = operator(unique, **kwargs)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context(run_id=f"manual__{unique}"))
    event = drive(info.value.trigger)
    with pytest.raises(AirflowFailException) as failure:  # not retried: the run's outcome
        operator(unique, **kwargs).execute_complete(make_context(), event=event)
    assert str(failure.value) == (
        f"CML job run {op.run_id} of job 'op-{unique}-0.5cpu' ({op.job_id}) ended with ENGINE_FAILED. "
        f"Error from {result_file}: ValueError: column 'offer' missing"
    )
    # without a result file it still names the run and its status, and a missing file says so
    with pytest.raises(AirflowFailException, match=f"{op.run_id} .* ended with ENGINE_FAILED$"):
        operator(unique, wait_for_completion=True).execute_complete(make_context(), event=event)
    with pytest.raises(AirflowFailException, match="Result file 'nowhere.json' does not exist"):
        operator(unique, wait_for_completion=True, result_file="nowhere.json").execute_complete(
            make_context(), event=event)
    with pytest.raises(AirflowException, match="Invalid event") as invalid:
        op.execute_complete(make_context(), event={})
    assert not isinstance(invalid.value, AirflowFailException)
    with pytest.raises(AirflowException, match="Invalid event"):
        op.execute_complete(make_context(), event="failed")


def test_a_run_still_going_at_the_deadline_is_stopped_and_fails_the_task(cml_conn, hook, unique, make_context,
                                                                          wait_terminal):
    kwargs = dict(wait_for_completion=True, poll_interval=0.1, wait_timeout=0.5, environment={"MF_TEST_SLEEP": "60"})
    op = operator(unique, **kwargs)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context(run_id=f"manual__{unique}"))
    event = drive(info.value.trigger)
    assert event["status"] == "timeout"
    with pytest.raises(AirflowFailException, match=f"CML job run {op.run_id} .* after waiting 0.5s; asked CML to stop"):
        operator(unique, **kwargs).execute_complete(make_context(), event=event)
    assert wait_terminal(hook, op.job_id, op.run_id, timeout=30).status is JobRunStatus.STOPPED


def test_a_wait_that_could_not_read_the_run_is_retried_on_the_same_run(
    cml_conn, workspace, hook, unique, make_context, free_port, monkeypatch
):
    """The task died waiting (here: its trigger lost the API): the error is retryable, and the
    retry finds the run the first try started and waits for it, never starting a second one."""
    kwargs = dict(wait_for_completion=True, poll_interval=0.1, environment={"MF_TEST_SLEEP": "60"})
    first = operator(unique, **kwargs)
    with pytest.raises(TaskDeferred) as info:
        first.execute(make_context(run_id=f"manual__{unique}"))
    try:
        down = {"conn_type": "cml", "host": f"http://127.0.0.1:{free_port}", "password": workspace.api_key}
        monkeypatch.setenv("AIRFLOW_CONN_CML_DOWN", json.dumps(down))
        trigger = info.value.trigger
        trigger.cml_conn_id = "cml_down"
        event = drive(trigger)
        assert event["status"] == "error" and event["run_status"] is None
        with pytest.raises(AirflowException, match=f"Could not follow CML job run {first.run_id}") as failure:
            operator(unique, **kwargs).execute_complete(make_context(), event=event)
        assert not isinstance(failure.value, AirflowFailException)  # Airflow retries it
        # a last status that is not an end is no outcome either
        running = {**event, "run_status": "ENGINE_RUNNING"}
        with pytest.raises(AirflowException) as failure:
            operator(unique, **kwargs).execute_complete(make_context(), event=running)
        assert not isinstance(failure.value, AirflowFailException)

        retry = operator(unique, **kwargs)
        with pytest.raises(TaskDeferred) as again:
            retry.execute(make_context(run_id=f"manual__{unique}", try_number=2))
        assert isinstance(again.value.trigger, CmlJobRunTrigger)
        assert (again.value.trigger.run_id, again.value.method_name) == (first.run_id, "execute_complete")
        assert [r.id for r in hook.list_job_runs(first.job_id)] == [first.run_id]
    finally:
        hook.stop_job_run(first.job_id, first.run_id)


def test_a_retry_lists_the_jobs_runs_once(cml_conn, hook, unique, make_context, monkeypatch):
    """The search for an earlier try's run and the check before creating share one listing of
    the job's recent runs (each listing is up to ``recent_run_pages`` API calls)."""
    from cml_provider.hooks.endpoints import LIST_JOB_RUNS

    first = operator(unique).execute(make_context(run_id=f"manual__{unique}", task_id="a"))
    op = operator(unique, task_id="b")
    calls = api_calls(op, monkeypatch)
    ref = op.execute(make_context(run_id=f"manual__{unique}", task_id="b", try_number=2))
    assert ref["run_id"] != first["run_id"]
    assert calls.count(LIST_JOB_RUNS) == 1, calls


def test_a_first_try_of_a_planned_job_makes_one_api_call(cml_conn, hook, unique, make_context, monkeypatch):
    """With the project and job ids of a plan, a first try only starts the run: no
    project or job lookup, and no search for an earlier try's run (there is none)."""
    from cml_provider.hooks.endpoints import CREATE_JOB_RUN

    job = hook.get_or_create_job(f"op-{unique}-planned", "job.py", 0.5, 0.5)
    op = operator(unique, job_name=job.name, job_id=job.id, project_id=hook.get_project_id())
    calls = api_calls(op, monkeypatch)
    ref = op.execute(make_context(run_id=f"manual__{unique}"))
    assert calls == [CREATE_JOB_RUN] and ref["job_id"] == job.id
    assert hook.get_job_run(job.id, ref["run_id"]).environment[TI_KEY_ENV] == f"dag/manual__{unique}/task/-1"


def test_on_kill_stops_the_remote_run(cml_conn, hook, unique, make_context, wait_terminal):
    op = operator(unique, environment={"MF_TEST_SLEEP": "60"})
    ref = op.execute(make_context(run_id=f"manual__{unique}"))
    op.on_kill()
    assert wait_terminal(hook, ref["job_id"], ref["run_id"], timeout=30).status is JobRunStatus.STOPPED
