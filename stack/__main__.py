"""Command line of the embedded stack: ``python -m stack run | airflow-ui | dashboard``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from stack.env import REPO, stack_paths


def _airflow_ui(port: int) -> int:
    """`airflow standalone` (api-server, scheduler, dag-processor, triggerer) with the local workspace."""
    from cml_workspace.server_process import WorkspaceBusyError
    from stack.local import StackBusyError, local_stack

    paths = stack_paths()
    try:
        with local_stack(paths) as stack:
            env = dict(stack.env, AIRFLOW__API__PORT=str(port))
            # Without this, task runners call the default port 8080 and die when the UI is elsewhere.
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
            print(f"Airflow UI on http://127.0.0.1:{port}  (user admin; password in "
                  f"{paths.airflow_home / 'simple_auth_manager_passwords.json.generated'}). Ctrl-C stops it.",
                  flush=True)
            try:
                return subprocess.call([sys.executable, "-m", "airflow", "standalone"], env=env)
            except KeyboardInterrupt:
                return 0
    except (StackBusyError, WorkspaceBusyError) as exc:
        print(f"make airflow-ui refused: {exc}.\nWait for it to end (or stop it), or set MODEL_FACTORY_VAR "
              "to another folder.", flush=True)
        return 75


def _dashboard(port: int) -> int:
    """The experiments dashboard behind Panel's login (``stack.dashboard``)."""
    from stack.dashboard import serve

    return serve(stack_paths(), port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the factory end to end on the embedded default")
    run.add_argument("--grid", default="config/grid.yaml", help="the grid file (default config/grid.yaml)")
    run.add_argument("--rows", type=int, default=None, help="rows to simulate if the training table is absent")
    ui = sub.add_parser("airflow-ui", help="the Airflow UI with scheduler and triggerer")
    ui.add_argument("--port", type=int, default=8080)
    dash = sub.add_parser("dashboard", help="serve the experiments dashboard")
    dash.add_argument("--port", type=int, default=5006)
    args = parser.parse_args(argv)
    if args.command == "run":
        from stack.run import DEFAULT_ROWS, run as run_factory

        return run_factory(args.grid, rows=args.rows or DEFAULT_ROWS)
    if args.command == "airflow-ui":
        return _airflow_ui(args.port)
    return _dashboard(args.port)


if __name__ == "__main__":
    sys.exit(main())
