"""What the DAGs' CML job runs share: how they are followed, and the operator's arguments of a
planned run that carries more than them.

The local stack sets the poll interval to 1 s (every check is one API call per waiting run) and
follows a run from the worker for 5 s before deferring: its runs can end within a second, and
the triggerer's round trip costs about 2 s. A CML run first starts an engine, so production
defers at once.
"""

from __future__ import annotations

import os

CML_POLL_INTERVAL_S = float(os.environ.get("MODEL_FACTORY_CML_POLL_INTERVAL_S", "15"))
CML_WAIT_BEFORE_DEFER_S = float(os.environ.get("MODEL_FACTORY_CML_WAIT_BEFORE_DEFER_S", "0"))


def run_kwargs(planned: dict) -> dict:
    """The CmlJobRunOperator arguments of a planned run (``{"request": <kwargs>, ...}``)."""
    return planned["request"]
