"""Assets shared by the Model Factory DAGs (the stages of the pipeline, as data).

Importing this module does no I/O. DAG files import it as ``assets`` (Airflow puts the DAGs
folder on ``sys.path``).
"""

from __future__ import annotations

from airflow.sdk import Asset

# Emitted by ``model_factory`` when it has recorded a run's outcomes in the warehouse table
# ``experiment_outcomes``. The scheme is the project's own (no provider normalises it), so the
# URI means the same whether the warehouse is Hive or the embedded SQLite file.
EXPERIMENT_OUTCOMES = Asset(
    name="experiment_outcomes",
    uri="model-factory://warehouse/experiment_outcomes",
    group="model_factory",
)
