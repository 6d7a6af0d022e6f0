"""The typed contracts: one negative test per spec rule, the plan and promotion documents, and
the code version that decides reuse."""

from __future__ import annotations

import json
import shutil

import pytest

from factory_tasks.core import versions as versioning
from factory_tasks.core.contracts import (
    ContractError,
    ExperimentSpec,
    GridRef,
    RunPlan,
    SnapshotRef,
    reuse_blocker,
    safe_run_name,
)
from factory_tasks.core.versions import current_provenance, hash_code
from tests.contract_factories import make_result, make_spec


def _spec_json(**over) -> str:
    return json.dumps({**make_spec().model_dump(mode="json"), **over})


@pytest.mark.parametrize("over, message", [
    ({"estimator": "SVC"}, "estimator: 'SVC' is not a known estimator"),
    ({"params": {"n_trees": 3}}, "has no parameter(s) ['n_trees']"),
    ({"cv_folds": 1}, "cv_folds: Input should be greater than or equal to 2"),
    ({"cv_folds": "3"}, "cv_folds: Input should be a valid integer"),
    ({"metrics": ["roc_auc", "f1"]}, "metrics[1]: 'f1' is not a valid metric"),
    ({"metrics": []}, "metrics: List should have at least 1 item"),
    ({"ranking_metric": "average_precision", "metrics": ["roc_auc"]}, "ranking_metric 'average_precision' is not one"),
    ({"economics": {}}, "economics.conversion_value: Field required"),
    ({"random_state": "x"}, "random_state: Input should be a valid integer"),
    ({"experiment_id": "../escape"}, "experiment_id: String should match pattern"),
    ({"experiment_id": "0123456789abcdef"}, "does not match the spec's content"),
    ({"schema_version": 2}, "schema_version: Input should be 1"),
    ({"resources": {"cpu": 1}}, "resources.memory_gb: Field required"),
    ({"extra": True}, "extra: Extra inputs are not permitted"),
])
def test_every_spec_rule_has_a_clear_error_naming_the_field(over, message):
    with pytest.raises(ContractError) as caught:
        ExperimentSpec.parse(_spec_json(**over), "MF_EXPERIMENT_SPEC")
    assert message in str(caught.value) and str(caught.value).startswith("MF_EXPERIMENT_SPEC")


def test_a_spec_round_trips_through_the_job_environment():
    spec = make_spec("RandomForestClassifier", {"n_estimators": 5, "max_features": 1.0})
    env = {ExperimentSpec.ENV: spec.model_dump_json()}
    back = ExperimentSpec.from_env(env)
    assert back == spec and isinstance(back.params["max_features"], float)
    with pytest.raises(ContractError, match="MF_EXPERIMENT_SPEC.*not set"):
        ExperimentSpec.from_env({})


def test_reuse_needs_the_same_code_and_libraries():
    result = make_result(make_spec())
    same = current_provenance().model_copy(update={"code_version": result.code_version,
                                                   "library_versions": result.library_versions})
    assert reuse_blocker(result, same) is None
    assert reuse_blocker(result, same.model_copy(update={"code_version": "other"})).startswith("code changed")
    assert reuse_blocker(None, same) == "new experiment"


def test_the_code_version_is_a_hash_of_the_code_content(tmp_path):
    package = tmp_path / "factory_tasks"
    shutil.copytree(versioning.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "jobs").mkdir()
    shutil.copy(versioning.PACKAGE_DIR.parent / "jobs" / "run_experiment.py", tmp_path / "jobs")
    copy_version = hash_code(package)
    assert copy_version == hash_code() == versioning.code_version()  # same bytes, same version
    features = package / "training" / "features.py"
    features.write_text(features.read_text() + "\n# an uncommitted edit\n")
    assert hash_code(package) != copy_version  # no commit needed to notice
    features.write_text(features.read_text().replace("\n# an uncommitted edit\n", ""))
    assert hash_code(package) == copy_version
    (tmp_path / "jobs" / "run_experiment.py").write_text("print('other job')\n")
    assert hash_code(package) != copy_version  # the job script is part of the code


def test_factory_run_names_are_path_safe_and_distinct():
    a, b = safe_run_name("manual__2026-12-01T10:00:00+00:00"), safe_run_name("manual__2026-12-01T10_00_00_00_00")
    assert a != b and "/" not in a and ":" not in a
    assert RunPlan.path_for("x/../y").count("/") == 2


def test_grid_and_snapshot_refs_written_before_interactions_still_parse():
    grid = GridRef.from_data({"grid_path": "g.yaml", "grid_hash": "g", "table": "t", "max_parallel": 2}, "xcom")
    assert grid.interactions_table == "customer_interactions"
    snap = SnapshotRef.from_data({"table": "t", "hash": "h", "n_rows": 5, "project_path": "snapshots/t-h.parquet"},
                                 "xcom")
    assert (snap.interactions_table, snap.interaction_rows) == (None, 0)
    with pytest.raises(ContractError, match="interaction_rows without an interactions_table"):
        SnapshotRef.from_data({**snap.model_dump(), "interaction_rows": 2}, "xcom")
    with pytest.raises(ContractError, match="interaction_rows 9 exceeds n_rows 5"):
        SnapshotRef.from_data({**snap.model_dump(), "interactions_table": "i", "interaction_rows": 9}, "xcom")


def test_the_architecture_page_shows_the_current_contracts():
    from factory_tasks.core.contract_docs import DOC, current_section, render

    assert current_section(DOC.read_text(encoding="utf-8")) == render(), (
        "docs/architecture.md is out of date: run `python -m factory_tasks.core.contract_docs --write`")
