"""The model_monitoring DAG: its shape, and a real ``airflow dags test`` on a simulated window.

The warehouse (SQLite) holds four hourly cohorts of simulated predictions and their delayed
responses; the newest cohort's customers come from a shifted channel mix (covariate drift).
The CML connection points at a real local workspace holding the deployed model's metadata and
its training snapshot (no model endpoint is needed).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from factory_tasks.loop.alerts import ALERTS
from factory_tasks.loop.simulator import simulate_customers
from factory_tasks.warehouse.deployments import DEPLOYMENTS
from tests.dags.test_experiments_summary_dag import _run
from tests.monitoring_window import (
    HOUR_MS,
    T0_MS,
    SqliteHook,
    deployment_record,
    record_feed,
    simulate_window,
    write_window,
)

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_ID = "model_monitoring"
AIRFLOW = Path(sys.executable).parent / "airflow"
DRIFTED = {"Web": 0.70, "Phone": 0.22, "Multichannel": 0.08}


def test_shape(dag):
    assert dag.catchup is False and dag.tags and "model_alerts" in dag.doc_md
    assert dag.default_args["retries"] >= 1
    timetable = dag.timetable
    assert type(timetable).__name__ == "CronTriggerTimetable" and timetable.expression == "0 * * * *"
    tasks = dag.task_dict
    assert tasks["serving_model"].downstream_task_ids == {"responses_ingested", "monitor", "post_aggregate_metrics",
                                                          "conclude_test"}
    # monitoring waits for the response feed's watermark, without holding a worker slot
    feed = tasks["responses_ingested"]
    assert feed.downstream_task_ids == {"monitor"} and feed.mode == "reschedule" and feed.timeout >= 3600
    # no retrain wanted: the short circuit skips the trigger only, never the alerts' record
    decide = tasks["retrain_or_not"]
    assert decide.downstream_task_ids == {"trigger_retrain"} and decide.ignore_downstream_trigger_rules is False
    trigger = tasks["trigger_retrain"]
    assert type(trigger).__name__ == "TriggerDagRunOperator" and trigger.trigger_dag_id == "model_factory"
    assert trigger.skip_when_already_exists is True
    # the conf is retrain_or_not's dict itself, so numbers stay numbers
    assert trigger.conf.operator is decide and trigger.conf.key == "return_value"
    # alerts are written after the trigger, so they carry its run id
    assert tasks["record_alerts"].upstream_task_ids == {"monitor", "trigger_retrain"}
    assert tasks["record_alerts"].trigger_rule == "none_failed_min_one_success"
    # an A/B test's verdict: its alert recorded first, then one deploy_best_model run (mapped: none
    # without a verdict)
    assert tasks["conclude_test"].upstream_task_ids == {"serving_model", "monitor", "record_alerts"}
    verdict = tasks["trigger_verdict"]
    assert verdict.upstream_task_ids == {"conclude_test"} and type(verdict).__name__ == "MappedOperator"
    assert verdict.partial_kwargs["trigger_dag_id"] == "deploy_best_model"
    assert verdict.partial_kwargs["skip_when_already_exists"] is True


def _env(tmp_path: Path, db: Path, workspace) -> dict:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(db)}),
        "AIRFLOW_CONN_CML_DEFAULT": json.dumps({
            "conn_type": "cml", "host": workspace.url, "password": workspace.api_key,
            "extra": {"project_id": workspace.project_id, "runtime_identifier": "local"}}),
        "MODEL_FACTORY_ARTIFACTS": str(tmp_path / "artifacts"),
        "MODEL_FACTORY_CONFIG_DIRS": os.pathsep.join([str(REPO / "config"), str(tmp_path / "config")]),
        "MODEL_FACTORY_OBJECT_STORE": f"file://{tmp_path}/objects",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
        "PATH": f"{AIRFLOW.parent}:{os.environ.get('PATH', '')}",
    }


@pytest.mark.e2e
def test_dags_test_monitors_a_drifted_window_and_asks_for_a_retrain(tmp_path):
    from cml_workspace.server_process import running_workspace

    db = tmp_path / "warehouse.db"
    hook = SqliteHook(db)
    for k in range(4):  # cohorts 00:00 .. 03:00; the newest one drifted
        write_window(hook, simulate_window(T0_MS + k * HOUR_MS, 3000, seed=40 + k,
                                           channel_shares=DRIFTED if k == 3 else None))
    record_feed(hook, T0_MS + 4 * HOUR_MS)  # the response feed has delivered through the window's end
    record = deployment_record()
    DEPLOYMENTS.append(hook, record)
    config = tmp_path / "config" / "closed_loop.yaml"
    config.parent.mkdir()
    config.write_text((REPO / "config" / "closed_loop.yaml").read_text()
                      .replace("roc_auc_floor: 0.56", "roc_auc_floor: 0.50")
                      .replace("calibration_error_ceiling: 0.05", "calibration_error_ceiling: 0.20")
                      .replace("# retrain_review_window_minutes: 30", "retrain_review_window_minutes: 30"))

    with running_workspace(tmp_path / "workspace", cpus=1) as workspace:
        files = workspace.root / "projects" / workspace.project_id / "files"
        snapshot = f"snapshots/historical_customer_interactions-{record.data_snapshot_hash[:16]}.parquet"
        buffer = io.BytesIO()
        simulate_customers(20_000, 5).to_parquet(buffer, index=False)
        (files / "snapshots").mkdir(parents=True)
        (files / snapshot).write_bytes(buffer.getvalue())
        (files / "models" / "v1").mkdir(parents=True)
        (files / record.metadata_path).write_text(json.dumps({"lineage": {
            "data_snapshot_path": snapshot, "data_snapshot_hash": record.data_snapshot_hash}}))

        env = _env(tmp_path, db, workspace)
        code, out = _run([str(AIRFLOW), "db", "migrate"], env, 300)
        assert code == 0, out[-4000:]
        code, out = _run([str(AIRFLOW), "dags", "reserialize"], env, 300)
        assert code == 0, out[-4000:]
        args = [str(AIRFLOW), "dags", "test", "model_monitoring", "2026-12-01T04:00:00+00:00",
                "-c", json.dumps({"loop_config_path": str(config)})]
        code, out = _run(args, env, 400)
        assert code == 0, out[-6000:]
        # d1 is a record only, not a deployment of this workspace: the post is refused and said so,
        # the run still succeeds and every warehouse row below is kept
        assert "could not post the aggregate metrics to CML (0 of the cohorts posted): CmlNotFoundError" in out
        assert "model deployment not found: crn:cml:deployment/d1" in out

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT cohort_start, metric, dimension, value, maturity FROM model_monitoring "
                            "WHERE as_of_window = '2026-12-01T03:00:00Z'").fetchall()
    finally:
        conn.close()
    by = {(c, m, d): (v, mat) for c, m, d, v, mat in rows}
    assert {c for c, *_ in rows} == {f"2026-12-01T0{h}:00:00Z" for h in range(4)}
    assert by[("2026-12-01T03:00:00Z", "volume", "")] == (3000.0, "final")
    assert by[("2026-12-01T03:00:00Z", "drift_psi", "feature=channel")][0] >= 0.25
    assert by[("2026-12-01T00:00:00Z", "label_completeness", "")] == (1.0, "final")
    assert by[("2026-12-01T00:00:00Z", "policy_value_dr", "")][1] == "final"
    assert by[("2026-12-01T03:00:00Z", "label_completeness", "")] == (0.0, "immature")

    alerts = ALERTS.read_all(hook)
    assert [a.alert_id for a in alerts] == ["2026-12-01T03:00:00Z/v1/feature_drift/feature=channel"]
    assert alerts[0].retrain_run_id == "monitoring__20261201T030000"

    code, out = _run([str(AIRFLOW), "dags", "list-runs", "model_factory", "-o", "json"], env, 120)
    assert code == 0, out[-4000:]
    runs = json.loads(out[out.index("[{"):out.rindex("}]") + 2])  # after any warnings
    assert [r["run_id"] for r in runs] == ["monitoring__20261201T030000"]
    conn = sqlite3.connect(tmp_path / "airflow" / "airflow.db")
    try:
        (conf,) = conn.execute("SELECT conf FROM dag_run WHERE dag_id = 'model_factory'").fetchone()
    finally:
        conn.close()
    conf = json.loads(conf) if isinstance(conf, str) else json.loads(bytes(conf).decode())
    # the retrain runs the grid whose economics priced the window; the loop's settings go with it
    assert conf == {"grid_path": "config/grid.yaml", "include_interactions": True,
                    "reason": "2026-12-01T03:00:00Z/v1/feature_drift/feature=channel", "review_window_minutes": 30.0,
                    "loop_config_path": str(tmp_path / "config" / "closed_loop.yaml"), "challenger_share": 0.0}


@pytest.mark.e2e
def test_an_invalid_loop_config_fails_at_once_with_its_error(tmp_path):
    """Bad settings are bad input: the sensor (the first task to read them) fails without
    retries, and the log names the key and the problem."""
    from types import SimpleNamespace

    db = tmp_path / "warehouse.db"
    DEPLOYMENTS.append(SqliteHook(db), deployment_record())  # something serves: monitoring goes on
    config = tmp_path / "config" / "closed_loop.yaml"
    config.parent.mkdir()
    config.write_text("monitoring:\n  drift_bins: 1000\n")
    nowhere = SimpleNamespace(url="http://127.0.0.1:9", api_key="unused", project_id="unused")
    env = _env(tmp_path, db, nowhere)
    code, out = _run([str(AIRFLOW), "db", "migrate"], env, 300)
    assert code == 0, out[-4000:]
    code, out = _run([str(AIRFLOW), "dags", "test", "model_monitoring", "2026-12-01T04:00:00+00:00",
                      "-c", json.dumps({"loop_config_path": str(config)})], env, 400)
    assert code != 0
    assert "monitoring.drift_bins: Input should be less than or equal to 100" in out, out[-6000:]
    assert "AirflowFailException" in out and "up_for_retry" not in out.lower(), out[-6000:]
