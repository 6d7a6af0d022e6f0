"""One stage of the model_factory DAG run as a separate "worker" process (for the two-worker
test): ``python stage_worker.py STAGE JSON_ARGS`` prints the stage's XCom value as JSON.

Each call is a fresh interpreter whose working directory, temporary folder and home are the
caller's choice, so a stage that read something another stage left on its disk would fail.
The stages are the very functions the DAG's tasks call, with the same hooks.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _hooks():
    from airflow.sdk import BaseHook
    from cml_provider.hooks.cml import CmlHook

    return BaseHook.get_connection("model_factory_warehouse").get_hook(), CmlHook(cml_conn_id="cml_default")


def _submit_and_wait(cml, planned: list[dict]) -> list[str]:
    """What the run_experiment instances do, reduced to the hook calls (bounded wait)."""
    runs = []
    for kwargs in planned:  # the plan created the jobs
        runs.append((kwargs["job_id"], cml.create_job_run(kwargs["job_id"], environment=kwargs["environment"]).id))
    deadline = time.monotonic() + 300
    statuses = []
    for job_id, run_id in runs:
        while not (run := cml.get_job_run(job_id, run_id)).status.is_terminal:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run.status}")
            time.sleep(0.2)
        statuses.append(run.status.value)
    return statuses


def main(stage: str, args: dict) -> object:
    from factory_tasks.stages import model_factory as pipeline

    warehouse, cml = _hooks()
    if stage == "validate_grid":
        return pipeline.validate_grid_file(args["grid_path"])
    if stage == "snapshot":
        include = args.get("include_interactions", False)  # the DAG's param
        return pipeline.snapshot_to_project(warehouse, cml, args["grid"]["table"],
                                            interactions_table=args["grid"]["interactions_table"] if include else None)
    if stage == "plan":
        return pipeline.plan_experiments(args["grid"], args["snapshot"], cml, factory_run_id=args["run_id"],
                                         job_timeout_s=3600)
    if stage == "submit_and_wait":
        return _submit_and_wait(cml, args["planned"])
    if stage == "record":
        return pipeline.record_outcomes(warehouse, cml, factory_run_id=args["run_id"],
                                        recorded_at="2026-12-01T00:00:00+00:00")
    raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    print("XCOM " + json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
    sys.stdout.flush()
    os._exit(0)
