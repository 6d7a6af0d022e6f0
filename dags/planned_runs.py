"""What the DAGs' CML job runs share: the poll interval, and the operator's arguments of a
planned run that carries more than them.

The local stack sets the poll interval to 1 s; every check is one API call per waiting run.
"""

from __future__ import annotations

import os

CML_POLL_INTERVAL_S = float(os.environ.get("MODEL_FACTORY_CML_POLL_INTERVAL_S", "15"))


def run_kwargs(planned: dict) -> dict:
    """The CmlJobRunOperator arguments of a planned run (``{"request": <kwargs>, ...}``)."""
    return planned["request"]
