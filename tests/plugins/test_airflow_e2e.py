"""The CML provider inside real Airflow: ``airflow dags test`` of a fixture DAG against the workspace.

Exercises what unit tests cannot: a mapped operator expanded from kwargs, its run trigger
resumed by Airflow's own deferral machinery, the failure of one instance with its job's own
error, and the connection read from ``AIRFLOW_CONN_CML_DEFAULT`` by worker and triggerer code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cml_provider.states import JobRunStatus

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).parent / "dags"


def run_bounded(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command in its own process group; SIGKILL the group on timeout
    (``airflow dags test`` ignores SIGTERM)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[2:5])} did not finish in {timeout}s:\n{out[-5000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def test_mapped_runs_waited_for_in_the_triggerer_in_airflow(workspace, hook, tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
        "AIRFLOW_CONN_CML_DEFAULT": json.dumps(
            {
                "conn_type": "cml",
                "host": workspace.url,
                "password": workspace.api_key,
                "extra": {"project_name": "plugins-tests", "runtime_identifier": "local"},
            }
        ),
    }
    migrate = run_bounded([sys.executable, "-m", "airflow", "db", "migrate"], env, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-5000:]

    result = run_bounded(
        [sys.executable, "-m", "airflow", "dags", "test", "cml_provider_e2e"], env, timeout=400
    )
    out = result.stdout
    assert workspace.api_key not in out
    # the failed experiment's task names its run, its status and the job's own error
    assert "ended with ENGINE_FAILED. Error from e2e/2.json: boom from the job" in out, out[-5000:]
    assert "AirflowFailException" in out, out[-5000:]
    assert "state=failed" in out  # the DAG run fails because one experiment failed
    # the other two succeeded: their triggers ended them (``dags test`` then hands the task-end
    # event's payload to the task, where the scheduler's triggerer would end the task itself)
    assert out.count("succeeded; the task ends here, in the triggerer") == 2, out[-5000:]
    assert out.count("new_state=success") == 2, out[-5000:]

    job = hook.find_job("e2e-0.5cpu")
    runs = hook.list_job_runs(job.id)
    assert len(runs) == 3  # one run per mapped task instance, none duplicated
    assert sorted(r.status for r in runs) == sorted(
        [JobRunStatus.SUCCEEDED, JobRunStatus.SUCCEEDED, JobRunStatus.FAILED]
    )
    map_indexes = {r.environment["MF_AIRFLOW_TI_KEY"].rsplit("/", 1)[1] for r in runs}
    assert map_indexes == {"0", "1", "2"}
