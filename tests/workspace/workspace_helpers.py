"""Helpers for the workspace tests (imported by conftest and the test modules)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cml_workspace.scheduler import TERMINAL
from cml_workspace.server_process import RunningWorkspace

RUNTIME = "local/cml-workspace-python:local"
#: serve options for a warm engine; numpy + threadpoolctl so that thread limits are observable
WARM_ARGS = ["--preload", "warm_probe", "numpy", "threadpoolctl"]
#: the server's own terminal statuses (these tests check the server, so they speak its strings)
TERMINAL_STATUSES = frozenset(status.value for status in TERMINAL)


class WorkspaceServer(RunningWorkspace):
    """A workspace server subprocess with the conveniences tests use: a raw HTTP client, a
    run's log file, and a bounded wait for a run to end."""

    def client(self, timeout: float = 30.0, **kwargs) -> httpx.Client:
        """An ``httpx.Client`` with the base URL and the bearer header set."""
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, **kwargs)

    def run_log(self, run_id: str) -> str:
        """The stdout/stderr of a run (``<root>/runs/<run_id>.log``; API v2 has no log endpoint)."""
        path = self.root / "runs" / f"{run_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_run(self, job_id: str, run_id: str, *, timeout: float = 60.0, interval: float = 0.1,
                     project_id: str | None = None) -> dict:
        """Poll a run until it is terminal; returns the JobRun. Raises TimeoutError."""
        project_id = project_id or self.project_id
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while True:
                resp = http.get(f"/api/v2/projects/{project_id}/jobs/{job_id}/runs/{run_id}")
                resp.raise_for_status()
                run = resp.json()
                if run["status"] in TERMINAL_STATUSES:
                    return run
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"run {run_id} still {run['status']} after {timeout} s\n{self.run_log(run_id)}")
                time.sleep(interval)


def running_workspace(root: Path, **options: Any) -> WorkspaceServer:
    """``with running_workspace(root, cpus=..., ...) as ws:`` starts a server, stops it (and
    kills its live runs) at the end; options as :class:`RunningWorkspace`."""
    return WorkspaceServer(root, **options)


class Api:
    """Thin helpers over an httpx client for one workspace project."""

    def __init__(self, ws: WorkspaceServer, http: httpx.Client, project_id: str | None = None):
        self.ws = ws
        self.http = http
        self.project_id = project_id or ws.project_id

    @property
    def base(self) -> str:
        return f"/api/v2/projects/{self.project_id}"

    @property
    def files_dir(self) -> Path:
        return self.ws.root / "projects" / self.project_id / "files"

    def script(self, name: str, code: str) -> str:
        """Write a job script into the project folder; returns its project path."""
        path = self.files_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
        return name

    def job(self, script: str, *, name: str | None = None, expect: int = 200, **fields: Any) -> dict:
        body = {"name": name or f"job-{script}", "script": script, "runtime_identifier": RUNTIME, **fields}
        resp = self.http.post(f"{self.base}/jobs", json=body)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def run(self, job: dict | str, **body: Any) -> dict:
        job_id = job if isinstance(job, str) else job["id"]
        resp = self.http.post(f"{self.base}/jobs/{job_id}/runs", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def get_run(self, run: dict) -> dict:
        resp = self.http.get(f"{self.base}/jobs/{run['job_id']}/runs/{run['id']}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def stop(self, run: dict) -> httpx.Response:
        return self.http.post(f"{self.base}/jobs/{run['job_id']}/runs/{run['id']}:stop")

    def wait(self, run: dict, timeout: float = 20.0) -> dict:
        return self.ws.wait_for_run(run["job_id"], run["id"], timeout=timeout, project_id=self.project_id)

    def wait_status(self, run: dict, statuses: set[str], timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            current = self.get_run(run)
            if current["status"] in statuses:
                return current
            assert time.monotonic() < deadline, f"run never reached {statuses}: {current['status']}"
            time.sleep(0.05)

    def read_file(self, path: str) -> bytes:
        resp = self.http.post(f"{self.base}/files/{path}:download")
        assert resp.status_code == 200, resp.text
        return resp.content

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_file(path))


@dataclass
class Timeline:
    """Statuses of several runs sampled together until all are terminal."""

    samples: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def statuses(self, run_id: str) -> list[str]:
        """Distinct statuses of one run, in order of first sight."""
        seen: list[str] = []
        for _, snapshot in self.samples:
            if not seen or seen[-1] != snapshot[run_id]:
                seen.append(snapshot[run_id])
        return seen

    def max_concurrent(self, statuses: frozenset[str] = frozenset({"ENGINE_STARTING", "ENGINE_RUNNING"})) -> int:
        return max(sum(1 for s in snapshot.values() if s in statuses) for _, snapshot in self.samples)

    def snapshots_where(self, predicate: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
        return [snapshot for _, snapshot in self.samples if predicate(snapshot)]


def watch(api: Api, runs: list[dict], timeout: float = 30.0, interval: float = 0.05) -> Timeline:
    """Sample the runs' statuses until all are terminal. Runs of one job are read with one
    list call, so a snapshot of them is consistent (one store query on the server)."""
    by_job: dict[str, set[str]] = {}
    for run in runs:
        by_job.setdefault(run["job_id"], set()).add(run["id"])
    timeline = Timeline()
    deadline = time.monotonic() + timeout
    while True:
        snapshot: dict[str, str] = {}
        for job_id, ids in by_job.items():
            resp = api.http.get(f"{api.base}/jobs/{job_id}/runs", params={"page_size": 1000})
            assert resp.status_code == 200, resp.text
            snapshot.update({r["id"]: r["status"] for r in resp.json()["job_runs"] if r["id"] in ids})
        timeline.samples.append((time.monotonic(), snapshot))
        if all(status in TERMINAL_STATUSES for status in snapshot.values()):
            return timeline
        assert time.monotonic() < deadline, f"runs not finished after {timeout} s: {snapshot}"
        time.sleep(interval)


# -- models, builds, deployments -------------------------------------------------------------
BUILDING = frozenset({"pending", "queued", "pushing"})
DEPLOYING = frozenset({"pending", "deploying"})


class ModelApi(Api):
    """Helpers for models, builds, deployments and the model service of one project."""

    @property
    def models(self) -> str:
        return f"{self.base}/models"

    def entry_point(self, name: str, code: str) -> str:
        """Write a model entry point into the project folder; returns its project path."""
        return self.script(name, code)

    def model(self, name: str | None = None, *, expect: int = 200, **fields: Any) -> dict:
        body = {"project_id": self.project_id, "name": name or f"model-{time.monotonic_ns()}", **fields}
        resp = self.http.post(self.models, json=body)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def build(self, model: dict, file_path: str, function_name: str = "predict", *, expect: int = 200,
              **fields: Any) -> dict:
        body = {"file_path": file_path, "function_name": function_name, "runtime_identifier": RUNTIME, **fields}
        resp = self.http.post(f"{self.models}/{model['id']}/builds", json=body)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def build_path(self, build: dict) -> str:
        return f"{self.models}/{build['model_id']}/builds/{build['id']}"

    def get_build(self, build: dict) -> dict:
        resp = self.http.get(self.build_path(build))
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_build(self, build: dict, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            current = self.get_build(build)
            if current["status"] not in BUILDING:
                return current
            assert time.monotonic() < deadline, f"build still {current['status']} after {timeout} s"
            time.sleep(0.05)

    def deploy(self, build: dict, *, expect: int = 200, **fields: Any) -> dict:
        resp = self.http.post(f"{self.build_path(build)}/deployments", json=fields)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def deployment_path(self, deployment: dict) -> str:
        return (f"{self.models}/{deployment['model_id']}/builds/{deployment['build_id']}"
                f"/deployments/{deployment['id']}")

    def get_deployment(self, deployment: dict) -> dict:
        resp = self.http.get(self.deployment_path(deployment))
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_deployment(self, deployment: dict, timeout: float = 60.0, *,
                        until: frozenset[str] = frozenset({"deployed", "failed", "stopped"})) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            current = self.get_deployment(deployment)
            if current["status"] in until:
                return current
            assert time.monotonic() < deadline, f"deployment still {current['status']} after {timeout} s"
            time.sleep(0.05)

    def stop_deployment(self, deployment: dict) -> dict:
        resp = self.http.post(self.deployment_path(deployment) + ":stop")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def restart_deployment(self, deployment: dict) -> dict:
        resp = self.http.post(self.deployment_path(deployment) + ":restart")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def deployed(self, code: str, *, name: str = "entry.py", replicas: int = 1,
                 environment: dict[str, str] | None = None, **model_fields: Any) -> tuple[dict, dict, dict]:
        """An entry point written, built and deployed: ``(model, build, deployment)``."""
        path = self.entry_point(name, code)
        model = self.model(**model_fields)
        build = self.wait_build(self.build(model, path))
        assert build["status"] == "built", build
        deployment = self.wait_deployment(self.deploy(build, replicas=replicas, environment=environment or {}))
        assert deployment["status"] == "deployed", deployment
        return model, build, deployment

    def call(self, model: dict, request: Any, *, auth: bool = True, client: httpx.Client | None = None,
             **kwargs: Any) -> httpx.Response:
        """``POST <model service>/model`` with the model's access key (and the bearer when ``auth``)."""
        headers = dict(self.ws.headers) if auth else {}
        body = {"accessKey": model["access_key"], "request": request}
        url = self.ws.model_service_url + "/model"
        if client is not None:
            return client.post(url, json=body, headers=headers, **kwargs)
        return httpx.post(url, json=body, headers=headers, timeout=60, **kwargs)
