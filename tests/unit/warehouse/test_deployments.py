"""model_deployments: an append-only contract table on a real SQLite warehouse."""

from __future__ import annotations

import json

import pytest

from factory_tasks.core.contracts import ContractError, DeploymentRecord
from factory_tasks.warehouse.contract_table import ContractTable
from factory_tasks.warehouse.deployments import DEPLOYMENTS, record_deployment, serving
from tests.contract_factories import make_deployment


def _record(version: str, at: str, **over) -> DeploymentRecord:
    return make_deployment(version, at, **{"replaced_deployment_ids": ["d-old"], **over})


def test_the_latest_deployment_is_the_one_serving(hook):
    assert serving(hook) is None
    first = record_deployment(hook, _record("v1", "2026-12-01T10:00:00+00:00"))
    second = record_deployment(hook, _record("v2", "2026-12-01T12:00:00+00:00", chosen_by="review",
                                             chosen_by_user="ana", gate_override=True))
    assert serving(hook) == second
    assert DEPLOYMENTS.read_all(hook) == [first, second]  # lists and booleans round-trip as JSON


def test_a_row_that_breaks_the_contract_is_reported_not_skipped(hook):
    record_deployment(hook, _record("v1", "2026-12-01T10:00:00+00:00"))
    conn = hook.get_conn()
    with conn:
        conn.execute("UPDATE model_deployments SET chosen_by = 'magic'")
    conn.close()
    documents, problems = DEPLOYMENTS.read(hook)
    assert documents == [] and len(problems) == 1
    assert "table model_deployments row 1" in str(problems[0]) and "chosen_by" in str(problems[0])
    with pytest.raises(ContractError, match="model_deployments"):
        serving(hook)


def test_columns_follow_the_contract_types():
    table = ContractTable(DeploymentRecord)
    types = {c.name: c.type for c in table.columns}
    assert types["schema_version"] == "bigint" and types["model_version"] == "string"
    assert list(types) == list(DeploymentRecord.model_fields)


def test_a_table_of_an_older_version_gains_the_new_optional_columns(hook):
    """A model_deployments written before gate_evidence existed: reading it gives the default,
    the next deployment adds the column and round-trips the evidence; old rows stay."""
    from factory_tasks.core.contracts import PairedDifference
    from factory_tasks.warehouse.dialects import dialect_for

    old_columns = [c for c in DEPLOYMENTS.columns if c.name != "gate_evidence"]
    dialect_for(hook).create_table(hook, "model_deployments", old_columns)
    old = _record("v1", "2026-12-01T10:00:00+00:00").model_dump(mode="json")
    values = tuple(json.dumps(old[c.name]) if c.name in ("replaced_deployment_ids", "gate_override") else old[c.name]
                   for c in old_columns)
    dialect_for(hook).append_rows(hook, "model_deployments", old_columns, [values])
    [first] = DEPLOYMENTS.read_all(hook)
    assert first.model_version == "v1" and first.gate_evidence == []
    evidence = [PairedDifference(measure="policy_value", source="holdout", challenger=1.2, champion=1.0,
                                 difference=0.2, low=0.05, high=0.35, n_rows=400, method="paired bootstrap")]
    second = record_deployment(hook, _record("v2", "2026-12-01T12:00:00+00:00", gate_evidence=evidence))
    assert DEPLOYMENTS.read_all(hook) == [first, second]


def test_a_table_lacking_a_required_column_is_an_error_naming_it(hook):
    conn = hook.get_conn()
    with conn:
        conn.execute("CREATE TABLE model_deployments (schema_version INTEGER, model_version TEXT)")
    conn.close()
    with pytest.raises(ContractError, match="model_deployments.*required column.*model_name"):
        record_deployment(hook, _record("v1", "2026-12-01T10:00:00+00:00"))
