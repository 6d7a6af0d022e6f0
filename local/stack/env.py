"""The embedded default stack's layout under ``var/`` and the environment Airflow runs with.

Everything the factory writes at run time lives below one folder (``var/`` by default,
``MODEL_FACTORY_VAR`` to move it), so ``make clean`` is one ``rm``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

#: the repository (this file is local/stack/env.py): dags/, plugins/, config/ and var/ are found from it
REPO = Path(__file__).resolve().parents[2]
PROJECT_NAME = "model-factory"


@dataclass(frozen=True)
class StackPaths:
    var: Path

    @property
    def airflow_home(self) -> Path:
        return self.var / "airflow"

    @property
    def warehouse_db(self) -> Path:
        return self.var / "warehouse.db"

    @property
    def workspace_root(self) -> Path:
        return self.var / "workspace"

    @property
    def artifacts(self) -> Path:
        return self.var / "artifacts"

    @property
    def logs(self) -> Path:
        return self.var / "logs"

    @property
    def api_key_file(self) -> Path:
        return self.var / "secrets" / "cml_workspace_api_key"

    def make(self) -> "StackPaths":
        for folder in (self.airflow_home, self.workspace_root, self.artifacts, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def stack_paths(var: Path | None = None) -> StackPaths:
    return StackPaths(Path(var or os.environ.get("MODEL_FACTORY_VAR", REPO / "var")).resolve())


def workspace_api_key(paths: StackPaths) -> str:
    """The local workspace's API key: made once, kept 0600 under var/secrets, never printed."""
    path = paths.api_key_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def sqlite_connection(db_path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(db_path)})


def cml_connection(url: str, api_key: str, project: str = PROJECT_NAME, model_service_url: str | None = None) -> str:
    extra = {"project_name": project, **({"model_service_url": model_service_url} if model_service_url else {})}
    return json.dumps({"conn_type": "cml", "host": url, "password": api_key, "extra": extra})


def airflow_env(
    paths: StackPaths,
    *,
    workspace_url: str,
    api_key: str,
    model_service_url: str | None = None,
    warehouse_conn: str | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for every Airflow command of the embedded stack (connections included)."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        {
            "AIRFLOW_HOME": str(paths.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{paths.airflow_home / 'airflow.db'}",
            "AIRFLOW_CONN_CML_DEFAULT": cml_connection(workspace_url, api_key, model_service_url=model_service_url),
            "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE": warehouse_conn or sqlite_connection(paths.warehouse_db),
            "MODEL_FACTORY_ARTIFACTS": str(paths.artifacts),
            # the local workspace is next door and answers in milliseconds
            "MODEL_FACTORY_CML_POLL_INTERVAL_S": "1",
            # `airflow standalone` starts its components by name: the venv must be on PATH.
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        }
    )
    return env
