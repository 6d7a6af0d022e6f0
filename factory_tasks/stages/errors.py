"""Which failures of a stage are the input's fault: an invalid grid file, a training table
without the interaction schema, a contract document that does not parse, an outcome table of
another schema. Retrying such a task fails the same way, so the DAGs fail it at once
(``dags/task_errors.py``) with the message the user needs; anything else keeps its retries."""

from __future__ import annotations

from factory_tasks.core.contracts import ContractError
from factory_tasks.core.schema import TrainingDataError
from factory_tasks.training.grid import GridError
from factory_tasks.warehouse.outcomes import OutcomeSchemaError

BAD_INPUT_ERRORS: tuple[type[Exception], ...] = (GridError, TrainingDataError, ContractError, OutcomeSchemaError)
