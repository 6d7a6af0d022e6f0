"""The stack of ``make up`` as a driver sees it: its REST API, its workspace and its warehouse.

``make run``, the benchmarks and the e2e tests drive the factory through this: they trigger
and follow DAG runs over Airflow's REST API (the scheduler runs them, as in production) and read
what the factory wrote (the warehouse, the workspace's project) the way a user would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from stack.airflow_api import AirflowApi, airflow_api_connection
from stack.env import PROJECT_NAME, StackPaths, sqlite_connection, workspace_api_key
from stack.processes import UpState, process_of, read_state


class StackNotUp(RuntimeError):
    """No ``make up`` stack runs on this ``var/`` (or not all of it)."""


@dataclass
class RunningStack:
    paths: StackPaths
    state: UpState

    @classmethod
    def find(cls, paths: StackPaths) -> RunningStack | None:
        """The stack running on ``paths.var``, or None when none is fully up."""
        state = read_state(paths)
        if state is None or not state.processes or not all(process_of(p) for p in state.processes):
            return None
        return cls(paths, state)

    def check_alive(self) -> None:
        """Raise :class:`StackNotUp` naming what ended (the runs it was running cannot finish)."""
        dead = [p.name for p in self.state.processes if process_of(p) is None]
        if dead:
            raise StackNotUp(f"{', '.join(dead)} of the stack under {self.paths.var} ended; its logs are in "
                             f"{self.paths.logs}")

    @cached_property
    def api(self) -> AirflowApi:
        return AirflowApi.for_stack(self.state.airflow_url, self.paths)

    @property
    def workspace_url(self) -> str:
        return self.state.workspace_url or ""

    @property
    def model_service_url(self) -> str:
        return self.state.model_service_url or ""

    @property
    def api_key(self) -> str:
        return workspace_api_key(self.paths)

    def warehouse_hook(self):
        """The DB-API hook of the stack's warehouse (its SQLite file, as ``make up`` gives its
        processes), in this process."""
        os.environ["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] = sqlite_connection(self.paths.warehouse_db)
        from airflow.sdk import BaseHook

        from factory_tasks.core.names import WAREHOUSE_CONN_ID

        return BaseHook.get_connection(WAREHOUSE_CONN_ID).get_hook()

    def cml_hook(self, **options: Any):
        """A :class:`CmlHook` on the workspace's project (``options`` go to the hook)."""
        from cml_provider.hooks.cml import CmlHook

        return CmlHook.from_url(self.workspace_url, self.api_key, project_name=PROJECT_NAME, **options)

    def pool_hook(self):
        """The provider's :class:`AirflowPoolHook` on the stack's api-server, through the same
        connection ``airflow_api`` its tasks use (set in this process's environment)."""
        url = urlsplit(self.state.airflow_url)
        os.environ["AIRFLOW_CONN_AIRFLOW_API"] = airflow_api_connection(self.paths, url.hostname or "", url.port or 80)
        from cml_provider.hooks.airflow_pool import AirflowPoolHook

        return AirflowPoolHook()
