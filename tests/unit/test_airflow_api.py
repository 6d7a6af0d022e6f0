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


def requests_made(server) -> list[tuple[str, str, dict | None]]:
    return [(r.method, r.path, json.loads(r.body) if r.body else None) for r in server.requests]


@pytest.mark.parametrize("answers", [[(503, {"detail": "database is locked"}), (200, {"id": 7})],
                                     [(503, {"detail": "database is locked"})] * 5])
def test_a_backfill_is_created_while_its_dag_is_paused_and_the_dag_unpaused_whatever_the_answer(
        server, api, monkeypatch, answers):
    """A POST answered 503 has had Airflow delete the runs it had committed; paused, the DAG's
    runs were never started or scheduled, so the scheduler cannot die of their deletion."""
    from stack import backfill

    monkeypatch.setattr(backfill.time, "sleep", lambda s: None)
    dag = "/api/v2/dags/model_monitoring"
    server.script("PATCH", dag, (200, {}), (200, {}))
    server.script("POST", "/api/v2/backfills", *answers)
    body = {"dag_id": "model_monitoring", "from_date": "2026-12-06T19:00:00Z", "to_date": "2026-12-06T20:00:00Z"}
    if answers[-1][0] == 200:
        assert backfill._create_while_paused(api, body) == {"id": 7}
    else:
        with pytest.raises(backfill.BackfillFailed, match="stayed locked"):
            backfill._create_while_paused(api, body)
    made = requests_made(server)
    assert made[0] == ("PATCH", dag, {"is_paused": True})
    assert [m[:2] for m in made[1:-1]] == [("POST", "/api/v2/backfills")] * len(answers)
    assert made[-1] == ("PATCH", dag, {"is_paused": False})
