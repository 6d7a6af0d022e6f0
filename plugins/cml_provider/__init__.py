"""Cloudera Machine Learning (API v2) integration for Airflow, packaged like a provider."""

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "model-factory",
        "name": "Cloudera Machine Learning (Model Factory)",
        "description": "Hook, operators, sensors and triggers for CML REST API v2.",
        "versions": [__version__],
        "connection-types": [
            {"connection-type": "cml", "hook-class-name": "cml_provider.hooks.cml.CmlHook"}
        ],
    }
