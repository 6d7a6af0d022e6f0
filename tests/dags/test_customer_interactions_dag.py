"""customer_interactions: its shape, and real `airflow dags test` runs against a real local
workspace with a model really deployed (a small logistic regression saved as the retrain job
saves it, served by jobs/serve_next_best_offer.py with metrics on) and a SQLite warehouse —
two consecutive windows, then a rerun of the first that leaves every row as it was."""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.dags.dags_test_cli import dag_run, dags_test
from tests.sqlite_warehouse import SqliteWarehouse

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_ID = "customer_interactions"


def test_shape_schedule_and_params(dag):
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"  # windows = data intervals
    assert dag.timetable.expression == "0 * * * *" and str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False and dag.default_args["retries"] >= 1 and dag.tags
    assert "NiFi" in dag.doc_md and "model_factory_warehouse" in dag.doc_md and "cml_default" in dag.doc_md
    assert dag.params["loop_config_path"] == "config/closed_loop.yaml" and dag.params["drift_enabled"] is None
    assert list(dag.task_dict) == ["simulate_window"]


def _deploy_a_model(ws, tmp: Path):
    """Fit, save (skops + metadata), build and deploy the real entry point; ``(model, build, deployment, version)``."""
    from cml_provider.hooks.cml import CmlHook

    from factory_tasks.core.names import (
        EXPLORATION_EPSILON_ENV,
        MODEL_ARTIFACT_ENV,
        MODEL_DIR_ENV,
        MODEL_ENTRY_POINT,
        MODEL_FUNCTION,
        MODEL_NAME,
        MODEL_VERSION_ENV,
    )
    from factory_tasks.core.schema import DEFAULT_ECONOMICS
    from factory_tasks.loop.simulator import simulate_interactions
    from factory_tasks.training.artifacts import save_model
    from factory_tasks.training.features import build_pipeline, feature_frame

    data = simulate_interactions(4000, seed=3)
    pipeline = build_pipeline("LogisticRegression", {"C": 1.0}, random_state=0).fit(feature_frame(data), data["conversion"])
    version = "loop-test-v1"
    model_dir = tmp / "models" / version
    save_model(pipeline, model_dir, {"model_version": version, "economics": DEFAULT_ECONOMICS})
    cml = CmlHook.from_url(ws.url, ws.api_key, project_name="model-factory", model_service_url=ws.model_service_url)
    model = cml.get_or_create_model(MODEL_NAME)
    build = cml.create_model_build(model.id, MODEL_ENTRY_POINT, MODEL_FUNCTION, comment="customer_interactions test")
    deadline = time.monotonic() + 300
    while not (build := cml.get_model_build(model.id, build.id)).status.is_terminal:
        assert time.monotonic() < deadline, "build did not finish"
        time.sleep(0.3)
    assert build.status.is_successful, build
    # the deployment explores (as deploy_best_model's param exploration_epsilon sets it); the DAG only logs
    env = {MODEL_ARTIFACT_ENV: str(model_dir / "model.skops"), MODEL_DIR_ENV: str(model_dir), MODEL_VERSION_ENV: version,
           EXPLORATION_EPSILON_ENV: "0.1"}
    deployment = cml.create_model_deployment(model.id, build.id, cpu=1, memory_gb=1, replicas=1, environment=env)
    while not (deployment := cml.get_model_deployment(model.id, build.id, deployment.id)).status.is_terminal:
        assert time.monotonic() < deadline, "deployment did not finish"
        time.sleep(0.3)
    assert deployment.status.is_successful, deployment
    return model, build, deployment, version


def _record(warehouse, model, build, deployment, version):
    from factory_tasks.core.contracts import DeploymentRecord
    from factory_tasks.warehouse.deployments import record_deployment

    record_deployment(warehouse, DeploymentRecord(
        model_version=version, model_name=model.name, model_id=model.id, model_crn=model.crn, build_id=build.id,
        deployment_id=deployment.id, deployment_crn=deployment.crn,
        access_key_ref=f"CML model {model.id}: access_key (read from the CML API)",
        artifact_path=f"models/{version}/model.skops", metadata_path=f"models/{version}/model.metadata.json",
        experiment_id="0123456789abcdef", factory_run_id="manual__test", grid_hash="g", data_snapshot_hash="h",
        code_version="test", chosen_by="manual", choice_reason="test fixture", gate_reason="first deployment",
        gate_override=False, deployed_at=datetime.now(timezone.utc).isoformat()))


def _rows(db: Path, table: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


@pytest.mark.e2e
def test_dags_test_runs_windows_against_a_deployed_model_and_a_rerun_changes_nothing(tmp_path):
    from cml_workspace.server_process import running_workspace
    from stack.airflow_cli import migrate_once
    from stack.env import airflow_env, stack_paths

    from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS, CUSTOMER_RESPONSES, PREDICTION_LOG

    paths = stack_paths(tmp_path / "var").make()
    warehouse = SqliteWarehouse(paths.warehouse_db)
    config = paths.config / "loop.yaml"  # the shipped file, with a shorter response window so a row matures
    config.write_text((REPO / "config" / "closed_loop.yaml").read_text().replace(
        "window_minutes: 180", "window_minutes: 50"))
    with running_workspace(paths.workspace_root, cpus=2, memory_gb=6, code_dir=REPO, project="model-factory") as ws:
        env = airflow_env(paths, workspace_url=ws.url, api_key=ws.api_key, model_service_url=ws.model_service_url)
        log = paths.logs / "customer_interactions.log"
        migrate_once(env, log)
        conf = {"loop_config_path": str(config)}
        first_hour = datetime(2026, 12, 1, 7, tzinfo=timezone.utc)

        # nothing deployed yet: a clear error, no retries, no rows
        assert dags_test("customer_interactions", conf, env, log, timeout_s=300, logical_date=first_hour) != 0
        assert "deploy_best_model" in log.read_text() and "no model is serving" in log.read_text()
        assert not paths.warehouse_db.exists() or _rows(paths.warehouse_db, PREDICTION_LOG) == []

        model, build, deployment, version = _deploy_a_model(ws, tmp_path)
        _record(warehouse, model, build, deployment, version)
        runs = []
        for k, when in enumerate((first_hour + timedelta(hours=1), first_hour + timedelta(hours=2))):
            rc = dags_test("customer_interactions", conf, env, log, timeout_s=300, logical_date=when)
            assert rc == 0, log.read_text()[-6000:]
            run = dag_run(env, "customer_interactions", when)
            assert run is not None and run.state == "success"
            runs.append(when)
        text = log.read_text()
        seconds = [float(s) for s in re.findall(r"\n  (\d+\.\d)s", text)]
        print(f"customer_interactions: seconds per window of 2,000 customers: {seconds}")

        db = paths.warehouse_db
        decisions, responses, matured = (_rows(db, t) for t in (PREDICTION_LOG, CUSTOMER_RESPONSES, CUSTOMER_INTERACTIONS))
        with sqlite3.connect(db) as conn:
            windows = [r[0] for r in conn.execute(
                "SELECT window_start, count(*) FROM prediction_log GROUP BY window_start ORDER BY window_start")]
            counts = dict(conn.execute("SELECT window_start, count(*) FROM prediction_log GROUP BY window_start"))
            log_rows = conn.execute(
                "SELECT prediction_uuid, deployment_crn, model_version, offer, model_offer, propensity, explored,"
                " p_bogo + p_discount + p_none, arm FROM prediction_log").fetchall()
            statuses = dict(conn.execute("SELECT status, count(*) FROM customer_responses GROUP BY status"))
        metrics = httpx.post(ws.url + "/local/model_metrics/read", headers=ws.headers,
                             json={"model_deployment_crn": deployment.crn}, timeout=60).json()["metrics"]
        # the data intervals: the hour before each logical date
        assert windows == ["2026-12-01T07:00:00Z", "2026-12-01T08:00:00Z"]
        assert set(counts.values()) == {2000}
        assert len({r[0] for r in log_rows}) == 4000 and all(re.fullmatch(r"[0-9a-f-]{36}:\d+", r[0]) for r in log_rows)
        assert {(r[1], r[2]) for r in log_rows} == {(deployment.crn, version)}
        assert {r[8] for r in log_rows} == {"champion"}  # no challenger deployed
        eps = 0.10  # the deployment's MF_EXPLORATION_EPSILON: the endpoint explored, the DAG logged it
        assert all(abs(r[5] - ((1 - eps + eps / 3) if r[3] == r[4] else eps / 3)) < 1e-12 for r in log_rows)
        assert 0.07 < sum(r[6] for r in log_rows) / 4000 < 0.13
        assert statuses.get("attached", 0) > 100 and statuses.get("unknown", 0) > 0
        assert len(matured) > 0  # decisions of the first window whose 50 minutes closed in the second
        # ground truth reached CML: the request uuids now carry conversion.<index> keys
        merged = {r["predictionUuid"]: r["metrics"] for r in metrics if r["predictionUuid"]}
        with sqlite3.connect(db) as conn:
            attached = [u for (u,) in conn.execute("SELECT prediction_uuid FROM customer_responses WHERE status = 'attached'")]
        assert attached and all(merged[u.rsplit(":", 1)[0]].get(f"conversion.{u.rsplit(':', 1)[1]}") == 1
                                for u in attached)

        # rerun the first window: every row of every table stays as it was
        rc = dags_test("customer_interactions", conf, env, log, timeout_s=300, logical_date=runs[0])
        assert rc == 0, log.read_text()[-6000:]
        assert "decisions kept from the earlier run" in log.read_text()
        assert (decisions, responses, matured) == tuple(
            _rows(db, t) for t in (PREDICTION_LOG, CUSTOMER_RESPONSES, CUSTOMER_INTERACTIONS))


def _down_url() -> str:
    """A workspace URL nothing listens on (the workspace is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_workspace_that_is_down_is_named_with_what_the_window_was_doing(tmp_path):
    import tenacity
    from cml_provider.hooks.cml import CmlHook

    from factory_tasks.loop.config import LoopConfig
    from factory_tasks.loop.interactions import WorkspaceError
    from factory_tasks.stages.interactions import simulate_window
    from factory_tasks.warehouse.deployments import DEPLOYMENTS
    from factory_tasks.warehouse.loop_tables import PREDICTION_LOG
    from tests.monitoring_window import deployment_record

    down = _down_url()
    warehouse = SqliteWarehouse(tmp_path / "warehouse.db")
    DEPLOYMENTS.append(warehouse, deployment_record())
    cml = CmlHook.from_url(down, "key", project_id="p1", retry_args={"wait": tenacity.wait_none()})
    start = datetime(2026, 12, 1, 6, tzinfo=timezone.utc)
    with pytest.raises(WorkspaceError) as info:
        simulate_window(warehouse, cml, LoopConfig(), start, start + timedelta(hours=1), lambda metrics, uuid: None)
    message = str(info.value)
    assert message.startswith("could not look up the serving model next-best-offer (m1) version v1 in the CML "
                              "workspace, to ask it for next best offers: CmlConnectionError: ")
    assert f"{down}/ could not be reached" in message and "Connection refused" in message
    assert "Nothing of the window was written" in message
    conn = sqlite3.connect(tmp_path / "warehouse.db")
    try:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = ?", (PREDICTION_LOG,)).fetchone() is None \
            or conn.execute(f"SELECT COUNT(*) FROM {PREDICTION_LOG}").fetchone() == (0,)
    finally:
        conn.close()
