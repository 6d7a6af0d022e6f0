"""CmlModelBuildTrigger and CmlModelDeploymentTrigger against a scripted server, with
``asyncio.sleep`` patched: serialisation, exactly one event, deadlines, unknown statuses, on_kill."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from cml_provider.triggers.deploy import CmlModelBuildTrigger, CmlModelDeploymentTrigger

TEST_API_KEY = "test-api-key-0123456789"
B = "/api/v2/projects/p1/models/m1/builds/b1"
D = f"{B}/deployments/d1"


@pytest.fixture
def conn(scripted_server, monkeypatch) -> str:
    conn = {"conn_type": "cml", "host": scripted_server.url, "password": TEST_API_KEY}
    conn["extra"] = {"project_id": "p1"}
    monkeypatch.setenv("AIRFLOW_CONN_CML_TRIGGERS", json.dumps(conn))
    return "cml_triggers"


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record the trigger's sleeps instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(seconds, *args, **kwargs):
        recorded.append(seconds)

    monkeypatch.setattr("cml_provider.triggers.deploy.asyncio.sleep", fake_sleep)
    return recorded


def collect(trigger) -> list[dict]:
    async def run():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(run(), timeout=30))


def build_trigger(conn_id, deadline_in=60.0, **kwargs):
    deadline = time.time() + deadline_in
    return CmlModelBuildTrigger(conn_id, "p1", "m1", "b1", 7, deadline, retry_delay=0.01, **kwargs)


def deployment_trigger(conn_id, deadline_in=60.0, **kwargs):
    deadline = time.time() + deadline_in
    return CmlModelDeploymentTrigger(conn_id, "p1", "m1", "b1", "d1", 5, deadline, retry_delay=0.01, **kwargs)


def build(status):
    return (200, {"id": "b1", "model_id": "m1", "status": status})


def deployment(status):
    return (200, {"id": "d1", "model_id": "m1", "build_id": "b1", "status": status, "crn": "crn:d1"})


def test_serialize_mirrors_init():
    for trigger, name in (
        (CmlModelBuildTrigger("c", "p", "m", "b", 5, 1234.5), "CmlModelBuildTrigger"),
        (
            CmlModelDeploymentTrigger("c", "p", "m", "b", "d", 5, 1234.5, stop_on_kill=False),
            "CmlModelDeploymentTrigger",
        ),
    ):
        path, kwargs = trigger.serialize()
        assert path == f"cml_provider.triggers.deploy.{name}"
        assert type(trigger)(**kwargs).serialize() == (path, kwargs)
        assert kwargs["deadline"] == 1234.5
        assert all(isinstance(v, (str, int, float, bool)) for v in kwargs.values())


def test_an_event_carries_the_ids_and_status_only(scripted_server, conn, sleeps):
    """What the resumed task needs beyond that comes back from its deferral's kwargs."""
    scripted_server.script("GET", B, build("built"))
    [event] = collect(build_trigger(conn))
    assert set(event) == {"status", "message", "project_id", "model_id", "build_id", "build_status"}


def test_build_trigger_polls_until_built(scripted_server, conn, sleeps):
    scripted_server.script("GET", B, build("pending"), build("queued"), build("pushing"), build("built"))
    [event] = collect(build_trigger(conn))
    assert event["status"] == "success" and event["build_status"] == "built"
    assert (event["project_id"], event["model_id"], event["build_id"]) == ("p1", "m1", "b1")
    assert sleeps == [7, 7, 7]


@pytest.mark.parametrize("final", ["build failed", "timedout"])
def test_build_trigger_reports_a_failed_build(scripted_server, conn, sleeps, final):
    scripted_server.script("GET", B, build("pending"), build(final))
    [event] = collect(build_trigger(conn))
    assert event["status"] == "error" and event["build_status"] == final
    assert final in event["message"] and "b1" in event["message"]


def test_an_unknown_build_status_is_an_error_not_a_wait(scripted_server, conn, sleeps):
    scripted_server.script("GET", B, build("pending"), build("compiling"))
    [event] = collect(build_trigger(conn))
    assert event["status"] == "error" and "compiling" in event["message"]
    assert event["build_status"] == "pending"  # the last status it understood
    assert sleeps == [7]


def test_build_trigger_times_out_at_the_deadline(scripted_server, conn, sleeps):
    scripted_server.script("GET", B, build("pushing"))
    [event] = collect(build_trigger(conn, deadline_in=-1))
    assert event["status"] == "timeout" and event["build_status"] == "pushing"
    assert sleeps == []


def test_build_trigger_sleeps_no_longer_than_the_deadline(scripted_server, conn, sleeps):
    scripted_server.script("GET", B, build("pushing"), build("built"))
    [event] = collect(build_trigger(conn, deadline_in=2))
    assert event["status"] == "success"
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 2


def test_an_unreadable_build_is_an_error(scripted_server, conn, sleeps):
    scripted_server.script("GET", B, (404, {"message": "build not found"}))
    [event] = collect(build_trigger(conn))
    assert event["status"] == "error" and "404" in event["message"] and event["build_status"] is None


def test_deployment_trigger_polls_until_deployed(scripted_server, conn, sleeps):
    scripted_server.script(
        "GET",
        D,
        deployment("pending"),
        deployment("Deploying"),
        (503, {"message": "x"}),
        deployment("deployed"),
    )
    [event] = collect(deployment_trigger(conn))
    assert event["status"] == "success" and event["deployment_status"] == "deployed"
    assert event["deployment_id"] == "d1" and event["build_id"] == "b1"
    # two polls' sleeps; the 503 was retried inside the hook (its 0.01 s backoff), not by the trigger
    assert sleeps == [5, 5, 0.01]


@pytest.mark.parametrize("final", ["failed", "stopped"])
def test_deployment_trigger_reports_an_ended_deployment(scripted_server, conn, sleeps, final):
    scripted_server.script("GET", D, deployment("deploying"), deployment(final))
    [event] = collect(deployment_trigger(conn))
    assert event["status"] == "error" and event["deployment_status"] == final


def test_a_failure_message_carries_the_workspaces_status_message(scripted_server, conn, sleeps):
    failed = (200, {**deployment("failed")[1], "status_message": "replica 0: build_check() raised KeyError"})
    scripted_server.script("GET", D, failed)
    [event] = collect(deployment_trigger(conn))
    assert event["message"].endswith("ended with status 'failed': replica 0: build_check() raised KeyError")


def test_deployment_trigger_times_out_and_an_unknown_status_is_an_error(scripted_server, conn, sleeps):
    scripted_server.script("GET", D, deployment("deploying"))
    [event] = collect(deployment_trigger(conn, deadline_in=-1))
    assert event["status"] == "timeout" and event["deployment_status"] == "deploying"
    scripted_server.script("GET", D, deployment("warming up"))
    [event] = collect(deployment_trigger(conn))
    assert event["status"] == "error" and "warming up" in event["message"]


def test_deployment_trigger_on_kill_stops_the_new_deployment(scripted_server, conn):
    scripted_server.script("POST", f"{D}:stop", (200, {}))
    asyncio.run(deployment_trigger(conn).on_kill())
    assert scripted_server.count("POST", f"{D}:stop") == 1
    asyncio.run(deployment_trigger(conn, stop_on_kill=False).on_kill())
    assert scripted_server.count("POST", f"{D}:stop") == 1
