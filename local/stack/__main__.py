"""Command line of the embedded stack: ``python -m stack run | up | down | status | airflow-ui | dashboard |
seed-training-table``."""

from __future__ import annotations

import argparse
import os
import sys

from stack.env import DEFAULT_ROWS, stack_paths


def _dashboard(port: int) -> int:
    """The experiments dashboard behind Panel's login (``stack.dashboard``)."""
    from stack.dashboard import serve

    return serve(stack_paths(), port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=(
        "run the factory end to end on the stack of make up (started, and stopped after, if it is not up)"))
    run.add_argument("--grid", default="config/grid.yaml", help="the grid file (default config/grid.yaml)")
    run.add_argument("--rows", type=int, default=None, help="rows to simulate if the training table is absent")
    run.add_argument("--keep-up", action="store_true", help=(
        "leave the stack running if make run started it (also MODEL_FACTORY_KEEP_UP=1); "
        "a stack of make up is always left running"))
    run.add_argument("--no-ab-test", dest="ab_test", action="store_false", help=(
        "close the loop without its A/B phase: the gate alone decides the retrain (a minute or two shorter)"))
    for name, help_ in (("up", "start the long-running local stack in the background (make up)"),
                        ("airflow-ui", "the same stack in the foreground: Ctrl-C stops it")):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("--host", default=None,
                         help="address the Airflow UI and dashboards listen on (default $MODEL_FACTORY_BIND or 127.0.0.1)")
        cmd.add_argument("--port", type=int, default=None,
                         help="Airflow api-server port (default $MODEL_FACTORY_API_PORT or 8080)")
        cmd.add_argument("--dashboard-port", type=int, default=None,
                         help="dashboards port (default $MODEL_FACTORY_DASHBOARD_PORT or 5006)")
        cmd.add_argument("--workspace-port", type=int, default=None, help="local CML workspace port (default: free)")
        cmd.add_argument("--model-port", type=int, default=None, help="its model service port (default: free)")
        cmd.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for everything to answer")
        cmd.add_argument("--rows", type=int, default=None, help="rows to simulate if the training table is absent")
    seed = sub.add_parser("seed-training-table", help=(
        "create the simulated training table in the model_factory_warehouse connection if it is absent "
        "(docker compose's training-table-init; make run and make up do it themselves)"))
    seed.add_argument("--rows", type=int, default=None, help="rows to simulate (default: make run's)")
    seed.add_argument("--table", default=None, help="the table (default historical_customer_interactions)")
    sub.add_parser("down", help="stop exactly what `up` started (make down)")
    sub.add_parser("status", help="what `up` started and whether it runs (make status)")
    dash = sub.add_parser("dashboard", help="serve the experiments dashboard")
    dash.add_argument("--port", type=int, default=5006)
    args = parser.parse_args(argv)
    if args.command == "run":
        from stack.run import run as run_factory

        return run_factory(args.grid, rows=args.rows or DEFAULT_ROWS, keep_up=args.keep_up, ab_test=args.ab_test)
    if args.command in ("up", "airflow-ui"):
        from stack.up import foreground, up

        options = dict(host=args.host, port=args.port, dashboard_port=args.dashboard_port,
                       workspace_port=args.workspace_port, model_port=args.model_port, timeout_s=args.timeout,
                       rows=args.rows)
        return up(**options) if args.command == "up" else foreground(**options)
    if args.command == "seed-training-table":
        return _seed_training_table(args.rows, args.table)
    if args.command == "down":
        from stack.up import down

        return down()
    if args.command == "status":
        from stack.up import status

        return status()
    return _dashboard(args.port)


def _seed_training_table(rows: int | None, table: str | None) -> int:
    from factory_tasks.core.schema import TRAINING_TABLE
    from stack.up import ensure_training_table

    if "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE" not in os.environ:
        print("seed-training-table: set AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE (the warehouse connection, "
              "as JSON or URI) first", file=sys.stderr)
        return 2
    rows, table = rows or DEFAULT_ROWS, table or TRAINING_TABLE
    if ensure_training_table(dict(os.environ), rows, table):
        print(f"{table}: created with {rows:,} simulated rows")
    else:
        print(f"{table}: already there, left as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
