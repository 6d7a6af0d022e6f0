"""One real HiveServer2 (Spark Thrift Server from the pyspark wheel) for this whole folder.

Needs Java 17. Without it the folder is skipped locally and fails under CI (``CI`` set), where
Java is installed on purpose.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

CONN_ID = "model_factory_warehouse"
CONN_ENV = "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.hive)


@pytest.fixture(scope="session")
def hive_server(tmp_path_factory):
    from tests.harness.hive import HiveServerError, find_java_home, start_hiveserver2

    try:
        find_java_home()
    except HiveServerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Java for the HiveServer2 tests: {exc}")
    started = time.monotonic()
    server = start_hiveserver2(tmp_path_factory.mktemp("hiveserver2"), timeout_s=180)
    print(f"\nHiveServer2 ready on port {server.port} in {time.monotonic() - started:.1f}s")
    yield server
    server.stop()


@pytest.fixture
def warehouse_conn(hive_server, monkeypatch):
    """The factory's warehouse connection id pointing at the session's HiveServer2."""
    monkeypatch.setenv(CONN_ENV, hive_server.conn_uri)
    return CONN_ID


@pytest.fixture
def hive_hook(warehouse_conn):
    from airflow.providers.apache.hive.hooks.hive import HiveServer2Hook

    return HiveServer2Hook(hiveserver2_conn_id=warehouse_conn)


@pytest.fixture
def sqlite_hook(tmp_path, monkeypatch):
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    # SqliteHook (4.3.4) reads "sqlite:///tmp/x.db" as the absolute path /tmp/x.db.
    path = (tmp_path / "warehouse.db").resolve().as_posix().lstrip("/")
    monkeypatch.setenv("AIRFLOW_CONN_TEST_SQLITE_WAREHOUSE", f"sqlite:///{path}")
    return SqliteHook(sqlite_conn_id="test_sqlite_warehouse")


@pytest.fixture
def fast_retries(monkeypatch):
    """Retry waits of zero, three attempts: retry behaviour without the waiting."""
    from tenacity import wait_none

    from factory_tasks.warehouse.hive import HiveDialect

    monkeypatch.setattr(HiveDialect, "retry_wait", wait_none())
    monkeypatch.setattr(HiveDialect, "retry_attempts", 3)


@pytest.fixture
def unique_table(request):
    """A table name of its own per test (all tests share one metastore)."""
    name = request.node.name.split("[")[0].replace("test_", "t_")
    suffix = request.node.callspec.id if hasattr(request.node, "callspec") else ""
    return "".join(ch if ch.isalnum() else "_" for ch in f"{name}_{suffix}".strip("_"))[:100]
