"""CmlModelMetricsHook against the real local workspace's /local/model_metrics routes (a real
deployment with metrics, a real prediction uuid), and its refusal on a workspace that is not
the local one (a scripted server standing in for CML: no invented REST route is called)."""

from __future__ import annotations

import time

import pytest
from cml_provider.errors import CmlNotFoundError
from cml_provider.hooks.cml import CmlHook
from cml_provider.hooks.model_metrics import CmlModelMetricsHook, CmlModelMetricsUnavailable

pytestmark = pytest.mark.integration

ENTRY = b"""
import cml.metrics_v1 as metrics
import cml.models_v1 as models

@models.cml_model(metrics=True)
def predict(args):
    metrics.track_metric("n", len(args.get("customers", [])))
    return {"ok": True}
"""


@pytest.fixture
def deployed(workspace, unique, instant):
    """A metrics-enabled model deployed on the workspace; stopped afterwards."""
    service_url = getattr(workspace, "model_service_url", None)
    if not service_url:
        pytest.skip("this local workspace has no model service")
    cml = CmlHook.from_url(workspace.url, workspace.api_key, project_id=workspace.project_id,
                           runtime_identifier="local/rt", model_service_url=service_url, retry_args=instant)
    path = f"metrics_entry_{unique}.py"
    cml.upload_file(path, ENTRY)
    model = cml.create_model(f"metrics-{unique}")
    build = cml.create_model_build(model.id, path, "predict")
    deadline = time.monotonic() + 120
    while not (build := cml.get_model_build(model.id, build.id)).status.is_terminal:
        assert time.monotonic() < deadline, "build did not finish"
        time.sleep(0.2)
    assert build.status.is_successful, build
    deployment = cml.create_model_deployment(model.id, build.id, cpu=0.25, memory_gb=0.25, replicas=1)
    while not (deployment := cml.get_model_deployment(model.id, build.id, deployment.id)).status.is_terminal:
        assert time.monotonic() < deadline, "deployment did not finish"
        time.sleep(0.2)
    assert deployment.status.is_successful, deployment
    try:
        yield cml, cml.get_model(model.id), deployment
    finally:
        cml.stop_model_deployment(model.id, build.id, deployment.id)
        cml.close()


def test_delayed_and_aggregate_metrics_round_trip_on_the_local_workspace(workspace, deployed, instant):
    cml, model, deployment = deployed
    since = int(time.time() * 1000)
    answer = cml.call_model(model, {"customers": [{}, {}]})
    assert answer.prediction == {"ok": True} and answer.uuid
    with CmlModelMetricsHook(host=workspace.url, api_key=workspace.api_key, retry_args=instant) as metrics:
        assert metrics.is_local_workspace()
        metrics.track_delayed_metrics({"conversion.0": 1}, answer.uuid)
        metrics.track_delayed_metrics({"conversion.0": 1, "conversion.1": 1}, answer.uuid)  # merge, idempotent
        metrics.track_aggregate_metrics({"conversion_rate": 0.5}, since - 1000, since, deployment.crn)
        rows = metrics.read_metrics(model_deployment_crn=deployment.crn)["metrics"]
        [prediction] = [r for r in rows if r["predictionUuid"] == answer.uuid]
        assert prediction["metrics"] == {"n": 2, "conversion.0": 1, "conversion.1": 1}
        assert prediction["modelDeploymentCrn"] == deployment.crn and prediction["modelCrn"] == model.crn
        [aggregate] = [r for r in rows if r["predictionUuid"] is None]
        assert aggregate["metrics"] == {"conversion_rate": 0.5}
        assert (aggregate["startTimeStampMs"], aggregate["endTimeStampMs"]) == (since - 1000, since)
        # start/end filter as in CML: only rows inside the window
        assert metrics.read_metrics(model_deployment_crn=deployment.crn, start_timestamp_ms=0,
                                    end_timestamp_ms=since - 1001) == {"metrics": []}
        with pytest.raises(CmlNotFoundError):
            metrics.track_delayed_metrics({"conversion": 1}, "nobody-issued-this")


def test_through_the_airflow_connection(workspace, cml_conn, instant):
    metrics = CmlModelMetricsHook(cml_conn, retry_args=instant)
    assert metrics.is_local_workspace()
    assert isinstance(metrics.read_metrics(model_deployment_crn="crn:none")["metrics"], list)


def test_a_cml_workspace_is_refused_without_calling_an_invented_route(scripted_server, instant):
    scripted_server.script("GET", "/health", (404, {"error": "not found", "code": 5, "message": "no"}))
    metrics = CmlModelMetricsHook(host=scripted_server.url, api_key="k", retry_args=instant)
    with pytest.raises(CmlModelMetricsUnavailable, match=r"Python inside CML.*cml\.metrics_v1.*track_delayed_metrics"):
        metrics.track_delayed_metrics({"conversion.0": 1}, "u-1")
    with pytest.raises(CmlModelMetricsUnavailable, match="read_metrics"):
        metrics.read_metrics()
    assert not [r for r in scripted_server.requests if r.path.startswith("/local")]
    assert scripted_server.count("GET", "/health") == 1  # probed once per hook
    with pytest.raises(CmlModelMetricsUnavailable, match="track_delayed_metrics"):
        metrics.require_local_workspace()
    explicit = CmlModelMetricsHook(host=scripted_server.url, api_key="k", local_workspace=False)
    with pytest.raises(CmlModelMetricsUnavailable):
        explicit.track_aggregate_metrics({}, 0, 1, "crn")
    assert scripted_server.count("GET", "/health") == 1
