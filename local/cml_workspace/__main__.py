"""Command line: ``python -m cml_workspace serve --root DIR --port P ...``.

The API key comes from ``$CML_WORKSPACE_API_KEY`` or ``--api-key-file`` (never from the
command line, where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import OVERSIZE_FAIL, OVERSIZE_POLICIES, WorkspaceConfig, default_cpus, default_memory_gb

API_KEY_ENV = "CML_WORKSPACE_API_KEY"


def _read_api_key(path: str | None) -> str:
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"cml_workspace: cannot read --api-key-file: {exc}") from None
        if not key:
            raise SystemExit(f"cml_workspace: --api-key-file {path} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise SystemExit(f"cml_workspace: no API key: set ${API_KEY_ENV} or pass --api-key-file FILE")
    return key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cml_workspace", description="Local CML-compatible workspace")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API v2 server")
    serve.add_argument("--root", required=True, type=Path, help="state folder (workspace.db, projects/, runs/)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)
    serve.add_argument("--cpus", type=float, default=None, help="vCPU budget for runs (default: os.cpu_count())")
    serve.add_argument("--memory-gb", type=float, default=None, help="memory budget in GB (default: 75%% of RAM)")
    serve.add_argument("--code-dir", type=Path, default=None,
                       help="stands in for the project's git repository: scripts and PYTHONPATH fall back to it")
    serve.add_argument("--project", action="extend", nargs="+", default=[], metavar="NAME",
                       help="create this project at start if absent (repeatable)")
    serve.add_argument("--api-key-file", default=None, help=f"file holding the API key (else ${API_KEY_ENV})")
    serve.add_argument("--oversize", choices=OVERSIZE_POLICIES, default=OVERSIZE_FAIL,
                       help="a run bigger than the whole budget: fail it at once (default) or clamp it")
    serve.add_argument("--require-runtime-identifier", action="store_true",
                       help="reject jobs without runtime_identifier in ML Runtimes projects, like CML "
                            "(default: accept them with a warning)")
    serve.add_argument("--kill-grace", type=float, default=3.0, metavar="SECONDS",
                       help="SIGTERM to SIGKILL escalation when stopping or timing out a run (default 3)")
    serve.add_argument("--preload", action="extend", nargs="+", default=[], metavar="MODULE",
                       help="start runs from a warm engine that has imported these modules once "
                            "(default: every run is a fresh interpreter)")
    serve.add_argument("--model-port", type=int, default=None,
                       help="port of the model service (POST /model); default --port + 1, 0 = any free port")
    serve.add_argument("--model-host", default=None, help="host of the model service (default --host)")
    serve.add_argument("--model-busy-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="how long a model call waits for a free replica before HTTP 429 model.busy (default 30)")
    serve.add_argument("--model-request-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="a replica that has not answered a call after this: HTTP 504 (default 60)")
    serve.add_argument("--model-start-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="a replica must have loaded its entry point within this (default 300)")
    serve.add_argument("--model-build-timeout", type=float, default=600.0, metavar="SECONDS",
                       help="a model build longer than this ends timedout (default 600)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = WorkspaceConfig(
        root=args.root,
        api_key=_read_api_key(args.api_key_file),
        host=args.host,
        port=args.port,
        cpus=args.cpus if args.cpus is not None else default_cpus(),
        memory_gb=args.memory_gb if args.memory_gb is not None else default_memory_gb(),
        code_dir=args.code_dir,
        projects=tuple(args.project),
        oversize=args.oversize,
        require_runtime_identifier=args.require_runtime_identifier,
        kill_grace_s=args.kill_grace,
        preload=tuple(args.preload),
        model_port=args.model_port,
        model_host=args.model_host,
        model_busy_timeout_s=args.model_busy_timeout,
        model_request_timeout_s=args.model_request_timeout,
        model_start_timeout_s=args.model_start_timeout,
        model_build_timeout_s=args.model_build_timeout,
    )
    import uvicorn  # heavy imports only when serving

    from .app import create_app

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
