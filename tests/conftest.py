"""Suite-wide policy: tests that need a system dependency never silently pass.

Where Java (HiveServer2) or Chromium (browser tests) is missing, such tests are skipped on a
developer machine with the reason, and fail in CI (CI=true), where `make test` installs both.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Airflow reads its home on import: give the suite its own, never ~/airflow or var/.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="mf-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
# As in the scheduler, DAG files import their shared modules (assets, connections) by name.
sys.path.insert(0, str(REPO / "dags"))
IN_CI = os.environ.get("CI") == "true"

_REQUIREMENTS = {
    "hive": ("Java 17 (HiveServer2)", lambda: shutil.which("java") is not None),
    "browser": ("Chromium (/usr/bin/chromium)", lambda: Path("/usr/bin/chromium").exists()),
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, (what, present) in _REQUIREMENTS.items():
        if item.get_closest_marker(marker) and not present():
            message = f"{what} is not installed (scripts/ensure-system-deps.sh installs it)"
            if IN_CI:
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
