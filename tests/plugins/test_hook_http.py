"""CmlHook over real HTTP against a scripted server: retries, errors, parsing, pagination."""

from __future__ import annotations

import asyncio
import json

import pytest
import tenacity
from cml_provider.errors import (
    CmlApiError,
    CmlAuthError,
    CmlBadRequestError,
    CmlConfigurationError,
    CmlConnectionError,
    CmlFileExistsError,
    CmlNotFoundError,
    CmlRateLimitError,
    CmlServerError,
)
from cml_provider.hooks.cml import CmlHook
from cml_provider.hooks.endpoints import (
    CREATE_JOB,
    GET_JOB_RUN,
    LIST_PROJECTS,
    normalise_workspace_url,
)
from cml_provider.states import JobRunStatus, UnknownJobRunStatusError

TEST_API_KEY = "test-api-key-0123456789"

P = "/api/v2/projects/p1"
RUN = {
    "id": "r1",
    "job_id": "j1",
    "project_id": "p1",
    "status": "ENGINE_RUNNING",
    "created_at": "2026-11-27T10:00:00.000Z",
    "environment": '{"A": "1", "MF_AIRFLOW_TI_KEY": "d/r/t/-1"}',
    "arguments": "--x 1",
}
UNAVAILABLE = (503, {"error": "unavailable", "code": 14, "message": "try later", "details": []})


def make_hook(server, instant, **kwargs) -> CmlHook:
    kwargs.setdefault("project_id", "p1")
    return CmlHook.from_url(server.url, TEST_API_KEY, retry_args=instant, **kwargs)


def test_503_twice_then_200_is_retried(scripted_server, instant, capsys):
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", UNAVAILABLE, UNAVAILABLE, (200, RUN))
    run = make_hook(scripted_server, instant).get_job_run("j1", "r1")
    assert run.status is JobRunStatus.RUNNING
    assert scripted_server.count("GET", f"{P}/jobs/j1/runs/r1") == 3
    out = capsys.readouterr()
    log = out.out + out.err
    assert log.count("failed (attempt") == 2
    assert TEST_API_KEY not in log


def test_429_is_retried(scripted_server, instant):
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", (429, {"message": "slow down"}), (200, RUN))
    assert make_hook(scripted_server, instant).get_job_run("j1", "r1").id == "r1"
    assert scripted_server.count("GET", f"{P}/jobs/j1/runs/r1") == 2


def test_5xx_gives_up_after_retry_limit_with_status_and_body(scripted_server, instant):
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", UNAVAILABLE)
    with pytest.raises(CmlServerError) as info:
        make_hook(scripted_server, instant, retry_limit=4).get_job_run("j1", "r1")
    assert info.value.status_code == 503
    assert info.value.body["message"] == "try later"
    assert info.value.attempts == 4
    assert "gave up after 4 attempts" in str(info.value)
    assert scripted_server.count("GET", f"{P}/jobs/j1/runs/r1") == 4


def test_400_fails_fast_with_named_error(scripted_server, instant):
    body = {"error": "bad", "code": 3, "message": "cpu must be positive", "details": []}
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", (400, body))
    with pytest.raises(CmlBadRequestError) as info:
        make_hook(scripted_server, instant).get_job_run("j1", "r1")
    assert info.value.status_code == 400
    assert info.value.body == body
    assert "cpu must be positive" in str(info.value)
    assert scripted_server.count("GET", f"{P}/jobs/j1/runs/r1") == 1


@pytest.mark.parametrize("status, cls", [(401, CmlAuthError), (403, CmlAuthError), (404, CmlNotFoundError)])
def test_other_4xx_fail_fast(scripted_server, instant, status, cls):
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", (status, {"message": "no"}))
    with pytest.raises(cls):
        make_hook(scripted_server, instant).get_job_run("j1", "r1")
    assert scripted_server.count("GET", f"{P}/jobs/j1/runs/r1") == 1


def test_connection_refused_is_retried_then_a_clear_error(free_port, instant, capsys):
    hook = CmlHook.from_url(
        f"http://127.0.0.1:{free_port}", TEST_API_KEY, project_id="p1", retry_args=instant
    )
    with pytest.raises(CmlConnectionError) as info:
        hook.get_job_run("j1", "r1")
    message = str(info.value)
    assert f"127.0.0.1:{free_port}" in message and "could not be reached" in message
    assert "gave up after 3 attempts" in message
    assert not info.value.request_sent
    out = capsys.readouterr()
    assert (out.out + out.err).count("failed (attempt") == 3
    assert TEST_API_KEY not in message + out.out + out.err


def test_default_backoff_is_exponential_and_overridable():
    hook = CmlHook.from_url("http://127.0.0.1:1", TEST_API_KEY, retry_limit=5, retry_delay=2)
    wait = hook._retry_args["wait"]
    assert isinstance(wait, tenacity.wait_exponential)
    assert isinstance(hook._retry_args["stop"], tenacity.stop_after_attempt)
    custom = CmlHook.from_url("http://127.0.0.1:1", TEST_API_KEY, retry_args={"wait": tenacity.wait_none()})
    assert isinstance(custom._retry_args["wait"], tenacity.wait_none)
    with pytest.raises(ValueError):
        CmlHook.from_url("http://127.0.0.1:1", TEST_API_KEY, retry_limit=0)


def test_bearer_key_is_sent_and_path_params_are_quoted(scripted_server, instant):
    scripted_server.script("POST", f"{P}/files/out%2Fresult.json:download", (200, b'{"error": null}'))
    data = make_hook(scripted_server, instant).download_file("out/result.json")
    assert data == b'{"error": null}'
    request = scripted_server.requests[-1]
    assert request.headers["Authorization"] == f"Bearer {TEST_API_KEY}"
    assert request.path == f"{P}/files/out%2Fresult.json:download"


def test_list_files_root_is_not_normalised_away(scripted_server, instant):
    scripted_server.script(
        "GET", f"{P}/files/%2E", (200, {"files": [{"path": "a.txt", "is_dir": False, "file_size": "12"}]})
    )
    files = make_hook(scripted_server, instant).list_files()
    assert files[0].path == "a.txt" and files[0].file_size == 12 and files[0].is_dir is False


def test_create_is_not_repeated_blindly_after_5xx(scripted_server, instant):
    """After a 500 on create the hook lists again, finds the job the workspace made anyway."""
    job = {"id": "j9", "name": "train-1cpu", "script": "train.py", "cpu": 1, "memory": 2, "timeout": "600"}
    scripted_server.script("GET", f"{P}/jobs", (200, {"jobs": [], "next_page_token": ""}))
    scripted_server.script("GET", f"{P}/jobs", (200, {"jobs": [job], "next_page_token": ""}))
    scripted_server.script("POST", f"{P}/jobs", (500, {"message": "gateway timeout"}))
    got = make_hook(scripted_server, instant).get_or_create_job("train-1cpu", "train.py", 1, 2, timeout_s=600)
    assert got.id == "j9" and got.timeout == 600
    assert scripted_server.count("POST", f"{P}/jobs") == 1
    assert scripted_server.count("GET", f"{P}/jobs") == 2
    sent = json.loads(scripted_server.requests[1].body)
    assert (
        sent["name"] == "train-1cpu"
        and sent["cpu"] == 1.0
        and sent["memory"] == 2.0
        and sent["timeout"] == 600
    )


def test_create_is_retried_when_the_request_was_rejected_with_429(scripted_server, instant):
    job = {"id": "j9", "name": "train", "script": "train.py", "cpu": 1, "memory": 2}
    scripted_server.script("GET", f"{P}/jobs", (200, {"jobs": []}))
    scripted_server.script("POST", f"{P}/jobs", (429, {"message": "busy"}), (200, job))
    assert make_hook(scripted_server, instant).get_or_create_job("train", "train.py", 1, 2).id == "j9"
    assert scripted_server.count("POST", f"{P}/jobs") == 2
    assert scripted_server.count("GET", f"{P}/jobs") == 1


def test_direct_create_call_is_single_shot_on_5xx(scripted_server, instant):
    scripted_server.script("POST", f"{P}/jobs", (502, {"message": "bad gateway"}))
    hook = make_hook(scripted_server, instant)
    with pytest.raises(CmlServerError) as info:
        hook._do_api_call(CREATE_JOB, path_params={"project_id": "p1"}, json={"name": "x"})
    assert info.value.ambiguous
    assert scripted_server.count("POST", f"{P}/jobs") == 1


def test_pagination_follows_next_page_token(scripted_server, instant):
    pages = [
        {"job_runs": [dict(RUN, id=f"r{i}") for i in range(k, k + 10)], "next_page_token": f"t{k + 10}"}
        for k in (0, 10)
    ] + [{"job_runs": [dict(RUN, id="r20")], "next_page_token": ""}]
    scripted_server.script("GET", f"{P}/jobs/j1/runs", *[(200, p) for p in pages])
    runs = make_hook(scripted_server, instant).list_job_runs("j1")
    assert [r.id for r in runs] == [f"r{i}" for i in range(21)]
    queries = [r.path for r in scripted_server.requests]
    assert "page_token=t10" in queries[1] and "page_token=t20" in queries[2]
    assert all("sort=-created_at" in q for q in queries)


def test_max_pages_bounds_the_listing(scripted_server, instant):
    page = {"job_runs": [RUN], "next_page_token": "more"}
    scripted_server.script(
        "GET", f"{P}/jobs/j1/runs", (200, page), (200, dict(page, next_page_token="more2"))
    )
    runs = make_hook(scripted_server, instant).list_job_runs("j1", max_pages=2)
    assert len(runs) == 2 and len(scripted_server.requests) == 2


def test_responses_are_parsed(scripted_server, instant):
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", (200, RUN))
    run = make_hook(scripted_server, instant).get_job_run("j1", "r1")
    assert run.environment == {"A": "1", "MF_AIRFLOW_TI_KEY": "d/r/t/-1"}
    assert run.arguments == "--x 1"
    assert run.to_ref() == {"project_id": "p1", "job_id": "j1", "run_id": "r1"}
    assert run.matches({"MF_AIRFLOW_TI_KEY": "d/r/t/-1"}) and not run.matches({"A": "2"})


def test_unknown_run_status_is_an_error(scripted_server, instant):
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", (200, dict(RUN, status="ENGINE_DANCING")))
    with pytest.raises(UnknownJobRunStatusError, match="ENGINE_DANCING"):
        make_hook(scripted_server, instant).get_job_run("j1", "r1")


def test_project_name_is_resolved_by_listing_with_search_filter(scripted_server, instant):
    projects = [{"id": "p0", "name": "model-factory-old"}, {"id": "p1", "name": "model-factory"}]
    scripted_server.script("GET", "/api/v2/projects", (200, {"projects": projects, "next_page_token": ""}))
    hook = CmlHook.from_url(
        scripted_server.url, TEST_API_KEY, project_name="model-factory", retry_args=instant
    )
    assert hook.get_project_id() == "p1"
    assert hook.get_project_id() == "p1"  # cached
    assert len(scripted_server.requests) == 1
    assert "search_filter=%7B%22name%22%3A%22model-factory%22%7D" in scripted_server.requests[0].path


def test_missing_project_name_is_a_named_error(scripted_server, instant):
    scripted_server.script("GET", "/api/v2/projects", (200, {"projects": []}))
    hook = CmlHook.from_url(scripted_server.url, TEST_API_KEY, project_name="nope", retry_args=instant)
    with pytest.raises(CmlNotFoundError, match="nope"):
        hook.get_project_id()
    with pytest.raises(CmlConfigurationError, match="project_id"):
        CmlHook.from_url(scripted_server.url, TEST_API_KEY).get_project_id()


def test_upload_without_overwrite_refuses_an_existing_path(scripted_server, instant):
    listing = {"files": [{"path": "result.json", "is_dir": False, "file_size": "3"}]}
    scripted_server.script("GET", f"{P}/files/%2E", (200, listing))
    with pytest.raises(CmlFileExistsError):
        make_hook(scripted_server, instant).upload_file("result.json", b"new")
    assert scripted_server.count("POST", f"{P}/files") == 0


def test_async_call_retries_like_the_sync_one(scripted_server, instant):
    scripted_server.script(
        "GET", f"{P}/jobs/j1/runs/r1", UNAVAILABLE, (200, dict(RUN, status="ENGINE_SUCCEEDED"))
    )
    run = asyncio.run(make_hook(scripted_server, instant).a_get_job_run("j1", "r1"))
    assert run.status.is_successful
    assert scripted_server.count("GET", f"{P}/jobs/j1/runs/r1") == 2

    scripted_server.script("GET", f"{P}/jobs/j1/runs/r2", (400, {"message": "bad"}))
    with pytest.raises(CmlBadRequestError):
        asyncio.run(
            make_hook(scripted_server, instant)._a_do_api_call(
                GET_JOB_RUN, path_params={"project_id": "p1", "job_id": "j1", "run_id": "r2"}
            )
        )
    assert scripted_server.count("GET", f"{P}/jobs/j1/runs/r2") == 1


@pytest.mark.parametrize("verify, mode", [(True, "CERT_REQUIRED"), (False, "CERT_NONE")])
def test_one_tls_context_per_setting_for_all_hooks_and_clients(scripted_server, instant, monkeypatch, verify, mode):
    """Building a TLS context loads the CA bundle (~20 ms); a polling trigger must not pay it
    per call, nor each of a thousand triggers (each with a hook of its own) once."""
    import ssl

    import httpx
    from cml_provider.hooks.cml_base import _shared_tls_context

    _shared_tls_context.cache_clear()
    built = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(httpx, "create_ssl_context", lambda **kw: built.append(kw) or real(**kw))
    scripted_server.script("GET", f"{P}/jobs/j1/runs/r1", *[(200, RUN)] * 4)
    hook = make_hook(scripted_server, instant, verify=verify)

    async def poll_three_times():
        return [await hook.a_get_job_run("j1", "r1") for _ in range(3)]

    assert len(asyncio.run(poll_three_times())) == 3
    hook.get_conn()  # the sync client shares it
    other = make_hook(scripted_server, instant, verify=verify)  # another trigger's hook
    assert asyncio.run(other.a_get_job_run("j1", "r1"))
    assert built == [{"verify": verify}]
    assert hook._tls_context is other._tls_context
    assert hook._tls_context.verify_mode == getattr(ssl, mode)
    # another setting gets its own
    assert make_hook(scripted_server, instant, verify=not verify)._tls_context.verify_mode != getattr(ssl, mode)


def test_test_connection_reports_bad_key_without_retrying(scripted_server, instant):
    scripted_server.script("GET", "/api/v2/projects", (401, {"message": "invalid API key"}))
    ok, message = make_hook(scripted_server, instant).test_connection()
    assert not ok and "API key" in message and "401" in message
    assert TEST_API_KEY not in message
    assert scripted_server.count("GET", "/api/v2/projects") == 1


def test_non_json_error_body_is_kept_as_text(scripted_server, instant):
    scripted_server.script("GET", "/api/v2/projects", (502, b"<html>bad gateway</html>"))
    with pytest.raises(CmlServerError) as info:
        make_hook(scripted_server, instant, retry_limit=1)._do_api_call(LIST_PROJECTS)
    assert info.value.body == "<html>bad gateway</html>"
    assert isinstance(info.value, CmlApiError) and info.value.retryable


def test_workspace_url_normalisation():
    assert normalise_workspace_url("ml-1.cloudera.site") == "https://ml-1.cloudera.site/"
    assert normalise_workspace_url("http://127.0.0.1:8787/") == "http://127.0.0.1:8787/"
    assert normalise_workspace_url("https://ml-1.cloudera.site/api/v2") == "https://ml-1.cloudera.site/"
    assert normalise_workspace_url("127.0.0.1", 8787) == "https://127.0.0.1:8787/"
    with pytest.raises(CmlConfigurationError):
        normalise_workspace_url("")


def test_hook_from_airflow_connection(scripted_server, instant, monkeypatch):
    conn = {
        "conn_type": "cml",
        "host": scripted_server.url,
        "password": TEST_API_KEY,
        "extra": {"project_id": "p1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CML_TEST", json.dumps(conn))
    hook = CmlHook("cml_test", retry_args=instant)
    assert hook.config.base_url == scripted_server.url + "/"
    assert hook.get_project_id() == "p1"
    assert TEST_API_KEY not in repr(hook.config)
    conn_async = asyncio.run(CmlHook("cml_test").a_config())
    assert conn_async == hook.config


def test_connection_without_key_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CML_NOKEY", json.dumps({"conn_type": "cml", "host": "http://127.0.0.1:1"})
    )
    with pytest.raises(CmlConfigurationError, match="API v2 key"):
        _ = CmlHook("cml_nokey").config


def test_ui_field_behaviour_relabels_and_hides():
    behaviour = CmlHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {"host": "Workspace URL", "password": "API key"}
    assert set(behaviour["hidden_fields"]) == {"schema", "login", "port"}
    assert CmlHook.conn_type == "cml" and CmlHook.default_conn_name == "cml_default"
    assert CmlHook.conn_name_attr == "cml_conn_id" and CmlHook.hook_name == "Cloudera Machine Learning"


def test_rate_limit_error_class_is_retryable():
    err = CmlRateLimitError("x", status_code=429)
    assert err.retryable and not CmlBadRequestError("x", status_code=400).retryable


def test_redirect_is_an_error_not_followed(scripted_server, instant):
    scripted_server.script("GET", "/api/v2/projects", (302, {"message": "login"}))
    with pytest.raises(CmlApiError, match="redirected") as info:
        make_hook(scripted_server, instant)._do_api_call(LIST_PROJECTS)
    assert info.value.status_code == 302 and not info.value.retryable
    assert scripted_server.count("GET", "/api/v2/projects") == 1


def test_retry_delay_may_be_a_timedelta_as_operators_hand_it_over():
    """``retry_delay`` on the job operator and sensor is also BaseOperator's task retry delay, which
    Airflow turns into a timedelta (and fills from ``default_args``): the hook's backoff and the
    triggers' kwargs must still be plain seconds."""
    from datetime import timedelta
    from types import SimpleNamespace

    from cml_provider.operators.cml import CmlJobRunOperator

    hook = CmlHook.from_url("http://127.0.0.1:1", TEST_API_KEY, retry_delay=timedelta(seconds=2))
    assert hook.retry_delay == 2.0
    assert hook._retry_args["wait"](SimpleNamespace(attempt_number=2)) == 4.0

    op = CmlJobRunOperator(task_id="t", job_name="j", script="s.py", retry_delay=timedelta(seconds=20))
    _, kwargs = op._run_trigger("p", "j", "r", 60).serialize()
    assert kwargs["retry_delay"] == 20.0 and isinstance(kwargs["retry_delay"], float)
