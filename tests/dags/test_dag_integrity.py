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
    assert "customer_interactions" in dagbag.dag_ids
    assert "model_monitoring" in dagbag.dag_ids


@pytest.mark.parametrize("attribute", ["tags", "doc_md"])
def test_every_dag_is_documented_and_tagged(dagbag, attribute):
    missing = [dag_id for dag_id, dag in dagbag.dags.items() if not getattr(dag, attribute)]
    assert not missing, f"DAGs without {attribute}: {missing}"


def test_every_dag_retries_by_default(dagbag):
    no_retries = [dag_id for dag_id, dag in dagbag.dags.items() if not dag.default_args.get("retries")]
    assert not no_retries


def _serialized(dag):
    """The DAG as the scheduler sees it."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def test_no_pooled_or_mapped_task_starts_from_the_triggerer(dagbag):
    """Airflow 3.3 defers a ``start_from_trigger`` task as it schedules it (``DagRun.schedule_tis``
    -> ``TaskInstance.defer_task``), outside the pool check, which admits only SCHEDULED
    instances: every mapped ``run_experiment`` would be in flight at once, whatever the pool's
    size. Mapped tasks starting in the triggerer are unsupported upstream too
    (apache/airflow#48009). Why, measured: docs/benchmarks.md, ``grid_scale``."""
    offending = [f"{dag_id}.{task.task_id}" for dag_id, dag in dagbag.dags.items()
                 for task in _serialized(dag).task_dict.values()
                 if task.start_from_trigger and (task.is_mapped or task.pool != "default_pool")]
    assert not offending, f"pooled or mapped tasks that start in the triggerer: {offending}"


def _critical_path(dag) -> list[str]:
    """The longest chain of task hand-offs from a root to a leaf."""
    longest: dict[str, list[str]] = {}

    def path(task_id: str) -> list[str]:
        if task_id not in longest:
            below = [path(d) for d in dag.task_dict[task_id].downstream_task_ids]
            longest[task_id] = [task_id, *max(below, key=len, default=[])]
        return longest[task_id]

    return max((path(t) for t in dag.task_dict), key=len)


def test_model_factory_shape(dagbag):
    dag = dagbag.dags["model_factory"]
    assert set(dag.params) == {"grid_path", "max_parallel", "reuse_results", "include_interactions",
                               "review_window_minutes", "loop_config_path", "challenger_share"}
    # the monitoring DAG's retrain trigger sets {"include_interactions": true}; off by default
    assert dag.params["include_interactions"] is False
    assert "customer_interactions" in dag.params.get_param("include_interactions").description
    assert dag.params["review_window_minutes"] is None  # the deploy DAG's own default
    assert dag.params["challenger_share"] is None  # likewise: the deploy DAG decides unless a retrain says
    assert dag.catchup is False
    # three hand-offs, whatever the grid: plan, one mapped instance per experiment, record
    assert _critical_path(dag) == ["plan_experiments", "run_experiment", "record_outcomes"]
    assert set(dag.task_dict) == {"plan_experiments", "run_experiment", "record_outcomes"}
    serialized = _serialized(dag).task_dict
    experiments = serialized["run_experiment"]
    assert experiments.is_mapped and experiments.task_type == "CmlJobRunOperator"
    # the pool caps the runs in flight; each instance submits, then defers until its run ends
    assert experiments.pool == "model_factory_experiments"
    partial = experiments.partial_kwargs
    assert partial["wait_for_completion"] is True
    assert partial["wait_timeout"] == 2 * 60 * 60 + 600
    assert partial["cml_conn_id"] == "cml_default"
    assert experiments.retries == 2  # a retry waits for the same run (the operator's TI-key marker)
    # mapped over the plan's list itself: each item is one run's operator kwargs
    assert experiments.upstream_task_ids == {"plan_experiments"}
    # recorded whatever the experiments did, failed ones included
    record = serialized["record_outcomes"]
    assert str(record.trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert record.upstream_task_ids == {"run_experiment"}
    assert [a.name for a in dag.task_dict["record_outcomes"].outlets] == ["experiment_outcomes"]


def test_deploy_best_model_shape(dagbag):
    dag = dagbag.dags["deploy_best_model"]
    assert "experiment_outcomes" in str(dag.timetable.asset_condition)  # scheduled on the asset
    assert set(dag.params) == {"factory_run_id", "experiment_id", "review_window_minutes", "ranking_margin",
                               "policy_value_margin", "loop_config_path", "replicas", "cpu", "memory_gb",
                               "exploration_epsilon", "challenger_share", "model_version", "requested_by", "reason",
                               "test_verdict"}
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
    chain = ["prepare_retrain", "retrain", "gate", "override_request", "override_review", "final_decision",
             "deploy_or_keep_champion", "publish_model", "deploy", "record_deployment"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in tasks[upstream].downstream_task_ids, (upstream, downstream)
    # a kept champion's override review is skipped unless the gate kept one: the decision still follows
    assert type(tasks["override_review"]).__name__ in ("HITLOperator", "MappedOperator")
    assert str(tasks["final_decision"].trigger_rule) in ("none_failed_min_one_success",
                                                         "TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS")
    assert tasks["final_decision"].upstream_task_ids == {"gate", "override_review"}
    assert "final_decision" in tasks["record_deployment"].upstream_task_ids
    # the record reads the deployment's policy (an A/B test's split) from what was published
    assert "publish_model" in tasks["record_deployment"].upstream_task_ids
    assert type(tasks["deploy"]).__name__ in ("CmlDeployModelOperator", "MappedOperator")
    # the retrain submits its run and waits for it in the triggerer: one task, no sensor
    retrain = _serialized(dag).task_dict["retrain"]
    assert retrain.partial_kwargs["wait_for_completion"] is True
    assert not any(t.startswith("wait_for_retrain") for t in tasks)
    # a rollback (param model_version) branches off before anything of the deploy path runs
    assert tasks["deploy_or_rollback"].downstream_task_ids == {"resolve_run", "rollback_target"}
    assert tasks["resolve_run"].upstream_task_ids == {"deploy_or_rollback"}
    rollback = ["rollback_target", "publish_rollback", "deploy_rollback", "record_rollback"]
    for upstream, downstream in zip(rollback, rollback[1:]):
        assert downstream in tasks[upstream].downstream_task_ids, (upstream, downstream)
    assert not {"review", "retrain", "gate"} & (tasks["rollback_target"].get_flat_relative_ids(upstream=False))
    assert "publish_rollback" in tasks["record_rollback"].upstream_task_ids
    assert type(tasks["deploy_rollback"]).__name__ in ("CmlDeployModelOperator", "MappedOperator")
    assert _serialized(dag).task_dict["deploy_rollback"].task_type == "CmlDeployModelOperator"


def test_rollback_requests_shape(dagbag):
    dag = dagbag.dags["rollback_requests"]
    assert dag.catchup is False and dag.max_active_runs == 1
    trigger = _serialized(dag).task_dict["trigger_rollback"]
    assert trigger.is_mapped and trigger.task_type == "TriggerDagRunOperator"
    assert trigger.upstream_task_ids == {"pending_rollback"}
    # one deploy run per request (its id): a later poll never triggers it twice
    assert trigger.partial_kwargs["trigger_dag_id"] == "deploy_best_model"
    assert trigger.partial_kwargs["skip_when_already_exists"] is True
