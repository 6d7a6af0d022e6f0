"""The FastAPI application: auth, CML-shaped errors, health, and the API v2 routers."""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .config import WorkspaceConfig
from .errors import GRPC_FOR_HTTP, ApiError, GrpcCode, error_body
from .routes import files, jobs, model_metrics, models, projects
from .workspace import Workspace

log = logging.getLogger("cml_workspace.app")

API_PREFIX = "/api/v2"
#: local endpoints (the ``cml.metrics_v1`` stand-in's), behind the same bearer auth
LOCAL_PREFIX = "/local"
_AUTH_PREFIXES = (API_PREFIX, LOCAL_PREFIX)
#: JSON request bodies: CML caps model requests at 5 MB; nothing the API takes needs more
MAX_JSON_BODY_BYTES = 5 * 1024 * 1024
#: project file uploads (training-data snapshots are a few MB; model artifacts are written by
#: the runs themselves, not uploaded); ``$CML_WORKSPACE_MAX_UPLOAD_MB`` changes it
MAX_UPLOAD_ENV = "CML_WORKSPACE_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
_UPLOAD_PATH = re.compile(rf"^{API_PREFIX}/projects/[^/]+/files/?$")


def _error_response_events(status: int, code: GrpcCode, message: str, extra_headers=()) -> list[dict]:
    body = json.dumps(error_body(code, message)).encode()
    return [
        {"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *extra_headers,
        ]},
        {"type": "http.response.body", "body": body},
    ]


def _needs_auth(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in _AUTH_PREFIXES)


class BearerAuth:
    """ASGI middleware: every ``/api/v2`` (and ``/local``) request needs ``Authorization:
    Bearer <key>``. Checked before anything else (body parsing included)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _needs_auth(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                message = "missing bearer token" if not header else "invalid API key"
                for event in _error_response_events(401, GrpcCode.UNAUTHENTICATED, message,
                                                    [(b"www-authenticate", b'Bearer realm="cml"')]):
                    await send(event)
                return
        await self.app(scope, receive, send)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1024 / 1024:g} MB"


class BodyTooLarge(StarletteHTTPException):
    """A request body over its limit, noticed while it streams in (answered as HTTP 413)."""

    def __init__(self, what: str, limit: int):
        super().__init__(413, f"request body too large: {what} are limited to {_mb(limit)}")


class BodySizeLimit:
    """ASGI middleware bounding request bodies without holding them: a declared
    ``Content-Length`` over the limit is answered 413 before any byte is read, and the bytes
    that stream in are counted, so a body without (or lying about) its length is cut off at
    the limit too. Uploads (``POST .../projects/{id}/files``) have their own, larger limit."""

    def __init__(self, app, *, max_json_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes

    def _limit(self, scope) -> tuple[str, int]:
        if scope["method"] == "POST" and _UPLOAD_PATH.match(scope["path"]):
            return "file uploads", self.max_upload_bytes
        return "JSON requests", self.max_json_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        what, limit = self._limit(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                declared_bytes = -1
            if declared_bytes < 0:
                await self._refuse(send, 400, GrpcCode.INVALID_ARGUMENT,
                                   f"invalid Content-Length: {declared.decode(errors='replace')}")
                return
            if declared_bytes > limit:
                await self._refuse(send, 413, GrpcCode.RESOURCE_EXHAUSTED, BodyTooLarge(what, limit).detail)
                return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(what, limit)
            return message

        await self.app(scope, counted_receive, send)

    @staticmethod
    async def _refuse(send, status: int, code: GrpcCode, message: str) -> None:
        # answered before reading the body: the server closes the connection afterwards
        for event in _error_response_events(status, code, message, [(b"connection", b"close")]):
            await send(event)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = GRPC_FOR_HTTP.get(exc.status_code, GrpcCode.UNKNOWN)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        message = "invalid request: " + "; ".join(problems)
        return JSONResponse(error_body(GrpcCode.INVALID_ARGUMENT, message), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(GrpcCode.INTERNAL, f"internal error: {exc}"), status_code=500)


def max_upload_bytes_from_env() -> int:
    """The upload limit: ``$CML_WORKSPACE_MAX_UPLOAD_MB`` (a positive number) or the default."""
    raw = os.environ.get(MAX_UPLOAD_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_UPLOAD_BYTES
    try:
        mb = float(raw)
    except ValueError:
        mb = 0.0
    if not (math.isfinite(mb) and mb > 0):
        raise ValueError(f"${MAX_UPLOAD_ENV} must be a positive number of MB, not {raw!r}")
    return int(mb * 1024 * 1024)


def create_app(
    config: WorkspaceConfig, *, max_json_bytes: int = MAX_JSON_BODY_BYTES, max_upload_bytes: int | None = None
) -> FastAPI:
    """The workspace API. Request bodies are bounded: JSON to ``max_json_bytes``, uploads to
    ``max_upload_bytes`` (default from :func:`max_upload_bytes_from_env`); over it, HTTP 413."""
    if max_upload_bytes is None:
        max_upload_bytes = max_upload_bytes_from_env()
    workspace = Workspace(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        workspace.start()
        try:
            await workspace.start_models()
        except BaseException:
            workspace.close()
            raise
        log.info("local CML workspace at %s (root %s, %g vCPU, %g GB); model service at %s", config.url,
                 config.root, config.cpus, config.memory_gb, workspace.models.model_service_url)
        try:
            yield
        finally:
            try:
                await workspace.close_models()
            finally:
                workspace.close()

    app = FastAPI(
        title="Local CML workspace",
        description="The subset of Cloudera Machine Learning API v2 the model factory uses.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.workspace = workspace
    _install_error_handlers(app)
    for module in (projects, jobs, files, models):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(model_metrics.router, prefix=model_metrics.PREFIX)
    # the last added runs first: authentication, then the body limits, then the routes
    app.add_middleware(BodySizeLimit, max_json_bytes=max_json_bytes, max_upload_bytes=max_upload_bytes)
    app.add_middleware(BearerAuth, api_key=config.api_key)

    @app.get("/health", tags=["health"])
    def health() -> dict:
        return {"status": "ok", "version": __version__, **workspace.scheduler.usage(), **workspace.models.usage()}

    return app
