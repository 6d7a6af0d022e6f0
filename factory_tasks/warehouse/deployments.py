"""``model_deployments``: one :class:`~factory_tasks.core.contracts.DeploymentRecord` per deployment.

Append-only (SQLite or Hive). The model now serving is the latest record: a deployment that
failed never gets a record, and the deploy operator stops the previous deployment only after
the new one answered its smoke test.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from factory_tasks.core.contracts import DeploymentRecord
from factory_tasks.warehouse.contract_table import ContractTable

DEPLOYMENTS = ContractTable(DeploymentRecord)


def record_deployment(hook: Any, record: DeploymentRecord) -> DeploymentRecord:
    DEPLOYMENTS.append(hook, record)
    return record


def serving(hook: Any) -> DeploymentRecord | None:
    """The deployment now serving (the latest record), or None before the first deployment."""
    records = DEPLOYMENTS.read_all(hook)
    return max(records, key=lambda r: datetime.fromisoformat(r.deployed_at)) if records else None
