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


def deployed_at(record: DeploymentRecord) -> datetime:
    """When ``record``'s deployment was made: the order of ``model_deployments``."""
    return datetime.fromisoformat(record.deployed_at)


def latest(records: list[DeploymentRecord]) -> DeploymentRecord | None:
    """The record serving among ``records`` (the latest), or None when there is none."""
    return max(records, key=deployed_at) if records else None


def serving(hook: Any) -> DeploymentRecord | None:
    """The deployment now serving (the latest record), or None before the first deployment."""
    return latest(DEPLOYMENTS.read_all(hook))


def champion_record(records: list[DeploymentRecord]) -> DeploymentRecord | None:
    """The record of the model deciding for the champion arm: the serving one, or during an A/B
    test (an ``ab_start`` record serving) the champion's latest record before it."""
    now = latest(records)
    if now is None or now.champion_version is None:
        return now
    earlier = [r for r in records if r.model_version == now.champion_version and deployed_at(r) <= deployed_at(now)]
    if not earlier:
        raise LookupError(f"{DEPLOYMENTS.table}: the A/B test of deployment {now.deployment_id} names the champion "
                          f"{now.champion_version}, which has no record of its own")
    return latest(earlier)


def champion(hook: Any) -> DeploymentRecord | None:
    """:func:`champion_record` of ``model_deployments``: the model a challenger is gated against."""
    return champion_record(DEPLOYMENTS.read_all(hook))
