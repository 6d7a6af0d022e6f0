"""The driver's REST client against a real HTTP server that answers from a script: what it
sends again after a 5xx, and what it never sends twice."""

from __future__ import annotations

import json

import pytest
from stack.airflow_api import AirflowApi, AirflowApiError

from tests.harness.scripted_server import scripted_server

RUNS = "/api/v2/dags/model_factory/dagRuns"


@pytest.fixture
def server():
    with scripted_server() as scripted:
        yield scripted


@pytest.fixture
def api(server, monkeypatch):
    monkeypatch.setattr("stack.airflow_api.time.sleep", lambda s: None)  # the retries' pause
    client = AirflowApi(server.url, token=lambda: "token")
    yield client
    client.close()


def posted_run_ids(server) -> list[str]:
    return [json.loads(r.body)["dag_run_id"] for r in server.requests if r.method == "POST"]


def test_a_trigger_answered_503_after_the_run_was_made_returns_that_run_and_makes_no_other(server, api):
    """SQLite's "database is locked" can fail the answer after the run was committed: the second
    try, under the same run id, is told 409 and returns the run the first one made."""
    server.script("POST", RUNS, (503, {"detail": "database is locked"}), (409, {"detail": "exists"}))
    server.script("GET", f"{RUNS}/manual__1", (200, {"dag_run_id": "manual__1", "state": "queued"}))
    run = api.trigger("model_factory", {"grid_path": "g.yaml"}, run_id="manual__1")
    assert run == {"dag_run_id": "manual__1", "state": "queued"}
    assert posted_run_ids(server) == ["manual__1", "manual__1"]
    assert json.loads(server.requests[0].body) == {"dag_run_id": "manual__1", "logical_date": None,
                                                   "conf": {"grid_path": "g.yaml"}}


def test_a_trigger_names_its_run_so_every_try_asks_for_the_same_one(server, api):
    server.script("POST", RUNS, (503, {}), (502, {}), (200, {"dag_run_id": "whatever the server says"}))
    api.trigger("model_factory", {})
    first, second, third = posted_run_ids(server)
    assert first == second == third and first.startswith("manual__20")  # Airflow's own form


def test_a_trigger_is_made_once_and_a_run_id_taken_before_is_an_error(server, api):
    server.script("POST", RUNS, (200, {"dag_run_id": "mine", "state": "queued"}))
    assert api.trigger("model_factory", {}, run_id="mine")["dag_run_id"] == "mine"
    assert posted_run_ids(server) == ["mine"]
    server.script("POST", RUNS, (409, {"detail": "exists"}))
    with pytest.raises(AirflowApiError, match="model_factory already has a run mine"):
        api.trigger("model_factory", {}, run_id="mine")
    server.script("POST", RUNS, *[(503, {"detail": "database is locked"})] * 3)
    with pytest.raises(AirflowApiError, match="answered 503 3 times"):
        api.trigger("model_factory", {}, run_id="again", attempts=3)


def test_only_requests_safe_to_repeat_are_sent_again_after_a_5xx(server, api):
    server.script("GET", "/api/v2/pools/p", (503, {}), (200, {"name": "p", "slots": 4}))
    assert api.pool("p")["slots"] == 4 and server.count("GET", "/api/v2/pools/p") == 2
    server.script("POST", "/api/v2/backfills", (503, {"detail": "database is locked"}))
    with pytest.raises(AirflowApiError, match="answered 503"):
        api.send("POST", "/api/v2/backfills", {"dag_id": "x"})
    assert server.count("POST", "/api/v2/backfills") == 1  # a POST that may have landed is not sent twice
