"""The production-topology tests need PostgreSQL and Redis from Debian's packages, the Celery
provider and a Postgres driver. Missing on a developer machine: skipped with the reason; in CI
(CI=true, where ``scripts/ensure-system-deps.sh`` and the test extra install them): failed,
never skipped (the suite's policy, tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.harness.topology import postgres_bin, redis_bin

IN_CI = os.environ.get("CI") == "true"


def _missing() -> list[str]:
    missing = []
    if postgres_bin() is None:
        missing.append("PostgreSQL (apt-get install postgresql)")
    if redis_bin() is None:
        missing.append("Redis (apt-get install redis-server)")
    for module, package in (("airflow.providers.celery", "apache-airflow-providers-celery"),
                            ("psycopg2", "psycopg2-binary")):
        if not _importable(module):
            missing.append(f"{package} (make test installs the test extra)")
    return missing


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(autouse=True)
def _topology_requirements():
    missing = _missing()
    if missing:
        message = f"{', '.join(missing)} not installed (scripts/ensure-system-deps.sh installs the system ones in CI)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
