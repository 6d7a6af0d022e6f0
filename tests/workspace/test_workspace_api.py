"""Health, bearer auth, CML error bodies, projects, runtimes."""

from __future__ import annotations

import json

import httpx

ERROR_KEYS = {"error", "code", "message", "details"}


def assert_error(resp: httpx.Response, status: int, code: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == ERROR_KEYS
    assert body["code"] == code and body["details"] == [] and body["message"]
    return body


def test_health_needs_no_auth(shared_ws):
    resp = httpx.get(f"{shared_ws.url}/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"
    assert resp.json()["cpus"] == 4


def test_api_needs_the_bearer_key(shared_ws, api):
    url = f"{shared_ws.url}/api/v2/projects"
    assert_error(httpx.get(url), 401, 16)
    assert_error(httpx.get(url, headers={"Authorization": "Bearer wrong"}), 401, 16)
    assert_error(httpx.get(url, headers={"Authorization": f"Basic {shared_ws.api_key}"}), 401, 16)
    # auth is checked before anything else, even on unknown ids and bad bodies
    assert_error(httpx.post(f"{url}/nope/jobs", content=b"{not json"), 401, 16)
    assert httpx.get(url, headers=shared_ws.headers).status_code == 200


def test_unknown_resources_are_404_with_cml_body(api):
    assert_error(api.http.get("/api/v2/projects/nope"), 404, 5)
    assert_error(api.http.get("/api/v2/projects/nope/jobs"), 404, 5)
    assert_error(api.http.get(f"{api.base}/jobs/nope"), 404, 5)
    assert_error(api.http.get(f"{api.base}/jobs/nope/runs"), 404, 5)
    job = api.job(api.script("noop.py", "pass\n"))
    assert_error(api.http.get(f"{api.base}/jobs/{job['id']}/runs/nope"), 404, 5)
    assert_error(api.http.post(f"{api.base}/jobs/{job['id']}/runs/nope:stop"), 404, 5)
    assert_error(api.http.get(f"{api.base}/files/missing.txt"), 404, 5)


def test_bad_requests_are_400_invalid_argument(api):
    assert_error(api.http.post(f"{api.base}/jobs", json={"name": "no script"}), 400, 3)
    assert_error(api.http.post(f"{api.base}/jobs", json={"name": "x", "script": "a.py", "cpu": "lots"}), 400, 3)
    body = {"name": "x", "script": "a.py", "environment": {"N": 1}}
    assert "environment" in assert_error(api.http.post(f"{api.base}/jobs", json=body), 400, 3)["message"]
    assert_error(api.http.get("/api/v2/projects", params={"search_filter": "{bad"}), 400, 3)
    assert_error(api.http.get("/api/v2/projects", params={"search_filter": '{"colour": "x"}'}), 400, 3)
    assert_error(api.http.get("/api/v2/projects", params={"sort": "-colour"}), 400, 3)
    assert_error(api.http.get("/api/v2/projects", params={"page_token": "garbage!"}), 400, 3)


def test_projects_get_create_filter(api):
    listed = api.http.get("/api/v2/projects", params={"search_filter": json.dumps({"name": "model-factory"})})
    assert listed.status_code == 200
    (project,) = listed.json()["projects"]
    assert project["id"] == api.project_id
    assert {"id", "name", "owner", "default_engine_type", "created_at"} <= set(project)
    assert project["default_engine_type"] == "ml_runtime"
    assert project["owner"]["username"]
    assert api.http.get(f"/api/v2/projects/{api.project_id}").json() == project

    created = api.http.post("/api/v2/projects", json={"name": "Other-Project", "description": "d"})
    assert created.status_code == 200, created.text
    assert created.json()["name"] == "Other-Project"
    assert_error(api.http.post("/api/v2/projects", json={"name": "Other-Project"}), 409, 6)
    # case-sensitive substring match
    names = lambda f: [p["name"] for p in api.http.get(  # noqa: E731
        "/api/v2/projects", params={"search_filter": json.dumps(f)}).json()["projects"]]
    assert names({"name": "Project"}) == ["Other-Project"]
    assert names({"name": "project"}) == []
    assert names({"owner.username": project["owner"]["username"], "name": "model"}) == ["model-factory"]


def test_runtimes_list_one_local_runtime(api):
    body = api.http.get("/api/v2/runtimes").json()
    assert body["next_page_token"] == ""
    assert len(body["runtimes"]) == 1 and body["runtimes"][0]["image_identifier"]
