"""CmlHook's models, builds, deployments and model-service calls against a scripted HTTP server:
pagination, idempotent creates after a 5xx, strict statuses, fail-fast 4xx, the model service."""

from __future__ import annotations

import asyncio
import json

import pytest
from cml_provider.errors import (
    CmlBadRequestError,
    CmlConfigurationError,
    CmlModelServiceError,
    CmlNotFoundError,
    CmlRateLimitError,
    CmlServerError,
)
from cml_provider.hooks.cml import CmlHook
from cml_provider.models import CmlModel
from cml_provider.states import (
    CmlBuildStatus,
    CmlDeploymentStatus,
    UnknownBuildStatusError,
    UnknownDeploymentStatusError,
)

TEST_API_KEY = "test-api-key-0123456789"
ACCESS_KEY = "mod-access-key-abcdef987654"
M = "/api/v2/projects/p1/models"
MODEL = {
    "id": "m1",
    "name": "next-best-offer",
    "access_key": ACCESS_KEY,
    "crn": "crn:cdp:ml:us-west-1:acct:workspace:ws/model-m1",
    "auth_enabled": True,
    "created_at": "2026-11-27T10:00:00.000Z",
}
BUILD = {
    "id": "b1",
    "model_id": "m1",
    "status": "pending",
    "comment": "x",
    "created_at": "2026-11-27T10:01:00Z",
}
DEPLOYMENT = {
    "id": "d1",
    "model_id": "m1",
    "build_id": "b1",
    "crn": "crn:cdp:ml:us-west-1:acct:workspace:ws/deployment-d1",
    "status": "deploying",
    "cpu": 1,
    "memory": "2",
    "nvidia_gpu": "0",
    "replicas": "2",
    "created_at": "2026-11-27T10:02:00.000Z",
    "stopped_at": None,
}
EMPTY = {"next_page_token": ""}
GATEWAY_500 = (500, {"error": "internal", "code": 13, "message": "gateway timeout after 30s", "details": []})


def make_hook(server, instant, **kwargs) -> CmlHook:
    kwargs.setdefault("project_id", "p1")
    return CmlHook.from_url(server.url, TEST_API_KEY, retry_args=instant, **kwargs)


def body_of(server, method, path, index=-1) -> dict:
    sent = [r for r in server.requests if r.method == method and r.path.split("?", 1)[0] == path]
    return json.loads(sent[index].body)


def log_of(capsys) -> str:
    out = capsys.readouterr()
    return out.out + out.err


# --- models ----------------------------------------------------------------------------------
def test_list_models_follows_next_page_token(scripted_server, instant):
    pages = [
        {
            "models": [dict(MODEL, id=f"m{i}", name=f"x{i}") for i in range(k, k + 2)],
            "next_page_token": f"t{k + 2}",
        }
        for k in (0, 2)
    ] + [{"models": [dict(MODEL, id="m4", name="x4")], "next_page_token": ""}]
    scripted_server.script("GET", M, *[(200, p) for p in pages])
    models = make_hook(scripted_server, instant).list_models({"name": "x"})
    assert [m.id for m in models] == ["m0", "m1", "m2", "m3", "m4"]
    paths = [r.path for r in scripted_server.requests]
    assert "page_token=t2" in paths[1] and "page_token=t4" in paths[2]
    assert all("search_filter=%7B%22name%22%3A%22x%22%7D" in p for p in paths)


def test_model_is_parsed_and_its_access_key_kept_out_of_repr(scripted_server, instant):
    scripted_server.script("GET", f"{M}/m1", (200, MODEL))
    model = make_hook(scripted_server, instant).get_model("m1")
    assert (model.id, model.name, model.project_id) == ("m1", "next-best-offer", "p1")
    assert model.auth_enabled is True
    assert model.crn.endswith("model-m1") and model.access_key == ACCESS_KEY
    assert ACCESS_KEY not in repr(model) and "access_key" not in model.raw
    assert ACCESS_KEY not in json.dumps(model.to_ref())


def test_get_or_create_model_finds_the_exact_name_without_creating(scripted_server, instant):
    models = [dict(MODEL, id="m0", name="next-best-offer-old"), MODEL]
    scripted_server.script("GET", M, (200, {"models": models, **EMPTY}))
    model = make_hook(scripted_server, instant).get_or_create_model("next-best-offer")
    assert model.id == "m1"
    assert scripted_server.count("POST", M) == 0


def test_get_or_create_model_lists_again_after_a_5xx_instead_of_creating_twice(scripted_server, instant):
    """CML's gateway may answer 500 after 30 s while the workspace goes on creating the model."""
    scripted_server.script("GET", M, (200, {"models": [], **EMPTY}), (200, {"models": [MODEL], **EMPTY}))
    scripted_server.script("POST", M, GATEWAY_500)
    model = make_hook(scripted_server, instant).get_or_create_model("next-best-offer", "NBO")
    assert model.id == "m1"
    assert scripted_server.count("POST", M) == 1
    assert scripted_server.count("GET", M) == 2
    sent = body_of(scripted_server, "POST", M)
    assert sent == {"project_id": "p1", "name": "next-best-offer", "description": "NBO"}


def test_get_or_create_model_creates_after_the_5xx_when_the_model_did_not_appear(scripted_server, instant):
    scripted_server.script("GET", M, (200, {"models": [], **EMPTY}))
    scripted_server.script("POST", M, GATEWAY_500, (200, MODEL))
    assert make_hook(scripted_server, instant).get_or_create_model("next-best-offer").id == "m1"
    assert scripted_server.count("POST", M) == 2 and scripted_server.count("GET", M) == 2


def test_create_model_is_retried_at_once_after_429_and_can_disable_auth(scripted_server, instant):
    scripted_server.script("GET", M, (200, {"models": []}))
    scripted_server.script("POST", M, (429, {"message": "slow down"}), (200, dict(MODEL, auth_enabled=False)))
    hook = make_hook(scripted_server, instant)
    model = hook.get_or_create_model("next-best-offer", disable_authentication=True)
    assert model.auth_enabled is False
    assert scripted_server.count("POST", M) == 2 and scripted_server.count("GET", M) == 1
    assert body_of(scripted_server, "POST", M)["disable_authentication"] is True


def test_direct_create_model_is_single_shot_on_5xx(scripted_server, instant):
    scripted_server.script("POST", M, GATEWAY_500)
    with pytest.raises(CmlServerError) as info:
        make_hook(scripted_server, instant).create_model("next-best-offer")
    assert info.value.ambiguous and info.value.status_code == 500
    assert scripted_server.count("POST", M) == 1


@pytest.mark.parametrize(
    "status, cls, call",
    [
        (404, CmlNotFoundError, lambda h: h.get_model("m9")),
        (400, CmlBadRequestError, lambda h: h.create_model_build("m9", "serve.py", "predict")),
        (404, CmlNotFoundError, lambda h: h.stop_model_deployment("m9", "b1", "d1")),
    ],
)
def test_other_4xx_fail_fast(scripted_server, instant, status, cls, call):
    for method, path in (
        ("GET", f"{M}/m9"),
        ("POST", f"{M}/m9/builds"),
        ("POST", f"{M}/m9/builds/b1/deployments/d1:stop"),
    ):
        scripted_server.script(method, path, (status, {"code": 5, "message": "no such model"}))
    with pytest.raises(cls, match="no such model") as info:
        call(make_hook(scripted_server, instant))
    assert info.value.status_code == status
    assert len(scripted_server.requests) == 1


def test_delete_model(scripted_server, instant):
    scripted_server.script("DELETE", f"{M}/m1", (200, {}))
    make_hook(scripted_server, instant).delete_model("m1")
    assert scripted_server.count("DELETE", f"{M}/m1") == 1


# --- builds ----------------------------------------------------------------------------------
def test_create_model_build_sends_the_entry_point_and_the_connection_runtime(scripted_server, instant):
    scripted_server.script("POST", f"{M}/m1/builds", (200, BUILD))
    hook = make_hook(scripted_server, instant, runtime_identifier="docker.repo/ml-runtime:2025.01")
    build = hook.create_model_build("m1", "./jobs/serve_next_best_offer.py", "predict", comment="deploy v1")
    assert build.status is CmlBuildStatus.PENDING and build.model_id == "m1"
    assert body_of(scripted_server, "POST", f"{M}/m1/builds") == {
        "project_id": "p1",
        "model_id": "m1",
        "file_path": "jobs/serve_next_best_offer.py",
        "function_name": "predict",
        "runtime_identifier": "docker.repo/ml-runtime:2025.01",
        "comment": "deploy v1",
    }


def test_build_status_is_strict(scripted_server, instant):
    scripted_server.script("GET", f"{M}/m1/builds/b1", (200, dict(BUILD, status="BUILD_FAILED")))
    hook = make_hook(scripted_server, instant)
    assert hook.get_model_build("m1", "b1").status is CmlBuildStatus.BUILD_FAILED
    scripted_server.script("GET", f"{M}/m1/builds/b2", (200, dict(BUILD, id="b2", status="compiling")))
    with pytest.raises(UnknownBuildStatusError, match="compiling"):
        hook.get_model_build("m1", "b2")


def test_list_model_builds_paginates_newest_first(scripted_server, instant):
    pages = [
        (200, {"model_builds": [dict(BUILD, id="b3"), dict(BUILD, id="b2")], "next_page_token": "2"}),
        (200, {"model_builds": [dict(BUILD, id="b1")], "next_page_token": ""}),
    ]
    scripted_server.script("GET", f"{M}/m1/builds", *pages)
    builds = make_hook(scripted_server, instant).list_model_builds("m1")
    assert [b.id for b in builds] == ["b3", "b2", "b1"]
    assert all("sort=-created_at" in r.path for r in scripted_server.requests)


def test_ensure_model_build_reuses_the_marked_build_unless_it_failed(scripted_server, instant):
    builds = [
        dict(BUILD, id="b3", status="build failed", comment="deploy [mf:k2]"),
        dict(BUILD, id="b2", status="built", comment="deploy [mf:k1]"),
    ]
    scripted_server.script("GET", f"{M}/m1/builds", (200, {"model_builds": builds, **EMPTY}))
    scripted_server.script("POST", f"{M}/m1/builds", (200, dict(BUILD, id="b4", comment="deploy [mf:k2]")))
    hook = make_hook(scripted_server, instant)
    build, reused = hook.ensure_model_build("m1", "serve.py", "predict", marker="mf:k1", comment="deploy")
    assert (build.id, reused) == ("b2", True)
    assert scripted_server.count("POST", f"{M}/m1/builds") == 0
    build, reused = hook.ensure_model_build("m1", "serve.py", "predict", marker="mf:k2", comment="deploy")
    assert (build.id, reused) == ("b4", False)
    assert body_of(scripted_server, "POST", f"{M}/m1/builds")["comment"] == "deploy [mf:k2]"


def test_ensure_model_build_lists_again_after_a_5xx(scripted_server, instant):
    marked = dict(BUILD, id="b7", comment="[mf:k]")
    scripted_server.script(
        "GET",
        f"{M}/m1/builds",
        (200, {"model_builds": [], **EMPTY}),
        (200, {"model_builds": [marked], **EMPTY}),
    )
    scripted_server.script("POST", f"{M}/m1/builds", GATEWAY_500)
    hook = make_hook(scripted_server, instant)
    build, reused = hook.ensure_model_build("m1", "s.py", "predict", marker="mf:k")
    assert (build.id, reused) == ("b7", True)
    assert scripted_server.count("POST", f"{M}/m1/builds") == 1


# --- deployments -----------------------------------------------------------------------------
def test_create_model_deployment_sends_resources_and_a_string_environment(scripted_server, instant):
    path = f"{M}/m1/builds/b1/deployments"
    scripted_server.script("POST", path, (200, DEPLOYMENT))
    hook = make_hook(scripted_server, instant)
    dep = hook.create_model_deployment(
        "m1", "b1", 0.5, 1, replicas=2, environment={"MF_MODEL_ARTIFACT": "models/v1/model.skops", "MF_N": 3}
    )
    assert dep.status is CmlDeploymentStatus.DEPLOYING
    assert (dep.cpu, dep.memory, dep.replicas, dep.nvidia_gpu) == (1.0, 2.0, 2, 0)
    assert dep.crn.endswith("deployment-d1") and dep.to_ref()["deployment_crn"] == dep.crn
    assert body_of(scripted_server, "POST", path) == {
        "project_id": "p1",
        "model_id": "m1",
        "build_id": "b1",
        "cpu": 0.5,
        "memory": 1.0,
        "replicas": 2,
        "environment": {"MF_MODEL_ARTIFACT": "models/v1/model.skops", "MF_N": "3"},
    }


def test_deployment_status_is_case_insensitive_and_strict(scripted_server, instant):
    path = f"{M}/m1/builds/b1/deployments"
    scripted_server.script("GET", f"{path}/d1", (200, dict(DEPLOYMENT, status="Deployed")))
    scripted_server.script("GET", f"{path}/d2", (200, dict(DEPLOYMENT, id="d2", status="exploded")))
    hook = make_hook(scripted_server, instant)
    assert hook.get_model_deployment("m1", "b1", "d1").status.is_successful
    with pytest.raises(UnknownDeploymentStatusError, match="exploded"):
        hook.get_model_deployment("m1", "b1", "d2")


def test_list_model_deployments_of_the_whole_model_walks_every_build(scripted_server, instant):
    scripted_server.script(
        "GET",
        f"{M}/m1/builds",
        (200, {"model_builds": [dict(BUILD, id="b2")], "next_page_token": "1"}),
        (200, {"model_builds": [dict(BUILD, id="b1")], "next_page_token": ""}),
    )
    scripted_server.script(
        "GET",
        f"{M}/m1/builds/b2/deployments",
        (200, {"model_deployments": [dict(DEPLOYMENT, id="d3", build_id="b2")]}),
    )
    scripted_server.script(
        "GET",
        f"{M}/m1/builds/b1/deployments",
        (200, {"model_deployments": [dict(DEPLOYMENT, id="d2")], "next_page_token": "1"}),
        (200, {"model_deployments": [dict(DEPLOYMENT, id="d1", status="stopped")], "next_page_token": ""}),
    )
    deps = make_hook(scripted_server, instant).list_model_deployments("m1")
    assert [(d.id, d.build_id, d.status.value) for d in deps] == [
        ("d3", "b2", "deploying"),
        ("d2", "b1", "deploying"),
        ("d1", "b1", "stopped"),
    ]


def test_ensure_model_deployment_lists_again_after_a_5xx(scripted_server, instant):
    path = f"{M}/m1/builds/b1/deployments"
    stopped = dict(DEPLOYMENT, id="d0", status="stopped")
    scripted_server.script(
        "GET",
        path,
        (200, {"model_deployments": [stopped], **EMPTY}),
        (200, {"model_deployments": [stopped, DEPLOYMENT]}),
    )
    scripted_server.script("POST", path, GATEWAY_500)
    dep, reused = make_hook(scripted_server, instant).ensure_model_deployment("m1", "b1", 1, 2)
    assert (dep.id, reused) == ("d1", True)
    assert scripted_server.count("POST", path) == 1 and scripted_server.count("GET", path) == 2


def test_stop_and_restart_use_the_colon_methods(scripted_server, instant):
    base = f"{M}/m1/builds/b1/deployments/d1"
    scripted_server.script("POST", f"{base}:stop", (200, {}))
    scripted_server.script("POST", f"{base}:restart", (503, {"message": "busy"}), (200, {}))
    hook = make_hook(scripted_server, instant)
    hook.stop_model_deployment("m1", "b1", "d1")
    hook.restart_model_deployment("m1", "b1", "d1")
    assert scripted_server.count("POST", f"{base}:stop") == 1
    assert scripted_server.count("POST", f"{base}:restart") == 2


def test_async_twins_retry_like_the_sync_calls(scripted_server, instant):
    unavailable = (503, {"message": "try later"})
    scripted_server.script("GET", f"{M}/m1/builds/b1", unavailable, (200, dict(BUILD, status="built")))
    scripted_server.script("GET", f"{M}/m1/builds/b1/deployments/d1", unavailable, (200, DEPLOYMENT))
    scripted_server.script("POST", f"{M}/m1/builds/b1/deployments/d1:stop", (200, {}))
    hook = make_hook(scripted_server, instant)

    async def poll():
        build = await hook.a_get_model_build("m1", "b1")
        dep = await hook.a_get_model_deployment("m1", "b1", "d1")
        await hook.a_stop_model_deployment("m1", "b1", "d1")
        return build, dep

    build, dep = asyncio.run(poll())
    assert build.status.is_successful and dep.status is CmlDeploymentStatus.DEPLOYING
    assert scripted_server.count("GET", f"{M}/m1/builds/b1") == 2


# --- the model service -----------------------------------------------------------------------
def model(**overrides) -> CmlModel:
    return CmlModel.from_api(dict(MODEL, **overrides), project_id="p1")


def test_call_model_sends_access_key_and_bearer_and_returns_the_response(scripted_server, instant, capsys):
    answer = {"model_version": "v1", "predictions": [{"customer_id": "c-1", "next_best_offer": "Discount"}]}
    scripted_server.script("POST", "/model", (200, {"success": True, "response": answer}))
    hook = make_hook(scripted_server, instant, model_service_url=scripted_server.url)
    got = hook.call_model(model(), {"customers": [{"customer_id": "c-1"}]})
    assert got.prediction == answer and got.uuid is None
    request = scripted_server.requests[-1]
    assert request.path == "/model"
    assert json.loads(request.body) == {
        "accessKey": ACCESS_KEY,
        "request": {"customers": [{"customer_id": "c-1"}]},
    }
    assert request.headers["Authorization"] == f"Bearer {TEST_API_KEY}"
    assert ACCESS_KEY not in log_of(capsys)


def test_call_model_unwraps_metrics_answers_and_uses_the_model_api_key(scripted_server, instant):
    wrapped = {"prediction": {"next_best_offer": "Discount"}, "uuid": "8a1c-uuid"}
    scripted_server.script("POST", "/svc/model", (200, {"success": True, "response": wrapped}))
    hook = make_hook(scripted_server, instant, model_service_url=f"{scripted_server.url}/svc/")
    got = hook.call_model(model(), {"x": 1}, api_key="model-key-42")
    assert got.prediction == {"next_best_offer": "Discount"} and got.uuid == "8a1c-uuid"
    assert scripted_server.requests[-1].headers["Authorization"] == "Bearer model-key-42"


def test_call_model_without_auth_sends_no_authorization(scripted_server, instant):
    scripted_server.script("POST", "/model", (200, {"success": True, "response": {"ok": 1}}))
    hook = make_hook(scripted_server, instant, model_service_url=scripted_server.url)
    assert hook.call_model(model(auth_enabled=False), {}).prediction == {"ok": 1}
    assert "Authorization" not in scripted_server.requests[-1].headers


def test_call_model_retries_a_busy_model_but_not_a_5xx(scripted_server, instant, capsys):
    busy = (429, {"success": False, "message": "model.busy"})
    scripted_server.script("POST", "/model", busy, busy, (200, {"success": True, "response": {"ok": 1}}))
    hook = make_hook(scripted_server, instant, model_service_url=scripted_server.url, retry_limit=3)
    assert hook.call_model(model(), {}).prediction == {"ok": 1}
    assert scripted_server.count("POST", "/model") == 3
    log = log_of(capsys)
    assert log.count("CML model service POST model failed (attempt") == 2
    assert ACCESS_KEY not in log and TEST_API_KEY not in log

    scripted_server.script("POST", "/model", busy, busy, busy)
    with pytest.raises(CmlRateLimitError, match="model.busy"):
        hook.call_model(model(), {})
    scripted_server.script("POST", "/model", (500, {"message": "predict raised"}))
    before = scripted_server.count("POST", "/model")
    with pytest.raises(CmlServerError, match="predict raised") as info:
        hook.call_model(model(), {})
    assert scripted_server.count("POST", "/model") == before + 1
    assert ACCESS_KEY not in str(info.value) + log_of(capsys)


def test_call_model_without_success_is_a_named_error(scripted_server, instant):
    scripted_server.script("POST", "/model", (200, {"success": False, "response": {"message": "bad input"}}))
    hook = make_hook(scripted_server, instant, model_service_url=scripted_server.url)
    with pytest.raises(CmlModelServiceError, match="bad input") as info:
        hook.call_model(model(), {})
    assert ACCESS_KEY not in str(info.value)
    with pytest.raises(CmlConfigurationError, match="access key"):
        hook.call_model(model(access_key=None), {})


def test_model_service_url_from_arguments_connection_or_workspace_host(monkeypatch, scripted_server, instant):
    def url(host, **kwargs):
        return CmlHook.from_url(host, "key-12345", **kwargs).model_service_url()

    assert url("ml-1.cloudera.site") == "https://modelservice.ml-1.cloudera.site/"
    assert url("https://ml-1.cloudera.site:8443/") == "https://modelservice.ml-1.cloudera.site:8443/"
    assert url("http://127.0.0.1:1", model_service_url="127.0.0.1:9/model") == "https://127.0.0.1:9/"
    with pytest.raises(CmlConfigurationError, match="model_service_url"):
        url("http://127.0.0.1:1")
    conn = {
        "conn_type": "cml",
        "host": scripted_server.url,
        "password": TEST_API_KEY,
        "extra": {"project_id": "p1", "model_service_url": "http://127.0.0.1:9999", "model_api_key": "mk-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CML_MS", json.dumps(conn))
    hook = CmlHook("cml_ms", retry_args=instant)
    assert hook.model_service_url() == "http://127.0.0.1:9999/"
    assert hook.config.model_api_key == "mk-1" and "mk-1" not in repr(hook.config)
