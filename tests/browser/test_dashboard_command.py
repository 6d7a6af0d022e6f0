"""``make dashboard``'s command (``stack.dashboard``): secrets made once, 0600, never on the
command line; the server environment points at the stack's warehouse and object store."""

from __future__ import annotations

import json
import stat

from stack.dashboard import LOGIN, USERS_ENV, WAREHOUSE_CONN_ENV, ensure_secrets, serve, serve_command, serve_env
from stack.env import StackPaths


def test_secrets_are_made_once_private_and_random(tmp_path):
    paths = StackPaths(tmp_path / "var")
    first = ensure_secrets(paths, user="alice")
    assert first.created and first.users == ("alice",)
    assert first.credentials == tmp_path / "var" / "secrets" / "dashboard_users.json"
    for path in (first.credentials, first.cookie_secret_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.credentials.parent.stat().st_mode) == 0o700
    password = first.password("alice")
    assert len(password) >= 20 and len(first.cookie_secret) >= 40
    again = ensure_secrets(paths, user="bob")  # existing credentials are kept, never rewritten
    assert not again.created and again.users == ("alice",) and again.password("alice") == password
    assert again.cookie_secret == first.cookie_secret
    other = ensure_secrets(StackPaths(tmp_path / "other"), user="alice")
    assert other.password("alice") != password and other.cookie_secret != first.cookie_secret


def test_reviewers_are_added_to_the_credentials_file(tmp_path):
    paths = StackPaths(tmp_path / "var")
    secrets = ensure_secrets(paths, user="alice")
    users = json.loads(secrets.credentials.read_text())
    secrets.credentials.write_text(json.dumps({**users, "bob": "another-long-password"}))
    assert ensure_secrets(paths).users == ("alice", "bob")
    secrets.credentials.write_text("[]")
    try:
        ensure_secrets(paths)
    except ValueError as exc:
        assert "JSON object of user names to passwords" in str(exc)
    else:
        raise AssertionError("a credentials file that is not {user: password} must be refused")


def test_the_command_line_carries_no_secret_and_the_environment_the_cookie_secret(tmp_path):
    paths = StackPaths(tmp_path / "var")
    secrets = ensure_secrets(paths, user="alice")
    command = serve_command(5006)
    assert command[1:4] == ["-m", "panel", "serve"] and command[4].endswith("dashboards/experiments_app.py")
    assert command[command.index("--auth-module") + 1] == str(LOGIN)
    assert "--allow-websocket-origin=127.0.0.1:5006" in command
    text = " ".join(command)
    assert secrets.password("alice") not in text and secrets.cookie_secret not in text
    env = serve_env(paths, secrets, base={"PATH": "/bin", "BOKEH_COOKIE_SECRET": "x"})
    assert env["PANEL_COOKIE_SECRET"] == secrets.cookie_secret and "BOKEH_COOKIE_SECRET" not in env
    assert env[USERS_ENV] == str(secrets.credentials)
    assert json.loads(env[WAREHOUSE_CONN_ENV]) == {"conn_type": "sqlite", "host": str(paths.warehouse_db)}
    assert env["AIRFLOW_HOME"] == str(paths.airflow_home)
    assert env["MODEL_FACTORY_ARTIFACTS"] == str(paths.artifacts)
    hive = "hiveserver2://svc@hive.example.com:10000/marketing?auth_mechanism=PLAIN"
    assert serve_env(paths, secrets, base={WAREHOUSE_CONN_ENV: hive})[WAREHOUSE_CONN_ENV] == hive


def test_serve_says_where_the_password_is_and_never_prints_it(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("stack.dashboard.subprocess.call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.setenv("MODEL_FACTORY_DASHBOARD_USER", "carol")
    paths = StackPaths(tmp_path / "var")
    assert serve(paths, 5077) == 0
    out = capsys.readouterr().out
    secrets = ensure_secrets(paths)
    assert "http://127.0.0.1:5077/experiments_app" in out and "sign in as carol" in out
    assert str(secrets.credentials) in out and "(created now)" in out
    assert secrets.password("carol") not in out and secrets.cookie_secret not in out
    assert calls and calls[0][1]["PANEL_COOKIE_SECRET"] == secrets.cookie_secret
    serve(paths, 5077)
    assert "(created now)" not in capsys.readouterr().out
