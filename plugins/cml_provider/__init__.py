"""Cloudera Machine Learning (API v2) integration for Airflow, packaged like a provider.

- :mod:`cml_provider.hooks.cml` — ``CmlHook``, the only code that speaks HTTP to API v2 and
  the model service (its configuration in :mod:`cml_provider.hooks.connection`, its choke point
  in :mod:`cml_provider.hooks.cml_base`, its endpoints by area in :mod:`~cml_provider.hooks.jobs`,
  :mod:`~cml_provider.hooks.files`, :mod:`~cml_provider.hooks.model_builds` and
  :mod:`~cml_provider.hooks.deployments`, the endpoint table in :mod:`cml_provider.hooks.endpoints`)
- :mod:`cml_provider.hooks.airflow_pool` — ``AirflowPoolHook`` (sizes an Airflow pool over Airflow's REST API)
- :mod:`cml_provider.operators.cml` — ``CmlJobRunOperator`` (idempotent job-run submit, and the wait for it)
- :mod:`cml_provider.operators.deploy` — ``CmlDeployModelOperator`` (build, deploy, smoke-test, replace)
- :mod:`cml_provider.sensors.cml` — ``CmlJobRunSensor`` (deferrable wait)
- :mod:`cml_provider.triggers.cml` — ``CmlJobRunTrigger``
- :mod:`cml_provider.triggers.deploy` — ``CmlModelBuildTrigger``, ``CmlModelDeploymentTrigger``
- :mod:`cml_provider.states` — ``JobRunStatus``, ``CmlBuildStatus``, ``CmlDeploymentStatus``
- :mod:`cml_provider.models` — value types (``CmlJob``, ``CmlModel``, ``CmlModelDeployment``, ...)
- :mod:`cml_provider.errors` — ``CmlError`` and its subclasses
"""

__version__ = "0.1.0"

_INTEGRATION = "Cloudera Machine Learning"
_POOLS = "Airflow pools"


def get_provider_info() -> dict:
    """Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point.

    The connection form is declared here (``ui-field-behaviour``, ``conn-fields``), as Airflow
    3.2+ prefers, so the UI needs no hook import; ``CmlHook.get_ui_field_behaviour()`` says the
    same for older readers.
    """
    return {
        "package-name": "model-factory",
        "name": "Cloudera Machine Learning (Model Factory)",
        "description": "Hook, operators, sensors and triggers for CML REST API v2.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://docs.cloudera.com/machine-learning/cloud/api/topics/ml-api-v2.html",
                "tags": ["service"],
            },
            {
                "integration-name": _POOLS,
                "external-doc-url": "https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html",
                "tags": ["software"],
            },
        ],
        "hooks": [
            {"integration-name": _INTEGRATION, "python-modules": ["cml_provider.hooks.cml"]},
            {"integration-name": _POOLS, "python-modules": ["cml_provider.hooks.airflow_pool"]},
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["cml_provider.operators.cml", "cml_provider.operators.deploy"],
            }
        ],
        "sensors": [{"integration-name": _INTEGRATION, "python-modules": ["cml_provider.sensors.cml"]}],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["cml_provider.triggers.cml", "cml_provider.triggers.deploy"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "cml",
                "hook-class-name": "cml_provider.hooks.cml.CmlHook",
                "hook-name": _INTEGRATION,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Workspace URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://ml-xxxx.cloudera.site",
                        "password": "CML API v2 key",
                        "extra": '{"project_name": "model-factory"}',
                    },
                },
                "conn-fields": {
                    "project_id": {
                        "label": "Project id",
                        "description": "CML project id (or set the project name instead)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "project_name": {
                        "label": "Project name",
                        "description": "CML project name, looked up when no project id is set",
                        "schema": {"type": ["string", "null"]},
                    },
                    "runtime_identifier": {
                        "label": "Default ML Runtime",
                        "description": "Runtime image for jobs and model builds created without one "
                        "(ML Runtimes projects need one)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "model_service_url": {
                        "label": "Model service URL",
                        "description": "Where deployed models answer (POST <url>/model); "
                        "default https://modelservice.<workspace host>",
                        "schema": {"type": ["string", "null"]},
                    },
                    "model_api_key": {
                        "label": "Model API key",
                        "description": "Bearer key for models with authentication enabled; default the API key",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                },
            }
        ],
    }
