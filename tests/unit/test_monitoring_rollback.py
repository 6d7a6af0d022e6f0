"""The monitoring dashboard's deployment history and rollback request, as components on a real
SQLite warehouse (the browser test drives the served page)."""

from __future__ import annotations

from dashboards.monitoring.sample_data import write_sample_monitoring
from dashboards.monitoring.store import MonitoringStore, deployment_history, gate_evidence
from dashboards.monitoring.views import RollbackPanel, lineage_markdown
from factory_tasks.core.contracts import DeploymentRecord
from factory_tasks.warehouse.deployments import DEPLOYMENTS
from factory_tasks.warehouse.rollbacks import ROLLBACK_REQUESTS
from tests.sqlite_warehouse import SqliteWarehouse


def _store(tmp_path) -> MonitoringStore:
    db = tmp_path / "warehouse.db"
    write_sample_monitoring(db, 300, seed=1)
    return MonitoringStore(warehouse=SqliteWarehouse(db))


def test_history_newest_first_and_the_gate_evidence_of_each_deployment(tmp_path):
    store = _store(tmp_path)
    history = deployment_history(store.data.deployments)
    assert history["model_version"].tolist() == ["v2", "v1"] and history["action"].tolist() == ["deploy"] * 2
    assert history["chosen_by"].tolist() == ["promotion by reviewer", "automatic"]
    evidence = gate_evidence(store.data.deployments)
    assert evidence["model_version"].tolist() == ["v2", "v2"]
    assert evidence["measure"].tolist() == ["roc_auc", "policy_value"] and evidence["low"].tolist() == [0.012, 0.04]
    assert store.data.rollback_versions == ["v1"]


def test_a_signed_in_reviewer_requests_a_rollback_and_nobody_else_can(tmp_path):
    store = _store(tmp_path)
    anonymous = RollbackPanel(store=store, identify=lambda: "")
    assert anonymous.button.disabled
    anonymous.reason = "why"
    anonymous._request()
    assert "nobody is signed in" in anonymous.message and ROLLBACK_REQUESTS.read_all(store.warehouse) == []
    panel = RollbackPanel(store=store, identify=lambda: "ana")
    panel._request()
    assert "needs a reason" in panel.message and ROLLBACK_REQUESTS.read_all(store.warehouse) == []
    panel.reason = "v2 drifts"
    panel._request()
    [request] = ROLLBACK_REQUESTS.read_all(store.warehouse)
    assert (request.model_version, request.requested_by, request.reason) == ("v1", "ana", "v2 drifts")
    assert panel.message_type == "success" and f"rollback__{request.request_id}" in panel.message
    assert "pending" in panel.requests.object  # read again at once, not at the next refresh


def test_the_lineage_of_a_rollback_says_who_asked_and_why(tmp_path):
    store = _store(tmp_path)
    first = next(d for d in store.data.deployments if d.model_version == "v1")
    DEPLOYMENTS.append(store.warehouse, DeploymentRecord.from_data(
        {**first.model_dump(mode="json"), "deployment_id": "again", "deployed_at": "2099-01-01T00:00:00+00:00",
         "action": "rollback", "requested_by": "ana", "request_reason": "v2 drifts"}, "test"))
    store.reload(max_age=0)
    text = lineage_markdown(store.data)
    assert "Serving model <code>v1</code>" in text and "Rolled back at the request of **ana**: v2 drifts" in text
    assert deployment_history(store.data.deployments)["chosen_by"].iloc[0] == "rollback asked by ana: v2 drifts"
