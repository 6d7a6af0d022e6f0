"""Mapping a planned CML job run (``{"request": <submit kwargs>, "result_file": ...}``, as
``factory_tasks`` plans them) onto the submit operator and the sensor; shared by the DAGs.

Also the CML poll interval they all use: the local stack sets 1 s; every check is one API
call per waiting task.
"""

from __future__ import annotations

import os

CML_POLL_INTERVAL_S = float(os.environ.get("MODEL_FACTORY_CML_POLL_INTERVAL_S", "15"))


def submit_kwargs(planned: dict) -> dict:
    """The submit operator's arguments of one planned run."""
    return planned["request"]


def sensor_kwargs(submitted_and_planned) -> dict:
    """The sensor's arguments: the submitted run and the project file that explains a failure."""
    run, planned = submitted_and_planned
    return {"run": run, "result_file": planned["result_file"]}
