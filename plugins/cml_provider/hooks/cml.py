"""Hook for Cloudera Machine Learning (CML) REST API v2.

This module is the only code in the project that speaks HTTP to a CML workspace. Every call
goes through one choke point, :meth:`CmlHook._do_api_call` (and its async twin
:meth:`CmlHook._a_do_api_call` used by triggers), with an endpoint constant such as
:data:`CREATE_JOB_RUN`. Retries are configured once (tenacity: exponential backoff, a fixed
number of attempts, one log line per failed attempt): connection errors, timeouts, HTTP 429
and 5xx are retried, any other 4xx fails fast. Failures surface as small named exceptions
(:class:`CmlApiError` and subclasses) carrying the HTTP status and the response body.

Field facts follow ``shared/CML_API.md``: int64 fields arrive as JSON strings, ``environment``
is a map on requests but a JSON-encoded string on responses, lists paginate with
``next_page_token`` (default page size 10), file uploads never overwrite.

Two ways to configure the hook:

* **Airflow connection** (``conn_type="cml"``, default id ``cml_default``): *host* is the
  workspace URL (``https://ml-xxxx.cloudera.site`` or ``http://127.0.0.1:8787``; a host without
  a scheme means https), *password* is the API v2 key, *extra* names the project,
  ``{"project_id": "..."}`` or ``{"project_name": "..."}`` (resolved by listing projects), and
  may give ``"runtime_identifier"``, the ML Runtime for jobs created without one. As an
  environment variable::

      AIRFLOW_CONN_CML_DEFAULT='{"conn_type": "cml", "host": "https://ml-xxxx.cloudera.site",
                                 "password": "<API v2 key>", "extra": {"project_name": "model-factory"}}'

* **No Airflow connection** (scripts, the dashboard, the local workspace's tools)::

      hook = CmlHook.from_url("http://127.0.0.1:8787", api_key, project_name="model-factory")
      # or: CmlHook(host=..., api_key=..., project_id=...)

  Airflow is still imported (the hook subclasses ``BaseHook``) but no metadata database,
  connection or task context is needed.
"""

from __future__ import annotations

import json
import posixpath
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote

import httpx
import tenacity

from airflow.sdk.bases.hook import BaseHook
from cml_provider.states import JobRunStatus

__all__ = [
    "CmlApiError",
    "CmlAuthError",
    "CmlBadRequestError",
    "CmlConfigurationError",
    "CmlConflictError",
    "CmlConnectionError",
    "CmlError",
    "CmlFile",
    "CmlFileExistsError",
    "CmlHook",
    "CmlJob",
    "CmlJobRun",
    "CmlNotFoundError",
    "CmlProject",
    "CmlRateLimitError",
    "CmlServerError",
    "CmlWorkspaceConfig",
]

Endpoint = tuple[str, str]

# --- Endpoints (method, path template relative to the workspace URL) -------------------------
LIST_PROJECTS: Endpoint = ("GET", "api/v2/projects")
GET_PROJECT: Endpoint = ("GET", "api/v2/projects/{project_id}")
LIST_JOBS: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs")
CREATE_JOB: Endpoint = ("POST", "api/v2/projects/{project_id}/jobs")
GET_JOB: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs/{job_id}")
UPDATE_JOB: Endpoint = ("PATCH", "api/v2/projects/{project_id}/jobs/{job_id}")
LIST_JOB_RUNS: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs/{job_id}/runs")
CREATE_JOB_RUN: Endpoint = ("POST", "api/v2/projects/{project_id}/jobs/{job_id}/runs")
GET_JOB_RUN: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs/{job_id}/runs/{run_id}")
STOP_JOB_RUN: Endpoint = ("POST", "api/v2/projects/{project_id}/jobs/{job_id}/runs/{run_id}:stop")
LIST_FILES: Endpoint = ("GET", "api/v2/projects/{project_id}/files/{path}")
DOWNLOAD_FILE: Endpoint = ("POST", "api/v2/projects/{project_id}/files/{path}:download")
UPLOAD_FILE: Endpoint = ("POST", "api/v2/projects/{project_id}/files")
DELETE_FILE: Endpoint = ("DELETE", "api/v2/projects/{project_id}/files/{path}")

#: Calls that create something. A 5xx or a read timeout does not tell whether the workspace
#: acted (the gateway may answer 500 while the workspace goes on creating), so these are never
#: repeated blindly: ``_do_api_call`` retries them only when the request surely did not land
#: (connection refused, 429) and the thin methods list before re-creating.
NON_IDEMPOTENT: frozenset[Endpoint] = frozenset({CREATE_JOB, CREATE_JOB_RUN, UPLOAD_FILE})

DEFAULT_PAGE_SIZE = 100


# --- Errors ----------------------------------------------------------------------------------
class CmlError(Exception):
    """Base class of every error raised by the CML hook."""

    #: how many HTTP attempts were made before giving up (set by the retry loop)
    attempts: int = 1
    #: True when a create call failed in a way that leaves unknown whether it took effect
    #: (5xx, read timeout): list before creating again.
    ambiguous: bool = False

    def __str__(self) -> str:
        text = super().__str__()
        if self.attempts > 1:
            text = f"{text} (gave up after {self.attempts} attempts)"
        return text


class CmlConfigurationError(CmlError):
    """The hook lacks something it needs (workspace URL, API key, project)."""


class CmlConnectionError(CmlError):
    """The workspace could not be reached or did not answer in time (retried)."""

    def __init__(self, message: str, *, method: str, path: str, request_sent: bool) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        #: False when the request surely never reached the server (connection refused, DNS,
        #: connect timeout): then even a create call may be repeated safely.
        self.request_sent = request_sent


class CmlApiError(CmlError):
    """The workspace answered with an HTTP error status.

    :ivar status_code: the HTTP status
    :ivar body: the parsed JSON error body (``{"error", "code", "message", "details"}``) or the
        raw text when it was not JSON
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.method = method
        self.path = path

    @property
    def retryable(self) -> bool:
        return self.status_code == 429 or self.status_code >= 500


class CmlBadRequestError(CmlApiError):
    """HTTP 400: the request was invalid (not retried)."""


class CmlAuthError(CmlApiError):
    """HTTP 401/403: the API key is wrong, expired or lacks permission (not retried)."""


class CmlNotFoundError(CmlApiError):
    """HTTP 404, or a named project, job or file that does not exist."""

    def __init__(self, message: str, *, status_code: int = 404, **kwargs: Any) -> None:
        super().__init__(message, status_code=status_code, **kwargs)


class CmlConflictError(CmlApiError):
    """HTTP 409 (not retried)."""


class CmlRateLimitError(CmlApiError):
    """HTTP 429 (retried with backoff)."""


class CmlServerError(CmlApiError):
    """HTTP 5xx (retried with backoff, except on create calls: those list first)."""


class CmlFileExistsError(CmlError):
    """``upload_file(..., overwrite=False)`` found the destination path already present."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"Project file {path!r} already exists and overwrite=False "
            "(a CML upload never overwrites; it would store a renamed copy)"
        )
        self.path = path


_STATUS_ERRORS: dict[int, type[CmlApiError]] = {
    400: CmlBadRequestError,
    401: CmlAuthError,
    403: CmlAuthError,
    404: CmlNotFoundError,
    409: CmlConflictError,
    429: CmlRateLimitError,
}


def _error_from_response(response: httpx.Response, method: str, path: str) -> CmlApiError:
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("message") or body.get("error") or body.get("detail") or "")
    elif body:
        detail = str(body)[:500]
    cls = _STATUS_ERRORS.get(status) or (CmlServerError if status >= 500 else CmlApiError)
    message = f"CML API {method} {path} answered HTTP {status}"
    if 300 <= status < 400:
        detail = f"redirected to {response.headers.get('location', '?')}; check the workspace URL"
    if detail:
        message = f"{message}: {detail}"
    return cls(message, status_code=status, body=body, method=method, path=path)


def _is_retryable(exc: BaseException) -> bool:
    """Retry predicate for idempotent calls: connection errors, timeouts, 429, 5xx."""
    if isinstance(exc, CmlConnectionError):
        return True
    return isinstance(exc, CmlApiError) and exc.retryable


def _is_safe_to_repeat(exc: BaseException) -> bool:
    """Retry predicate for create calls: only failures that prove the request did not land."""
    if isinstance(exc, CmlConnectionError):
        return not exc.request_sent
    return isinstance(exc, CmlApiError) and exc.status_code == 429


# --- Parsed values ---------------------------------------------------------------------------
def _as_int(value: Any) -> int | None:
    """int64 fields are JSON strings in API v2; accept numbers too."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    return int(str(value).strip())


def _as_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _as_environment(value: Any) -> dict[str, str]:
    """``environment`` is a JSON-encoded string on responses (a map on requests); accept both."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise CmlError(f"Job environment is not valid JSON: {value[:200]!r}") from exc
        if value is None:
            return {}
    if not isinstance(value, Mapping):
        raise CmlError(f"Job environment is not a JSON object: {value!r:.200}")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def environment_to_request(environment: Mapping[str, Any] | None) -> dict[str, str]:
    """Turn an environment mapping into the ``map<string,string>`` a request needs.

    Strings pass unchanged; other values are JSON-encoded (``True`` → ``"true"``, lists → JSON).
    """
    result: dict[str, str] = {}
    for key, value in (environment or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Environment variable names must be non-empty strings, got {key!r}")
        result[key] = value if isinstance(value, str) else json.dumps(value)
    return result


@dataclass(frozen=True)
class CmlWorkspaceConfig:
    """Where and as whom the hook talks. The API key never appears in ``repr``."""

    base_url: str
    api_key: str = field(repr=False)
    project_id: str | None = None
    project_name: str | None = None
    #: default ML Runtime for jobs created without one (connection extra ``runtime_identifier``)
    runtime_identifier: str | None = None


@dataclass(frozen=True)
class CmlProject:
    id: str
    name: str
    owner: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> CmlProject:
        owner = data.get("owner")
        if isinstance(owner, Mapping):
            owner = owner.get("username") or owner.get("name")
        return cls(id=str(data["id"]), name=str(data.get("name", "")), owner=owner, raw=dict(data))


@dataclass(frozen=True)
class CmlJob:
    id: str
    name: str
    script: str | None = None
    cpu: float | None = None
    memory: float | None = None
    timeout: int | None = None
    runtime_identifier: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> CmlJob:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            script=data.get("script"),
            cpu=_as_float(data.get("cpu")),
            memory=_as_float(data.get("memory")),
            timeout=_as_int(data.get("timeout")),
            runtime_identifier=data.get("runtime_identifier") or None,
            environment=_as_environment(data.get("environment")),
            created_at=data.get("created_at"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class CmlJobRun:
    id: str
    job_id: str
    project_id: str
    status: JobRunStatus
    created_at: str | None = None
    finished_at: str | None = None
    arguments: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(
        cls, data: Mapping[str, Any], *, job_id: str | None = None, project_id: str | None = None
    ) -> CmlJobRun:
        return cls(
            id=str(data["id"]),
            job_id=str(data.get("job_id") or job_id or ""),
            project_id=str(data.get("project_id") or project_id or ""),
            status=JobRunStatus.parse(data.get("status")),
            created_at=data.get("created_at"),
            finished_at=data.get("finished_at") or data.get("ended_at"),
            arguments=data.get("arguments"),
            environment=_as_environment(data.get("environment")),
            raw=dict(data),
        )

    def matches(self, environment: Mapping[str, str]) -> bool:
        """Whether this run's environment carries every given key with the given value."""
        return all(self.environment.get(k) == v for k, v in environment.items())

    def to_ref(self) -> dict[str, str]:
        """The small dict tasks pass along (XCom): ``{"project_id", "job_id", "run_id"}``."""
        return {"project_id": self.project_id, "job_id": self.job_id, "run_id": self.id}


@dataclass(frozen=True)
class CmlFile:
    path: str
    is_dir: bool
    file_size: int | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> CmlFile:
        return cls(
            path=str(data.get("path", "")),
            is_dir=bool(data.get("is_dir", False)),
            file_size=_as_int(data.get("file_size")),
        )


# --- URL helpers -----------------------------------------------------------------------------
def normalise_workspace_url(host: str, port: int | None = None) -> str:
    """``ml-x.cloudera.site`` → ``https://ml-x.cloudera.site/``; keeps an explicit scheme and port.

    A trailing ``/api/v2`` (pasted from the API docs) is dropped; the result ends with ``/``.
    """
    url = (host or "").strip()
    if not url:
        raise CmlConfigurationError("The CML workspace URL (connection host) is empty")
    if "://" not in url:
        url = f"https://{url}"
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CmlConfigurationError(f"Not an http(s) workspace URL: {host!r}")
    if port and parsed.port is None:
        parsed = parsed.copy_with(port=int(port))
    path = parsed.path.rstrip("/")
    if path.endswith("/api/v2"):
        path = path[: -len("/api/v2")]
    return str(parsed.copy_with(path=path + "/", query=None, fragment=None))


def _quote_path_param(value: Any) -> str:
    """Quote one path parameter as the generated ``cmlapi`` client does (``/`` → ``%2F``).

    ``.`` and ``..`` are percent-encoded too, otherwise HTTP clients normalise them away
    (``files/.`` would become ``files``).
    """
    text = str(value)
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


def _render_path(template: str, path_params: Mapping[str, Any] | None) -> str:
    params = {k: _quote_path_param(v) for k, v in (path_params or {}).items() if v is not None}
    try:
        return template.format(**params)
    except KeyError as exc:
        raise ValueError(f"Missing path parameter {exc.args[0]!r} for endpoint {template!r}") from None


def _clean_file_path(path: str) -> str:
    """Project-relative file path (relative to ``/home/cdsw``), no leading ``./`` or ``/``."""
    text = str(path).strip()
    if text.startswith("/home/cdsw/"):
        text = text[len("/home/cdsw/") :]
    text = text.lstrip("/")
    norm = posixpath.normpath(text) if text else "."
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"Project file path escapes the project: {path!r}")
    return norm


def _search_filter(value: Mapping[str, Any] | str | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(dict(value), separators=(",", ":"))


# --- The hook --------------------------------------------------------------------------------
class CmlHook(BaseHook):
    """Talk to a CML workspace through API v2.

    :param cml_conn_id: Airflow connection id (ignored when ``host`` and ``api_key`` are given).
    :param host: workspace URL, to use the hook without an Airflow connection.
    :param api_key: API v2 key, to use the hook without an Airflow connection.
    :param project_id: project id; overrides the connection's extra.
    :param project_name: project name, resolved to an id by listing projects.
    :param runtime_identifier: default ML Runtime image for jobs created without one
        (required by CML in ML Runtimes projects); overrides the connection's extra.
    :param retry_limit: attempts per API call (>= 1) for retryable failures.
    :param retry_delay: base of the exponential backoff, in seconds.
    :param retry_args: tenacity keyword arguments that override the defaults, e.g.
        ``{"wait": tenacity.wait_none()}`` in tests. ``retry``/``reraise`` stay the hook's own.
    :param timeout: HTTP timeout per request, in seconds.
    :param page_size: ``page_size`` asked for on list calls (the server may send fewer;
        pagination always follows ``next_page_token``).
    :param verify: TLS verification (``True``, ``False`` or a CA bundle path).
    """

    conn_name_attr = "cml_conn_id"
    default_conn_name = "cml_default"
    conn_type = "cml"
    hook_name = "Cloudera Machine Learning"

    def __init__(
        self,
        cml_conn_id: str = default_conn_name,
        *,
        host: str | None = None,
        api_key: str | None = None,
        project_id: str | None = None,
        project_name: str | None = None,
        runtime_identifier: str | None = None,
        retry_limit: int = 3,
        retry_delay: float = 1.0,
        retry_args: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
        page_size: int | None = DEFAULT_PAGE_SIZE,
        verify: bool | str = True,
    ) -> None:
        super().__init__()
        if retry_limit < 1:
            raise ValueError("retry_limit must be at least 1")
        if (host is None) != (api_key is None):
            raise ValueError("Pass both host and api_key to use the hook without an Airflow connection")
        self.cml_conn_id = cml_conn_id
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.page_size = page_size
        self.verify = verify
        self._explicit_host = host
        self._explicit_api_key = api_key
        self._explicit_project_id = project_id
        self._explicit_project_name = project_name
        self._explicit_runtime_identifier = runtime_identifier
        self._resolved_config: CmlWorkspaceConfig | None = None
        self._project_id: str | None = None
        self._retry_args: dict[str, Any] = {
            "stop": tenacity.stop_after_attempt(retry_limit),
            "wait": tenacity.wait_exponential(multiplier=retry_delay, min=retry_delay, max=60),
        }
        if retry_args:
            self._retry_args.update(retry_args)
        if api_key:
            _mask(api_key)

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str,
        *,
        project_id: str | None = None,
        project_name: str | None = None,
        **kwargs: Any,
    ) -> CmlHook:
        """A hook for ``url`` and ``api_key`` without any Airflow connection."""
        return cls(host=url, api_key=api_key, project_id=project_id, project_name=project_name, **kwargs)

    # -- Connection UX --------------------------------------------------------------------
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel the standard connection form (also declared in ``get_provider_info()``)."""
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Workspace URL", "password": "API key"},
            "placeholders": {
                "host": "https://ml-xxxx.cloudera.site",
                "password": "CML API v2 key",
                "extra": '{"project_name": "model-factory"}',
            },
        }

    def test_connection(self) -> tuple[bool, str]:
        """Check URL, API key and (when configured) the project. Answers ``(ok, message)``."""
        try:
            config = self.config
            self._do_api_call(LIST_PROJECTS, params={"page_size": 1})
            message = f"Connected to the CML workspace at {config.base_url}"
            if config.project_id or config.project_name:
                message += f"; project id {self.get_project_id()}"
            return True, message
        except CmlAuthError as exc:
            return False, f"The CML workspace rejected the API key (HTTP {exc.status_code}): {exc}"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"

    # -- Configuration --------------------------------------------------------------------
    @property
    def config(self) -> CmlWorkspaceConfig:
        """Workspace URL, key and project, from the constructor or the Airflow connection."""
        if self._resolved_config is None:
            if self._explicit_host is not None:
                self._resolved_config = self._config_from_explicit()
            else:
                self._resolved_config = self._config_from_connection(self.get_connection(self.cml_conn_id))
        return self._resolved_config

    async def a_config(self) -> CmlWorkspaceConfig:
        """Async twin of :attr:`config`: reads the connection without blocking the event loop."""
        if self._resolved_config is None:
            if self._explicit_host is not None:
                self._resolved_config = self._config_from_explicit()
            else:
                conn = await self.aget_connection(self.cml_conn_id)
                self._resolved_config = self._config_from_connection(conn)
        return self._resolved_config

    def _config_from_explicit(self) -> CmlWorkspaceConfig:
        assert self._explicit_host is not None and self._explicit_api_key is not None
        return CmlWorkspaceConfig(
            base_url=normalise_workspace_url(self._explicit_host),
            api_key=self._explicit_api_key,
            project_id=self._explicit_project_id,
            project_name=self._explicit_project_name,
            runtime_identifier=self._explicit_runtime_identifier,
        )

    def _config_from_connection(self, conn: Any) -> CmlWorkspaceConfig:
        if not conn.host:
            raise CmlConfigurationError(
                f"Connection {self.cml_conn_id!r} has no host: set it to the workspace URL"
            )
        if not conn.password:
            raise CmlConfigurationError(
                f"Connection {self.cml_conn_id!r} has no password: set it to a CML API v2 key"
            )
        extra = conn.extra_dejson or {}

        def _extra(name: str) -> str | None:
            value = extra.get(name) or extra.get(f"extra__cml__{name}")
            return str(value) if value else None

        return CmlWorkspaceConfig(
            base_url=normalise_workspace_url(conn.host, conn.port),
            api_key=conn.password,
            project_id=self._explicit_project_id or _extra("project_id"),
            project_name=self._explicit_project_name or _extra("project_name"),
            runtime_identifier=self._explicit_runtime_identifier or _extra("runtime_identifier"),
        )

    # -- The HTTP choke point -------------------------------------------------------------
    @cached_property
    def _tls_context(self) -> ssl.SSLContext:
        """Built once per hook: loading the CA bundle costs ~20 ms of CPU, and the async calls
        (triggers, polling every few seconds) open a client per call."""
        return httpx.create_ssl_context(verify=self.verify)

    @cached_property
    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.config.base_url, timeout=self.timeout, verify=self._tls_context, follow_redirects=False
        )

    def get_conn(self) -> httpx.Client:
        """The pooled ``httpx.Client`` (base URL set; auth is added per request)."""
        return self._client

    def close(self) -> None:
        """Close the pooled HTTP connections (optional; for non-Airflow callers)."""
        if "_client" in self.__dict__:
            self.__dict__.pop("_client").close()

    def __enter__(self) -> CmlHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _retry_kwargs(self, predicate: Callable[[BaseException], bool], what: str) -> dict[str, Any]:
        def log_failed_attempt(retry_state: tenacity.RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            self.log.warning(
                "CML API %s failed (attempt %d of %d): %s",
                what,
                retry_state.attempt_number,
                self.retry_limit,
                exc,
            )

        return {
            **self._retry_args,
            "retry": tenacity.retry_if_exception(predicate),
            "after": log_failed_attempt,
            "reraise": True,
        }

    @staticmethod
    def _headers(config: CmlWorkspaceConfig) -> dict[str, str]:
        return {"Authorization": f"Bearer {config.api_key}", "Accept": "application/json"}

    @staticmethod
    def _transport_error(exc: httpx.TransportError, method: str, path: str, base_url: str) -> CmlError:
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return CmlConfigurationError(f"Invalid CML workspace URL {base_url!r}: {exc}")
        not_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        kind = "did not answer in time" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
        return CmlConnectionError(
            f"The CML workspace at {base_url} {kind} ({method} {path}): {type(exc).__name__}: {exc}",
            method=method,
            path=path,
            request_sent=not not_sent,
        )

    @staticmethod
    def _decode(response: httpx.Response, raw: bool, method: str, path: str) -> Any:
        if raw:
            return response.content
        if not response.content.strip():
            return {}
        try:
            return response.json()
        except ValueError:
            raise CmlApiError(
                f"CML API {method} {path} answered HTTP {response.status_code} with a body that is not JSON",
                status_code=response.status_code,
                body=response.text[:1000],
                method=method,
                path=path,
            ) from None

    def _do_api_call(
        self,
        endpoint: Endpoint,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Mapping[str, Any] | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one API call with retries; return the decoded JSON (or bytes when ``raw``).

        :param endpoint: one of this module's endpoint constants, ``(method, path template)``
        :param path_params: values for the template's ``{placeholders}`` (quoted here)
        :param params: query parameters
        :param json: JSON body
        :param files: multipart files (``{field name: (filename, bytes, content type)}``)
        :param raw: return the response bytes instead of parsed JSON
        """
        method, template = endpoint
        path = _render_path(template, path_params)
        predicate = _is_safe_to_repeat if endpoint in NON_IDEMPOTENT else _is_retryable
        config = self.config
        query = {k: v for k, v in (params or {}).items() if v is not None}

        def attempt() -> Any:
            try:
                response = self._client.request(
                    method, path, params=query, json=json, files=files, headers=self._headers(config)
                )
            except httpx.TransportError as exc:
                raise self._transport_error(exc, method, path, config.base_url) from exc
            if response.status_code >= 300:  # redirects are not followed: a login page is no answer
                raise _error_from_response(response, method, path)
            return self._decode(response, raw, method, path)

        retrying = tenacity.Retrying(**self._retry_kwargs(predicate, f"{method} {path}"))
        try:
            return retrying(attempt)
        except CmlError as exc:
            self._annotate(exc, endpoint, retrying)
            raise

    async def _a_do_api_call(
        self,
        endpoint: Endpoint,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Mapping[str, Any] | None = None,
        raw: bool = False,
    ) -> Any:
        """Async twin of :meth:`_do_api_call` (``httpx.AsyncClient``), for triggers."""
        method, template = endpoint
        path = _render_path(template, path_params)
        predicate = _is_safe_to_repeat if endpoint in NON_IDEMPOTENT else _is_retryable
        config = await self.a_config()
        query = {k: v for k, v in (params or {}).items() if v is not None}

        async def attempt() -> Any:
            try:
                async with httpx.AsyncClient(
                    base_url=config.base_url, timeout=self.timeout, verify=self._tls_context
                ) as client:
                    response = await client.request(
                        method, path, params=query, json=json, files=files, headers=self._headers(config)
                    )
            except httpx.TransportError as exc:
                raise self._transport_error(exc, method, path, config.base_url) from exc
            if response.status_code >= 300:  # redirects are not followed: a login page is no answer
                raise _error_from_response(response, method, path)
            return self._decode(response, raw, method, path)

        retrying = tenacity.AsyncRetrying(**self._retry_kwargs(predicate, f"{method} {path}"))
        try:
            return await retrying(attempt)
        except CmlError as exc:
            self._annotate(exc, endpoint, retrying)
            raise

    @staticmethod
    def _annotate(exc: CmlError, endpoint: Endpoint, retrying: tenacity.BaseRetrying) -> None:
        exc.attempts = retrying.statistics.get("attempt_number", 1)
        if endpoint in NON_IDEMPOTENT:
            exc.ambiguous = _is_retryable(exc) and not _is_safe_to_repeat(exc)

    def _retry_unsafe(self, what: str) -> tenacity.Retrying:
        """Retry loop for "look, then create" sequences around a non-idempotent call.

        It retries only :attr:`CmlError.ambiguous` failures of the create call (every other
        call already retried on its own), and each attempt looks before it creates.
        """
        return tenacity.Retrying(**self._retry_kwargs(lambda e: getattr(e, "ambiguous", False), what))

    # -- Pagination -----------------------------------------------------------------------
    def _paginate(
        self,
        endpoint: Endpoint,
        key: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        max_pages: int | None = None,
    ) -> Iterator[dict]:
        query = {"page_size": self.page_size, **(params or {})}
        seen_tokens: set[str] = set()
        pages = 0
        while True:
            body = self._do_api_call(endpoint, path_params=path_params, params=query)
            yield from body.get(key) or []
            pages += 1
            token = _next_token(body, seen_tokens, endpoint)
            if not token or (max_pages is not None and pages >= max_pages):
                return
            query["page_token"] = token

    async def _a_paginate(
        self,
        endpoint: Endpoint,
        key: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        max_pages: int | None = None,
    ) -> AsyncIterator[dict]:
        query = {"page_size": self.page_size, **(params or {})}
        seen_tokens: set[str] = set()
        pages = 0
        while True:
            body = await self._a_do_api_call(endpoint, path_params=path_params, params=query)
            for item in body.get(key) or []:
                yield item
            pages += 1
            token = _next_token(body, seen_tokens, endpoint)
            if not token or (max_pages is not None and pages >= max_pages):
                return
            query["page_token"] = token

    # -- Projects -------------------------------------------------------------------------
    def list_projects(self, search_filter: Mapping[str, Any] | str | None = None) -> list[CmlProject]:
        """All projects visible to the key (paginated), optionally filtered server-side."""
        params = {"search_filter": _search_filter(search_filter)}
        return [CmlProject.from_api(p) for p in self._paginate(LIST_PROJECTS, "projects", params=params)]

    def get_project_id(self) -> str:
        """The configured project's id (``project_id``, or ``project_name`` looked up once)."""
        if self._project_id is None:
            config = self.config
            if config.project_id:
                self._project_id = config.project_id
            else:
                name = self._require_project_name(config)
                matches = self.list_projects({"name": name})
                self._project_id = self._pick_project(name, matches)
        return self._project_id

    async def a_get_project_id(self) -> str:
        """Async twin of :meth:`get_project_id`."""
        if self._project_id is None:
            config = await self.a_config()
            if config.project_id:
                self._project_id = config.project_id
            else:
                name = self._require_project_name(config)
                params = {"search_filter": _search_filter({"name": name})}
                matches = [
                    CmlProject.from_api(p)
                    async for p in self._a_paginate(LIST_PROJECTS, "projects", params=params)
                ]
                self._project_id = self._pick_project(name, matches)
        return self._project_id

    def _require_project_name(self, config: CmlWorkspaceConfig) -> str:
        if not config.project_name:
            source = "hook arguments" if self._explicit_host else f"connection {self.cml_conn_id!r}"
            raise CmlConfigurationError(
                f"No CML project configured in the {source}: "
                'set extra {"project_id": ...} or {"project_name": ...}'
            )
        return config.project_name

    @staticmethod
    def _pick_project(name: str, candidates: Iterable[CmlProject]) -> str:
        exact = [p for p in candidates if p.name == name]
        if not exact:
            raise CmlNotFoundError(f"No CML project named {name!r} is visible to this API key")
        if len(exact) > 1:
            owners = ", ".join(f"{p.id} (owner {p.owner})" for p in exact)
            raise CmlConfigurationError(
                f"Several CML projects are named {name!r}: {owners}. Set project_id instead."
            )
        return exact[0].id

    # -- Jobs -----------------------------------------------------------------------------
    def list_jobs(
        self, search_filter: Mapping[str, Any] | str | None = None, *, project_id: str | None = None
    ) -> list[CmlJob]:
        """All jobs of the project (every page), optionally filtered server-side.

        ``search_filter`` is a mapping such as ``{"name": "train"}`` (a case-sensitive
        substring match in CML) or an already JSON-encoded string.
        """
        pid = project_id or self.get_project_id()
        params = {"search_filter": _search_filter(search_filter)}
        items = self._paginate(LIST_JOBS, "jobs", path_params={"project_id": pid}, params=params)
        return [CmlJob.from_api(j) for j in items]

    async def a_list_jobs(
        self, search_filter: Mapping[str, Any] | str | None = None, *, project_id: str | None = None
    ) -> list[CmlJob]:
        """Async twin of :meth:`list_jobs`."""
        pid = project_id or await self.a_get_project_id()
        params = {"search_filter": _search_filter(search_filter)}
        items = self._a_paginate(LIST_JOBS, "jobs", path_params={"project_id": pid}, params=params)
        return [CmlJob.from_api(j) async for j in items]

    def get_job(self, job_id: str, *, project_id: str | None = None) -> CmlJob:
        pid = project_id or self.get_project_id()
        return CmlJob.from_api(self._do_api_call(GET_JOB, path_params={"project_id": pid, "job_id": job_id}))

    def find_job(self, name: str, *, project_id: str | None = None) -> CmlJob | None:
        """The job with exactly this name (the oldest one if a race created several), or None."""
        exact = [j for j in self.list_jobs({"name": name}, project_id=project_id) if j.name == name]
        if len(exact) > 1:
            self.log.warning("%d CML jobs are named %r; using the oldest", len(exact), name)
        exact.sort(key=lambda j: (j.created_at or "", j.id))
        return exact[0] if exact else None

    def get_or_create_job(
        self,
        name: str,
        script: str,
        cpu: float,
        memory_gb: float,
        timeout_s: int | None = None,
        runtime_identifier: str | None = None,
        environment: Mapping[str, Any] | None = None,
        *,
        project_id: str | None = None,
    ) -> CmlJob:
        """The job named ``name``, created if absent (one job per name).

        CPU and memory are per job in CML, so callers put the resource profile in the name
        (``train-2cpu-4gb``). An existing job whose script, CPU, memory, timeout or runtime
        differ from the request is updated to match (and says so in the log). After a failed
        create (5xx, read timeout) the jobs are listed again before re-creating, because the
        workspace may have created the job despite the error.
        """
        pid = project_id or self.get_project_id()
        wanted: dict[str, Any] = {"script": script, "cpu": float(cpu), "memory": float(memory_gb)}
        if timeout_s is not None:
            wanted["timeout"] = int(timeout_s)
            wanted["kill_on_timeout"] = True
        runtime_identifier = runtime_identifier or self.config.runtime_identifier
        if runtime_identifier:
            wanted["runtime_identifier"] = runtime_identifier
        if environment:
            wanted["environment"] = environment_to_request(environment)

        for attempt in self._retry_unsafe(f"get or create job {name!r}"):
            with attempt:
                job = self.find_job(name, project_id=pid)
                if job is None:
                    body = {"project_id": pid, "name": name, **wanted}
                    created = self._do_api_call(CREATE_JOB, path_params={"project_id": pid}, json=body)
                    self.log.info("Created CML job %r (%s)", name, created.get("id"))
                    return CmlJob.from_api(created)
        assert job is not None
        changes = _job_changes(job, wanted)
        if changes:
            self.log.info("Updating CML job %r (%s): %s", name, job.id, sorted(changes))
            updated = self._do_api_call(
                UPDATE_JOB, path_params={"project_id": pid, "job_id": job.id}, json=changes
            )
            return CmlJob.from_api(updated) if updated.get("id") else self.get_job(job.id, project_id=pid)
        return job

    # -- Job runs -------------------------------------------------------------------------
    def create_job_run(
        self,
        job_id: str,
        environment: Mapping[str, Any] | None = None,
        arguments: str | None = None,
        *,
        project_id: str | None = None,
    ) -> CmlJobRun:
        """Start a run of ``job_id`` with per-run ``environment`` and ``arguments``.

        Not repeated after a 5xx or a read timeout (the run may exist): use
        :meth:`ensure_job_run` for an idempotent submit.
        """
        pid = project_id or self.get_project_id()
        body: dict[str, Any] = {"project_id": pid, "job_id": job_id}
        if environment:
            body["environment"] = environment_to_request(environment)
        if arguments:
            body["arguments"] = arguments
        data = self._do_api_call(CREATE_JOB_RUN, path_params={"project_id": pid, "job_id": job_id}, json=body)
        return CmlJobRun.from_api(data, job_id=job_id, project_id=pid)

    def get_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> CmlJobRun:
        pid = project_id or self.get_project_id()
        data = self._do_api_call(
            GET_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id}
        )
        return CmlJobRun.from_api(data, job_id=job_id, project_id=pid)

    async def a_get_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> CmlJobRun:
        """Async twin of :meth:`get_job_run`."""
        pid = project_id or await self.a_get_project_id()
        data = await self._a_do_api_call(
            GET_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id}
        )
        return CmlJobRun.from_api(data, job_id=job_id, project_id=pid)

    def list_job_runs(
        self,
        job_id: str,
        sort: str | None = "-created_at",
        max_pages: int | None = None,
        *,
        project_id: str | None = None,
    ) -> list[CmlJobRun]:
        """Runs of a job, newest first by default; ``max_pages`` bounds how far back to look."""
        pid = project_id or self.get_project_id()
        items = self._paginate(
            LIST_JOB_RUNS,
            "job_runs",
            path_params={"project_id": pid, "job_id": job_id},
            params={"sort": sort},
            max_pages=max_pages,
        )
        return [CmlJobRun.from_api(r, job_id=job_id, project_id=pid) for r in items]

    async def a_list_job_runs(
        self,
        job_id: str,
        sort: str | None = "-created_at",
        max_pages: int | None = None,
        *,
        project_id: str | None = None,
    ) -> list[CmlJobRun]:
        """Async twin of :meth:`list_job_runs`."""
        pid = project_id or await self.a_get_project_id()
        items = self._a_paginate(
            LIST_JOB_RUNS,
            "job_runs",
            path_params={"project_id": pid, "job_id": job_id},
            params={"sort": sort},
            max_pages=max_pages,
        )
        return [CmlJobRun.from_api(r, job_id=job_id, project_id=pid) async for r in items]

    def stop_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> None:
        """Ask the workspace to stop a run (idempotent: stopping a finished run is harmless)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(STOP_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id})

    def find_job_run(
        self,
        job_id: str,
        environment: Mapping[str, str],
        *,
        max_pages: int | None = 5,
        project_id: str | None = None,
    ) -> CmlJobRun | None:
        """The newest recent run of ``job_id`` whose environment carries all of ``environment``."""
        for run in self.list_job_runs(job_id, max_pages=max_pages, project_id=project_id):
            if run.matches(environment):
                return run
        return None

    def ensure_job_run(
        self,
        job_id: str,
        *,
        idempotency_env: Mapping[str, str],
        environment: Mapping[str, Any] | None = None,
        arguments: str | None = None,
        max_pages: int | None = 5,
        reuse_succeeded: bool = True,
        project_id: str | None = None,
    ) -> tuple[CmlJobRun, bool]:
        """Start a run unless a live or succeeded run with the same marker exists.

        ``idempotency_env`` (e.g. ``{"MF_AIRFLOW_TI_KEY": "dag/run/task/-1"}``) is added to the
        run's environment and looked up among the job's recent runs (``max_pages`` pages, newest
        first) before creating: a run carrying it that is still active, or has succeeded (unless
        ``reuse_succeeded=False``), is reused; a failed, timed-out, stopped or skipped one is not.
        After an ambiguous create failure (5xx, read timeout) the runs are listed again before
        re-creating.

        :return: ``(run, reused)``
        """
        pid = project_id or self.get_project_id()
        env = {**environment_to_request(environment), **dict(idempotency_env)}
        for attempt in self._retry_unsafe(f"submit run of job {job_id}"):
            with attempt:
                existing = self.find_job_run(job_id, idempotency_env, max_pages=max_pages, project_id=pid)
                if existing is not None and (
                    existing.status.is_active or (reuse_succeeded and existing.status.is_successful)
                ):
                    return existing, True
                return self.create_job_run(job_id, env, arguments, project_id=pid), False
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    async def a_count_active_runs(
        self,
        job_ids: Iterable[str],
        environment: Mapping[str, str],
        *,
        max_pages: int | None = 5,
        project_id: str | None = None,
    ) -> int:
        """How many non-terminal runs of ``job_ids`` carry all of ``environment``."""
        pid = project_id or await self.a_get_project_id()
        count = 0
        for job_id in job_ids:
            runs = await self.a_list_job_runs(job_id, max_pages=max_pages, project_id=pid)
            count += sum(1 for r in runs if r.status.is_active and r.matches(environment))
        return count

    def count_active_runs(
        self,
        job_ids: Iterable[str],
        environment: Mapping[str, str],
        *,
        max_pages: int | None = 5,
        project_id: str | None = None,
    ) -> int:
        """Sync twin of :meth:`a_count_active_runs`."""
        pid = project_id or self.get_project_id()
        count = 0
        for job_id in job_ids:
            runs = self.list_job_runs(job_id, max_pages=max_pages, project_id=pid)
            count += sum(1 for r in runs if r.status.is_active and r.matches(environment))
        return count

    # -- Project files --------------------------------------------------------------------
    def list_files(self, path: str = ".", *, project_id: str | None = None) -> list[CmlFile]:
        """Entries of a project directory (basenames; the API does not paginate files)."""
        pid = project_id or self.get_project_id()
        data = self._do_api_call(LIST_FILES, path_params={"project_id": pid, "path": _clean_file_path(path)})
        return [CmlFile.from_api(f) for f in data.get("files") or []]

    def download_file(self, path: str, *, project_id: str | None = None) -> bytes:
        """The bytes of a project file; :class:`CmlNotFoundError` when it does not exist."""
        pid = project_id or self.get_project_id()
        clean = _clean_file_path(path)
        try:
            return self._do_api_call(DOWNLOAD_FILE, path_params={"project_id": pid, "path": clean}, raw=True)
        except CmlNotFoundError as exc:
            raise CmlNotFoundError(
                f"Project file {clean!r} does not exist", body=exc.body, method=exc.method, path=exc.path
            ) from exc

    def file_exists(self, path: str, *, project_id: str | None = None) -> bool:
        """Whether a project file or directory exists (lists its parent directory)."""
        clean = _clean_file_path(path)
        if clean == ".":
            return True
        parent, name = posixpath.split(clean)
        try:
            entries = self.list_files(parent or ".", project_id=project_id)
        except CmlNotFoundError:
            return False
        return any(posixpath.basename(e.path.rstrip("/")) == name for e in entries)

    def delete_file(self, path: str, *, project_id: str | None = None) -> None:
        """Delete a project file (or directory)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(DELETE_FILE, path_params={"project_id": pid, "path": _clean_file_path(path)})

    def upload_file(
        self, path: str, data: bytes, overwrite: bool = False, *, project_id: str | None = None
    ) -> str:
        """Store ``data`` at project path ``path`` and return the path.

        A CML upload never overwrites (an existing path makes it store ``name(1).ext``), so:

        * ``overwrite=True`` deletes an existing file first, then uploads;
        * ``overwrite=False`` raises :class:`CmlFileExistsError` when the path exists — write
          to a fresh, content-addressed path instead, or catch the error to skip.

        After an ambiguous failure (5xx, read timeout) the path is checked before uploading
        again: if it now holds exactly ``data``, the upload had landed.
        """
        pid = project_id or self.get_project_id()
        clean = _clean_file_path(path)
        if clean == ".":
            raise ValueError("upload_file needs a file path, not the project root")
        if self.file_exists(clean, project_id=pid):
            if not overwrite:
                raise CmlFileExistsError(clean)
            self.log.info("Deleting project file %r before upload (overwrite=True)", clean)
            self.delete_file(clean, project_id=pid)
        payload = bytes(data)
        files = {clean: (posixpath.basename(clean), payload, "application/octet-stream")}
        tried = False
        for attempt in self._retry_unsafe(f"upload {clean!r}"):
            with attempt:
                if tried and self.file_exists(clean, project_id=pid):
                    if self.download_file(clean, project_id=pid) == payload:
                        return clean  # the failed attempt had landed after all
                    raise CmlError(
                        f"A failed upload left other content at project file {clean!r}; not retrying"
                    )
                tried = True
                self._do_api_call(UPLOAD_FILE, path_params={"project_id": pid}, files=files)
        return clean


def _next_token(body: Mapping[str, Any], seen: set[str], endpoint: Endpoint) -> str | None:
    token = body.get("next_page_token") or None
    if token is not None:
        token = str(token)
        if token in seen:
            raise CmlError(f"CML API {endpoint[0]} {endpoint[1]} repeated page token {token!r}")
        seen.add(token)
    return token


def _job_changes(job: CmlJob, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``wanted`` that the existing job does not already have."""
    changes: dict[str, Any] = {}
    for key, value in wanted.items():
        if key == "kill_on_timeout":
            continue
        if key == "environment":
            if any(job.environment.get(k) != v for k, v in value.items()):
                changes[key] = {**job.environment, **value}
            continue
        current = getattr(job, key)
        if isinstance(value, float):
            if current is None or abs(float(current) - value) > 1e-9:
                changes[key] = value
        elif current != value:
            changes[key] = value
    if "timeout" in changes:
        changes["kill_on_timeout"] = True
    return changes


def _mask(secret: str) -> None:
    """Register a secret with Airflow's log masker when one is available."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # pragma: no cover - masking is best effort outside Airflow
        pass
