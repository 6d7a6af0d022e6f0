"""The embedded default's history: the ``historical_customer_interactions`` table filled by the
simulator when a warehouse has none, so the factory has randomized offers to learn from on a
machine without real customer data."""

from __future__ import annotations

import logging
from typing import Any

from factory_tasks.core.schema import TRAINING_TABLE
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.sql import checked_identifier
from factory_tasks.warehouse.training_data import INTERACTION_SCHEMA, conform

log = logging.getLogger(__name__)


def ensure_training_table(hook: Any, *, n_rows: int, seed: int, table: str = TRAINING_TABLE) -> bool:
    """Create ``table`` filled by the simulator if it does not exist. Returns True if created."""
    dialect = dialect_for(hook)
    if dialect.table_exists(hook, checked_identifier(table)):
        return False
    frame = conform(simulate_interactions(n_rows=n_rows, seed=seed), "simulator")
    dialect.create_table(hook, table, INTERACTION_SCHEMA)
    dialect.append_rows(hook, table, INTERACTION_SCHEMA, frame.itertuples(index=False, name=None))
    log.info("created %s with %d simulated rows (seed %d)", table, len(frame), seed)
    return True
