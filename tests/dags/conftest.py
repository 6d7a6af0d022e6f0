"""The DAG a test module names in ``DAG_ID``, parsed from its file as Airflow parses it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag(request):
    # Airflow puts the DAGs folder on sys.path at runtime (DAG files import ``assets``,
    # ``connections``); an in-process DagBag does not, so do what Airflow does.
    dag_id = request.module.DAG_ID
    added = str(DAGS) not in sys.path
    if added:
        sys.path.insert(0, str(DAGS))
    try:
        bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
        assert bag.import_errors == {}, bag.import_errors
        yield bag.dags[dag_id]
    finally:
        if added:
            sys.path.remove(str(DAGS))
