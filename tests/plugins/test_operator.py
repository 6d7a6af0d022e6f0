"""CmlJobRunOperator against the real workspace: submit, idempotent retries, deferral, capacity."""

from __future__ import annotations

import asyncio
import time

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from cml_provider.operators.cml import DAG_RUN_KEY_ENV, TI_KEY_ENV, CmlJobRunOperator
from cml_provider.states import JobRunStatus
from cml_provider.triggers.cml import CmlCapacityTrigger, CmlJobRunTrigger

pytestmark = pytest.mark.integration


def operator(unique: str, **kwargs) -> CmlJobRunOperator:
    kwargs.setdefault("job_name", f"op-{unique}-0.5cpu")
    kwargs.setdefault("script", "job.py")
    task_id = kwargs.pop("task_id", "submit")
    return CmlJobRunOperator(task_id=task_id, cpu=0.5, memory_gb=0.5, retry_delay=0.01, **kwargs)


def drive(trigger) -> dict:
    async def run():
        return [e async for e in trigger.run()]

    [event] = asyncio.run(asyncio.wait_for(run(), timeout=60))
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
    assert {"environment", "arguments", "job_name", "script"} <= set(op.template_fields)
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

    event = drive(trigger)
    resumed = operator(unique, wait_for_completion=True)
    assert resumed.execute_complete(make_context(), event=event) == {
        "project_id": op.project_id,
        "job_id": op.job_id,
        "run_id": op.run_id,
    }


def test_execute_complete_raises_on_a_failed_run(cml_conn, hook, unique, make_context):
    op = operator(unique, wait_for_completion=True, poll_interval=0.1, environment={"MF_TEST_FAIL_WITH": "x"})
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context(run_id=f"manual__{unique}"))
    event = drive(info.value.trigger)
    with pytest.raises(AirflowException, match=f"{op.run_id}.*ENGINE_FAILED"):
        op.execute_complete(make_context(), event=event)
    with pytest.raises(AirflowException, match="Invalid event"):
        op.execute_complete(make_context(), event={})


def test_per_dag_run_cap_defers_to_the_capacity_trigger(cml_conn, hook, unique, make_context):
    run_id = f"manual__{unique}"
    busy = operator(unique, task_id="busy", environment={"MF_TEST_SLEEP": "60"}).execute(
        make_context(run_id=run_id, task_id="busy")
    )
    capped = operator(
        unique,
        task_id="capped",
        job_name=f"op-{unique}-other-profile",
        max_active_runs_per_dag_run=1,
        capacity_job_name_filter=f"op-{unique}",
        capacity_poll_interval=0.1,
    )
    context = make_context(run_id=run_id, task_id="capped")
    try:
        with pytest.raises(TaskDeferred) as info:
            capped.execute(context)
        trigger = info.value.trigger
        assert isinstance(trigger, CmlCapacityTrigger)
        assert info.value.method_name == "execute_after_capacity"
        assert (trigger.marker_key, trigger.marker_value) == (DAG_RUN_KEY_ENV, f"dag/{run_id}")
        assert trigger.max_active == 1 and trigger.job_name_filter == f"op-{unique}"
        # another DAG run is not held back by this one's runs
        free = operator(
            unique, task_id="capped", job_name=f"op-{unique}-other-profile", max_active_runs_per_dag_run=1
        )
        assert free.execute(make_context(run_id=f"{run_id}-b", task_id="capped"))["run_id"]

        hook.stop_job_run(busy["job_id"], busy["run_id"])
        event = drive(trigger)
        assert event["status"] == "success"
        ref = capped.execute_after_capacity(context, event=event)
        run = hook.get_job_run(ref["job_id"], ref["run_id"])
        assert run.environment[TI_KEY_ENV] == f"dag/{run_id}/capped/-1"

        with pytest.raises(AirflowException, match="free CML run slot"):
            capped.execute_after_capacity(context, event={"status": "timeout", "message": "too long"})
    finally:
        hook.stop_job_run(busy["job_id"], busy["run_id"])


def test_submit_lists_the_jobs_runs_once(cml_conn, hook, unique, make_context, monkeypatch):
    """The reuse check, the per-DAG-run cap's count and the last check before creating share one
    listing of the job's recent runs (each listing is up to ``recent_run_pages`` API calls)."""
    from cml_provider.hooks.endpoints import LIST_JOB_RUNS

    warm = operator(unique, max_active_runs_per_dag_run=3, capacity_job_name_filter=f"op-{unique}")
    first = warm.execute(make_context(run_id=f"manual__{unique}", task_id="a"))
    op = operator(unique, task_id="b", max_active_runs_per_dag_run=3, capacity_job_name_filter=f"op-{unique}")
    calls = api_calls(op, monkeypatch)
    context = make_context(run_id=f"manual__{unique}", task_id="b")
    ref = op.execute(context)
    assert ref["run_id"] != first["run_id"]
    assert calls.count(LIST_JOB_RUNS) == 1, calls
    # and the retry of that task instance still finds its run
    retry = make_context(run_id=f"manual__{unique}", task_id="b", try_number=2)
    assert operator(unique, task_id="b", max_active_runs_per_dag_run=3).execute(retry) == ref


def test_a_first_try_of_a_planned_job_makes_one_api_call(cml_conn, hook, unique, make_context, monkeypatch):
    """With the project and job ids of a plan and no cap, a first try only starts the run: no
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
