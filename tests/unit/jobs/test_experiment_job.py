"""The experiment job script, end to end as a real subprocess in a throwaway project folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from factory_tasks.core.contracts import ExperimentResult
from factory_tasks.core.schema import FEATURE_COLUMNS
from factory_tasks.core.versions import code_version
from factory_tasks.jobs.experiment import TIMING_KEYS, JobConfigError, error_line, run_job, snapshot_path, thread_count
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.training.artifacts import load_metadata, load_model
from factory_tasks.training.features import positive_proba
from factory_tasks.warehouse.training_data import write_snapshot
from tests.contract_factories import make_spec as contract_spec

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "jobs" / "run_experiment.py"


@pytest.fixture
def project(tmp_path):
    """A project folder holding one snapshot, as the factory's snapshot step writes it."""
    snap = write_snapshot(simulate_interactions(600, seed=51), tmp_path / "snapshots")
    return tmp_path, {"path": snap.project_path, "hash": snap.hash}


def make_spec(snapshot, params=None, **raw_over):
    """A valid spec's JSON fields (its id matches its content), then ``raw_over`` pasted on top."""
    metrics = raw_over.pop("metrics", ["roc_auc", "log_loss", "policy_value"])
    spec = contract_spec("LogisticRegression", params or {"C": 0.5}, family="logistic", cv_folds=2,
                         metrics=metrics, data_snapshot=snapshot)
    return {**spec.model_dump(mode="json"), **raw_over}


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MF_") and k != "OMP_NUM_THREADS"}
    env.update(extra)
    return env


def run_script(cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def read_result(root: Path, eid: str | None = None) -> dict:
    if eid is None:
        (folder,) = (root / "experiments").iterdir()
        eid = folder.name
    return json.loads((root / "experiments" / eid / "result.json").read_text())


def test_success_writes_result_and_model(project):
    root, snapshot = project
    spec = make_spec(snapshot)
    proc = run_script(
        root,
        clean_env(MF_EXPERIMENT_SPEC=json.dumps(spec), MF_THREADS="2", MF_CODE_VERSION="test-1",
                  MF_FACTORY_RUN_ID="manual__1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fold 1/2 done" in proc.stdout and "fold 2/2 done" in proc.stdout
    result = read_result(root)
    assert result["status"] == "succeeded" and result["error"] is None
    EID = spec["experiment_id"]
    assert result["experiment_id"] == EID and result["threads"] == 2
    # the job records the content hash of the code it ran, not what the orchestrator said
    assert result["code_version"] == code_version() != "test-1"
    assert "this job runs code" in proc.stdout and "planned with test-1" in proc.stdout
    assert ExperimentResult.parse((root / spec_result_path(EID)).read_bytes(), "result").status == "succeeded"
    assert result["n_rows"] == 600 and result["data_snapshot_hash"] == snapshot["hash"]
    assert len(result["metrics"]["policy_value"]["folds"]) == 2
    assert result["artifact_path"] == f"experiments/{EID}/model.skops"
    assert result["metadata_path"] == f"experiments/{EID}/model.metadata.json"
    model = load_model(root / result["artifact_path"])
    meta = load_metadata(root / result["artifact_path"])
    assert meta["fitted_on"]["n_rows"] == 300 and meta["data_snapshot_hash"] == snapshot["hash"]
    assert meta["factory_run_id"] == "manual__1" and meta["cv_scores"] == result["metrics"]
    frame = simulate_interactions(20, seed=1)[list(FEATURE_COLUMNS)]
    assert np.all((positive_proba(model, frame) > 0) & (positive_proba(model, frame) < 1))
    assert not list((root / "experiments" / EID).glob("*.tmp"))


def spec_result_path(eid):
    return ExperimentResult.path_for(eid)


def _assert_failed(proc, root, *needles, eid=None):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = read_result(root, eid)
    assert result["status"] == "failed"
    assert "\n" not in result["error"]
    for needle in needles:
        assert needle in result["error"]
    assert result["traceback"].startswith("Traceback")
    assert result["metrics"] == {} and result["artifact_path"] is None
    assert result["finished_at"] >= result["started_at"]
    return result


def test_bad_spec_writes_a_failed_result(project):
    root, snapshot = project
    spec = make_spec(snapshot, estimator="SVC")
    proc = run_script(root, clean_env(MF_EXPERIMENT_SPEC=json.dumps(spec), MF_EXPERIMENT_ID=spec["experiment_id"]))
    _assert_failed(proc, root, "ContractError", "MF_EXPERIMENT_SPEC", "estimator",
                   "'SVC' is not a known estimator", eid=spec["experiment_id"])


def test_an_altered_spec_is_refused(project):
    root, snapshot = project
    spec = make_spec(snapshot, params={"C": 9.0})
    spec["params"] = {"C": 0.001}  # edited after the id was computed
    assert run_job(root, {"MF_EXPERIMENT_SPEC": json.dumps(spec), "MF_EXPERIMENT_ID": spec["experiment_id"]}) == 1
    assert "does not match the spec's content" in read_result(root)["error"]


def test_missing_snapshot_writes_a_failed_result(project):
    root, snapshot = project
    spec = make_spec({"path": "snapshots/gone.parquet", "hash": "x"})
    proc = run_script(root, clean_env(MF_EXPERIMENT_SPEC=json.dumps(spec)))
    _assert_failed(proc, root, "FileNotFoundError", "snapshots/gone.parquet")


def test_an_estimator_that_raises_writes_a_failed_result(project):
    root, snapshot = project
    spec = make_spec(snapshot, params={"C": -1.0})  # LogisticRegression refuses C <= 0 at fit
    proc = run_script(root, clean_env(MF_EXPERIMENT_SPEC=json.dumps(spec)))
    _assert_failed(proc, root, "InvalidParameterError", "'C' parameter")
    assert "experiment failed" in proc.stdout
    assert not (root / "experiments" / spec["experiment_id"] / "model.skops").exists()


def test_no_spec_reports_under_the_env_experiment_id_or_only_logs(project):
    root, _ = project
    proc = run_script(root, clean_env(MF_EXPERIMENT_ID="fedcba9876543210"))
    _assert_failed(proc, root, "ContractError", "MF_EXPERIMENT_SPEC", "not set", eid="fedcba9876543210")

    proc = run_script(root, clean_env(MF_EXPERIMENT_SPEC="{not json"))
    assert proc.returncode == 1
    assert "MF_EXPERIMENT_SPEC is not a valid document: not valid JSON" in proc.stdout
    assert not (root / "experiments" / "0123456789abcdef").exists()


# ---- the same code path in-process, for the cheaper cases ----------------------------------


def test_snapshot_hash_mismatch_fails(project):
    root, snapshot = project
    spec = make_spec({**snapshot, "hash": "0" * 64})
    assert run_job(root, {"MF_EXPERIMENT_SPEC": json.dumps(spec)}) == 1
    assert "changed since the experiment was planned" in read_result(root)["error"]


def test_snapshot_with_the_wrong_schema_fails(project):
    root, snapshot = project
    simulate_interactions(50, seed=1).drop(columns="channel").to_parquet(root / "snapshots" / "bad.parquet")
    spec = make_spec({"path": "snapshots/bad.parquet", "hash": "x"})
    assert run_job(root, {"MF_EXPERIMENT_SPEC": json.dumps(spec)}) == 1
    assert "lacks required column(s) ['channel']" in read_result(root)["error"]


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "", 7])
def test_unsafe_experiment_ids_never_become_paths(project, bad_id):
    root, snapshot = project
    spec = make_spec(snapshot, experiment_id=bad_id)
    assert run_job(root, {"MF_EXPERIMENT_SPEC": json.dumps(spec)}) == 1
    assert not (root / "experiments").exists() and not (root.parent / "escape").exists()


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.parquet", "snapshots/../../x.parquet"])
def test_snapshot_path_must_stay_inside_the_project(tmp_path, path):
    with pytest.raises(JobConfigError, match="relative to the project"):
        snapshot_path(tmp_path, contract_spec(data_snapshot={"path": path, "hash": "x"}))


def test_thread_count_from_the_environment():
    assert thread_count({}) == 1
    assert thread_count({"OMP_NUM_THREADS": "3"}) == 3
    assert thread_count({"OMP_NUM_THREADS": "4,2"}) == 4
    assert thread_count({"MF_THREADS": "2", "OMP_NUM_THREADS": "8"}) == 2
    for bad in ("0", "two", "-1"):
        with pytest.raises(JobConfigError, match="MF_THREADS must be a positive integer"):
            thread_count({"MF_THREADS": bad})


def test_bad_thread_env_is_a_failed_result(project):
    root, snapshot = project
    env = {"MF_EXPERIMENT_SPEC": json.dumps(make_spec(snapshot)), "MF_THREADS": "many"}
    assert run_job(root, env) == 1
    assert read_result(root)["error"].startswith("JobConfigError: MF_THREADS")


def test_code_version_without_env_comes_from_the_package(project):
    root, snapshot = project
    spec = make_spec(snapshot, metrics=["roc_auc"])
    assert run_job(root, {"MF_EXPERIMENT_SPEC": json.dumps(spec)}) == 0
    from factory_tasks import __version__

    assert read_result(root)["code_version"].startswith(__version__)


def test_error_line_is_one_bounded_line():
    assert error_line(ValueError("a\n  b")) == "ValueError: a b"
    assert error_line(KeyError()) == "KeyError"
    assert len(error_line(RuntimeError("x" * 10_000))) == 2000

def test_success_records_the_jobs_timings(project):
    root, snapshot = project
    before = time.time()
    proc = run_script(root, clean_env(MF_EXPERIMENT_SPEC=json.dumps(make_spec(snapshot))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = read_result(root)
    timings = result["timings"]
    assert set(timings) == set(TIMING_KEYS)
    assert before < timings["entered_at_unix"] < time.time()
    phases = sum(timings[k] for k in ("code_version_s", "imports_s", "snapshot_s", "cv_s", "save_s"))
    assert 0 < phases <= timings["job_s"]
    assert timings["cv_s"] >= result["fit_time"]["total"] + result["score_time"]["total"]
