"""Every numeric param of every DAG is bounded in its Param schema: a conf the REST API or
the UI would accept must be one the tasks can run with (an unbounded integer passed the check,
then failed every task with an OverflowError only the scheduler's log showed).

The conf goes through what a trigger goes through: the serialized DAG's params, merged with the
conf and validated (``create_dagrun``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dags():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}, bag.import_errors
    return {dag_id: DagSerialization.from_dict(DagSerialization.to_dict(dag)) for dag_id, dag in bag.dags.items()}


def _trigger(dag, conf: dict) -> dict:
    return dag.params.deep_merge(conf).validate()


@pytest.mark.parametrize("dag_id, conf", [
    ("model_factory", {"max_parallel": 100000000000000000000}),
    ("model_factory", {"max_parallel": 0}),
    ("model_factory", {"review_window_minutes": 1e308}),
    ("model_factory", {"review_window_minutes": -1}),
    ("deploy_best_model", {"review_window_minutes": 1e308}),
    ("deploy_best_model", {"ranking_margin": 1e308}),
    ("deploy_best_model", {"policy_value_margin": 1e308}),
    ("deploy_best_model", {"replicas": 100000000000000000000}),
    ("deploy_best_model", {"cpu": 1e308}),
    ("deploy_best_model", {"memory_gb": 1e308}),
    ("deploy_best_model", {"exploration_epsilon": 0.9}),
    ("deploy_best_model", {"exploration_epsilon": -0.1}),
    ("deploy_best_model", {"challenger_share": 0.6}),
    ("deploy_best_model", {"challenger_share": -0.1}),
    ("deploy_best_model", {"test_verdict": "maybe"}),
])
def test_an_out_of_range_number_is_refused_at_trigger(dags, dag_id, conf):
    (name,) = conf
    with pytest.raises(ParamValidationError, match=f"param {name}"):
        _trigger(dags[dag_id], conf)


def test_every_numeric_param_has_both_bounds(dags):
    unbounded = []
    for dag_id, dag in dags.items():
        for name in dag.params:
            schema = dag.params.get_param(name).schema
            types = schema.get("type")
            types = set(types) if isinstance(types, list) else {types}
            if types & {"integer", "number"}:
                low = "minimum" in schema or "exclusiveMinimum" in schema
                high = "maximum" in schema or "exclusiveMaximum" in schema
                if not (low and high):
                    unbounded.append(f"{dag_id}.{name}")
    assert not unbounded, f"numeric params without a minimum and a maximum: {unbounded}"


def test_the_defaults_and_sensible_values_still_pass(dags):
    assert _trigger(dags["model_factory"], {"max_parallel": 8})["max_parallel"] == 8
    assert _trigger(dags["model_factory"], {})["max_parallel"] is None
    # the window model_factory passes on to the deploy it triggers: a number, or null for the deploy's default
    assert _trigger(dags["model_factory"], {"review_window_minutes": 0.5})["review_window_minutes"] == 0.5
    assert _trigger(dags["model_factory"], {})["review_window_minutes"] is None
    deploy = _trigger(dags["deploy_best_model"], {"review_window_minutes": 24 * 60, "replicas": 4})
    assert deploy["review_window_minutes"] == 24 * 60 and deploy["replicas"] == 4
    assert deploy["exploration_epsilon"] == 0.1  # the deployment explores unless told otherwise
    assert _trigger(dags["deploy_best_model"], {"exploration_epsilon": 0})["exploration_epsilon"] == 0
    assert deploy["challenger_share"] == 0 and deploy["test_verdict"] is None  # replaces the champion, no test
    assert _trigger(dags["deploy_best_model"], {"challenger_share": 0.2})["challenger_share"] == 0.2
    assert _trigger(dags["deploy_best_model"], {"test_verdict": "promote"})["test_verdict"] == "promote"
