"""A workspace stopped in the middle of a deploy brings the half-made deployment up when it
starts again (as CML does with a deployment it accepted): the deploy operator could not stop
it, and ``model_deployments`` still names the previous one. The next deploy_best_model run
starts by reconciling (:func:`factory_tasks.stages.deploy.reconcile_serving`): the model that
serves is the recorded one again. Real workspace, real replicas, real model-service calls."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from cml_provider.hooks.cml import CmlHook
from cml_provider.operators.deploy import CmlDeployModelOperator
from cml_provider.states import CmlDeploymentStatus
from cml_provider.triggers.deploy import CmlModelDeploymentTrigger

from factory_tasks.core.contracts import DeploymentRecord
from factory_tasks.core.names import MODEL_NAME
from factory_tasks.stages.deploy import reconcile_serving
from factory_tasks.warehouse.deployments import record_deployment, serving
from tests.plugins.conftest import JOBS_DIR
from tests.sqlite_warehouse import SqliteWarehouse

pytestmark = pytest.mark.integration


def _operator(version: str) -> CmlDeployModelOperator:
    return CmlDeployModelOperator(
        task_id="deploy", model_name=MODEL_NAME, file_path="serve_echo.py", smoke_request={"x": 1},
        environment={"MF_MODEL_VERSION": version}, cpu=0.25, memory_gb=0.25, poll_interval=0.2, timeout=120,
        cml_retry_limit=2, cml_retry_delay=0.1)


def _drive(trigger) -> dict:
    async def run():
        return [e.payload async for e in trigger.run()]

    [event] = asyncio.run(asyncio.wait_for(run(), timeout=150))
    return event


def _record(warehouse, deployed: dict, version: str) -> None:
    record_deployment(warehouse, DeploymentRecord(
        model_version=version, model_name=deployed["model_name"], model_id=deployed["model_id"],
        model_crn=deployed["crn"], build_id=deployed["build_id"], deployment_id=deployed["deployment_id"],
        deployment_crn=deployed["deployment_crn"], access_key_ref="CML model: access_key (read from the CML API)",
        artifact_path=f"models/{version}/model.skops", metadata_path=f"models/{version}/model.metadata.json",
        experiment_id="0123456789abcdef", factory_run_id="manual__test", grid_hash="g", data_snapshot_hash="h",
        code_version="test", chosen_by="manual", choice_reason="test", gate_reason="first deployment",
        gate_override=False, deployed_at=datetime.now(timezone.utc).isoformat()))


def _until(what: str, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} after {timeout}s"
        time.sleep(0.3)
    return value


def test_a_deployment_half_made_when_the_workspace_stopped_is_stopped_by_the_next_deploy_run(
    tmp_path, monkeypatch, make_context
):
    from cml_workspace.server_process import running_workspace

    warehouse = SqliteWarehouse(tmp_path / "warehouse.db")
    with running_workspace(tmp_path / "ws", cpus=2, code_dir=JOBS_DIR, project="plugins-tests") as ws:
        monkeypatch.setenv("AIRFLOW_CONN_CML_DEFAULT", json.dumps({
            "conn_type": "cml", "host": ws.url, "password": ws.api_key,
            "extra": {"project_id": ws.project_id, "runtime_identifier": "local/rt",
                      "model_service_url": ws.model_service_url}}))
        hook = CmlHook("cml_default", retry_limit=2, retry_delay=0.1)
        context = make_context(run_id="r", task_id="deploy")
        context["ti"].xcom_push = lambda key, value: None

        # v1 deployed and recorded: the model now serving
        step = lambda op: op.execute(context)  # noqa: E731
        while True:
            try:
                first = step(_operator("v1"))
                break
            except TaskDeferred as deferred:
                event = _drive(deferred.trigger)
                step = lambda op, d=deferred, e=event: getattr(op, d.method_name)(context, event=e, **d.kwargs)  # noqa: E731
        _record(warehouse, first, "v1")

        # v2: its deployment is coming up when the workspace stops
        context["run_id"] = context["ti"].run_id = "r2"
        step = lambda op: op.execute(context)  # noqa: E731
        while True:
            try:
                step(_operator("v2"))
                pytest.fail("the deploy of v2 finished before the workspace stopped")
            except TaskDeferred as deferred:
                if isinstance(deferred.trigger, CmlModelDeploymentTrigger):
                    waiting = deferred
                    break
                event = _drive(deferred.trigger)
                step = lambda op, d=deferred, e=event: getattr(op, d.method_name)(context, event=e, **d.kwargs)  # noqa: E731
        half_made = waiting.trigger.deployment_id
        ws.stop()
        event = _drive(waiting.trigger)
        assert event["status"] == "error"
        with pytest.raises(AirflowException, match=rf"{half_made} could not be stopped"):
            getattr(_operator("v2"), waiting.method_name)(context, event=event, **waiting.kwargs)

        # the workspace starts again and brings the half-made deployment up beside v1
        ws.start()
        model = hook.find_model(MODEL_NAME)

        def deployed() -> set[str]:
            return {d.id for d in hook.list_model_deployments(model.id) if d.status is CmlDeploymentStatus.DEPLOYED}

        _until("v1 and the half-made deployment are not both deployed again",
               lambda: {first["deployment_id"], half_made} <= deployed())
        assert serving(warehouse).deployment_id == first["deployment_id"]

        # the next deploy run's first step stops it: the recorded v1 alone serves
        stopped = reconcile_serving(warehouse, hook)
        active = [d.id for d in hook.list_model_deployments(model.id) if d.status.is_active]
        versions = {hook.call_model(hook.get_model(model.id), {"x": i}).prediction["version"] for i in range(8)}
        assert (active, versions) == ([first["deployment_id"]], {"v1"})
        assert stopped == [half_made]
        assert reconcile_serving(warehouse, hook) == []  # nothing left to stop
