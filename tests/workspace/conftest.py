"""Fixtures for the local CML workspace tests: real servers (``running_workspace``) spoken
to over real HTTP with httpx, and tiny job scripts written into the project folder."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from workspace_helpers import WARM_ARGS, Api, ModelApi, WorkspaceServer, running_workspace


@pytest.fixture
def new_workspace(tmp_path: Path) -> Iterator[Callable[..., WorkspaceServer]]:
    """Start a dedicated workspace (``new_workspace(cpus=..., memory_gb=...)``)."""
    started: list[Any] = []

    def start(**options: Any) -> WorkspaceServer:
        cm = running_workspace(tmp_path / f"ws{len(started)}", **options)
        handle = cm.__enter__()
        started.append(cm)
        return handle

    yield start
    for cm in reversed(started):
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def shared_code_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A code dir (stands in for the project's git repository) with a helper module."""
    code = tmp_path_factory.mktemp("code")
    (code / "helpers").mkdir()
    (code / "helpers" / "__init__.py").write_text("GREETING = 'from the code dir'\n")
    # imported by a warm engine (WARM_ARGS); a run can tell whether it was forked from one
    (code / "warm_probe.py").write_text("import os\nIMPORTED_BY_PID = os.getpid()\n")
    (code / "from_repo.py").write_text(textwrap.dedent("""
        import json, helpers
        json.dump({"greeting": helpers.GREETING}, open("from_repo.json", "w"))
    """))
    return code


@pytest.fixture(scope="session")
def shared_ws(tmp_path_factory: pytest.TempPathFactory, shared_code_dir: Path) -> Iterator[WorkspaceServer]:
    """One workspace for the API tests (budget 4 vCPU / 8 GB); tests use their own jobs."""
    with running_workspace(tmp_path_factory.mktemp("ws"), cpus=4, memory_gb=8, code_dir=shared_code_dir,
                           extra_args=["--kill-grace", "1"]) as ws:
        yield ws


@pytest.fixture(scope="session")
def warm_ws(tmp_path_factory: pytest.TempPathFactory, shared_code_dir: Path) -> Iterator[WorkspaceServer]:
    """Like ``shared_ws``, but runs are forked from a warm engine."""
    with running_workspace(tmp_path_factory.mktemp("warm-ws"), cpus=4, memory_gb=8, code_dir=shared_code_dir,
                           extra_args=["--kill-grace", "1", *WARM_ARGS]) as ws:
        yield ws


@pytest.fixture(scope="session")
def http(shared_ws: WorkspaceServer) -> Iterator[httpx.Client]:
    with shared_ws.client() as client:
        yield client


@pytest.fixture
def api(shared_ws: WorkspaceServer, http: httpx.Client) -> Api:
    return Api(shared_ws, http)


@pytest.fixture
def fresh_project(api: Api) -> Api:
    """An :class:`Api` on a new, empty project of the shared workspace."""
    resp = api.http.post("/api/v2/projects", json={"name": f"p-{time.monotonic_ns()}"})
    assert resp.status_code == 200, resp.text
    return Api(api.ws, api.http, resp.json()["id"])


#: the model workspace's options: short busy/request timeouts so the tests stay quick
MODEL_WS_ARGS = ["--kill-grace", "1", "--model-busy-timeout", "1.5", "--model-request-timeout", "3"]


@pytest.fixture(scope="module")
def model_ws(tmp_path_factory: pytest.TempPathFactory, shared_code_dir: Path) -> Iterator[WorkspaceServer]:
    """A workspace for model tests (one per test module)."""
    with running_workspace(tmp_path_factory.mktemp("model-ws"), cpus=2, memory_gb=8, code_dir=shared_code_dir,
                           extra_args=MODEL_WS_ARGS) as ws:
        yield ws


@pytest.fixture
def models(model_ws: WorkspaceServer) -> Iterator[ModelApi]:
    """A :class:`ModelApi` on a new, empty project of the module's model workspace."""
    with model_ws.client() as client:
        resp = client.post("/api/v2/projects", json={"name": f"p-{time.monotonic_ns()}"})
        assert resp.status_code == 200, resp.text
        yield ModelApi(model_ws, client, resp.json()["id"])
