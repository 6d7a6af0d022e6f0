"""The embedded default stack as one context manager: local CML workspace + Airflow home +
SQLite warehouse. Used by `make run`, the Airflow UI command, the benchmarks and the e2e tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from stack.airflow_cli import migrate_once
from stack.env import PROJECT_NAME, REPO, StackPaths, airflow_env, workspace_api_key


@dataclass
class LocalStack:
    paths: StackPaths
    workspace: Any  # cml_workspace.testing.RunningWorkspace
    env: dict[str, str]
    migrated_now: bool

    def warehouse_hook(self):
        """The DB-API hook of the warehouse connection (SQLite or HiveServer2), in this process."""
        os.environ["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] = self.env["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"]
        from airflow.sdk import BaseHook

        return BaseHook.get_connection("model_factory_warehouse").get_hook()

    def cml_hook(self):
        from cml_provider.hooks.cml import CmlHook

        return CmlHook.from_url(self.workspace.url, self.workspace.api_key, project_name=PROJECT_NAME)


@contextmanager
def local_stack(
    paths: StackPaths, *, cpus: float | None = None, memory_gb: float = 8, warehouse_conn: str | None = None
) -> Iterator[LocalStack]:
    """Start the workspace, prepare the Airflow home once; stop the workspace on exit.

    ``warehouse_conn`` (an Airflow connection URI or JSON) replaces the SQLite warehouse.
    """
    from cml_workspace.testing import running_workspace

    paths.make()
    with running_workspace(
        paths.workspace_root, code_dir=REPO, project=PROJECT_NAME, api_key=workspace_api_key(paths),
        cpus=cpus or os.cpu_count() or 2, memory_gb=memory_gb, extra_args=["--preload", "factory_tasks.job_preload"],
    ) as ws:
        env = airflow_env(paths, workspace_url=ws.url, api_key=ws.api_key, warehouse_conn=warehouse_conn)
        migrated = migrate_once(env, paths.logs / "airflow-setup.log")
        yield LocalStack(paths, ws, env, migrated)
