"""CmlDeployModelOperator end to end against the real local workspace: real builds, real replica
processes, real model-service calls; the triggers run for real (short poll interval)."""

from __future__ import annotations

import asyncio
import json

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from cml_provider.hooks.cml import CmlHook
from cml_provider.operators.deploy import CmlDeployModelOperator
from cml_provider.states import CmlDeploymentStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def deploy_conn(workspace, monkeypatch) -> str:
    """``cml_default`` on the workspace, with its model service (an http workspace has no
    ``modelservice.<host>``)."""
    service_url = getattr(workspace, "model_service_url", None)
    if not service_url:
        pytest.skip("this local workspace has no model service")
    conn = {
        "conn_type": "cml",
        "host": workspace.url,
        "password": workspace.api_key,
        "extra": {
            "project_id": workspace.project_id,
            "runtime_identifier": "local/rt",
            "model_service_url": service_url,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_CML_DEFAULT", json.dumps(conn))
    return "cml_default"


@pytest.fixture
def hook(deploy_conn, instant):
    """The connection's hook (it knows the model service), not conftest's ``from_url`` one."""
    with CmlHook(deploy_conn, retry_args=instant) as h:
        yield h


@pytest.fixture
def model_name(hook, unique):
    """A fresh model name; every deployment of it is stopped afterwards (replicas hold CPU)."""
    name = f"echo-{unique}"
    yield name
    model = hook.find_model(name)
    if model is not None:
        for dep in hook.list_model_deployments(model.id):
            if dep.status.is_active:
                hook.stop_model_deployment(model.id, dep.build_id, dep.id)


def deploy(context, **kwargs):
    """Run the operator as Airflow would: execute, then resume after each trigger event."""
    kwargs.setdefault("file_path", "serve_echo.py")
    kwargs.setdefault("smoke_request", {"x": 1})
    kwargs.setdefault("cpu", 0.25)
    kwargs.setdefault("memory_gb", 0.25)

    def make():
        return CmlDeployModelOperator(
            task_id="deploy", poll_interval=0.2, timeout=120, cml_retry_delay=0.1, **kwargs
        )

    step = lambda op: op.execute(context)  # noqa: E731
    while True:
        try:
            return step(make())
        except TaskDeferred as deferred:

            async def run(trigger=deferred.trigger):
                return [e.payload async for e in trigger.run()]

            [event] = asyncio.run(asyncio.wait_for(run(), timeout=150))
            step = lambda op, d=deferred, e=event: (  # noqa: E731
                getattr(op, d.method_name)(context, event=e, **d.kwargs)
            )


@pytest.fixture
def context(make_context):
    def make(run_id):
        ctx = make_context(run_id=run_id, task_id="deploy")
        ctx["ti"].xcom_push = lambda key, value: None
        return ctx

    return make


def answer(hook: CmlHook, model_id: str) -> dict:
    return hook.call_model(hook.get_model(model_id), {"x": 2}).prediction


def status(hook: CmlHook, model_id: str, deployment_id: str) -> CmlDeploymentStatus:
    [dep] = [d for d in hook.list_model_deployments(model_id) if d.id == deployment_id]
    return dep.status


def test_deploy_replaces_the_previous_and_failures_keep_it_serving(hook, model_name, context):
    first = deploy(context("r1"), model_name=model_name, environment={"MF_MODEL_VERSION": "v1"})
    assert first["smoke_response"] == {"echo": {"x": 1}, "version": "v1"}
    assert first["replaced_deployment_ids"] == [] and first["deployment_crn"]
    assert "access" not in json.dumps(first).lower()

    second = deploy(context("r2"), model_name=model_name, environment={"MF_MODEL_VERSION": "v2"})
    assert second["model_id"] == first["model_id"] and second["build_id"] != first["build_id"]
    assert second["replaced_deployment_ids"] == [first["deployment_id"]]
    assert status(hook, first["model_id"], first["deployment_id"]) in (
        CmlDeploymentStatus.STOPPING,
        CmlDeploymentStatus.STOPPED,
    )
    assert answer(hook, second["model_id"])["version"] == "v2"

    # a smoke test that fails: the new deployment is stopped, v2 keeps serving
    with pytest.raises(AirflowException, match=rf"carries an error.*{second['deployment_id']} keep serving"):
        deploy(
            context("r3"),
            model_name=model_name,
            environment={"MF_MODEL_VERSION": "v3"},
            smoke_request={"fail": True},
        )
    assert status(hook, second["model_id"], second["deployment_id"]) is CmlDeploymentStatus.DEPLOYED
    assert answer(hook, second["model_id"])["version"] == "v2"

    # a deployment whose replicas cannot start: it fails with the replica's message, v2 keeps serving
    with pytest.raises(AirflowException, match=r"\(failed\).*model file missing.*keep serving"):
        deploy(context("r5"), model_name=model_name, environment={"MF_TEST_START_FAIL": "model file missing"})
    assert answer(hook, second["model_id"])["version"] == "v2"

    # a build that fails: nothing is deployed, v2 keeps serving
    with pytest.raises(AirflowException, match=rf"build failed.*{second['deployment_id']} keep serving"):
        deploy(context("r4"), model_name=model_name, file_path="no_such_entry_point.py")
    assert status(hook, second["model_id"], second["deployment_id"]) is CmlDeploymentStatus.DEPLOYED
    assert answer(hook, second["model_id"])["version"] == "v2"
    serving = [d.id for d in hook.list_model_deployments(second["model_id"]) if d.status.is_active]
    assert serving == [second["deployment_id"]]
