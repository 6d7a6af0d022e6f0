"""``make dashboard``: the experiments and monitoring dashboards behind their login.

``panel serve dashboards/experiments_app.py dashboards/monitoring_app.py --auth-module
dashboards/login.py`` with a cookie secret: one server, the apps at ``/experiments_app`` and
``/monitoring_app`` and a page listing both at ``/``. The server refuses every page and
websocket without a signed session cookie of a session still open and shows its login page
(:mod:`dashboards.login`: Panel's, with failed sign-ins throttled and logout ending the
session); the signed-in user (``pn.state.user``) is the reviewer of each promotion. Both
secrets are made once under ``var/secrets/`` (0600, random, never printed): the credentials
file is ``{"<user>": "<password>"}`` JSON (add a line per reviewer; it is re-read at every
login), named to the server by ``$MODEL_FACTORY_DASHBOARD_USERS``; the cookie secret signs the
session cookies. The cookie secret reaches ``panel serve`` through its environment
(``PANEL_COOKIE_SECRET``, the same as ``--cookie-secret``), not its command line, which every
local user can read.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stack.env import REPO, StackPaths, create_secret_file, sqlite_connection

APP = REPO / "dashboards" / "experiments_app.py"
MONITORING_APP = REPO / "dashboards" / "monitoring_app.py"
#: what ``make dashboard`` serves, in this order (``panel serve`` lists them at ``/``)
APPS: tuple[Path, ...] = (APP, MONITORING_APP)
#: the ``--auth-module`` of ``panel serve``: the login page, its throttle, the sessions
LOGIN = REPO / "dashboards" / "login.py"
WAREHOUSE_CONN_ENV = "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"
#: names the credentials file to :data:`LOGIN` (``dashboards.login.USERS_ENV``, not imported: it imports Panel)
USERS_ENV = "MODEL_FACTORY_DASHBOARD_USERS"


def default_user() -> str:
    """The embedded default's reviewer name: ``$MODEL_FACTORY_DASHBOARD_USER``, else ``$USER``."""
    return (os.environ.get("MODEL_FACTORY_DASHBOARD_USER") or os.environ.get("USER") or "reviewer").strip()


@dataclass(frozen=True)
class DashboardSecrets:
    credentials: Path  # {"user": "password"} JSON, read by the login
    cookie_secret_file: Path
    users: tuple[str, ...]
    created: bool  # the credentials were made just now

    @property
    def cookie_secret(self) -> str:
        return self.cookie_secret_file.read_text().strip()

    def password(self, user: str) -> str:
        return json.loads(self.credentials.read_text())[user]


def ensure_secrets(paths: StackPaths, user: str | None = None) -> DashboardSecrets:
    """The dashboard's credentials file and cookie secret under ``var/secrets/``, made once."""
    folder = paths.var / "secrets"
    credentials = folder / "dashboard_users.json"
    cookie = folder / "dashboard_cookie_secret"
    created = create_secret_file(
        credentials, json.dumps({user or default_user(): secrets.token_urlsafe(18)}, indent=1) + "\n")
    create_secret_file(cookie, secrets.token_urlsafe(48))
    users = json.loads(credentials.read_text())
    if not isinstance(users, dict) or not users or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in users.items()):
        raise ValueError(f"{credentials} must be a JSON object of user names to passwords")
    return DashboardSecrets(credentials, cookie, tuple(users), created)


def serve_command(port: int, *, app: Path | tuple[Path, ...] = APPS, address: str = "127.0.0.1") -> list[str]:
    """The ``panel serve`` command line (no secret on it) for one app file or several.

    The login finds the credentials through the environment (:func:`serve_env`): an auth module
    takes no arguments."""
    apps = (app,) if isinstance(app, Path) else tuple(app)
    hosts = [address] if address not in ("127.0.0.1", "localhost") else ["127.0.0.1", "localhost"]
    return [
        sys.executable, "-m", "panel", "serve", *(str(a) for a in apps), "--address", address, "--port", str(port),
        *(f"--allow-websocket-origin={host}:{port}" for host in hosts),
        "--auth-module", str(LOGIN), "--num-procs", "1",
        # run each app once at start-up: the imports (Airflow, for the warehouse connection) and
        # the first reads are paid before anyone visits, not by the first reviewer
        "--warm",
        # a page's HTML from an earlier session of it, the visitor's own built meanwhile
        "--reuse-sessions", "warm", "--setup", str(REPO / "dashboards" / "serve_setup.py"),
    ]


def serve_env(paths: StackPaths, dashboard: DashboardSecrets, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``panel serve``: the stack's artifacts, Airflow home and warehouse
    connection (an exported ``AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE`` wins), the cookie secret
    and where the credentials are."""
    env = dict(os.environ if base is None else base)
    env.update({
        "MODEL_FACTORY_ARTIFACTS": str(paths.artifacts),
        # The dashboard resolves the warehouse connection through Airflow, which reads its home.
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        WAREHOUSE_CONN_ENV: env.get(WAREHOUSE_CONN_ENV) or sqlite_connection(paths.warehouse_db),
        "PANEL_COOKIE_SECRET": dashboard.cookie_secret,
        USERS_ENV: str(dashboard.credentials),
    })
    env.pop("BOKEH_COOKIE_SECRET", None)
    return env


def serve(paths: StackPaths, port: int) -> int:
    """Serve the dashboards until Ctrl-C."""
    paths.make()
    dashboard = ensure_secrets(paths)
    users = ", ".join(dashboard.users)
    print(f"Experiments dashboard on http://127.0.0.1:{port}/{APP.stem}  (Ctrl-C stops it)\n"
          f"Monitoring dashboard on http://127.0.0.1:{port}/{MONITORING_APP.stem}\n"
          f"  sign in as {users}; passwords in {dashboard.credentials}"
          f"{' (created now)' if dashboard.created else ''}", flush=True)
    try:
        return subprocess.call(serve_command(port), env=serve_env(paths, dashboard))
    except KeyboardInterrupt:
        return 0
