"""The FastAPI application: auth, CML-shaped errors, health, and the API v2 routers."""

from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .config import WorkspaceConfig
from .errors import GRPC_FOR_HTTP, ApiError, GrpcCode, error_body
from .routes import files, jobs, projects
from .workspace import Workspace

log = logging.getLogger("cml_workspace.app")

API_PREFIX = "/api/v2"


class BearerAuth:
    """ASGI middleware: every ``/api/v2`` request needs ``Authorization: Bearer <key>``.
    Checked before anything else (body parsing included)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] == API_PREFIX or scope["path"].startswith(API_PREFIX + "/")):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                message = "missing bearer token" if not header else "invalid API key"
                body = json.dumps(error_body(GrpcCode.UNAUTHENTICATED, message)).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="cml"'),
                ]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


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


def create_app(config: WorkspaceConfig) -> FastAPI:
    workspace = Workspace(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        workspace.start()
        log.info("local CML workspace at %s (root %s, %g vCPU, %g GB)", config.url, config.root,
                 config.cpus, config.memory_gb)
        try:
            yield
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
    for module in (projects, jobs, files):
        app.include_router(module.router, prefix=API_PREFIX)
    app.add_middleware(BearerAuth, api_key=config.api_key)

    @app.get("/health", tags=["health"])
    def health() -> dict:
        return {"status": "ok", "version": __version__, **workspace.scheduler.usage()}

    return app
