"""The driver's side of Airflow's public REST API (``/api/v2``), as ``make run`` uses it on the
stack of ``make up``: trigger a DAG, follow runs and task instances, read a task's error from its
structured log and a task's XCom, read a pool. Pools are sized by the provider's
``AirflowPoolHook`` (through the connection :func:`airflow_api_connection` describes), the
same code the plan task sizes them with.

Nothing here runs a task: the scheduler does. A 5xx (SQLite's "database is locked" while the
scheduler writes) is tried again where that is safe: a read, a PATCH or a DELETE, and a trigger,
which names its run so that a second try finds the run a first one made; an expired token is
renewed once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx

from stack.env import StackPaths, airflow_passwords_file

#: dag-run states after which nothing changes
FINISHED_RUN_STATES = ("success", "failed")
#: methods whose request may be sent again after a 5xx: a second one changes nothing more
SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})


def api_token(url: str, paths: StackPaths, user: str = "admin") -> str:
    """A JWT from the simple auth manager (``POST /auth/token``) for the stack's admin password."""
    password = json.loads(airflow_passwords_file(paths).read_text())[user]
    resp = httpx.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=10)
    resp.raise_for_status()
    return resp.json()["access_token"]


def airflow_api_connection(paths: StackPaths, host: str, port: int, user: str = "admin") -> str:
    """The connection ``airflow_api``: the stack's own REST API as its admin (the plan task sizes
    the experiment pool through it). It carries the password: only ever in an environment."""
    password = json.loads(airflow_passwords_file(paths).read_text())[user]
    return json.dumps({"conn_type": "http", "host": host, "port": port, "schema": "http",
                       "login": user, "password": password})


class AirflowApiError(RuntimeError):
    """An answer of the REST API that the driver cannot go on from (the path and Airflow's detail)."""


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _q(part: str) -> str:
    return quote(part, safe="")


def exception_text(error_detail: list[dict[str, Any]]) -> str:
    """``Type: message`` of a structured log record's ``error_detail`` (the raised exception and
    its causes). An Airflow exception that only repeats its cause's message
    (``raise AirflowFailException(str(exc)) from exc``) gives way to the cause, whose type says more."""
    if not error_detail:
        return ""
    top = error_detail[0]
    kind, text = top.get("exc_type") or "", str(top.get("exc_value") or "")
    if kind.startswith("Airflow"):
        cause = next((e for e in error_detail[1:] if str(e.get("exc_value") or "") == text), None)
        if cause is not None:
            kind = cause.get("exc_type") or kind
    return f"{kind}: {text}" if text else kind


class AirflowApi:
    """A signed-in client of one api-server (``url``), as the admin of ``paths``' stack."""

    def __init__(self, url: str, token: Callable[[], str], timeout_s: float = 60.0):
        self.url = url
        self._token = token
        self.http = httpx.Client(base_url=url, timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {token()}"})

    @classmethod
    def for_stack(cls, url: str, paths: StackPaths) -> AirflowApi:
        return cls(url, lambda: api_token(url, paths))

    def close(self) -> None:
        self.http.close()

    # -- plumbing ------------------------------------------------------------------------
    def call(self, method: str, path: str, *, attempts: int = 5, ok: Iterable[int] = (), **kwargs) -> httpx.Response:
        """One request; a 5xx or a lost answer tried again after a second (``attempts`` in all)
        when ``method`` is safe to repeat (a request never sent is always), a 401 once with a
        new token. Raises :class:`AirflowApiError` for any other error status not in ``ok``."""
        renewed = False
        repeat = method.upper() in SAFE_TO_REPEAT
        for attempt in range(1, attempts + 1):
            try:
                resp = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == attempts or not (repeat or isinstance(exc, httpx.ConnectError)):
                    raise AirflowApiError(f"{method} {path}: the api-server at {self.url} does not answer ({exc})") from exc
                time.sleep(1.0)
                continue
            if resp.status_code == 401 and not renewed:
                self.http.headers["Authorization"] = f"Bearer {self._token()}"
                renewed = True
                continue
            if resp.status_code >= 500 and repeat and attempt < attempts:
                time.sleep(1.0)
                continue
            if resp.status_code >= 400 and resp.status_code not in set(ok):
                try:
                    detail = resp.json().get("detail", resp.text)
                except ValueError:
                    detail = resp.text
                raise AirflowApiError(f"{method} {path} answered {resp.status_code}: {detail}")
            return resp
        raise AirflowApiError(f"{method} {path}: no answer after {attempts} attempts")

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params).json()

    def send(self, method: str, path: str, body: dict[str, Any], **params: Any) -> Any:
        return self.call(method, path, json=body, params=params).json()

    # -- DAGs and runs -------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict[str, Any] | None:
        resp = self.call("GET", f"/api/v2/dags/{_q(dag_id)}", ok=(404,))
        return None if resp.status_code == 404 else resp.json()

    def import_errors(self, filename_suffix: str = "") -> list[str]:
        """The stack traces of the DAG files that did not import (those ending in ``filename_suffix``)."""
        errors = self.get("/api/v2/importErrors", limit=100).get("import_errors", [])
        return [e.get("stack_trace") or "" for e in errors if (e.get("filename") or "").endswith(filename_suffix)]

    def unpause(self, dag_id: str) -> None:
        self.set_paused(dag_id, False)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.send("PATCH", f"/api/v2/dags/{_q(dag_id)}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any], *, run_id: str | None = None,
                attempts: int = 5) -> dict[str, Any]:
        """A manual run now (``logical_date`` null: Airflow 3 lets manual runs share dates, so
        none is taken from the schedule's windows). The run is named here (Airflow's form,
        ``manual__<now>``, unless ``run_id``), so that after a 5xx, which may come after the run
        was made, a second try that answers 409 returns that run instead of making another."""
        run_id = run_id or f"manual__{datetime.now(timezone.utc).isoformat()}"
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns"
        body: dict[str, Any] = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        for attempt in range(1, attempts + 1):
            resp = self.call("POST", path, json=body, attempts=1, ok=(409, 500, 502, 503, 504))
            if resp.status_code < 300:
                return resp.json()
            if resp.status_code == 409 and attempt > 1:  # an earlier try made it
                return self.dag_run(dag_id, run_id)
            if resp.status_code == 409:
                raise AirflowApiError(f"POST {path} answered 409: {dag_id} already has a run {run_id}")
            time.sleep(1.0)
        raise AirflowApiError(f"POST {path} answered {resp.status_code} {attempts} times: {resp.text}")

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")

    def dag_runs(self, dag_id: str, **filters: Any) -> list[dict[str, Any]]:
        """The DAG's runs matching ``filters`` (e.g. ``run_after_gte``, ``run_type``), oldest first."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/api/v2/dags/{_q(dag_id)}/dagRuns", limit=100, offset=len(found),
                            order_by="run_after", **filters)
            found += page["dag_runs"]
            if not page["dag_runs"] or len(found) >= page["total_entries"]:
                return found

    def mark_failed(self, dag_id: str, run_id: str) -> None:
        """End a run: its unfinished task instances are stopped (their ``on_kill`` runs on a worker)."""
        self.send("PATCH", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}", {"state": "failed"})

    def delete_run(self, dag_id: str, run_id: str) -> None:
        """Delete a run and what it recorded (its task instances, XComs); gone already is fine."""
        self.call("DELETE", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}", ok=(404,))

    def fail_unfinished(self, dag_id: str, run_id: str) -> bool:
        """Mark the run failed unless it has finished; whether it had not."""
        if self.dag_run(dag_id, run_id)["state"] in FINISHED_RUN_STATES:
            return False
        self.mark_failed(dag_id, run_id)
        return True

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones once per map index (paged)."""
        found: list[dict[str, Any]] = []
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances"
        while True:
            page = self.get(path, limit=100, offset=len(found))
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout_s: float, tick_s: float = 2.0,
                     on_tick: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll the run until it has finished; its last state. ``on_tick`` sees each poll's run."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.dag_run(dag_id, run_id)
            if on_tick is not None:
                on_tick(run)
            if run["state"] in FINISHED_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout_s:.0f}s")
            time.sleep(tick_s)

    # -- what tasks left ----------------------------------------------------------------
    def xcom(self, dag_id: str, run_id: str, task_id: str, *, key: str = "return_value",
             map_index: int = -1) -> Any:
        """A task's XCom value (None when it pushed none)."""
        resp = self.call("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
                                f"/xcomEntries/{_q(key)}", params={"map_index": map_index, "deserialize": True},
                         ok=(404,))
        return None if resp.status_code == 404 else resp.json().get("value")

    def task_error(self, dag_id: str, run_id: str, task_id: str, *, map_index: int = -1,
                   try_number: int = 1) -> str | None:
        """The exception a task attempt failed with, from its structured log (None: none logged)."""
        path = (f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/logs/"
                f"{max(try_number, 1)}")
        resp = self.call("GET", path, params={"map_index": map_index, "full_content": True},
                         headers={"Accept": "application/json"}, ok=(404,))
        if resp.status_code == 404:
            return None
        content = resp.json().get("content") or []
        errors = [exception_text(r["error_detail"]) for r in content
                  if isinstance(r, dict) and r.get("error_detail")]
        if errors:
            return errors[-1]
        # a trigger's or a sensor's failure is logged as an error record without a traceback
        logged = [str(r.get("event")) for r in content if isinstance(r, dict) and r.get("level") == "error"]
        return logged[-1] if logged else None

    # -- pools --------------------------------------------------------------------------
    def pool(self, name: str) -> dict[str, Any] | None:
        """The pool (``slots``, ``include_deferred``, ``occupied_slots``, ...), None if absent."""
        resp = self.call("GET", f"/api/v2/pools/{_q(name)}", ok=(404,))
        return None if resp.status_code == 404 else resp.json()
