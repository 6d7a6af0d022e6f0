"""CmlHook against the real local CML workspace: jobs, runs, files, pagination, parsing."""

from __future__ import annotations

import json

import pytest
from cml_provider.errors import CmlAuthError, CmlFileExistsError, CmlNotFoundError
from cml_provider.hooks.cml import CmlHook
from cml_provider.states import JobRunStatus

pytestmark = pytest.mark.integration


def test_test_connection_ok_and_bad_key(workspace, instant):
    ok, message = CmlHook.from_url(
        workspace.url, workspace.api_key, project_name="plugins-tests"
    ).test_connection()
    assert ok, message
    assert workspace.project_id in message

    bad = CmlHook.from_url(
        workspace.url, "not-the-key-123456", project_id=workspace.project_id, retry_args=instant
    )
    ok, message = bad.test_connection()
    assert not ok
    assert "API key" in message and "401" in message
    assert "not-the-key-123456" not in message
    with pytest.raises(CmlAuthError):
        bad.list_jobs()


def test_test_connection_through_an_airflow_connection(cml_conn):
    ok, message = CmlHook(cml_conn).test_connection()
    assert ok, message


def test_project_name_resolves_to_the_workspace_project(workspace):
    hook = CmlHook.from_url(workspace.url, workspace.api_key, project_name="plugins-tests")
    assert hook.get_project_id() == workspace.project_id
    with pytest.raises(CmlNotFoundError):
        CmlHook.from_url(workspace.url, workspace.api_key, project_name="plugins-test").get_project_id()


def test_get_or_create_job_is_one_job_per_name_and_parses_int64(hook, unique):
    name = f"train-{unique}-1cpu"
    job = hook.get_or_create_job(name, "job.py", 1, 0.5, timeout_s=120, environment={"FLAG": True})
    assert job.timeout == 120 and isinstance(job.timeout, int)
    assert isinstance(job.raw["timeout"], str)  # int64 as a JSON string on the wire
    assert isinstance(job.raw["environment"], str)  # environment as a JSON string on the wire
    assert job.environment == {"FLAG": "true"}
    again = hook.get_or_create_job(name, "job.py", 1, 0.5, timeout_s=120)
    assert again.id == job.id
    assert [j.id for j in hook.list_jobs({"name": name})] == [job.id]
    # a prefix of the name is a different job: exact match, not the API's substring match
    shorter = hook.get_or_create_job(f"train-{unique}", "job.py", 1, 0.5)
    assert shorter.id != job.id


def test_get_or_create_job_updates_a_job_whose_profile_changed(hook, unique):
    job = hook.get_or_create_job(f"upd-{unique}", "job.py", 1, 0.5)
    changed = hook.get_or_create_job(f"upd-{unique}", "job.py", 0.5, 1, timeout_s=30)
    assert changed.id == job.id
    assert (changed.cpu, changed.memory, changed.timeout) == (0.5, 1.0, 30)


def test_list_jobs_paginates_past_the_default_page_of_ten(workspace, hook, unique):
    names = {f"page-{unique}-{i:02d}" for i in range(12)}
    for name in names:
        hook.get_or_create_job(name, "job.py", 0.5, 0.5)
    small_pages = CmlHook.from_url(
        workspace.url, workspace.api_key, project_id=workspace.project_id, page_size=None
    )
    assert {j.name for j in small_pages.list_jobs({"name": f"page-{unique}"})} == names
    tiny_pages = CmlHook.from_url(
        workspace.url, workspace.api_key, project_id=workspace.project_id, page_size=5
    )
    assert {j.name for j in tiny_pages.list_jobs({"name": f"page-{unique}"})} == names


def test_job_runs_environment_arguments_and_pagination(workspace, hook, unique, wait_terminal):
    job = hook.get_or_create_job(f"runs-{unique}", "job.py", 0.5, 0.5)
    created = [
        hook.create_job_run(job.id, environment={"MF_I": str(i), "MF_N": i}, arguments=f"--i {i}")
        for i in range(11)
    ]
    first = created[0]
    assert first.environment["MF_I"] == "0" and first.environment["MF_N"] == "0"
    assert first.arguments == "--i 0"
    for run in created:
        wait_terminal(hook, job.id, run.id)
    paged = CmlHook.from_url(
        workspace.url, workspace.api_key, project_id=workspace.project_id, page_size=None
    )
    runs = paged.list_job_runs(job.id)
    assert len(runs) == 11
    assert {r.id for r in runs} == {r.id for r in created}
    assert [r.id for r in runs][0] == created[-1].id  # newest first
    assert all(r.status is JobRunStatus.SUCCEEDED for r in runs)
    assert len(paged.list_job_runs(job.id, max_pages=1)) == 10


def test_stop_job_run(hook, unique, wait_terminal):
    job = hook.get_or_create_job(f"stop-{unique}", "job.py", 0.5, 0.5)
    run = hook.create_job_run(job.id, environment={"MF_TEST_SLEEP": "60"})
    hook.stop_job_run(job.id, run.id)
    assert wait_terminal(hook, job.id, run.id, timeout=30).status is JobRunStatus.STOPPED


def test_ensure_job_run_reuses_a_live_run_and_replaces_a_failed_one(hook, unique, wait_terminal):
    job = hook.get_or_create_job(f"ensure-{unique}", "job.py", 0.5, 0.5)
    marker = {"MF_AIRFLOW_TI_KEY": f"d/{unique}/t/-1"}
    run, reused = hook.ensure_job_run(job.id, idempotency_env=marker, environment={"MF_TEST_SLEEP": "30"})
    assert not reused
    again, reused = hook.ensure_job_run(job.id, idempotency_env=marker, environment={"MF_TEST_SLEEP": "30"})
    assert reused and again.id == run.id
    hook.stop_job_run(job.id, run.id)
    wait_terminal(hook, job.id, run.id)
    fresh, reused = hook.ensure_job_run(job.id, idempotency_env=marker)
    assert not reused and fresh.id != run.id


def test_files_round_trip_and_upload_never_overwrites(hook, unique):
    path = f"plugins-{unique}/sub/result.json"
    assert not hook.file_exists(path)
    assert hook.upload_file(path, b'{"a": 1}') == path
    assert hook.file_exists(path)
    assert hook.download_file(path) == b'{"a": 1}'
    [entry] = hook.list_files(f"plugins-{unique}/sub")
    assert entry.path == "result.json" and entry.file_size == 8 and not entry.is_dir

    with pytest.raises(CmlFileExistsError):
        hook.upload_file(path, b'{"a": 2}')
    assert hook.download_file(path) == b'{"a": 1}'

    hook.upload_file(path, b'{"a": 2}', overwrite=True)
    assert hook.download_file(path) == b'{"a": 2}'
    assert [f.path for f in hook.list_files(f"plugins-{unique}/sub")] == [
        "result.json"
    ]  # no "result(1).json"

    hook.delete_file(path)
    assert not hook.file_exists(path)
    with pytest.raises(CmlNotFoundError, match="does not exist"):
        hook.download_file(path)
    assert any(f.path == f"plugins-{unique}" and f.is_dir for f in hook.list_files("."))


def test_a_job_leaves_its_result_in_a_project_file(hook, unique, wait_terminal):
    job = hook.get_or_create_job(f"result-{unique}", "job.py", 0.5, 0.5)
    result = f"results/{unique}.json"
    run = hook.create_job_run(
        job.id, environment={"MF_TEST_RESULT_FILE": result, "MF_TEST_FAIL_WITH": "boom"}
    )
    assert wait_terminal(hook, job.id, run.id).status is JobRunStatus.FAILED
    assert json.loads(hook.download_file(result))["error"] == "boom"
