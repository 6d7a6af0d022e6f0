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
#: the simulated training table made when it is absent (make up, make run)
DEFAULT_ROWS = 64_000
DEFAULT_SEED = 7


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
    def config(self) -> Path:
        """Config files the stack or a test writes for a run (the demo's closed-loop settings):
        a config folder beside the repository's config/, unlike the rest of var/."""
        return self.var / "config"

    @property
    def secrets_dir(self) -> Path:
        return self.var / "secrets"

    @property
    def api_key_file(self) -> Path:
        return self.secrets_dir / "cml_workspace_api_key"

    @property
    def airflow_passwords_file(self) -> Path:
        """The simple auth manager's ``{"admin": "<password>"}`` (``[core]
        simple_auth_manager_passwords_file``)."""
        return self.secrets_dir / "airflow_passwords.json"

    def make(self) -> "StackPaths":
        for folder in (self.workspace_root, self.artifacts, self.config):
            folder.mkdir(parents=True, exist_ok=True)
        # secrets, and what may carry them: the logs (ours, and Airflow's task logs in its home)
        for folder in (self.secrets_dir, self.logs, self.airflow_home):
            private_folder(folder)
        return self


def private_folder(path: Path) -> Path:
    """``path`` made if absent, readable by its owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def open_log(path: Path):
    """``path`` opened to append bytes, readable by its owner only (0600) in a 0700 folder:
    a command's output may carry a secret."""
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # also a log made before
    return os.fdopen(fd, "ab")


def create_secret_file(path: Path, content: str) -> bool:
    """Write ``content`` to a new 0600 file in a 0700 folder; False (and nothing written) if it exists."""
    private_folder(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    return True


def stack_paths(var: Path | None = None) -> StackPaths:
    return StackPaths(Path(var or os.environ.get("MODEL_FACTORY_VAR", REPO / "var")).resolve())


def workspace_api_key(paths: StackPaths) -> str:
    """The local workspace's API key: made once, kept 0600 under var/secrets, never printed."""
    create_secret_file(paths.api_key_file, secrets.token_urlsafe(32))
    return paths.api_key_file.read_text().strip()


def airflow_passwords_file(paths: StackPaths) -> Path:
    """The Airflow admin's password file, made once (0600, random). Given to Airflow as ``[core]
    simple_auth_manager_passwords_file``: the simple auth manager generates a password only
    for a user absent from it, and prints what it generates into the api-server's log."""
    path = paths.airflow_passwords_file
    if not path.exists():
        # Airflow's own file from an earlier version of the stack, world-readable: its password moves here
        legacy = paths.airflow_home / "simple_auth_manager_passwords.json.generated"
        try:
            password = json.loads(legacy.read_text())["admin"]
        except (OSError, ValueError, KeyError, TypeError):
            password = secrets.token_urlsafe(18)
        create_secret_file(path, json.dumps({"admin": password}) + "\n")
        legacy.unlink(missing_ok=True)
    return path


def config_dirs(paths: StackPaths, env: dict[str, str] | None = None) -> list[Path]:
    """The folders a run's grid_path / loop_config_path may name (never var/secrets):
    ``MODEL_FACTORY_CONFIG_DIRS`` if set (relative ones from the repository), else the
    repository's config/ and ``var/config``; resolved, as the tasks check them."""
    configured = (os.environ if env is None else env).get("MODEL_FACTORY_CONFIG_DIRS", "")
    listed = [part.strip() for part in configured.split(os.pathsep) if part.strip()]
    return [(REPO / part).resolve() for part in listed] or [(REPO / "config").resolve(), paths.config.resolve()]


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
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_passwords_file(paths)),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{paths.airflow_home / 'airflow.db'}",
            "AIRFLOW_CONN_CML_DEFAULT": cml_connection(workspace_url, api_key, model_service_url=model_service_url),
            "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE": warehouse_conn or sqlite_connection(paths.warehouse_db),
            "MODEL_FACTORY_ARTIFACTS": str(paths.artifacts),
            "MODEL_FACTORY_CONFIG_DIRS": os.pathsep.join(str(p) for p in config_dirs(paths, env)),
            # the local workspace is next door and answers in milliseconds; its runs can end
            # within a second, sooner than a deferral's round trip through the triggerer
            "MODEL_FACTORY_CML_POLL_INTERVAL_S": "1",
            "MODEL_FACTORY_CML_WAIT_BEFORE_DEFER_S": "5",
            # `airflow standalone` starts its components by name: the venv must be on PATH.
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        }
    )
    return env
