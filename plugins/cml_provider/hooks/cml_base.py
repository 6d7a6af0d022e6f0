"""The base of :class:`~cml_provider.hooks.cml.CmlHook`: the HTTP choke point, retries,
pagination and the project lookup (like Airflow's ``BaseDatabricksHook``).

Every call goes through one choke point, :meth:`BaseCmlHook._do_api_call` (and its async twin
:meth:`BaseCmlHook._a_do_api_call` used by triggers), with an endpoint constant from
:mod:`cml_provider.hooks.endpoints`. Retries are configured once (tenacity: exponential
backoff, a fixed number of attempts, one log line per failed attempt): connection errors,
timeouts, HTTP 429 and 5xx are retried, any other 4xx fails fast; calls that create something
are repeated only when the request surely did not land (:data:`~cml_provider.hooks.endpoints.NON_IDEMPOTENT`).
Failures surface as the named exceptions of :mod:`cml_provider.errors`.

Which workspace and key the calls use comes from
:class:`~cml_provider.hooks.connection.CmlConnectionHook`; the thin one-method-per-endpoint API
lives in the mixins that :class:`~cml_provider.hooks.cml.CmlHook` combines.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import timedelta
from functools import cached_property, lru_cache
from typing import Any, Self

import httpx
import tenacity

from cml_provider.durations import seconds
from cml_provider.errors import (
    CmlApiError,
    CmlAuthError,
    CmlError,
    error_from_response,
    error_from_transport,
    is_retryable,
    is_safe_to_repeat,
)
from cml_provider.hooks.connection import CmlConnectionHook
from cml_provider.hooks.endpoints import (
    LIST_PROJECTS,
    NON_IDEMPOTENT,
    Endpoint,
    encode_search_filter,
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


class BaseCmlHook(CmlConnectionHook):
    """Talk to a CML workspace through API v2 (choke point, retries, pagination, project lookup).

    :param retry_limit: attempts per API call (>= 1) for retryable failures.
    :param retry_delay: base of the exponential backoff, in seconds (a ``timedelta`` is accepted).
    :param retry_args: tenacity keyword arguments that override the defaults, e.g.
        ``{"wait": tenacity.wait_none()}`` in tests. ``retry``/``reraise`` stay the hook's own.
    :param timeout: HTTP timeout per request, in seconds.
    :param page_size: ``page_size`` asked for on list calls (the server may send fewer;
        pagination always follows ``next_page_token``).
    :param verify: TLS verification (``True``, ``False`` or a CA bundle path).

    The other parameters say which workspace, key and project to use:
    :class:`~cml_provider.hooks.connection.CmlConnectionHook`.
    """

    def __init__(
        self,
        cml_conn_id: str = CmlConnectionHook.default_conn_name,
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
        if retry_limit < 1:
            raise ValueError("retry_limit must be at least 1")
        super().__init__(
            cml_conn_id,
            host=host,
            api_key=api_key,
            project_id=project_id,
            project_name=project_name,
            runtime_identifier=runtime_identifier,
            model_service_url=model_service_url,
            model_api_key=model_api_key,
        )
        self.retry_limit = retry_limit
        self.retry_delay = seconds(retry_delay)  # e.g. an operator's Airflow ``retry_delay``
        self.timeout = timeout
        self.page_size = page_size
        self.verify = verify
        self._project_id: str | None = None
        self._retry_args: dict[str, Any] = {
            "stop": tenacity.stop_after_attempt(retry_limit),
            "wait": tenacity.wait_exponential(multiplier=self.retry_delay, min=self.retry_delay, max=60),
        }
        if retry_args:
            self._retry_args.update(retry_args)

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

    # -- The HTTP choke point -------------------------------------------------------------
    @cached_property
    def _tls_context(self) -> ssl.SSLContext:
        """Loading the CA bundle is CPU work, the async calls open a client per call, and every
        trigger has a hook of its own: one context per process and setting."""
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
                raise error_from_transport(exc, method, path, base_url, service) from exc
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
                raise error_from_transport(exc, method, path, base_url, service) from exc
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


def _next_token(body: Mapping[str, Any], seen: set[str], endpoint: Endpoint) -> str | None:
    token = body.get("next_page_token") or None
    if token is not None:
        token = str(token)
        if token in seen:
            raise CmlError(f"CML API {endpoint[0]} {endpoint[1]} repeated page token {token!r}")
        seen.add(token)
    return token

