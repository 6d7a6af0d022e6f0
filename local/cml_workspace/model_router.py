"""The model service: ``POST /model`` on its own port, routed to a free replica.

CML serves models on a separate host (``modelservice.<domain>``); the local workspace serves
them on a second port of the same server process (``--model-port``, default API port + 1),
on the server's event loop. The path from a request to a replica is kept lean on purpose:

- HTTP/1.1 parsed by ``httptools`` in a plain :class:`asyncio.Protocol` (keep-alive,
  pipelining, chunked bodies, ``Expect: 100-continue``), no ASGI/framework layers;
- the body is parsed once to find ``accessKey`` and check ``request``, then forwarded to the
  replica as the same bytes (the replica parses its copy; no re-encoding);
- a free replica is taken from the deployment's pool without waiting when there is one;
  otherwise the caller queues (FIFO) up to the busy timeout, then HTTP 429 ``model.busy``;
- the replica's answer (already the whole response body) is written back as is.

Request: ``{"accessKey": "<Model.access_key>", "request": {...}}`` (or ``?accessKey=`` in
the URL), at most 5 MB; ``Authorization: Bearer <API key>`` when the model has
authentication enabled. Answer: ``{"success": true, "response": <what predict returned>}``.
Errors: ``{"success": false, "error": "<model.code>", "code": <gRPC code>, "message",
"details": []}`` with HTTP 400 (not JSON, nested too deeply, an integer past Python's digit
limit, no accessKey/request), 401 (bearer), 404 (unknown access key, other paths), 405 (with
``Allow: POST``), 413, 429 (``model.busy``), 500 (``predict`` raised or the replica died), 503
(the model has no deployed deployment), 504 (no answer within the request timeout). An answer to
``HEAD`` has the headers of that answer and no body.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qs

try:
    import httptools
except ModuleNotFoundError as exc:  # comes with uvicorn[standard] / fastapi[standard]
    raise ModuleNotFoundError("the local model service needs httptools (pip install httptools, or "
                              "uvicorn[standard])", name=exc.name) from exc

from .errors import GrpcCode
from .model_pool import ReplicaGone, ReplicaPool, ReplicaTimedOut
from .model_replica import KIND_OK

log = logging.getLogger("cml_workspace.model_router")

MODEL_PATH = b"/model"
_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
    413: b"Payload Too Large", 429: b"Too Many Requests", 500: b"Internal Server Error",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}
_MAX_PIPELINED = 16


class _TooManyDigits:
    """Stands for an integer past Python's int-string limit while the body is parsed again."""

    __slots__ = ("digits",)

    def __init__(self, digits: int):
        self.digits = digits


def _int_or_marker(text: str) -> int | _TooManyDigits:
    digits = len(text) - (text[0] == "-")
    limit = sys.get_int_max_str_digits()
    return _TooManyDigits(digits) if limit and digits > limit else int(text)


def _too_many_digits(body: bytes) -> str | None:
    """Where the body holds an integer too long for Python to parse, and how long, or None
    (the error path only: the body is parsed a second time)."""
    try:
        parsed = json.loads(body, parse_int=_int_or_marker)
    except (ValueError, RecursionError):
        return None
    stack = [("", parsed)]
    while stack:  # iterative: the body may be nested nearly as deep as the parser allows
        where, value = stack.pop()
        if isinstance(value, _TooManyDigits):
            limit = sys.get_int_max_str_digits()
            return (f"{where or 'the body'}: the number has {value.digits} digits, more than the "
                    f"{limit} digits an integer may have (Python's int-string limit)")
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else k, v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def error_answer(status: int, error: str, code: GrpcCode, message: str) -> tuple[int, bytes, bytes]:
    body = json.dumps({"success": False, "error": error, "code": int(code), "message": message, "details": []})
    extra = b'www-authenticate: Bearer realm="cml-models"\r\n' if status == 401 else b""
    if status == 405:
        extra = b"allow: POST\r\n"
    return status, body.encode(), extra


class ModelRoute:
    """What the router knows of one model: its auth setting and its deployed pools (the newest
    deployed one takes the calls; an older one still deployed is only a fallback)."""

    __slots__ = ("model_id", "auth_enabled", "pools")

    def __init__(self, model_id: str, auth_enabled: bool):
        self.model_id = model_id
        self.auth_enabled = auth_enabled
        self.pools: list[ReplicaPool] = []

    def active(self) -> ReplicaPool | None:
        for pool in reversed(self.pools):
            if not pool.closed:
                return pool
        return None


class ModelRouter:
    def __init__(self, *, api_key: str, busy_timeout: float, request_timeout: float, max_body_bytes: int,
                 metrics_sink: Callable[[tuple[str, str, str], bytes], None]):
        self._api_key = api_key.encode()
        self.busy_timeout = busy_timeout
        self.request_timeout = request_timeout
        self.max_body_bytes = max_body_bytes
        self.metrics_sink = metrics_sink
        self.routes: dict[str, ModelRoute] = {}  # access key -> route
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_HttpConnection] = set()
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _HttpConnection(self), host, port,
                                                    reuse_address=True, backlog=1024)
        except OSError as exc:
            raise OSError(exc.errno, f"the model service cannot listen on {host}:{port} (--model-port): "
                                     f"{exc.strerror or exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                conn.abort()
            self._server = None

    # -- routing table (event loop thread) -------------------------------------------------------
    def add_model(self, access_key: str, model_id: str, auth_enabled: bool) -> ModelRoute:
        route = self.routes.get(access_key)
        if route is None:
            route = self.routes[access_key] = ModelRoute(model_id, auth_enabled)
        return route

    def remove_model(self, access_key: str) -> None:
        self.routes.pop(access_key, None)

    # -- one call ------------------------------------------------------------------------------
    async def handle(self, method: bytes, url: bytes, headers: dict, body: bytes) -> tuple[int, bytes, bytes]:
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return error_answer(400, "model.badRequest", GrpcCode.INVALID_ARGUMENT, "invalid URL")
        if parsed.path.rstrip(b"/") != MODEL_PATH:
            return error_answer(404, "model.notFound", GrpcCode.NOT_FOUND,
                                "not found: the model service answers POST /model")
        if method != b"POST":
            return error_answer(405, "model.methodNotAllowed", GrpcCode.UNIMPLEMENTED,
                                "the model service answers POST /model")
        try:
            payload = json.loads(body)
        except RecursionError:
            return error_answer(400, "model.badRequest", GrpcCode.INVALID_ARGUMENT,
                                "the body is nested too deeply: its JSON arrays/objects nest deeper than the "
                                f"parser allows (about {sys.getrecursionlimit()} levels)")
        except ValueError:  # UnicodeDecodeError included
            message = _too_many_digits(body)
            return error_answer(400, "model.badRequest", GrpcCode.INVALID_ARGUMENT, message or
                                'the body must be JSON: {"accessKey": "...", "request": {...}}')
        if not isinstance(payload, dict):
            return error_answer(400, "model.badRequest", GrpcCode.INVALID_ARGUMENT,
                                'the body must be a JSON object: {"accessKey": "...", "request": {...}}')
        access_key = payload.get("accessKey")
        if access_key is None and parsed.query:
            access_key = (parse_qs(parsed.query.decode(errors="replace")).get("accessKey") or [None])[0]
        if not access_key or not isinstance(access_key, str):
            return error_answer(400, "model.badRequest", GrpcCode.INVALID_ARGUMENT,
                                "accessKey is missing (in the body, or ?accessKey= in the URL)")
        route = self.routes.get(access_key)
        if route is None:
            return error_answer(404, "model.notFound", GrpcCode.NOT_FOUND, "no model has this access key")
        if route.auth_enabled:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._api_key):
                message = ("this model needs Authorization: Bearer <API key>"
                           if not headers.get(b"authorization") else "invalid API key")
                return error_answer(401, "model.unauthenticated", GrpcCode.UNAUTHENTICATED, message)
        if "request" not in payload:
            return error_answer(400, "model.badRequest", GrpcCode.INVALID_ARGUMENT,
                                'the body has no "request" (the input of the model\'s function)')
        pool = route.active()
        if pool is None:
            return error_answer(503, "model.notDeployed", GrpcCode.UNAVAILABLE,
                                f"model {route.model_id} has no deployed build")
        replica = pool.try_acquire()
        if replica is None:
            replica = await pool.acquire(self.busy_timeout)
            if replica is None:
                if pool.closed:
                    return error_answer(503, "model.notDeployed", GrpcCode.UNAVAILABLE,
                                        f"the deployment of model {route.model_id} stopped")
                return error_answer(429, "model.busy", GrpcCode.RESOURCE_EXHAUSTED,
                                    f"model.busy: no free replica of model {route.model_id} within "
                                    f"{self.busy_timeout:g} s (deploy it with more replicas)")
        try:
            kind, answer, metrics = await replica.conn.call(body, self.request_timeout)
        except ReplicaTimedOut:  # the replica stays busy until its late answer arrives
            return error_answer(504, "model.timeout", GrpcCode.DEADLINE_EXCEEDED,
                                f"the model did not answer within {self.request_timeout:g} s")
        except ReplicaGone:
            return error_answer(500, "model.replicaDied", GrpcCode.INTERNAL,
                                "the replica serving this call ended (see the deployment's replica log)")
        pool.release(replica)
        if metrics:
            self.metrics_sink(pool.crns, metrics)
        if kind == KIND_OK:
            return 200, answer, b""
        try:
            message = json.loads(answer)["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.decode(errors="replace")
        return error_answer(500, "model.error", GrpcCode.INTERNAL, f"the model's function raised {message}")


class _HttpConnection(asyncio.Protocol):
    """One client connection: requests are answered in order, one at a time."""

    def __init__(self, router: ModelRouter):
        self.router = router
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._refused = False
        self._closed = False
        self._busy = False
        self._paused = False
        self._queue: deque = deque()

    # -- transport events ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.router._connections.add(self)

    def connection_lost(self, exc) -> None:
        self._closed = True
        self.router._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._chunks = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        declared = self._headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.router.max_body_bytes
            except ValueError:
                too_large = False
            if too_large:
                self._refuse(413, self._too_large_message())
                return
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._size += len(body)
        if self._size > self.router.max_body_bytes:
            self._refuse(413, self._too_large_message())
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._refused or self._closed:
            return
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = (self.parser.get_method(), self._url, self._headers, body, self.parser.should_keep_alive(),
                   self.parser.get_http_version() == "1.0")
        if self._busy:
            self._queue.append(request)
            if len(self._queue) >= _MAX_PIPELINED and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        self._busy = True
        asyncio.get_running_loop().create_task(self._serve(request))

    # -- answering -----------------------------------------------------------------------------
    def _too_large_message(self) -> str:
        return f"request body too large: model requests are limited to {self.router.max_body_bytes / 1024 / 1024:g} MB"

    def _refuse(self, status: int, message: str) -> None:
        """Answer at once and close (the rest of the request is not read)."""
        self._refused = True
        if self._closed:
            return
        status, body, extra = error_answer(status, "model.badRequest" if status == 400 else "model.tooLarge",
                                           GrpcCode.INVALID_ARGUMENT if status == 400 else GrpcCode.RESOURCE_EXHAUSTED,
                                           message)
        self._write(status, body, extra, keep_alive=False, http10=False)
        self._closed = True
        self.transport.close()

    def _write(self, status: int, body: bytes, extra: bytes, *, keep_alive: bool, http10: bool,
               head: bool = False) -> None:
        """The answer; to HEAD without its body (a body there would be read as the next answer)."""
        connection = (b"connection: keep-alive\r\n" if http10 else b"") if keep_alive else b"connection: close\r\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s%s\r\n%s"
            % (status, _REASONS.get(status, b"Error"), len(body), extra, connection, b"" if head else body)
        )

    async def _serve(self, request) -> None:
        while True:
            method, url, headers, body, keep_alive, http10 = request
            try:
                status, answer, extra = await self.router.handle(method, url, headers, body)
            except Exception as exc:  # never leave a caller without an answer
                log.exception("model service: internal error")
                status, answer, extra = error_answer(500, "model.internal", GrpcCode.INTERNAL, f"internal error: {exc}")
            if self._closed:
                return
            self._write(status, answer, extra, keep_alive=keep_alive, http10=http10, head=method == b"HEAD")
            if not keep_alive:
                self._closed = True
                self.transport.close()
                return
            if not self._queue:
                self._busy = False
                return
            request = self._queue.popleft()
            if self._paused and len(self._queue) < _MAX_PIPELINED // 2:
                self._paused = False
                self.transport.resume_reading()
