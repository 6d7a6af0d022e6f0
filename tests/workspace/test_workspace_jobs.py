"""Jobs: create/get/patch/delete, wire formats, list pagination, search_filter and sort."""

from __future__ import annotations

import json
import re

from workspace_helpers import RUNTIME

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_job_wire_format(api):
    job = api.job("train.py", name="train-2cpu", cpu=2, memory=4.5, timeout=600, kill_on_timeout=True,
                  arguments="--fast", environment={"A": "1", "B": "two"}, nvidia_gpu=0)
    assert job["timeout"] == "600"  # int64 as a JSON string
    assert isinstance(job["environment"], str)  # map on requests, JSON string on responses
    assert json.loads(job["environment"]) == {"A": "1", "B": "two"}
    assert job["cpu"] == 2 and job["memory"] == 4.5 and job["kill_on_timeout"] is True
    assert job["script"] == "train.py" and job["arguments"] == "--fast"
    assert job["runtime_identifier"] == RUNTIME and job["project_id"] == api.project_id
    assert TS.match(job["created_at"]) and TS.match(job["updated_at"])
    assert api.http.get(f"{api.base}/jobs/{job['id']}").json() == job


def test_job_defaults_and_tolerant_forms(api):
    job = api.job("x.py", timeout="30", environment='{"K": "v"}')  # int64 as string, env as JSON string
    assert job["timeout"] == "30" and json.loads(job["environment"]) == {"K": "v"}
    bare = api.job("y.py")
    assert bare["cpu"] == 1 and bare["memory"] == 2 and bare["timeout"] == "0"
    assert bare["environment"] == "{}"


def test_parent_job_id_and_parent_id_both_accepted(api):
    parent = api.job("p.py")
    a = api.job("a.py", parent_job_id=parent["id"])
    b = api.job("b.py", parent_id=parent["id"])
    assert a["parent_id"] == b["parent_id"] == parent["id"]
    api.job("c.py", parent_id="nope", expect=400)
    resp = api.http.patch(f"{api.base}/jobs/{parent['id']}", json={"parent_id": a["id"]})
    assert resp.status_code == 400 and "cycle" in resp.json()["message"]


def test_patch_and_delete_job(api):
    job = api.job("t.py", cpu=1, environment={"A": "1"})
    resp = api.http.patch(f"{api.base}/jobs/{job['id']}", json={"cpu": 3, "environment": {"B": "2"}, "timeout": 5})
    assert resp.status_code == 200, resp.text
    patched = resp.json()
    assert patched["cpu"] == 3 and patched["timeout"] == "5" and json.loads(patched["environment"]) == {"B": "2"}
    assert patched["name"] == job["name"] and patched["memory"] == job["memory"]
    assert patched["updated_at"] >= job["updated_at"]
    assert api.http.delete(f"{api.base}/jobs/{job['id']}").json() == {}
    assert api.http.get(f"{api.base}/jobs/{job['id']}").status_code == 404
    assert api.http.delete(f"{api.base}/jobs/{job['id']}").status_code == 404


def test_pagination_filter_and_sort(fresh_project):
    api = fresh_project
    for i in range(12):
        api.job(f"s{i}.py", name=f"train-{i:02d}" if i % 2 == 0 else f"Score-{i:02d}")
    first = api.http.get(f"{api.base}/jobs").json()
    assert len(first["jobs"]) == 10 and first["next_page_token"]  # default page size 10
    second = api.http.get(f"{api.base}/jobs", params={"page_token": first["next_page_token"]}).json()
    assert len(second["jobs"]) == 2 and second["next_page_token"] == ""
    all_ids = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert len(set(all_ids)) == 12

    # walk with a small page size: every job exactly once, oldest first by default
    seen, token = [], None
    while True:
        params = {"page_size": 5, **({"page_token": token} if token else {})}
        page = api.http.get(f"{api.base}/jobs", params=params).json()
        seen += [j["name"] for j in page["jobs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert len(seen) == 12 and seen[0] == "train-00" and seen[-1] == "Score-11"

    newest = api.http.get(f"{api.base}/jobs", params={"sort": "-created_at", "page_size": 3}).json()["jobs"]
    assert [j["name"] for j in newest] == ["Score-11", "train-10", "Score-09"]
    by_name = api.http.get(f"{api.base}/jobs", params={"sort": "name", "page_size": 100}).json()["jobs"]
    assert [j["name"] for j in by_name] == sorted(j["name"] for j in by_name)

    filtered = api.http.get(f"{api.base}/jobs", params={"search_filter": json.dumps({"name": "Score"})}).json()
    assert sorted(j["name"] for j in filtered["jobs"]) == [f"Score-{i:02d}" for i in range(1, 12, 2)]
    assert api.http.get(f"{api.base}/jobs", params={"search_filter": '{"name":"score"}'}).json()["jobs"] == []
    exact = api.http.get(f"{api.base}/jobs", params={"search_filter": '{"name":"train-04"}'}).json()["jobs"]
    assert [j["name"] for j in exact] == ["train-04"]
    combined = api.http.get(f"{api.base}/jobs", params={
        "search_filter": json.dumps({"name": "train", "script": "s1"}), "sort": "-name"}).json()["jobs"]
    assert [j["name"] for j in combined] == ["train-10"]


def test_runs_list_sort_and_pagination(api):
    job = api.job(api.script("quick.py", "pass\n"))
    runs = [api.run(job, environment={"N": str(i)}) for i in range(3)]
    for run in runs:
        api.wait(run)
    base = f"{api.base}/jobs/{job['id']}/runs"
    page = api.http.get(base, params={"sort": "-created_at", "page_size": 2}).json()
    assert [r["id"] for r in page["job_runs"]] == [runs[2]["id"], runs[1]["id"]]
    params = {"sort": "-created_at", "page_size": 2, "page_token": page["next_page_token"]}
    rest = api.http.get(base, params=params).json()
    assert [r["id"] for r in rest["job_runs"]] == [runs[0]["id"]] and rest["next_page_token"] == ""
    succeeded = api.http.get(base, params={"search_filter": '{"status":"SUCCEEDED"}'}).json()["job_runs"]
    assert len(succeeded) == 3
