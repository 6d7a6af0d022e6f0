"""Named errors of the CML provider, the mapping from HTTP answers (and from calls that got
none) to them, and the retry predicates the hook's single retry policy uses.

Every error the hook raises is a :class:`CmlError`. An HTTP error status becomes a
:class:`CmlApiError` subclass carrying ``status_code`` and the parsed ``body``
(``{"error", "code", "message", "details"}`` in API v2): 400, 401/403, 404, 409 fail fast;
429 and 5xx are retried by the hook. The same mapping serves the model service
(``POST <model service>/model``).
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "CmlApiError",
    "CmlAuthError",
    "CmlBadRequestError",
    "CmlConfigurationError",
    "CmlConflictError",
    "CmlConnectionError",
    "CmlError",
    "CmlFileExistsError",
    "CmlModelServiceError",
    "CmlNotFoundError",
    "CmlRateLimitError",
    "CmlServerError",
    "error_from_response",
    "error_from_transport",
    "is_retryable",
    "is_safe_to_repeat",
]


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
    """The hook lacks something it needs (workspace URL, API key, project, model service URL)."""


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
    """HTTP 404, or a named project, job, model or file that does not exist."""

    def __init__(self, message: str, *, status_code: int = 404, **kwargs: Any) -> None:
        super().__init__(message, status_code=status_code, **kwargs)


class CmlConflictError(CmlApiError):
    """HTTP 409 (not retried)."""


class CmlRateLimitError(CmlApiError):
    """HTTP 429 (retried with backoff; a busy model answers this too)."""


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


class CmlModelServiceError(CmlError):
    """The model service answered HTTP 2xx without ``"success": true`` or without a ``response``.

    :ivar body: the parsed answer (never contains the access key: that only travels in requests)
    """

    def __init__(self, message: str, *, body: Any = None) -> None:
        super().__init__(message)
        self.body = body


_STATUS_ERRORS: dict[int, type[CmlApiError]] = {
    400: CmlBadRequestError,
    401: CmlAuthError,
    403: CmlAuthError,
    404: CmlNotFoundError,
    409: CmlConflictError,
    429: CmlRateLimitError,
}


def error_from_response(
    response: httpx.Response, method: str, path: str, *, service: str = "CML API"
) -> CmlApiError:
    """The named error for an HTTP error answer, its message carrying the body's ``message``."""
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
    message = f"{service} {method} {path} answered HTTP {status}"
    if 300 <= status < 400:
        detail = f"redirected to {response.headers.get('location', '?')}; check the workspace URL"
    if detail:
        message = f"{message}: {detail}"
    return cls(message, status_code=status, body=body, method=method, path=path)


def error_from_transport(
    exc: httpx.TransportError, method: str, path: str, base_url: str, service: str = "CML API"
) -> CmlError:
    """The named error for a call that got no HTTP answer: a bad URL is a configuration error;
    anything else a :class:`CmlConnectionError` that says whether the request may have landed."""
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


def is_retryable(exc: BaseException) -> bool:
    """Retry predicate for idempotent calls: connection errors, timeouts, 429, 5xx."""
    if isinstance(exc, CmlConnectionError):
        return True
    return isinstance(exc, CmlApiError) and exc.retryable


def is_safe_to_repeat(exc: BaseException) -> bool:
    """Retry predicate for create calls: only failures that prove the request did not land."""
    if isinstance(exc, CmlConnectionError):
        return not exc.request_sent
    return isinstance(exc, CmlApiError) and exc.status_code == 429
