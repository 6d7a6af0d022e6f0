"""Fixtures for the CML provider tests.

Two kinds of servers, both real HTTP on 127.0.0.1:

* ``scripted_server``: a tiny ``http.server`` that answers from a script (e.g. 503, 503, 200)
  and records every request — for retry and error-mapping behaviour (``tests/harness``);
* ``workspace``: the project's local CML workspace (``cml_workspace.server_process``), for everything
  that needs real API v2 semantics (jobs, runs, files, pagination).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("AIRFLOW_HOME", str(REPO / "var" / "airflow-test-home"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
for extra_path in (REPO, REPO / "plugins"):
    if str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))

import tenacity  # noqa: E402
from cml_provider.hooks.cml import CmlHook  # noqa: E402

from tests.harness.scripted_server import ScriptedServer  # noqa: E402
from tests.harness.scripted_server import scripted_server as serve_script  # noqa: E402

TEST_API_KEY = "test-api-key-0123456789"


# --- a scripted HTTP server ------------------------------------------------------------------
@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    with serve_script() as server:
        yield server


@pytest.fixture
def instant() -> dict[str, Any]:
    """``retry_args`` that make hook retries instant."""
    return {"wait": tenacity.wait_none()}


@pytest.fixture
def free_port() -> int:
    """A port with nothing listening on it (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the local CML workspace -----------------------------------------------------------------
JOBS_DIR = Path(__file__).parent / "cml_jobs"
RUNTIME = "local/cml-workspace-python:local"  # any value works locally; CML needs one per job


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The project's local CML workspace with this suite's small job scripts as project code."""
    from cml_workspace.server_process import running_workspace

    root = tmp_path_factory.mktemp("cml-workspace")
    with running_workspace(root, cpus=2, code_dir=JOBS_DIR, project="plugins-tests") as handle:
        yield handle


@pytest.fixture
def cml_conn(workspace: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """``AIRFLOW_CONN_CML_DEFAULT`` pointing at the workspace and its project (JSON form)."""
    conn = {
        "conn_type": "cml",
        "host": workspace.url,
        "password": workspace.api_key,
        "extra": {"project_id": workspace.project_id, "runtime_identifier": RUNTIME},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CML_DEFAULT", json.dumps(conn))
    return "cml_default"


@pytest.fixture
def hook(workspace: Any, instant: dict[str, Any]) -> Iterator[CmlHook]:
    """A hook on the workspace without any Airflow connection."""
    with CmlHook.from_url(
        workspace.url,
        workspace.api_key,
        project_id=workspace.project_id,
        runtime_identifier=RUNTIME,
        retry_args=instant,
    ) as h:
        yield h


@pytest.fixture
def unique() -> str:
    """A short unique suffix for job names, so tests sharing the workspace never collide."""
    return uuid.uuid4().hex[:8]


def wait_for_status(hook: CmlHook, job_id: str, run_id: str, *, timeout: float = 60.0):
    """Poll until the run is terminal (bounded); returns the CmlJobRun."""
    deadline = time.monotonic() + timeout
    while True:
        run = hook.get_job_run(job_id, run_id)
        if run.status.is_terminal:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {run.status} after {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def wait_terminal():
    return wait_for_status


@pytest.fixture
def make_context():
    """Build the part of an Airflow task context the CML operators read (``context["ti"]``)."""

    def make(dag_id: str = "dag", run_id: str = "manual__1", task_id: str = "task", map_index: int = -1,
             try_number: int = 1):
        ti = SimpleNamespace(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                             try_number=try_number)
        return {"ti": ti, "task_instance": ti, "run_id": run_id}

    return make
