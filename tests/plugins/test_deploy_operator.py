"""CmlDeployModelOperator against a stateful fake of CML's models API and model service (real
HTTP on 127.0.0.1), driving its triggers for real with ``asyncio.sleep`` patched.

In every failure — build, deployment, smoke test — the deployment that was serving before the
task is never stopped; on a smoke failure or a deployment still coming up at the deadline the
*new* deployment is stopped instead.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from cml_provider.operators.deploy import CmlDeployModelOperator
from cml_provider.triggers.deploy import CmlModelBuildTrigger, CmlModelDeploymentTrigger

from tests.plugins.fake_cml_models import API_KEY, FakeCml, serve_fake_cml

MODEL_NAME = "next-best-offer"
SMOKE = {"customers": [{"customer_id": "c-1", "recency": 6, "history": 250.0, "channel": "Web"}]}
ENV = {"MF_MODEL_ARTIFACT": "models/v1/model.skops", "MF_MODEL_DIR": "models/v1", "MF_MODEL_VERSION": "v1"}


def nbo(request):
    return {
        "model_version": "v1",
        "predictions": [
            {"customer_id": c["customer_id"], "next_best_offer": "Discount"} for c in request["customers"]
        ],
    }


@pytest.fixture
def fake(monkeypatch) -> FakeCml:
    with serve_fake_cml() as fake:
        fake.predict = nbo
        conn = {
            "conn_type": "cml",
            "host": fake.url,
            "password": API_KEY,
            "extra": {
                "project_id": "p1",
                "runtime_identifier": "rt/python3.11",
                "model_service_url": fake.url,
            },
        }
        monkeypatch.setenv("AIRFLOW_CONN_CML_DEFAULT", json.dumps(conn))
        yield fake


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    async def fake_sleep(seconds, *args, **kwargs):
        pass

    monkeypatch.setattr("cml_provider.triggers.deploy.asyncio.sleep", fake_sleep)


@pytest.fixture
def make_context(make_context):
    """The conftest context, with a task instance that records ``xcom_push``."""

    def make(**kwargs):
        context = make_context(**kwargs)
        pushed = context["pushed"] = []
        context["ti"].xcom_push = lambda key, value: pushed.append((key, value))
        return context

    return make


@pytest.fixture
def serving(fake):
    """The model with one build and one deployment serving: what a new deploy replaces."""
    model = fake.add_model(MODEL_NAME)
    build = fake.add_build(model["id"], status="built")
    return fake.add_deployment(model["id"], build["id"], status="deployed")


def operator(**kwargs) -> CmlDeployModelOperator:
    kwargs.setdefault("model_name", MODEL_NAME)
    kwargs.setdefault("file_path", "jobs/serve_next_best_offer.py")
    kwargs.setdefault("smoke_request", SMOKE)
    kwargs.setdefault("environment", ENV)
    return CmlDeployModelOperator(
        task_id=kwargs.pop("task_id", "deploy"), poll_interval=0.01, cml_retry_delay=0.01, **kwargs
    )


def drive(trigger) -> dict:
    async def run():
        return [e.payload async for e in trigger.run()]

    [event] = asyncio.run(asyncio.wait_for(run(), timeout=30))
    return event


def next_kwargs(deferred: TaskDeferred) -> dict:
    """A deferral's kwargs as the resumed method gets them: stored by the task runner with
    Airflow's serde (the metadata DB's ``next_kwargs``) and read back the same way."""
    from airflow.sdk.serde import deserialize, serialize

    return deserialize(json.loads(json.dumps(serialize(deferred.kwargs or {}))))


def run_to_end(context, between=None, **kwargs):
    """Execute, then resume after each deferral with a *fresh* operator, as Airflow does: the
    method named by the deferral, called with the trigger's event and the deferral's kwargs.

    :param between: called with each ``TaskDeferred`` before its trigger runs
    :return: ``(xcom, [TaskDeferred, ...])``
    """
    deferrals = []
    step = lambda op: op.execute(context)  # noqa: E731
    while True:
        try:
            return step(operator(**kwargs)), deferrals
        except TaskDeferred as deferred:
            deferrals.append(deferred)
            if between:
                between(deferred)
            event = drive(deferred.trigger)
            step = lambda op, d=deferred, e=event: (  # noqa: E731
                getattr(op, d.method_name)(context, event=e, **next_kwargs(d))
            )


def new_deployments(fake, previous):
    return [d for d in fake.deployments.values() if d["id"] != previous["id"]]


# --- shape -----------------------------------------------------------------------------------
def test_init_only_assigns_and_templates_environment_and_smoke_request():
    op = operator(environment={"MF_MODEL_VERSION": "{{ ti.xcom_pull('gate') }}"})
    templated = {"model_name", "file_path", "function_name", "runtime_identifier"}
    templated |= {"environment", "smoke_request"}
    assert templated <= set(op.template_fields)
    assert "hook" not in op.__dict__
    assert op.deployment_id is None and op.started_deployment is None


def test_execute_defers_to_the_build_trigger_with_primitives_only(fake, serving, make_context):
    op, context = operator(timeout=600), make_context()
    with pytest.raises(TaskDeferred) as info:
        op.execute(context)
    deferred = info.value
    assert isinstance(deferred.trigger, CmlModelBuildTrigger)
    assert deferred.method_name == "execute_after_build"
    trigger = deferred.trigger
    [build] = [b for b in fake.builds.values() if b["id"] == op.build_id]
    assert (trigger.project_id, trigger.model_id) == ("p1", serving["model_id"])
    assert trigger.build_id == build["id"]
    assert time.time() < trigger.deadline <= time.time() + 600
    state = deferred.kwargs["state"]
    assert state["previous_deployment_ids"] == [serving["id"]]
    assert state["deadline"] == trigger.deadline
    dumped = json.dumps(trigger.serialize()) + json.dumps(deferred.kwargs)
    assert "access-" not in dumped  # the access key never travels through the metadata DB
    sent = build["_request"]
    assert sent["file_path"] == "jobs/serve_next_best_offer.py" and sent["function_name"] == "predict"
    assert sent["runtime_identifier"] == "rt/python3.11"  # from the connection, like the job operator
    assert "[mf:dag/manual__1/task/-1:" in sent["comment"]
    ids = {"project_id": "p1", "model_id": op.model_id, "build_id": op.build_id}
    assert context["pushed"] == [("cml_ids", ids)]


# --- the happy path --------------------------------------------------------------------------
def test_happy_path_builds_deploys_smoke_tests_and_then_stops_the_previous(
    fake, serving, make_context, capsys
):
    context = make_context()
    result, deferrals = run_to_end(context, cpu=0.5, memory_gb=1, replicas=2)
    assert [type(d.trigger) for d in deferrals] == [CmlModelBuildTrigger, CmlModelDeploymentTrigger]
    assert deferrals[1].method_name == "execute_after_deployment" and deferrals[1].trigger.stop_on_kill
    [new] = new_deployments(fake, serving)
    assert fake.status(new["id"]) == "deployed"
    assert fake.status(serving["id"]) == "stopped" and fake.stopped() == {serving["id"]}
    ids = {k: result[k] for k in ("project_id", "model_id", "build_id", "deployment_id")}
    assert context["pushed"][-1] == ("cml_ids", ids)
    assert (new["cpu"], new["memory"], new["replicas"]) == (0.5, 1.0, "2")
    assert json.loads(new["environment"]) == ENV
    model = fake.models[serving["model_id"]]
    assert result == {
        "project_id": "p1",
        "model_id": model["id"],
        "model_name": MODEL_NAME,
        "crn": model["crn"],
        "build_id": new["build_id"],
        "deployment_id": new["id"],
        "deployment_crn": new["crn"],
        "replaced_deployment_ids": [serving["id"]],
        "smoke_response": nbo(SMOKE),
        "smoke_prediction_uuid": None,
    }
    [smoke] = [c for c in fake.calls if c.route == "model_service"]
    assert smoke.body == {"accessKey": model["access_key"], "request": SMOKE}
    assert smoke.headers["authorization"] == f"Bearer {API_KEY}"
    out = capsys.readouterr()
    assert model["access_key"] not in json.dumps(result) + out.out + out.err
    # the new deployment was deployed before the previous one was stopped
    order = [c.route + (":stop" if c.path.endswith(":stop") else "") for c in fake.calls]
    assert order.index("model_service") < order.index("deployment:stop")


def test_first_deploy_creates_the_model_and_replaces_nothing(fake, make_context):
    fake.metrics = True
    result, _ = run_to_end(make_context())
    [model] = fake.models.values()
    assert model["name"] == MODEL_NAME and result["model_id"] == model["id"]
    assert result["replaced_deployment_ids"] == [] and not fake.stopped()
    assert result["smoke_response"] == nbo(SMOKE) and result["smoke_prediction_uuid"].startswith("uuid-")


def test_model_create_answered_500_is_not_repeated(fake, make_context):
    fake.inject("POST", "models", 500, apply=True)  # the gateway gives up, the workspace goes on
    run_to_end(make_context())
    assert len(fake.models) == 1 and fake.count("POST", "models") == 1


def test_deployment_create_answered_500_is_listed_not_repeated(fake, serving, make_context):
    fake.inject("POST", "deployments", 500, apply=True)
    result, _ = run_to_end(make_context())
    assert len(new_deployments(fake, serving)) == 1 and fake.count("POST", "deployments") == 1
    assert result["replaced_deployment_ids"] == [serving["id"]]


def test_a_previous_deployment_that_came_up_meanwhile_is_replaced_but_a_newer_one_is_not(
    fake, serving, make_context
):
    coming_up = fake.add_deployment(serving["model_id"], serving["build_id"], status="deploying")
    later = {}

    def between(deferred):
        if isinstance(deferred.trigger, CmlModelDeploymentTrigger):
            fake.deployments[coming_up["id"]]["status"] = "deployed"  # after the task's snapshot
            later.update(fake.add_deployment(serving["model_id"], serving["build_id"], status="deployed"))

    result, _ = run_to_end(make_context(), between=between)
    assert result["replaced_deployment_ids"] == sorted([serving["id"], coming_up["id"]])
    assert fake.status(later["id"]) == "deployed"  # created after ours: another run's, not ours to stop
    assert fake.stopped() == {serving["id"], coming_up["id"]}


def test_stop_previous_false_leaves_the_previous_serving(fake, serving, make_context):
    result, _ = run_to_end(make_context(), stop_previous=False)
    assert result["replaced_deployment_ids"] == [] and fake.status(serving["id"]) == "deployed"


def test_a_retry_reuses_the_build_of_the_earlier_try(fake, serving, make_context):
    context = make_context()
    with pytest.raises(TaskDeferred) as first:
        operator().execute(context)
    with pytest.raises(TaskDeferred) as second:
        operator().execute(context)  # the retry: a fresh instance, same task instance key
    assert second.value.trigger.build_id == first.value.trigger.build_id
    assert fake.count("POST", "builds") == 1
    with pytest.raises(TaskDeferred):
        operator(environment={**ENV, "MF_MODEL_VERSION": "v2"}).execute(context)  # other inputs: new build
    assert fake.count("POST", "builds") == 2


# --- failures: the previous deployment keeps serving -----------------------------------------
def test_build_failure_fails_with_the_cml_status_and_deploys_nothing(fake, serving, make_context):
    fake.build_statuses = ["pending", "build failed"]
    with pytest.raises(AirflowException, match=rf"build failed.*{serving['id']} keep serving"):
        run_to_end(make_context())
    assert fake.status(serving["id"]) == "deployed" and not fake.stopped()
    assert fake.count("POST", "deployments") == 0


def test_deployment_failure_fails_with_the_cml_status(fake, serving, make_context):
    fake.deployment_statuses = ["pending", "deploying", "failed"]
    with pytest.raises(AirflowException, match=r"\(failed\).*keep serving"):
        run_to_end(make_context())
    assert fake.status(serving["id"]) == "deployed" and not fake.stopped()
    assert fake.count("POST", "model_service") == 0


def test_a_deployment_still_coming_up_at_the_deadline_is_stopped_not_the_previous(
    fake, serving, make_context
):
    fake.build_statuses = ["built"]  # built at once: no build wait, the whole (zero) timeout is left
    fake.deployment_statuses = ["pending", "deploying"]
    with pytest.raises(AirflowException, match=r"\(deploying\).*deadline"):
        run_to_end(make_context(), timeout=0)
    [new] = new_deployments(fake, serving)
    assert fake.stopped() == {new["id"]} and fake.status(serving["id"]) == "deployed"


@pytest.mark.parametrize(
    "predict, reason",
    [
        (
            lambda request: {"error": {"field": "customers[0].history", "message": "must be >= 0"}},
            "carries an error",
        ),
        (lambda request: ["not", "a", "dict"], "not a JSON object"),
        (lambda request: 1 / 0, "model service call failed"),
    ],
)
def test_smoke_failure_stops_the_new_deployment_and_keeps_the_previous(
    fake, serving, make_context, predict, reason
):
    fake.predict = predict
    if reason == "model service call failed":
        fake.inject("POST", "model_service", 500)
    with pytest.raises(AirflowException, match=rf"Smoke test .* failed: .*{reason}.*keep serving"):
        run_to_end(make_context())
    [new] = new_deployments(fake, serving)
    assert fake.stopped() == {new["id"]}
    assert fake.status(serving["id"]) == "deployed"


# --- resuming and killing --------------------------------------------------------------------
def test_on_kill_stops_only_the_deployment_this_try_started(fake, serving, make_context):
    context = make_context()
    with pytest.raises(TaskDeferred) as build_wait:
        operator().execute(context)
    event = drive(build_wait.value.trigger)
    op = operator()
    with pytest.raises(TaskDeferred):
        op.execute_after_build(context, event=event, **build_wait.value.kwargs)
    op.on_kill()
    [new] = new_deployments(fake, serving)
    assert fake.stopped() == {new["id"]} and fake.status(serving["id"]) == "deployed"
    operator().on_kill()  # nothing started: nothing stopped
    assert len(fake.stopped()) == 1


def test_invalid_events_and_missing_state_are_errors(fake, serving, make_context):
    op = operator()
    state = {"project_id": "p1", "model_id": "m", "build_id": "b", "previous_deployment_ids": []}
    state["deadline"] = 0
    with pytest.raises(AirflowException, match="Invalid event"):
        op.execute_after_build(make_context(), event={"status": "maybe"}, state=state)
    with pytest.raises(AirflowException, match="deploy state"):
        op.execute_after_deployment(make_context(), event={"status": "success"}, state=None)
    with pytest.raises(AirflowException, match="smoke_request must be a dict"):
        operator(smoke_request="{}").execute(make_context())


def test_maps_with_expand_kwargs_in_a_dag_without_touching_the_network():
    """The shape ``deploy_best_model`` uses: partial(conn, poll) + expand_kwargs(deploy request)."""
    import pendulum
    from airflow.sdk import DAG

    with DAG("deploy_mapping", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
        deploy = CmlDeployModelOperator.partial(task_id="deploy", poll_interval=5, retries=0).expand_kwargs(
            [{"model_name": MODEL_NAME, "file_path": "serve.py", "environment": ENV, "smoke_request": SMOKE}]
        )
    assert deploy.task_id == "deploy"
