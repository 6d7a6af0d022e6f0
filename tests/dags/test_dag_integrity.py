"""Every DAG file imports cleanly with no connections or secrets defined, and follows the house rules."""

from __future__ import annotations

from datetime import timedelta
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
    assert "customer_interactions" in dagbag.dag_ids
    assert "model_monitoring" in dagbag.dag_ids


@pytest.mark.parametrize("attribute", ["tags", "doc_md"])
def test_every_dag_is_documented_and_tagged(dagbag, attribute):
    missing = [dag_id for dag_id, dag in dagbag.dags.items() if not getattr(dag, attribute)]
    assert not missing, f"DAGs without {attribute}: {missing}"


def test_every_dag_retries_by_default(dagbag):
    no_retries = [dag_id for dag_id, dag in dagbag.dags.items() if not dag.default_args.get("retries")]
    assert not no_retries


def test_model_factory_shape(dagbag):
    dag = dagbag.dags["model_factory"]
    assert set(dag.params) >= {"grid_path", "max_parallel", "reuse_results", "include_interactions"}
    # the monitoring DAG's retrain trigger sets {"include_interactions": true}; off by default
    assert dag.params["include_interactions"] is False
    assert "customer_interactions" in dag.params.get_param("include_interactions").description
    assert dag.catchup is False
    tasks = dag.task_dict
    # long experiments are submitted first; waiting starts once everything is submitted
    assert tasks["submit_long_experiment"].downstream_task_ids == {
        "submit_short_experiment", "all_submitted", "wait_for_long_experiment", "collect_outcomes"}
    assert tasks["submit_short_experiment"].downstream_task_ids == {
        "all_submitted", "wait_for_short_experiment", "collect_outcomes"}
    assert str(tasks["submit_short_experiment"].trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    # the gate before the waits succeeds whatever the submissions did
    assert str(tasks["all_submitted"].trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert tasks["all_submitted"].downstream_task_ids == {"wait_for_long_experiment", "wait_for_short_experiment"}
    for wait in ("wait_for_long_experiment", "wait_for_short_experiment"):
        assert tasks[wait].downstream_task_ids == {"collect_outcomes"}
        assert str(tasks[wait].trigger_rule) in ("none_failed", "TriggerRule.NONE_FAILED")
    # under a scheduler each wait starts in the triggerer and reads its run from its submit's
    # XCom: what the scheduler sees is the serialized DAG
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag)).task_dict
    for wave in ("long", "short"):
        wait = serialized[f"wait_for_{wave}_experiment"]
        assert wait.start_from_trigger is True
        start = wait.start_trigger_args
        assert start.trigger_cls == "cml_provider.triggers.cml.CmlSubmittedRunTrigger"
        assert start.timeout == timedelta(seconds=2 * 60 * 60 + 600)
        kwargs = start.trigger_kwargs.get("__var", start.trigger_kwargs)  # kept serialization-encoded
        assert {k: kwargs[k] for k in ("run_task_id", "result_files_task_id", "cml_conn_id")} == {
            "run_task_id": f"submit_{wave}_experiment", "result_files_task_id": f"{wave}_experiments",
            "cml_conn_id": "cml_default"}
    assert str(tasks["collect_outcomes"].trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert [a.name for a in tasks["record_outcomes"].outlets] == ["experiment_outcomes"]


def test_deploy_best_model_shape(dagbag):
    dag = dagbag.dags["deploy_best_model"]
    assert "experiment_outcomes" in str(dag.timetable.asset_condition)  # scheduled on the asset
    assert set(dag.params) >= {"factory_run_id", "experiment_id", "review_window_minutes", "skip_review",
                               "ranking_margin", "policy_value_margin", "replicas"}
    tasks = dag.task_dict
    # the review (HITL) and the deferrable time sensor both close the window; either is enough
    assert type(tasks["review"]).__name__ in ("HITLOperator", "MappedOperator")
    assert type(tasks["wait_for_review_window"]).__name__ == "DateTimeSensorAsync"  # holds no worker slot
    assert str(tasks["review_closed"].trigger_rule) in ("one_success", "TriggerRule.ONE_SUCCESS")
    assert tasks["review_closed"].upstream_task_ids == {"review", "wait_for_review_window"}
    assert tasks["choose_experiment"].upstream_task_ids == {"resolve_run", "review_closed"}
    # the serving model is made the recorded one before anything else
    assert tasks["reconcile_serving"].upstream_task_ids == {"resolve_run"}
    assert tasks["review_request"].upstream_task_ids == {"resolve_run", "reconcile_serving"}
    chain = ["prepare_retrain", "retrain", "wait_for_retrain", "gate", "deploy_or_keep_champion",
             "publish_model", "deploy", "record_deployment"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in tasks[upstream].downstream_task_ids, (upstream, downstream)
    assert type(tasks["deploy"]).__name__ in ("CmlDeployModelOperator", "MappedOperator")
