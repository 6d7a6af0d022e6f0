"""The experiments_summary DAG: parses, schedules on cron OR the outcomes asset, and really runs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.warehouse.outcomes import OutcomeStore
from factory_tasks.warehouse.summary import read_summary

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_ID = "experiments_summary"
AIRFLOW = Path(sys.executable).parent / "airflow"


def test_schedule_is_cron_or_the_outcomes_asset(dag):
    schedule = dag.timetable
    assert type(schedule).__name__ == "AssetOrTimeSchedule"
    assert type(schedule.timetable).__name__ == "CronTriggerTimetable"
    assert schedule.timetable.expression == "*/30 * * * *"
    assert str(schedule.timetable.timezone) == "UTC"
    assets = [a for a in schedule.asset_condition.objects]
    assert [(a.name, a.uri) for a in assets] == [
        ("experiment_outcomes", "model-factory://warehouse/experiment_outcomes")
    ]


def test_dag_house_rules(dag):
    assert dag.catchup is False
    assert dag.tags and dag.doc_md and "experiments_summary.csv" in dag.doc_md
    assert dag.default_args["retries"] >= 1
    assert dag.start_date.tzinfo is not None
    assert list(dag.task_dict) == ["refresh_experiments_summary"]


def test_asset_uri_is_stable(dag):
    from assets import EXPERIMENT_OUTCOMES

    assert EXPERIMENT_OUTCOMES.name == "experiment_outcomes"
    assert EXPERIMENT_OUTCOMES.uri == "model-factory://warehouse/experiment_outcomes"


def _seed_warehouse(db: Path) -> None:
    class Hook:
        conn_type = "sqlite"

        def get_conn(self):
            return sqlite3.connect(db)

    def row(experiment_id: str, **values) -> dict:
        out = dict.fromkeys(OUTCOME_COLUMN_NAMES)
        out.update(factory_run_id="run_1", experiment_id=experiment_id, family="random_forest",
                   estimator="RandomForestClassifier", params_json='{"n_estimators": 50}', cv_folds=3,
                   ranking_metric="roc_auc", recorded_at="2026-03-01T00:00:00+00:00", **values)
        return out

    rows = [
        row("feedc0ffee000001", status="succeeded", ranking_score=0.7, roc_auc_mean=0.7,
            roc_auc_folds="[0.69, 0.7, 0.71]"),
        row("feedc0ffee000002", status="failed", error="the job run ended failed and left no result file",
            run_status="failed"),
    ]
    OutcomeStore(Hook()).replace_run("run_1", rows)


def _run(cmd, env, timeout):
    """Run an Airflow CLI command in its own process group; SIGKILL the group on timeout."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish in {timeout}s:\n{out[-4000:]}")
    return proc.returncode, out


@pytest.mark.e2e
def test_dags_test_writes_the_summary_from_the_real_warehouse(tmp_path):
    db = tmp_path / "warehouse.db"
    _seed_warehouse(db)
    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(db)}),
        "MODEL_FACTORY_ARTIFACTS": str(tmp_path / "artifacts"),
        # The summary goes to the object store's base URL, not to the artifacts folder.
        "MODEL_FACTORY_OBJECT_STORE": f"file://{tmp_path}/object store",
        "PATH": f"{AIRFLOW.parent}:{os.environ.get('PATH', '')}",
    }
    code, out = _run([str(AIRFLOW), "db", "migrate"], env, 300)
    assert code == 0, out[-4000:]
    code, out = _run([str(AIRFLOW), "dags", "test", "experiments_summary", "2026-03-01T00:30:00+00:00"], env, 300)
    assert code == 0, out[-4000:]
    summary = f"file://{tmp_path}/object store/experiments_summary/experiments_summary.csv"
    frame = read_summary(summary)
    assert not (tmp_path / "artifacts" / "experiments_summary").exists()
    assert list(frame["experiment_id"]) == ["feedc0ffee000001", "feedc0ffee000002"]
    assert list(frame["status"]) == ["succeeded", "failed"]
    assert "wrote 2 experiment rows" in out
