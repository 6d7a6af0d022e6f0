"""AirflowPoolHook against a small stand-in of Airflow's api-server over real HTTP: ``/auth/token``
and ``/api/v2/pools`` with Airflow's status codes and body shapes, the bodies validated by
Airflow's own request models (strict fields, a patch that must make a whole pool: 404, 409, 422)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from airflow.api_fastapi.core_api.datamodels.pools import BasePool, PoolBody, PoolPatchBody
from airflow.sdk.exceptions import AirflowException
from cml_provider.hooks.airflow_pool import AirflowPoolHook
from pydantic import ValidationError

PASSWORD = "s3cret-admin-password"
TOKEN = "jwt-for-admin"
POOL = "model_factory_experiments"


class FakeAirflow:
    """The pools and sign-in of an api-server; records each request as ``(method, path, query, body)``."""

    #: where the api-server is mounted (``[api] base_url``'s path)
    prefix = ""

    def __init__(self) -> None:
        self.pools: dict[str, dict[str, Any]] = {"default_pool": {"slots": 128, "description": "", "include_deferred": False}}
        self.requests: list[tuple[str, str, dict, Any]] = []

    def handle(self, method: str, path: str, query: dict, headers: Any, body: Any) -> tuple[int, Any]:
        if not path.startswith(self.prefix):
            return 404, {"detail": "Not Found"}
        path = path.removeprefix(self.prefix)
        self.requests.append((method, path, query, body))
        if path == "/auth/token" and method == "POST":
            if body != {"username": "admin", "password": PASSWORD}:
                return 401, {"detail": "Invalid credentials"}
            return 201, {"access_token": TOKEN}
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {"detail": "Not authenticated"}
        if path == "/api/v2/pools" and method == "POST":
            return self._post(body)
        if path.startswith("/api/v2/pools/"):
            name = unquote(path.removeprefix("/api/v2/pools/"))
            if name not in self.pools:
                return 404, {"detail": f"The Pool with name: `{name}` was not found"}
            if method == "GET":
                return 200, self._out(name)
            if method == "PATCH":
                return self._patch(name, body, query.get("update_mask"))
        return 405, {"detail": "Method Not Allowed"}

    def _out(self, name: str) -> dict[str, Any]:
        return {"name": name, **self.pools[name], "occupied_slots": 0, "running_slots": 0, "queued_slots": 0,
                "scheduled_slots": 0, "open_slots": self.pools[name]["slots"], "deferred_slots": 0, "team_name": None}

    def _post(self, body: Any) -> tuple[int, Any]:
        try:
            pool = PoolBody.model_validate(body)
        except ValidationError as exc:
            return 422, {"detail": _errors(exc)}
        if pool.pool in self.pools:
            return 409, {"detail": {"reason": "Unique constraint violation", "statement": "hidden",
                                    "orig_error": "hidden", "message": "Serious error when handling your request."}}
        self.pools[pool.pool] = {"slots": pool.slots, "description": pool.description,
                                 "include_deferred": pool.include_deferred}
        return 201, self._out(pool.pool)

    def _patch(self, name: str, body: Any, mask: list[str] | None) -> tuple[int, Any]:
        try:
            patch = PoolPatchBody.model_validate(body)
            if patch.name and patch.name != name:
                return 400, {"detail": "Invalid body, pool name from request body doesn't match uri parameter"}
            # what Airflow's update_orm_from_pydantic checks: the fields sent make a whole pool
            sent = patch.model_dump(include=patch.model_fields_set, by_alias=True)
            BasePool.model_validate(sent)
        except ValidationError as exc:
            return 422, {"detail": _errors(exc)}
        fields = patch.model_fields_set & set(mask) if mask else patch.model_fields_set
        self.pools[name].update(patch.model_dump(include=fields - {"name", "team_name"}))
        return 200, self._out(name)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A validation error as FastAPI answers it (422)."""
    return [{"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"], "input": e.get("input")}
            for e in exc.errors()]


@pytest.fixture
def airflow_api() -> Iterator[tuple[FakeAirflow, int]]:
    fake = FakeAirflow()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode()
            status, payload = fake.handle(self.command, parts.path, parse_qs(parts.query), self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _handle

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def connection(monkeypatch, api_port: int, conn_id: str = "airflow_api", **fields: Any) -> str:
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": api_port, "schema": "http", "login": "admin",
            "password": PASSWORD, **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


def test_creates_the_pool_then_resizes_it_counting_deferred_tasks(airflow_api, monkeypatch):
    fake, port = airflow_api
    hook = AirflowPoolHook(airflow_conn_id=connection(monkeypatch, port))

    said = hook.size_pool(POOL, 4, description="model_factory: max_parallel of the grid")
    assert said == f"Created pool {POOL!r} with 4 slots (deferred tasks count)"
    assert fake.pools[POOL] == {"slots": 4, "description": "model_factory: max_parallel of the grid",
                                "include_deferred": True}

    fake.requests.clear()
    assert hook.size_pool(POOL, 8, description="run 2") == f"Resized pool {POOL!r} from 4 to 8 slots (deferred tasks count)"
    assert fake.pools[POOL] == {"slots": 8, "description": "run 2", "include_deferred": True}
    [patch] = [r for r in fake.requests if r[0] == "PATCH"]
    assert sorted(patch[2]["update_mask"]) == ["description", "include_deferred", "slots"]

    fake.requests.clear()
    assert hook.size_pool(POOL, 8, description="run 2") == f"Pool {POOL!r} already has 8 slots (deferred tasks count)"
    assert [r[0] for r in fake.requests] == ["POST", "GET"]  # the token, the pool: nothing changed
    assert fake.pools["default_pool"]["slots"] == 128


def test_a_pool_that_does_not_count_deferred_tasks_is_made_to(airflow_api, monkeypatch):
    fake, port = airflow_api
    fake.pools[POOL] = {"slots": 4, "description": "", "include_deferred": False}  # `airflow pools set` without the flag
    said = AirflowPoolHook(airflow_conn_id=connection(monkeypatch, port)).size_pool(POOL, 4)
    assert said.startswith(f"Resized pool {POOL!r}") and fake.pools[POOL]["include_deferred"] is True


def test_a_host_given_as_a_url_with_a_base_path(airflow_api, monkeypatch):
    fake, port = airflow_api
    fake.prefix = "/airflow"
    conn_id = connection(monkeypatch, port, host=f"http://127.0.0.1:{port}/airflow/", port=None, schema=None)
    AirflowPoolHook(airflow_conn_id=conn_id).size_pool(POOL, 2)
    assert fake.pools[POOL]["slots"] == 2


def test_without_the_connection_it_warns_and_leaves_the_pool_alone(airflow_api, monkeypatch, capsys):
    fake, _ = airflow_api
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_API", raising=False)
    said = AirflowPoolHook(airflow_conn_id="no_such_api").size_pool(POOL, 4, description="grid")
    logged = capsys.readouterr().out  # the hook logs through structlog
    assert "'no_such_api'" in said and repr(POOL) in said
    assert "experiments run at the pool's current size" in said
    assert f"airflow pools set {POOL} 4 grid --include-deferred" in said
    assert any("warning" in line and said in line for line in logged.splitlines()), logged
    assert fake.requests == []


def test_errors_name_the_pool_the_url_and_airflows_detail_never_the_password(airflow_api, monkeypatch, free_port):
    fake, port = airflow_api
    wrong = connection(monkeypatch, port, conn_id="airflow_wrong", password="not-" + PASSWORD)
    with pytest.raises(AirflowException) as info:
        AirflowPoolHook(airflow_conn_id=wrong).size_pool(POOL, 4)
    assert str(info.value) == (
        f"Could not size Airflow pool {POOL!r}: POST http://127.0.0.1:{port}/auth/token answered 401: Invalid credentials"
    )

    # a validation error's detail without its "input" (which echoes the request body)
    hook = AirflowPoolHook(airflow_conn_id=connection(monkeypatch, port))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        with pytest.raises(AirflowException) as info:
            hook._call(http, POOL, "POST", "/api/v2/pools", json={"name": POOL, "max": 3, "secret": PASSWORD})
        message = str(info.value)
        assert message.startswith(f"Could not size Airflow pool {POOL!r}: POST http://127.0.0.1:{port}/api/v2/pools "
                                  "answered 422: ")
        assert "body.max: Extra inputs are not permitted" in message and "body.slots: Field required" in message
        assert PASSWORD not in message
        # Airflow takes a patch for a whole pool: one without the pool's name is refused
        hook.size_pool(POOL, 2)
        with pytest.raises(AirflowException, match="answered 422: body.pool: Field required"):
            hook._call(http, POOL, "PATCH", f"/api/v2/pools/{POOL}", json={"slots": 3, "include_deferred": True},
                       params={"update_mask": "slots"})

    down = connection(monkeypatch, free_port, conn_id="airflow_down")
    with pytest.raises(AirflowException, match=rf"POST http://127.0.0.1:{free_port}/auth/token got no answer") as info:
        AirflowPoolHook(airflow_conn_id=down).size_pool(POOL, 4)
    assert PASSWORD not in str(info.value)


def test_a_pool_created_meanwhile_is_resized(airflow_api, monkeypatch):
    """Two tasks sizing the same pool: the second's create answers 409, so it resizes instead."""
    fake, port = airflow_api
    real = fake.handle

    def racing(method, path, query, headers, body):
        if method == "POST" and path == "/api/v2/pools" and POOL not in fake.pools:
            fake.pools[POOL] = {"slots": 2, "description": "other run", "include_deferred": True}
        return real(method, path, query, headers, body)

    fake.handle = racing
    said = AirflowPoolHook(airflow_conn_id=connection(monkeypatch, port)).size_pool(POOL, 6)
    assert said == f"Resized pool {POOL!r} to 6 slots (deferred tasks count)"
    assert fake.pools[POOL]["slots"] == 6


def test_a_busy_metadata_db_is_asked_again_and_a_lasting_error_named(airflow_api, monkeypatch):
    """A 5xx is the metadata DB busy (SQLite's lock while the scheduler writes, as at a stack's
    start): Airflow rolled the request back, so the hook asks again; one that lasts fails."""
    fake, port = airflow_api
    real = fake.handle
    busy = {"left": 2}

    def locked(method, path, query, headers, body):
        if method == "POST" and path == "/api/v2/pools" and busy["left"]:
            busy["left"] -= 1
            fake.requests.append((method, path, query, body))
            return 500, {"reason": "Database error", "statement": "hidden", "orig_error": "hidden",
                         "message": "Serious error when handling your request."}
        return real(method, path, query, headers, body)

    fake.handle = locked
    conn_id = connection(monkeypatch, port)
    said = AirflowPoolHook(airflow_conn_id=conn_id, retry_delay_s=0.01).size_pool(POOL, 3)
    assert said == f"Created pool {POOL!r} with 3 slots (deferred tasks count)"
    assert [m for m, p, *_ in fake.requests if p == "/api/v2/pools"] == ["POST"] * 3
    assert fake.pools[POOL]["slots"] == 3

    busy["left"] = 10
    del fake.pools[POOL]
    with pytest.raises(AirflowException, match=rf"POST http://127.0.0.1:{port}/api/v2/pools answered 500"):
        AirflowPoolHook(airflow_conn_id=conn_id, attempts=2, retry_delay_s=0.01).size_pool(POOL, 3)
