"""Rollback in one step, on a real SQLite warehouse: the requests the monitoring dashboard records
(``factory_tasks.warehouse.rollbacks``) and the stage functions of deploy_best_model's rollback
branch and of the DAG rollback_requests (``factory_tasks.stages.rollback``)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from upath import UPath

from factory_tasks.core.contracts import DeploymentRecord, RetrainResult
from factory_tasks.core.names import MODEL_ARTIFACT_ENV, MODEL_DIR_ENV, MODEL_VERSION_ENV
from factory_tasks.loop.selection import SelectionError
from factory_tasks.stages.errors import BAD_INPUT_ERRORS, ParamError
from factory_tasks.stages.rollback import (
    check_request,
    pending_rollback,
    publish_rollback,
    record_rollback,
    rollback_target,
)
from factory_tasks.warehouse.deployments import DEPLOYMENTS, record_deployment, serving
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.rollbacks import (
    ROLLBACK_REQUESTS,
    RollbackRefused,
    load_requests,
    pending_request,
    request_rollback,
    request_statuses,
)
from tests.contract_factories import make_deployment

T0 = datetime(2026, 12, 1, 10, tzinfo=timezone.utc)


def _record(version: str, at: datetime, **over) -> DeploymentRecord:
    return make_deployment(version, at.isoformat(), **{"chosen_by": "review", "chosen_by_user": "ana", **over})


@pytest.fixture
def deployed(hook):
    """v-a deployed, then v-b (serving)."""
    record_deployment(hook, _record("v-a", T0))
    record_deployment(hook, _record("v-b", T0 + timedelta(hours=1), replaced_deployment_ids=["d-v-a"]))
    return hook


def _deployed_answer(version: str, n: int = 2) -> dict:
    """What the deploy operator returns (XCom) for a new deployment of ``version``."""
    return {"project_id": "p", "model_id": "m1", "model_name": "next-best-offer", "crn": None,
            "build_id": f"b-{version}-{n}", "deployment_id": f"d-{version}-{n}", "deployment_crn": None,
            "replaced_deployment_ids": ["d-v-b"], "smoke_response": {}, "smoke_prediction_uuid": "u"}


# -- the dashboard's requests ------------------------------------------------------------------
def test_a_request_is_recorded_with_the_signed_in_user_and_what_was_serving(deployed):
    request = request_rollback(deployed, DEPLOYMENTS.read_all(deployed), "v-a", " ana ", " B drifts ", T0 + timedelta(hours=2))
    assert (request.model_version, request.requested_by, request.reason) == ("v-a", "ana", "B drifts")
    assert request.serving_version == "v-b" and request.requested_at == (T0 + timedelta(hours=2)).isoformat()
    assert load_requests(deployed) == [request]


@pytest.mark.parametrize(("version", "user", "reason", "message"), [
    ("v-a", "", "why", "needs a signed-in reviewer"),
    ("v-a", "ana", "  ", "needs a reason"),
    ("v-zzz", "ana", "why", "'v-zzz' was never deployed"),
    ("v-b", "ana", "why", "v-b is serving now"),
])
def test_a_request_that_breaks_a_rule_is_refused_and_nothing_is_written(deployed, version, user, reason, message):
    with pytest.raises(RollbackRefused, match=message):
        request_rollback(deployed, DEPLOYMENTS.read_all(deployed), version, user, reason, T0 + timedelta(hours=2))
    assert ROLLBACK_REQUESTS.read_all(deployed) == []


def test_the_newest_request_is_pending_until_a_rollback_of_its_version_is_recorded(deployed):
    records = DEPLOYMENTS.read_all(deployed)
    older = request_rollback(deployed, records, "v-a", "ana", "first ask", T0 + timedelta(hours=2))
    newer = request_rollback(deployed, records, "v-a", "bob", "second ask", T0 + timedelta(hours=3))
    requests = load_requests(deployed)
    assert [s.state for s in request_statuses(requests, records)] == ["superseded", "pending"]
    assert pending_request(requests, records) == newer
    # a rollback of v-a recorded *before* the request does not handle it; one after does
    record_deployment(deployed, _record("v-a", T0 + timedelta(hours=2, minutes=30), action="rollback",
                                        requested_by="ana", request_reason="first ask"))
    assert pending_request(requests, DEPLOYMENTS.read_all(deployed)) == newer
    done = record_deployment(deployed, _record("v-a", T0 + timedelta(hours=3, minutes=5), build_id="b2",
                                               deployment_id="d2", action="rollback", requested_by="bob",
                                               request_reason="second ask"))
    statuses = request_statuses(requests, DEPLOYMENTS.read_all(deployed))
    assert pending_request(requests, DEPLOYMENTS.read_all(deployed)) is None
    assert [s.state for s in statuses] == ["done", "done"] and statuses[1].deployment == done
    assert older.request_id != newer.request_id


# -- the DAG rollback_requests ------------------------------------------------------------------
def test_pending_rollback_is_nothing_without_a_request_and_one_deploy_run_per_request(deployed):
    assert pending_rollback(deployed) == []
    request = request_rollback(deployed, DEPLOYMENTS.read_all(deployed), "v-a", "ana", "B drifts",
                               T0 + timedelta(hours=2))
    [run] = pending_rollback(deployed)
    assert run == {"trigger_run_id": f"rollback__{request.request_id}",
                   "conf": {"model_version": "v-a", "requested_by": "ana", "reason": "B drifts"}}
    assert pending_rollback(deployed) == [run]  # the same run while it is pending: triggered once


# -- deploy_best_model's rollback branch -----------------------------------------------------------
def test_rollback_target_is_the_versions_first_record(deployed):
    record_deployment(deployed, _record("v-a", T0 + timedelta(hours=2), build_id="b-again", action="rollback",
                                        requested_by="bob", request_reason="why"))
    target = rollback_target(deployed, "v-a")
    assert (target["model_version"], target["build_id"], target["action"]) == ("v-a", "b-v-a", "deploy")


def test_a_version_never_deployed_is_an_error_naming_it_and_the_recorded_ones(deployed):
    with pytest.raises(SelectionError) as info:
        rollback_target(deployed, "v-nope")
    message = str(info.value)
    assert "'v-nope' was never deployed" in message and "model_deployments" in message
    assert "model_factory_warehouse" in message and "newest first: v-b, v-a" in message
    assert isinstance(info.value, BAD_INPUT_ERRORS)  # the DAG fails it at once, without retries


def test_a_rollback_before_any_deployment_says_none_is_recorded(hook):
    with pytest.raises(SelectionError, match="none is recorded yet"):
        rollback_target(hook, "v-a")


@pytest.mark.parametrize(("user", "reason", "param"), [(None, "why", "requested_by"), ("ana", "", "reason")])
def test_a_rollback_needs_who_and_why(user, reason, param):
    with pytest.raises(ParamError, match=f"param {param}"):
        check_request(user, reason)
    assert check_request(" ana ", " why ") == {"requested_by": "ana", "reason": "why"}


def test_record_rollback_keeps_the_lineage_and_says_who_and_why(deployed):
    target = rollback_target(deployed, "v-a")
    entry = record_rollback(deployed, target=target, deployed=_deployed_answer("v-a"), requested_by="ana",
                            reason="B drifts", deployed_at=(T0 + timedelta(hours=2)).isoformat())
    now = serving(deployed)
    assert now.model_dump(mode="json") == entry
    assert (now.model_version, now.action, now.requested_by, now.request_reason) == ("v-a", "rollback", "ana",
                                                                                      "B drifts")
    assert (now.build_id, now.deployment_id, now.replaced_deployment_ids) == ("b-v-a-2", "d-v-a-2", ["d-v-b"])
    # the lineage is the version's own; no gate was applied
    assert (now.experiment_id, now.chosen_by, now.chosen_by_user, now.artifact_path) == (
        "0123456789abcdef", "review", "ana", "models/v-a/model.skops")
    assert "rollback to v-a" in now.gate_reason and "without review, retrain or gate" in now.gate_reason
    assert now.gate_evidence == [] and now.gate_override is False
    assert [r.action for r in DEPLOYMENTS.read_all(deployed)] == ["deploy", "deploy", "rollback"]


class ProjectFiles:
    """The project files of a model version, as the CML client downloads them."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.downloads = files, []

    def download_file(self, path: str) -> bytes:
        self.downloads.append(path)
        return self.files[path]


def _project(version: str) -> ProjectFiles:
    retrain = RetrainResult(
        model_version=version, status="succeeded", ranking_metric="roc_auc",
        holdout={"metrics": {"roc_auc": 0.7}, "n_rows": 100}, consistent=True, consistency_note="ok",
        artifact_path=f"models/{version}/model.skops", metadata_path=f"models/{version}/model.metadata.json",
        n_rows=500, code_version="0.1.0+x")
    return ProjectFiles({f"models/{version}/retrain.json": retrain.model_dump_json().encode(),
                         f"models/{version}/model.skops": b"skops bytes",
                         f"models/{version}/model.metadata.json": b"{}"})


def test_publish_rollback_reuses_the_files_of_the_first_deployment(tmp_path):
    store = UPath(f"file://{tmp_path}/object store")
    folder = store.joinpath("models", "v-a")
    folder.mkdir(parents=True)
    for name in ("model.skops", "model.metadata.json"):
        folder.joinpath(name).write_bytes(b"published")
    project = _project("v-a")
    environment = publish_rollback(project, "v-a", store)
    assert environment == {MODEL_ARTIFACT_ENV: str(folder.joinpath("model.skops")), MODEL_DIR_ENV: str(folder),
                           MODEL_VERSION_ENV: "v-a"}
    assert project.downloads == []  # nothing copied again


def test_publish_rollback_copies_missing_files_from_the_project_again(tmp_path):
    store = UPath(f"file://{tmp_path}/object store")
    project = _project("v-a")
    environment = publish_rollback(project, "v-a", store)
    folder = store.joinpath("models", "v-a")
    assert environment[MODEL_DIR_ENV] == str(folder) and environment[MODEL_VERSION_ENV] == "v-a"
    assert folder.joinpath("model.skops").read_bytes() == b"skops bytes"
    assert "models/v-a/retrain.json" in project.downloads


def test_a_model_deployments_table_from_before_rollbacks_reads_as_deploys_and_takes_one(hook):
    """Rows written before ``action``/``requested_by``/``request_reason`` existed are deploys; the
    first rollback adds the columns."""
    old = [c for c in DEPLOYMENTS.columns if c.name not in ("action", "requested_by", "request_reason")]
    record = _record("v-a", T0).model_dump(mode="json")
    dialect_for(hook).create_table(hook, "model_deployments", old)
    conn = hook.get_conn()
    with conn:
        conn.execute(f"INSERT INTO model_deployments VALUES ({', '.join('?' for _ in old)})",
                     [json.dumps(record[c.name]) if isinstance(record[c.name], (list, bool)) else record[c.name]
                      for c in old])
    conn.close()
    [first] = DEPLOYMENTS.read_all(hook)
    assert (first.action, first.requested_by) == ("deploy", None)
    record_deployment(hook, _record("v-b", T0 + timedelta(hours=1)))
    record_rollback(hook, target=rollback_target(hook, "v-a"), deployed=_deployed_answer("v-a"), requested_by="ana",
                    reason="why", deployed_at=(T0 + timedelta(hours=2)).isoformat())
    assert [(r.model_version, r.action) for r in DEPLOYMENTS.read_all(hook)] == [
        ("v-a", "deploy"), ("v-b", "deploy"), ("v-a", "rollback")]
