"""Provider metadata: valid for Airflow's schema, registered, and the operators map in a DAG."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import airflow
import jsonschema
import pendulum
from airflow.sdk import DAG
from cml_provider import get_provider_info
from cml_provider.hooks.cml import CmlHook
from cml_provider.operators.cml import CmlJobRunOperator
from cml_provider.sensors.cml import CmlJobRunSensor


def test_provider_info_matches_airflows_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_connection_form_agrees_with_the_hook():
    [conn] = get_provider_info()["connection-types"]
    assert conn["connection-type"] == CmlHook.conn_type
    assert conn["hook-name"] == CmlHook.hook_name
    declared = conn["ui-field-behaviour"]
    behaviour = CmlHook.get_ui_field_behaviour()
    assert declared["hidden-fields"] == behaviour["hidden_fields"]
    assert declared["relabeling"] == behaviour["relabeling"]
    assert {"project_id", "project_name", "runtime_identifier"} <= set(conn["conn-fields"])


def test_airflow_registers_the_cml_connection_type():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hook_info = ProvidersManagerTaskRuntime().hooks["cml"]
        behaviours = ProvidersManager().field_behaviours
    assert hook_info.hook_class_name == "cml_provider.hooks.cml.CmlHook"
    assert hook_info.connection_id_attribute_name == "cml_conn_id"
    assert behaviours["cml"]["relabeling"]["password"] == "API key"


def test_the_pool_hook_is_listed_and_importable():
    import importlib

    modules = [m for hooks in get_provider_info()["hooks"] for m in hooks["python-modules"]]
    assert "cml_provider.hooks.airflow_pool" in modules
    assert all(importlib.import_module(m) for m in modules)


def test_operators_map_in_a_dag_without_touching_the_network():
    with DAG("cml_mapping", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
        run = CmlJobRunOperator.partial(
            task_id="run", pool="experiments", wait_for_completion=True, poll_interval=5, retries=2
        ).expand_kwargs([
            {"job_name": "exp-1cpu", "script": "experiment.py", "environment": {"EXPERIMENT_ID": "a"},
             "result_file": "results/a.json"},
        ])
        submit = CmlJobRunOperator.partial(task_id="submit", job_name="exp-1cpu", script="experiment.py").expand(
            environment=[{"EXPERIMENT_ID": "a"}, {"EXPERIMENT_ID": "b"}]
        )
        wait = CmlJobRunSensor.partial(task_id="wait", result_file="results/x.json").expand(run=submit.output)
    assert wait.upstream_task_ids == {"submit"}
    assert run.partial_kwargs["pool"] == "experiments"
