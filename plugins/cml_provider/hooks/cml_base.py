"""The base of :class:`~cml_provider.hooks.cml.CmlHook`: configuration, the HTTP choke point,
retries and pagination (like Airflow's ``BaseDatabricksHook``).

Every call goes through one choke point, :meth:`BaseCmlHook._do_api_call` (and its async twin
:meth:`BaseCmlHook._a_do_api_call` used by triggers), with an endpoint constant from
:mod:`cml_provider.hooks.endpoints`. Retries are configured once (tenacity: exponential
backoff, a fixed number of attempts, one log line per failed attempt): connection errors,
timeouts, HTTP 429 and 5xx are retried, any other 4xx fails fast; calls that create something
are repeated only when the request surely did not land (:data:`~cml_provider.hooks.endpoints.NON_IDEMPOTENT`).
Failures surface as the named exceptions of :mod:`cml_provider.errors`.

The thin one-method-per-endpoint API lives in :class:`~cml_provider.hooks.cml.CmlHook`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from functools import cached_property, lru_cache
from typing import Any, Self

import httpx
import tenacity

from airflow.sdk.bases.hook import BaseHook
from cml_provider.errors import (
    CmlApiError,
    CmlAuthError,
    CmlConfigurationError,
    CmlConnectionError,
    CmlError,
    CmlNotFoundError,
    error_from_response,
    is_retryable,
    is_safe_to_repeat,
)
from cml_provider.hooks.endpoints import (
    LIST_PROJECTS,
    NON_IDEMPOTENT,
    Endpoint,
    default_model_service_url,
    encode_search_filter,
    normalise_service_url,
    normalise_workspace_url,
    render_path,
)
from cml_provider.models import CmlProject, CmlWorkspaceConfig

__all__ = ["DEFAULT_PAGE_SIZE", "BaseCmlHook"]

DEFAULT_PAGE_SIZE = 100


@lru_cache(maxsize=8)
def _shared_tls_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context of a ``verify`` setting (True, False or a CA bundle path), shared by
    the hooks of a process (a context is safe to share between clients and threads)."""
    return httpx.create_ssl_context(verify=verify)


class _ApiKey:
    """Sentinel type: "authenticate with the configured API key"."""

    def __repr__(self) -> str:
        return "API_KEY"


#: default ``token`` of the choke point: the configured API v2 key
API_KEY = _ApiKey()


class BaseCmlHook(BaseHook):
    """Talk to a CML workspace through API v2 (configuration, choke point, retries, pagination).

    :param cml_conn_id: Airflow connection id (ignored when ``host`` and ``api_key`` are given).
    :param host: workspace URL, to use the hook without an Airflow connection.
    :param api_key: API v2 key, to use the hook without an Airflow connection.
    :param project_id: project id; overrides the connection's extra.
    :param project_name: project name, resolved to an id by listing projects.
    :param runtime_identifier: default ML Runtime image for jobs and model builds created
        without one (required by CML in ML Runtimes projects); overrides the connection's extra.
    :param model_service_url: base URL of the model service (``POST <it>/model``); overrides
        the connection extra ``model_service_url``. Default: ``https://modelservice.<workspace
        host>`` for https workspaces.
    :param model_api_key: key sent as ``Authorization: Bearer`` to models with authentication
        enabled; overrides the connection extra ``model_api_key``. Default: the API key.
    :param retry_limit: attempts per API call (>= 1) for retryable failures.
    :param retry_delay: base of the exponential backoff, in seconds (a ``timedelta`` is accepted).
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
        model_service_url: str | None = None,
        model_api_key: str | None = None,
        retry_limit: int = 3,
        retry_delay: float | timedelta = 1.0,
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
        if isinstance(retry_delay, timedelta):  # e.g. an operator's Airflow ``retry_delay``
            retry_delay = retry_delay.total_seconds()
        self.retry_limit = retry_limit
        self.retry_delay = float(retry_delay)
        self.timeout = timeout
        self.page_size = page_size
        self.verify = verify
        self._explicit_host = host
        self._explicit_api_key = api_key
        self._explicit_project_id = project_id
        self._explicit_project_name = project_name
        self._explicit_runtime_identifier = runtime_identifier
        self._explicit_model_service_url = model_service_url
        self._explicit_model_api_key = model_api_key
        self._resolved_config: CmlWorkspaceConfig | None = None
        self._project_id: str | None = None
        self._retry_args: dict[str, Any] = {
            "stop": tenacity.stop_after_attempt(retry_limit),
            "wait": tenacity.wait_exponential(multiplier=self.retry_delay, min=self.retry_delay, max=60),
        }
        if retry_args:
            self._retry_args.update(retry_args)
        for secret in (api_key, model_api_key):
            if secret:
                _mask(secret)

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str,
        *,
        project_id: str | None = None,
        project_name: str | None = None,
        **kwargs: Any,
    ) -> Self:
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
            model_service_url=self._service_url_or_none(self._explicit_model_service_url),
            model_api_key=self._explicit_model_api_key,
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
            model_service_url=self._service_url_or_none(
                self._explicit_model_service_url or _extra("model_service_url")
            ),
            model_api_key=self._model_api_key_from(_extra("model_api_key")),
        )

    def model_service_url(self) -> str:
        """Base URL of the model service: the configured one, else ``https://modelservice.<host>/``."""
        config = self.config
        return config.model_service_url or default_model_service_url(config.base_url)

    @staticmethod
    def _service_url_or_none(url: str | None) -> str | None:
        return normalise_service_url(url) if url else None

    def _model_api_key_from(self, extra_key: str | None) -> str | None:
        key = self._explicit_model_api_key or extra_key
        if key:
            _mask(key)
        return key

    # -- The HTTP choke point -------------------------------------------------------------
    @cached_property
    def _tls_context(self) -> ssl.SSLContext:
        """Loading the CA bundle costs ~20 ms of CPU, the async calls open a client per call,
        and every trigger has a hook of its own: one context per process and setting."""
        return _shared_tls_context(self.verify)

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _retry_kwargs(self, predicate: Callable[[BaseException], bool], what: str) -> dict[str, Any]:
        def log_failed_attempt(retry_state: tenacity.RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            self.log.warning(
                "%s failed (attempt %d of %d): %s",
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
    def _headers(token: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    @staticmethod
    def _transport_error(
        exc: httpx.TransportError, method: str, path: str, base_url: str, service: str
    ) -> CmlError:
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return CmlConfigurationError(f"Invalid {service} URL {base_url!r}: {exc}")
        not_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        kind = "did not answer in time" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
        return CmlConnectionError(
            f"The {service} at {base_url} {kind} ({method} {path}): {type(exc).__name__}: {exc}",
            method=method,
            path=path,
            request_sent=not not_sent,
        )

    @staticmethod
    def _decode(response: httpx.Response, raw: bool, method: str, path: str, service: str) -> Any:
        if raw:
            return response.content
        if not response.content.strip():
            return {}
        try:
            return response.json()
        except ValueError:
            raise CmlApiError(
                f"{service} {method} {path} answered HTTP {response.status_code} with a body that is not JSON",
                status_code=response.status_code,
                body=response.text[:1000],
                method=method,
                path=path,
            ) from None

    @staticmethod
    def _target(
        endpoint: Endpoint,
        path_params: Mapping[str, Any] | None,
        config: CmlWorkspaceConfig,
        service_url: str | None,
    ) -> tuple[str, str, str, str]:
        """``(method, path, base URL, service label)`` of one call."""
        method, template = endpoint
        path = render_path(template, path_params)
        if service_url is None:
            return method, path, config.base_url, "CML API"
        return method, path, service_url, "CML model service"

    def _do_api_call(
        self,
        endpoint: Endpoint,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Mapping[str, Any] | None = None,
        raw: bool = False,
        service_url: str | None = None,
        token: str | None | _ApiKey = API_KEY,
    ) -> Any:
        """Send one API call with retries; return the decoded JSON (or bytes when ``raw``).

        :param endpoint: an endpoint constant of :mod:`cml_provider.hooks.endpoints`,
            ``(method, path template)``
        :param path_params: values for the template's ``{placeholders}`` (quoted here)
        :param params: query parameters
        :param json: JSON body
        :param files: multipart files (``{field name: (filename, bytes, content type)}``)
        :param raw: return the response bytes instead of parsed JSON
        :param service_url: another base URL than the workspace's (the model service)
        :param token: the bearer token; default the API key, None for no ``Authorization``
        """
        config = self.config
        method, path, base_url, service = self._target(endpoint, path_params, config, service_url)
        predicate = is_safe_to_repeat if endpoint in NON_IDEMPOTENT else is_retryable
        query = {k: v for k, v in (params or {}).items() if v is not None}
        headers = self._headers(config.api_key if token is API_KEY else token)  # type: ignore[arg-type]
        url = path if service_url is None else httpx.URL(service_url).join(path)

        def attempt() -> Any:
            try:
                response = self._client.request(
                    method, url, params=query, json=json, files=files, headers=headers
                )
            except httpx.TransportError as exc:
                raise self._transport_error(exc, method, path, base_url, service) from exc
            if response.status_code >= 300:  # redirects are not followed: a login page is no answer
                raise error_from_response(response, method, path, service=service)
            return self._decode(response, raw, method, path, service)

        retrying = tenacity.Retrying(**self._retry_kwargs(predicate, f"{service} {method} {path}"))
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
        service_url: str | None = None,
        token: str | None | _ApiKey = API_KEY,
    ) -> Any:
        """Async twin of :meth:`_do_api_call` (``httpx.AsyncClient``), for triggers."""
        config = await self.a_config()
        method, path, base_url, service = self._target(endpoint, path_params, config, service_url)
        predicate = is_safe_to_repeat if endpoint in NON_IDEMPOTENT else is_retryable
        query = {k: v for k, v in (params or {}).items() if v is not None}
        headers = self._headers(config.api_key if token is API_KEY else token)  # type: ignore[arg-type]

        async def attempt() -> Any:
            try:
                async with httpx.AsyncClient(
                    base_url=base_url, timeout=self.timeout, verify=self._tls_context
                ) as client:
                    response = await client.request(
                        method, path, params=query, json=json, files=files, headers=headers
                    )
            except httpx.TransportError as exc:
                raise self._transport_error(exc, method, path, base_url, service) from exc
            if response.status_code >= 300:  # redirects are not followed: a login page is no answer
                raise error_from_response(response, method, path, service=service)
            return self._decode(response, raw, method, path, service)

        retrying = tenacity.AsyncRetrying(**self._retry_kwargs(predicate, f"{service} {method} {path}"))
        try:
            return await retrying(attempt)
        except CmlError as exc:
            self._annotate(exc, endpoint, retrying)
            raise

    @staticmethod
    def _annotate(exc: CmlError, endpoint: Endpoint, retrying: tenacity.BaseRetrying) -> None:
        exc.attempts = retrying.statistics.get("attempt_number", 1)
        if endpoint in NON_IDEMPOTENT:
            exc.ambiguous = is_retryable(exc) and not is_safe_to_repeat(exc)

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
        params = {"search_filter": encode_search_filter(search_filter)}
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
                params = {"search_filter": encode_search_filter({"name": name})}
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


def _next_token(body: Mapping[str, Any], seen: set[str], endpoint: Endpoint) -> str | None:
    token = body.get("next_page_token") or None
    if token is not None:
        token = str(token)
        if token in seen:
            raise CmlError(f"CML API {endpoint[0]} {endpoint[1]} repeated page token {token!r}")
        seen.add(token)
    return token


def _mask(secret: str) -> None:
    """Register a secret with Airflow's log masker when one is available."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # pragma: no cover - masking is best effort outside Airflow
        pass
