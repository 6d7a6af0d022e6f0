"""Size an Airflow pool over Airflow's public REST API (``/api/v2``), from inside a task.

A DAG that caps its mapped tasks with a pool sizes that pool before they start. The pool counts
deferred task instances too (``include_deferred``): a task waiting in the triggerer for its CML
run keeps its slot, so the pool caps the runs in flight, not the tasks on workers.

The connection (``conn_type`` http, default id ``airflow_api``): *host* and *port* of the
api-server and *schema* ``http`` or ``https``, or *host* a full URL (a base path included);
*login* and *password* of a user allowed to edit pools, exchanged for a JWT at
``POST <base>/auth/token`` (the simple auth manager and FAB both answer it). Without a login no
token is asked for.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from airflow.sdk.bases.hook import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

__all__ = ["AirflowPoolHook"]


def _base_url(conn: Any) -> str:
    """The api-server's base URL, never with credentials in it (it goes into messages)."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        raise AirflowException(f"Airflow connection {conn.conn_id!r} has no host")
    if "://" not in host:
        host = f"{conn.schema or ('https' if conn.conn_type == 'https' else 'http')}://{host}"
    parts = urlsplit(host)
    netloc = parts.hostname or ""
    port = parts.port or conn.port
    if port:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def _detail(resp: httpx.Response) -> str:
    """Airflow's ``detail``, a validation error's fields and messages only (never its ``input``,
    which echoes the request body)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" if isinstance(e, dict) else str(e)
            for e in detail
        )
    return str(detail)[:500]


class AirflowPoolHook(BaseHook):
    """Create or resize Airflow pools through the api-server (see the module).

    :param airflow_conn_id: the http connection to the api-server
    :param timeout_s: timeout of each request, seconds
    :param attempts: tries of a request answered 5xx (the metadata DB busy)
    :param retry_delay_s: backoff base between them, seconds
    """

    conn_name_attr = "airflow_conn_id"
    default_conn_name = "airflow_api"
    conn_type = "http"
    hook_name = "Airflow REST API"

    def __init__(self, airflow_conn_id: str = default_conn_name, *, timeout_s: float = 30.0, attempts: int = 5,
                 retry_delay_s: float = 1.0) -> None:
        super().__init__()
        self.airflow_conn_id = airflow_conn_id
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.retry_delay_s = retry_delay_s

    def size_pool(self, name: str, slots: int, *, description: str = "") -> str:
        """Create pool ``name`` with ``slots`` slots, or resize it, deferred tasks counting.

        Returns one line saying what it did. Without the connection it only logs a warning (the
        pool keeps its current size) and returns that warning. Any error answer raises an
        :class:`AirflowException` naming the pool, the URL and Airflow's detail.
        """
        try:
            conn = self.get_connection(self.airflow_conn_id)
        except AirflowNotFoundException:
            text = (
                f"No Airflow connection {self.airflow_conn_id!r}, so pool {name!r} was not sized to {slots}: "
                f"experiments run at the pool's current size; create it with "
                f"`airflow pools set {shlex.quote(name)} {slots} {shlex.quote(description)} --include-deferred`"
            )
            self.log.warning("%s", text)
            return text
        base = _base_url(conn)
        path = f"/api/v2/pools/{quote(name, safe='')}"
        fields = {"slots": slots, "description": description, "include_deferred": True}
        with httpx.Client(base_url=base, timeout=self.timeout_s) as http:
            if conn.login:
                http.headers["Authorization"] = f"Bearer {self._token(http, name, conn.login, conn.password)}"
            found = self._call(http, name, "GET", path, ok=(404,))
            if found.status_code == 404:
                created = self._call(http, name, "POST", "/api/v2/pools", json={"name": name, **fields}, ok=(409,))
                if created.status_code != 409:
                    return f"Created pool {name!r} with {slots} slots (deferred tasks count)"
                was = None  # another task created it meanwhile
            else:
                was = found.json()
                if (was.get("slots"), was.get("description") or "", was.get("include_deferred")) == (
                    slots, description, True,
                ):
                    return f"Pool {name!r} already has {slots} slots (deferred tasks count)"
            # Airflow validates a patch as a whole pool, so the body names it; the mask says what changes
            self._call(http, name, "PATCH", path, json={"name": name, **fields},
                       params=[("update_mask", field) for field in fields])
        before = f"from {was.get('slots')} " if was else ""
        return f"Resized pool {name!r} {before}to {slots} slots (deferred tasks count)"

    def _token(self, http: httpx.Client, pool: str, login: str, password: str | None) -> str:
        resp = self._call(http, pool, "POST", "/auth/token", json={"username": login, "password": password or ""})
        try:
            return str(resp.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            raise AirflowException(
                f"Could not size Airflow pool {pool!r}: POST {self._url(http, '/auth/token')} answered "
                f"{resp.status_code} without an access_token"
            ) from None

    @staticmethod
    def _url(http: httpx.Client, path: str) -> str:
        return f"{str(http.base_url).rstrip('/')}{path}"

    def _call(
        self, http: httpx.Client, pool: str, method: str, path: str, *, ok: Iterable[int] = (), **kwargs: Any
    ) -> httpx.Response:
        url = self._url(http, path)
        for attempt in range(1, self.attempts + 1):
            try:
                resp = http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise AirflowException(
                    f"Could not size Airflow pool {pool!r}: {method} {url} got no answer ({type(exc).__name__}: {exc})"
                ) from None
            # a 5xx is the metadata DB busy (SQLite's lock while the scheduler writes): Airflow rolled
            # the request back, so it is asked again; a create that did land answers 409 then
            if resp.status_code < 500 or attempt == self.attempts:
                break
            time.sleep(self.retry_delay_s * attempt)
        if resp.status_code >= 400 and resp.status_code not in set(ok):
            raise AirflowException(
                f"Could not size Airflow pool {pool!r}: {method} {url} answered {resp.status_code}: {_detail(resp)}"
            )
        return resp
