"""Starting an A/B test is a deploy (``factory_tasks.stages.ab_test``), on a real SQLite
warehouse and real model files: the plan against the champion, the deployment's environment
that the endpoint loads, the ``ab_start`` record, the champion the next gate compares with
during the test, and the redeploy that carries out the test's verdict."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from upath import UPath

from factory_tasks.core.contracts import DeploymentRecord
from factory_tasks.core.names import (
    CHALLENGER_ARTIFACT_ENV,
    CHALLENGER_DIR_ENV,
    CHALLENGER_SHARE_ENV,
    CHALLENGER_VERSION_ENV,
    EXPLORATION_EPSILON_ENV,
    MODEL_ARTIFACT_ENV,
    MODEL_DIR_ENV,
    MODEL_VERSION_ENV,
    POLICY_TEST_ID_ENV,
)
from factory_tasks.serving.loading import PolicyConfig
from factory_tasks.stages.ab_test import ab_environment, ab_plan
from factory_tasks.stages.deploy import deploy_request, model_environment, policy_fields
from factory_tasks.stages.errors import BAD_INPUT_ERRORS, ParamError
from factory_tasks.stages.rollback import record_rollback, rollback_target
from factory_tasks.warehouse.deployments import DEPLOYMENTS, champion, record_deployment, serving
from tests.contract_factories import make_deployment

T0 = datetime(2026, 12, 1, 10, tzinfo=timezone.utc)


@pytest.fixture
def champion_serving(hook):
    record_deployment(hook, make_deployment("v-a", T0.isoformat()))
    return hook


def _ab_start(hook, at: datetime, challenger: str = "v-b", champion_version: str = "v-a", share: float = 0.2):
    return record_deployment(hook, make_deployment(
        challenger, at.isoformat(), action="ab_start", champion_version=champion_version, challenger_share=share,
        test_id=f"{champion_version}:{challenger}", exploration_epsilon=0.1))


def _published(store: UPath, version: str) -> dict[str, str]:
    folder = store.joinpath("models", version)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.skops", "model.metadata.json"):
        folder.joinpath(name).write_bytes(b"files of " + version.encode())
    return model_environment(folder, version)


class NoProject:
    def download_file(self, path: str) -> bytes:
        raise AssertionError(f"the champion's files are in object storage already; nothing to download ({path})")


# -- the plan ---------------------------------------------------------------------------------------
def test_no_share_or_no_champion_or_the_champion_itself_deploys_alone(hook, champion_serving):
    assert ab_plan(champion_serving, "v-b", 0.0) is None
    assert ab_plan(champion_serving, "v-a", 0.3) is None  # it is the champion already


def test_a_first_deployment_is_never_a_test(hook):
    assert ab_plan(hook, "v-a", 0.3) is None


def test_with_a_share_the_challenger_is_tested_against_the_serving_champion(champion_serving):
    assert ab_plan(champion_serving, "v-b", 0.25) == {"champion_version": "v-a", "challenger_share": 0.25,
                                                        "test_id": "v-a:v-b"}


@pytest.mark.parametrize("share", [-0.1, 0.51, 1.0, float("nan")])
def test_a_share_outside_its_range_is_refused_naming_the_param(champion_serving, share):
    with pytest.raises(ParamError, match="challenger_share") as caught:
        ab_plan(champion_serving, "v-b", share)
    assert isinstance(caught.value, BAD_INPUT_ERRORS)  # failed at once, without retries


def test_during_a_test_the_champion_is_the_tests_champion_not_its_challenger(champion_serving):
    _ab_start(champion_serving, T0 + timedelta(hours=1))
    assert serving(champion_serving).model_version == "v-b"  # the deployment was made for the challenger
    assert champion(champion_serving).model_version == "v-a"  # ... the gate compares with the champion
    # a new challenger during the test replaces the test, against the same champion
    assert ab_plan(champion_serving, "v-c", 0.2)["champion_version"] == "v-a"


def test_a_test_whose_champion_has_no_record_is_an_error_naming_it(hook):
    _ab_start(hook, T0, champion_version="v-ghost")
    with pytest.raises(LookupError, match="v-ghost"):
        champion(hook)


# -- the deployment's environment and its record ----------------------------------------------------
def test_the_tests_environment_is_what_the_endpoint_loads(champion_serving, tmp_path):
    store = UPath(f"file://{tmp_path}/object store")
    champion_files, challenger = _published(store, "v-a"), _published(store, "v-b")
    plan = ab_plan(champion_serving, "v-b", 0.2)
    environment = deploy_request(ab_environment(NoProject(), store, plan, challenger), cpu=1, memory_gb=2,
                                 replicas=1, exploration_epsilon=0.1)["environment"]
    assert environment == {**champion_files, CHALLENGER_ARTIFACT_ENV: challenger[MODEL_ARTIFACT_ENV],
                           CHALLENGER_DIR_ENV: challenger[MODEL_DIR_ENV], CHALLENGER_VERSION_ENV: "v-b",
                           CHALLENGER_SHARE_ENV: "0.2", POLICY_TEST_ID_ENV: "v-a:v-b",
                           EXPLORATION_EPSILON_ENV: "0.1"}
    config = PolicyConfig.from_environ(environment)  # the endpoint's own reading of it
    assert (config.challenger.model_version, config.challenger_share, config.epsilon, config.test_id) == (
        "v-b", 0.2, 0.1, "v-a:v-b")

    fields = policy_fields(environment, "v-b")
    assert fields == {"exploration_epsilon": 0.1, "action": "ab_start", "champion_version": "v-a",
                      "challenger_share": 0.2, "test_id": "v-a:v-b"}
    record = make_deployment("v-b", (T0 + timedelta(hours=1)).isoformat(), **fields)
    record_deployment(champion_serving, record)
    assert serving(champion_serving) == record


def test_a_record_of_another_version_than_the_deployments_challenger_is_refused():
    environment = {MODEL_VERSION_ENV: "v-a", CHALLENGER_VERSION_ENV: "v-b", CHALLENGER_SHARE_ENV: "0.2",
                   POLICY_TEST_ID_ENV: "t"}
    with pytest.raises(ValueError, match="challenger is v-b, not the version recorded, v-c"):
        policy_fields(environment, "v-c")
    assert policy_fields({MODEL_VERSION_ENV: "v-a", EXPLORATION_EPSILON_ENV: "0.05"}, "v-a") == {
        "exploration_epsilon": 0.05}


@pytest.mark.parametrize(("over", "message"), [
    ({"action": "ab_start", "challenger_share": 0.2, "test_id": "t"}, "needs champion_version"),
    ({"action": "ab_start", "champion_version": "v-a", "test_id": "t", "challenger_share": 1.0}, "in \\(0, 1\\)"),
    ({"action": "ab_start", "champion_version": "v-b", "test_id": "t", "challenger_share": 0.2}, "two versions"),
    ({"action": "deploy", "champion_version": "v-a"}, "only an ab_start record"),
])
def test_a_test_record_without_its_fields_is_refused(over, message):
    with pytest.raises(ValueError, match=message):
        make_deployment("v-b", T0.isoformat(), **over)


# -- the verdict, carried out by the redeploy path --------------------------------------------------
@pytest.mark.parametrize(("verdict", "version", "action"), [("promote", "v-b", "ab_promote"), ("end", "v-a", "ab_end")])
def test_a_verdict_redeploys_one_version_alone_and_records_it(champion_serving, verdict, version, action):
    _ab_start(champion_serving, T0 + timedelta(hours=1))
    answer = {"model_id": "m1", "model_name": "next-best-offer", "build_id": "b-9", "deployment_id": "d-9",
              "replaced_deployment_ids": ["d-v-b"]}
    entry = record_rollback(champion_serving, target=rollback_target(champion_serving, version), deployed=answer,
                            requested_by="model_monitoring", reason="challenger − champion +1.2 [+0.4, +2.0]",
                            deployed_at=(T0 + timedelta(hours=5)).isoformat(),
                            environment={MODEL_VERSION_ENV: version, EXPLORATION_EPSILON_ENV: "0.1"},
                            test_verdict=verdict)
    now = serving(champion_serving)
    assert now.model_dump(mode="json") == entry
    assert (now.model_version, now.action, now.champion_version, now.challenger_share, now.test_id) == (
        version, action, None, 0.0, None)
    assert champion(champion_serving).model_version == version  # the next gate compares with it
    assert now.requested_by == "model_monitoring" and "+1.2" in now.request_reason
    assert [r.action for r in DEPLOYMENTS.read_all(champion_serving)] == ["deploy", "ab_start", action]


def test_an_unknown_verdict_is_refused(champion_serving):
    with pytest.raises(ParamError, match="test_verdict"):
        record_rollback(champion_serving, target=rollback_target(champion_serving, "v-a"), deployed={},
                        requested_by="x", reason="y", deployed_at=T0.isoformat(), test_verdict="maybe")
    assert [r.action for r in DEPLOYMENTS.read_all(champion_serving)] == ["deploy"]


def test_records_from_before_the_policy_fields_read_as_untested(champion_serving):
    [record] = DEPLOYMENTS.read_all(champion_serving)
    assert isinstance(record, DeploymentRecord)
    assert (record.champion_version, record.challenger_share, record.exploration_epsilon) == (None, 0.0, None)
