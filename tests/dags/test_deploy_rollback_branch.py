"""deploy_best_model's rollback branch, its own task code run in-process against a real SQLite
warehouse: the branch taken by param, a version never deployed and a rollback without a reason
failing at once (no retries), and the DAG rollback_requests' first task."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.context import set_current_context

from factory_tasks.core.contracts import DeploymentRecord
from factory_tasks.warehouse.deployments import DEPLOYMENTS, record_deployment
from factory_tasks.warehouse.rollbacks import request_rollback
from tests.sqlite_warehouse import SqliteWarehouse

DAG_ID = "deploy_best_model"
DAGS = Path(__file__).resolve().parents[2] / "dags"
T0 = datetime(2026, 12, 1, 8, tzinfo=timezone.utc)


@pytest.fixture
def warehouse(tmp_path, monkeypatch) -> SqliteWarehouse:
    """A SQLite warehouse behind the DAGs' connection, where v-a and then v-b were deployed."""
    from stack.env import sqlite_connection

    db = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE", sqlite_connection(db))
    hook = SqliteWarehouse(db)
    for n, version in enumerate(("v-a", "v-b")):
        record_deployment(hook, DeploymentRecord(
            model_version=version, model_name="next-best-offer", model_id="m1", build_id=f"b-{version}",
            deployment_id=f"d-{version}", access_key_ref="CML model m1: access_key", artifact_path="a",
            metadata_path="m", experiment_id="0123456789abcdef", factory_run_id="r", grid_hash="g",
            data_snapshot_hash="h", code_version="c", chosen_by="automatic", choice_reason="best",
            gate_reason="better", gate_override=False, deployed_at=T0.replace(hour=8 + n).isoformat()))
    return hook


@pytest.fixture(scope="module")
def rollback_dag():
    bag = DagBag(dag_folder=str(DAGS / "rollback_requests.py"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["rollback_requests"]


def _params(**over) -> dict:
    return {"factory_run_id": None, "experiment_id": None, "review_window_minutes": 120, "model_version": None,
            "requested_by": None, "reason": None, "cpu": 1.0, "memory_gb": 2.0, "replicas": 1, **over}


def run_task(dag, task_id: str, *, params: dict, user: str | None = None, **args):
    context = {"params": params, "triggering_asset_events": {},
               "dag_run": SimpleNamespace(run_after=T0, triggering_user_name=user),
               "ti": SimpleNamespace(start_date=T0, xcom_pull=lambda *a, **k: None)}
    with set_current_context(context):
        return dag.task_dict[task_id].python_callable(**args)


def test_the_deploy_path_unless_a_model_version_is_given(dag):
    assert run_task(dag, "deploy_or_rollback", params=_params()) == "resolve_run"
    assert run_task(dag, "deploy_or_rollback", params=_params(model_version="v-a")) == "rollback_target"


def test_a_version_never_deployed_fails_at_once_naming_it(dag, warehouse):
    with pytest.raises(AirflowFailException, match="'v-nope' was never deployed.*v-b, v-a"):
        run_task(dag, "rollback_target", params=_params(model_version="v-nope", requested_by="ana", reason="why"))


def test_a_rollback_needs_a_reason_and_someone_who_asks(dag, warehouse):
    with pytest.raises(AirflowFailException, match="param reason"):
        run_task(dag, "rollback_target", params=_params(model_version="v-a", requested_by="ana"))
    with pytest.raises(AirflowFailException, match="param requested_by"):
        run_task(dag, "rollback_target", params=_params(model_version="v-a", reason="why"))
    # by default, whoever triggered the run asks (checked before the version: v-nope fails later)
    with pytest.raises(AirflowFailException, match="v-nope"):
        run_task(dag, "rollback_target", params=_params(model_version="v-nope", reason="why"), user="admin")


def test_rollback_requests_triggers_nothing_then_the_pending_request(rollback_dag, warehouse):
    assert run_task(rollback_dag, "pending_rollback", params={}) == []
    request = request_rollback(warehouse, DEPLOYMENTS.read_all(warehouse), "v-a", "ana", "B drifts", T0.replace(hour=11))
    [run] = run_task(rollback_dag, "pending_rollback", params={})
    assert run["trigger_run_id"] == f"rollback__{request.request_id}"
    assert run["conf"] == {"model_version": "v-a", "requested_by": "ana", "reason": "B drifts"}


def test_a_rollback_deploys_with_the_runs_exploration(dag, tmp_path, monkeypatch):
    from factory_tasks.core.names import EXPLORATION_EPSILON_ENV, MODEL_VERSION_ENV

    store = tmp_path / "store"
    folder = store / "models" / "v-a"
    folder.mkdir(parents=True)
    for name in ("model.skops", "model.metadata.json"):  # the version's files, left by its first deployment
        (folder / name).write_bytes(b"x")
    monkeypatch.setenv("MODEL_FACTORY_OBJECT_STORE", f"file://{store}")
    rollback = {"target": {"model_version": "v-a"}, "requested_by": "ana", "reason": "B drifts"}
    for epsilon in (0.1, 0.25):
        [request] = run_task(dag, "publish_rollback", params=_params(model_version="v-a", exploration_epsilon=epsilon),
                             rollback=rollback)
        assert request["environment"][MODEL_VERSION_ENV] == "v-a"
        assert request["environment"][EXPLORATION_EPSILON_ENV] == repr(epsilon)  # the rolled-back model explores
