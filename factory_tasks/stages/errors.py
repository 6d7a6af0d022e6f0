"""Which failures of a stage are the input's fault: an invalid grid or closed-loop file, a
config path outside the config folders, a param out of its range, a training table without the
interaction schema, a contract document that does not parse, an outcome table of another
schema, a factory run or a pick with nothing to deploy. Retrying such a task fails the same
way, so the DAGs fail it at once (``dags/task_errors.py``) with the message the user needs;
anything else keeps its retries."""

from __future__ import annotations

import math

from factory_tasks.core.contracts import ContractError
from factory_tasks.core.schema import TrainingDataError
from factory_tasks.core.text import shorten
from factory_tasks.loop.config import LoopConfigError
from factory_tasks.loop.selection import SelectionError
from factory_tasks.stages.paths import ConfigPathError
from factory_tasks.training.grid import GridError
from factory_tasks.warehouse.outcomes import OutcomeSchemaError


class ParamError(ValueError):
    """A run's param outside the range its DAG's Param schema declares."""


def in_range(name: str, value: object, low: float, high: float, *, whole: bool = False,
             above_low: bool = False) -> float:
    """``value`` when it is a finite number (a whole one if ``whole``) in ``[low, high]`` (``(low,
    high]`` with ``above_low``); else :class:`ParamError` naming the param and its range."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = numeric and (isinstance(value, int) if whole else math.isfinite(value))
    ok = ok and (low < value if above_low else low <= value) and value <= high
    if not ok:
        shown = shorten(repr(value), 40)
        kind = "a whole number" if whole else "a number"
        lower = f"above {low:g}" if above_low else f"from {low:g}"
        raise ParamError(f"param {name}: {shown} is out of range: give {kind} {lower} to {high:g}")
    return value


BAD_INPUT_ERRORS: tuple[type[Exception], ...] = (GridError, LoopConfigError, ConfigPathError, ParamError,
                                                 TrainingDataError, ContractError, OutcomeSchemaError,
                                                 SelectionError)
