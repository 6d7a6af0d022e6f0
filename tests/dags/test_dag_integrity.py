"""Every DAG file imports cleanly with no connections or secrets defined, and follows the house rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors


def test_expected_dags_are_defined(dagbag):
    assert "model_factory" in dagbag.dag_ids


@pytest.mark.parametrize("attribute", ["tags", "doc_md"])
def test_every_dag_is_documented_and_tagged(dagbag, attribute):
    missing = [dag_id for dag_id, dag in dagbag.dags.items() if not getattr(dag, attribute)]
    assert not missing, f"DAGs without {attribute}: {missing}"


def test_every_dag_retries_by_default(dagbag):
    no_retries = [dag_id for dag_id, dag in dagbag.dags.items() if not dag.default_args.get("retries")]
    assert not no_retries


def test_model_factory_shape(dagbag):
    dag = dagbag.dags["model_factory"]
    assert set(dag.params) >= {"grid_path", "max_parallel", "reuse_results"}
    assert dag.catchup is False
    tasks = dag.task_dict
    assert tasks["submit_experiment"].downstream_task_ids == {"wait_for_experiment"}
    assert "collect_outcomes" in tasks["wait_for_experiment"].downstream_task_ids
    assert str(tasks["collect_outcomes"].trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert [a.name for a in tasks["record_outcomes"].outlets] == ["experiment_outcomes"]
