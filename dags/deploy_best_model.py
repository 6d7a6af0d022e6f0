"""
### deploy_best_model — from the leaderboard to production

Runs when `model_factory` records a factory run's outcomes (the `experiment_outcomes` asset),
or by hand with `factory_run_id` (and optionally `experiment_id`: then there is no review
window; the gate is still applied and reported).

0. **Resolve and reconcile**: the factory run is the param's, else the newest asset event's (by
   timestamp); one without a succeeded experiment in `experiment_outcomes` fails at once. Then
   deployments of the model that `model_deployments` does not record (left by a deploy that
   failed while CML could not be asked to stop them) are stopped.
1. **Review window**: the asset event's `review_window_minutes` (the model_factory run's
   param) when it has one, else this DAG's param (default 120), counted from the asset event
   (when the experiments were recorded), or from a manual run's trigger time. Meanwhile a
   reviewer can **Promote** an experiment in the dashboard (`model_promotions`) or answer the
   **required action** `review` in this DAG run (the top candidates; the default, taken when
   the window ends unanswered, is the best); an answer ends the window. Without a review (no
   candidate to offer), `wait_for_review_window`, a deferrable time sensor (no worker slot
   held), keeps the window open.
2. **Choose**: the latest of a promotion made before the window closed and a review answer;
   otherwise the best succeeded experiment by the grid's ranking metric (ties: higher
   policy_uplift, smaller fold spread, shorter fit, experiment id). Failed ones never qualify.
3. **Retrain** the chosen pipeline and hyperparameters on the full training snapshot as a CML
   job run (its own job and resource profile; `retrain` waits for it in the triggerer, and a
   retry waits for the same run), checked against its CV estimate on a stratified held-out
   slice. The serving model's *recipe* is refitted on the same rows and scored on the same
   slice (rows neither trained on), and the paired differences challenger − champion get 95%
   bootstrap intervals; the challenger is also evaluated off-policy on the champion's matured
   live traffic that it did not train on (the shadow evaluation).
4. **Gate**: a choice nobody overrode replaces the serving model only when the lower bound of
   the policy-value gain is above `policy_value_margin` (held out; or live, when the held-out
   interval is inconclusive) and the ranking metric is not worse than `ranking_margin` with
   confidence; otherwise the champion stays and the reason names the interval that fell short.
   A reviewer's pick may override (recorded); an inconsistent refit is never deployed; the
   first deployment passes. The evidence table is in the gate's log and in the deployment's
   record. When the gate keeps the champion on evidence that fell short, the **required action**
   `override_review` shows the table and asks whether to deploy the challenger anyway (the
   default, taken when the review window's length passes unanswered: keep); a "deploy" answer
   is recorded as that reviewer's override. A kept champion skips `deploy` and
   `record_deployment`. With a `challenger_share` (below) the bar is an A/B test's: a challenger
   not shown better but not shown worse either is deployed as the test's challenger.
5. **Deploy** through `CmlDeployModelOperator`: model (idempotent by name) → build → deploy →
   `deployed` → smoke test → stop the previous deployment; then a `model_deployments` record.
   With `challenger_share` above 0 (the param, or the asset event's: a closed-loop retrain's)
   and a champion serving, the deployment is an **A/B test**: the champion's files as the
   model, the challenger's beside it deciding for that share of the customers (sticky per
   `customer_id`), recorded as `ab_start`; `model_monitoring` concludes it (docs/ab-test.md).
   The deployment explores: param `exploration_epsilon` (default 0.1) becomes its
   `MF_EXPLORATION_EPSILON`, the share of customers the endpoint offers a uniformly random
   offer, answering the exact propensity (what the closed loop logs and its off-policy
   estimates need).

**Rollback** (param `model_version`, with `requested_by` and `reason`): instead of all of the above,
`deploy_or_rollback` branches to `rollback_target`, which checks that the version is recorded in
`model_deployments` (a version never deployed fails at once, naming it) and reconciles serving;
`publish_rollback` reuses the version's files in object storage (copied there again from the
project's `models/<version>/` if any is missing); `deploy_rollback` is the same operator and
smoke test, with the same `exploration_epsilon`; `record_rollback` appends a record with `action =
rollback`, who asked and why. No review, retrain or gate. The DAG `rollback_requests` triggers such runs for the rollback requests
of the monitoring dashboard.

Connections: `model_factory_warehouse`, `cml_default`. Object storage for the model files
the replicas load: `MODEL_FACTORY_OBJECT_STORE`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from assets import EXPERIMENT_OUTCOMES
from cml_provider.operators.cml import CmlJobRunOperator
from cml_provider.operators.deploy import CmlDeployModelOperator
from connections import CML_CONN_ID, warehouse_hook
from planned_runs import CML_POLL_INTERVAL_S, CML_WAIT_BEFORE_DEFER_S, run_kwargs
from task_errors import no_retry_on_bad_input

from factory_tasks.core.limits import (
    MAX_CHALLENGER_SHARE,
    MAX_EXPLORATION_EPSILON,
    MAX_MARGIN,
    MAX_REPLICA_CPU,
    MAX_REPLICA_MEMORY_GB,
    MAX_REPLICAS,
    MAX_REVIEW_WINDOW_MINUTES,
)

RETRAIN_TIMEOUT_S = 2 * 60 * 60


def _cml():
    from cml_provider.hooks.cml import CmlHook

    return CmlHook(cml_conn_id=CML_CONN_ID)


@dag(
    dag_id="deploy_best_model",
    schedule=[EXPERIMENT_OUTCOMES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["model-factory", "deploy", "cml"],
    doc_md=__doc__,
    default_args={"owner": "model-factory", "retries": 2, "retry_delay": timedelta(seconds=20)},
    params={
        "factory_run_id": Param(None, type=["null", "string"], description="Factory run to deploy from; empty = the triggering asset event's."),
        "experiment_id": Param(None, type=["null", "string"], description="Deploy this experiment (no review window)."),
        "review_window_minutes": Param(120, type="number", minimum=0, maximum=MAX_REVIEW_WINDOW_MINUTES, description="How long reviewers have to pick, unless the asset event sets it."),
        "ranking_margin": Param(0.01, type="number", minimum=0, maximum=MAX_MARGIN, description="How much worse than the champion's an automatic choice's ranking metric may be: the lower 95% bound of their paired difference on the held-out rows must be above -ranking_margin (sign-adjusted for lower-is-better metrics)."),
        "policy_value_margin": Param(0.0, type="number", minimum=0, maximum=MAX_MARGIN, description="How much more policy value per customer it must bring with confidence: the lower 95% bound of the paired policy_value difference (challenger - champion) on the held-out rows must be above it."),
        "loop_config_path": Param("config/closed_loop.yaml", type="string", description="The closed loop's settings: the response window that decides which of the champion's live decisions have matured for the shadow evaluation (the asset event's, when the factory run was a closed-loop retrain)."),
        "replicas": Param(2, type="integer", minimum=1, maximum=MAX_REPLICAS, description="Model replicas (each serves one request at a time)."),
        "cpu": Param(1.0, type="number", exclusiveMinimum=0, maximum=MAX_REPLICA_CPU, description="vCPU per replica."),
        "memory_gb": Param(2.0, type="number", exclusiveMinimum=0, maximum=MAX_REPLICA_MEMORY_GB, description="Memory per replica (GB)."),
        "exploration_epsilon": Param(0.1, type="number", minimum=0, maximum=MAX_EXPLORATION_EPSILON, description="The deployment's exploration (MF_EXPLORATION_EPSILON): this share of customers is offered a uniformly random offer, logged with its exact propensity; the closed loop's off-policy estimates and the shadow evaluation need it above 0. Also for a rollback."),
        "challenger_share": Param(0.0, type="number", minimum=0, maximum=MAX_CHALLENGER_SHARE, description="Start an A/B test instead of replacing the champion: a challenger the gate lets through is deployed beside the champion and decides for this share of the customers (sticky per customer_id); model_monitoring concludes the test. 0: replace the champion."),
        "model_version": Param(None, type=["null", "string"], description="Roll back: redeploy this version recorded in model_deployments (no review, retrain or gate)."),
        "test_verdict": Param(None, type=["null", "string"], enum=[None, "promote", "end"], description="With model_version: the A/B test's verdict this redeploy carries out (model_monitoring sets it): promote (the challenger alone) or end (the champion alone)."),
        "requested_by": Param(None, type=["null", "string"], description="Roll back: who asks (default: the user who triggered the run)."),
        "reason": Param(None, type=["null", "string"], description="Roll back: why (required with model_version)."),
    },
)
def deploy_best_model():
    @task.branch
    def deploy_or_rollback() -> str:
        """The deploy path, or with param model_version the rollback path."""
        return "rollback_target" if get_current_context()["params"].get("model_version") else "resolve_run"

    @task
    def resolve_run() -> dict:
        """Which factory run (the param's, or the newest asset event's), and when its review
        window closes; a run with nothing to deploy fails here, before any window."""
        from airflow.sdk.exceptions import AirflowFailException

        from factory_tasks.stages.deploy import check_factory_run, newest_factory_run, review_window

        context = get_current_context()
        params = context["params"]
        events = [e for events in context["triggering_asset_events"].values() for e in events]
        newest = newest_factory_run(events)
        minutes, loop_config_path = params["review_window_minutes"], params["loop_config_path"]
        challenger_share = params["challenger_share"]
        if params["factory_run_id"]:
            factory_run_id, finished_at = params["factory_run_id"], context["dag_run"].run_after
        elif newest:
            factory_run_id, finished_at = newest.factory_run_id, newest.recorded_at
            if newest.review_window_minutes is not None:
                minutes = newest.review_window_minutes
            loop_config_path = newest.loop_config_path or loop_config_path
            if newest.challenger_share is not None:
                challenger_share = newest.challenger_share
        else:
            raise AirflowFailException("no factory run to deploy from: trigger with param factory_run_id, "
                                       "or let model_factory's experiment_outcomes event trigger this DAG")
        with no_retry_on_bad_input():
            check_factory_run(warehouse_hook(), factory_run_id)
        manual = params["experiment_id"]
        with no_retry_on_bad_input():
            window = review_window(finished_at.isoformat(), 0 if manual else minutes)
        return {"factory_run_id": factory_run_id, "manual_experiment_id": manual,
                "loop_config_path": loop_config_path, "challenger_share": challenger_share, **window}

    @task
    def reconcile_serving() -> list[str]:
        """Stop deployments of the model that model_deployments does not record (left by a
        deploy that failed while CML could not be asked to stop them)."""
        from factory_tasks.stages.deploy import reconcile_serving

        return reconcile_serving(warehouse_hook(), _cml())

    @task
    def review_request(run: dict) -> list[dict]:
        """The review's options (none for a manual pick of the experiment)."""
        from factory_tasks.stages.deploy import review_request

        if run["manual_experiment_id"]:
            return []
        started = get_current_context()["ti"].start_date.isoformat()
        with no_retry_on_bad_input():
            return review_request(warehouse_hook(), run["factory_run_id"], closes_at=run["closes_at"],
                                  started_at=started)

    # the review's answer ends the window (its timeout is the window's end); only without a
    # review does the time sensor hold the window open for dashboard promotions
    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def window_without_review(review: list[dict]) -> bool:
        return not review

    path = deploy_or_rollback()
    run = resolve_run()
    path >> run
    reconciled = reconcile_serving()
    run >> reconciled
    requested = review_request(run)
    reconciled >> requested
    review = HITLOperator.partial(
        task_id="review", subject="Which experiment goes to production?", retries=0,
    ).expand_kwargs(requested)
    wait_for_window = DateTimeSensorAsync(
        task_id="wait_for_review_window", target_time="{{ ti.xcom_pull(task_ids='resolve_run')['closes_at'] }}",
    )
    window_without_review(requested) >> wait_for_window

    # the window is over when the review is answered (or timed out) or the time sensor fires
    window_closed = EmptyOperator(task_id="review_closed", trigger_rule=TriggerRule.ONE_SUCCESS)
    [review, wait_for_window] >> window_closed

    @task
    def choose_experiment(run: dict) -> dict:
        """A reviewer's pick (promotion or review answer), else the best."""
        from factory_tasks.stages.deploy import choose_experiment

        answers = get_current_context()["ti"].xcom_pull(task_ids="review", map_indexes=0, default=None)
        with no_retry_on_bad_input():
            return choose_experiment(warehouse_hook(), run["factory_run_id"], closes_at=run["closes_at"],
                                     review=answers, manual_experiment_id=run["manual_experiment_id"])

    choice = choose_experiment(run)
    window_closed >> choice

    @task
    def prepare_retrain(choice: dict, run: dict) -> list[dict]:
        from factory_tasks.stages.deploy import retrain_request

        with no_retry_on_bad_input():
            return retrain_request(warehouse_hook(), _cml(), choice, now=pendulum.now("UTC"),
                                   loop_config_path=run["loop_config_path"])

    prepared = prepare_retrain(choice, run)
    retrain = CmlJobRunOperator.partial(
        task_id="retrain", cml_conn_id=CML_CONN_ID, timeout_s=RETRAIN_TIMEOUT_S, wait_for_completion=True,
        poll_interval=CML_POLL_INTERVAL_S, wait_before_defer=CML_WAIT_BEFORE_DEFER_S,
        wait_timeout=RETRAIN_TIMEOUT_S + 600,
    ).expand_kwargs(prepared.map(run_kwargs))

    @task
    def gate(choice: dict, prepared: list[dict], run: dict) -> dict:
        """Champion/challenger on the same held-out slice; the decision and why, in the log (with
        a challenger_share, the lower bar of an A/B test's challenger)."""
        from factory_tasks.stages.deploy import gate_decision

        params = get_current_context()["params"]
        with no_retry_on_bad_input():
            return gate_decision(warehouse_hook(), _cml(), choice, prepared[0]["model_version"],
                                 ranking_margin=params["ranking_margin"],
                                 policy_value_margin=params["policy_value_margin"],
                                 challenger_share=run["challenger_share"])

    decision = gate(choice, prepared, run)
    retrain >> decision

    @task
    def override_request(decision: dict, run: dict) -> list[dict]:
        """A champion the gate kept is put to a reviewer, with the evidence (none otherwise)."""
        from factory_tasks.stages.deploy import override_request

        return override_request(decision, minutes=run["minutes"])

    override_review = HITLOperator.partial(
        task_id="override_review", subject="The gate keeps the champion: deploy the challenger anyway?", retries=0,
    ).expand_kwargs(override_request(decision, run))

    # the override review is skipped (mapped over nothing) unless the gate kept the champion
    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def final_decision(decision: dict) -> dict:
        """The gate's decision, or a reviewer's override of a kept champion."""
        from factory_tasks.stages.deploy import final_decision

        answer = get_current_context()["ti"].xcom_pull(task_ids="override_review", map_indexes=0, default=None)
        return final_decision(decision, answer)

    final = final_decision(decision)
    override_review >> final

    @task.short_circuit
    def deploy_or_keep_champion(decision: dict) -> bool:
        """Skips the deployment when the gate keeps the model now serving."""
        return bool(decision["deploy"])

    @task
    def publish_model(prepared: list[dict], run: dict) -> list[dict]:
        """Model files to object storage; the deploy operator's arguments (with challenger_share,
        the A/B test's: the champion beside the challenger)."""
        from factory_tasks.core.settings import object_store
        from factory_tasks.stages.ab_test import ab_environment, ab_plan
        from factory_tasks.stages.deploy import deploy_request, publish_model

        params = get_current_context()["params"]
        version = prepared[0]["model_version"]
        with no_retry_on_bad_input():
            plan = ab_plan(warehouse_hook(), version, run["challenger_share"])
            environment = publish_model(_cml(), version, object_store())
            if plan:
                environment = ab_environment(_cml(), object_store(), plan, environment)
            return [deploy_request(environment, cpu=params["cpu"], memory_gb=params["memory_gb"],
                                   replicas=params["replicas"], exploration_epsilon=params["exploration_epsilon"])]

    published = publish_model(prepared, run)
    deploy_or_keep_champion(final) >> published
    deploy = CmlDeployModelOperator.partial(
        # one retry: Airflow can fail a deferred task whose trigger fires within seconds
        # (apache/airflow#72716); the retry finds this try's build and deployment by its marker
        task_id="deploy", cml_conn_id=CML_CONN_ID, poll_interval=CML_POLL_INTERVAL_S, retries=1,
    ).expand_kwargs(published)

    @task
    def record_deployment(prepared: list[dict], published: list[dict], deployed: list[dict], decision: dict) -> dict:
        """The deployment, its lineage and its policy (an A/B test's split) in model_deployments."""
        from factory_tasks.stages.deploy import record

        context = get_current_context()
        return record(warehouse_hook(), _cml(), model_version=prepared[0]["model_version"], deployed=deployed[0],
                      decision=decision, deployed_at=context["ti"].start_date.isoformat(),
                      environment=published[0]["environment"])

    record_deployment(prepared, published, deploy.output, final)

    # -- rollback: a version recorded in model_deployments, from its files, no review/retrain/gate
    @task
    def rollback_target() -> dict:
        """The version's first deployment record (a version never deployed fails at once), who
        asks and why; then serving reconciled with model_deployments, as on the deploy path."""
        from factory_tasks.stages.deploy import reconcile_serving
        from factory_tasks.stages.rollback import check_request, rollback_target

        context = get_current_context()
        params = context["params"]
        with no_retry_on_bad_input():
            request = check_request(params["requested_by"] or getattr(context["dag_run"], "triggering_user_name", None),
                                    params["reason"])
            target = rollback_target(warehouse_hook(), params["model_version"])
        reconcile_serving(warehouse_hook(), _cml())
        return {"target": target, **request}

    @task
    def publish_rollback(rollback: dict) -> list[dict]:
        """The version's files in object storage (reused, or copied again); the operator's arguments."""
        from factory_tasks.core.settings import object_store
        from factory_tasks.stages.deploy import deploy_request
        from factory_tasks.stages.rollback import publish_rollback

        params = get_current_context()["params"]
        with no_retry_on_bad_input():
            environment = publish_rollback(_cml(), rollback["target"]["model_version"], object_store())
            return [deploy_request(environment, cpu=params["cpu"], memory_gb=params["memory_gb"],
                                   replicas=params["replicas"], exploration_epsilon=params["exploration_epsilon"])]

    rollback = rollback_target()
    path >> rollback
    published_rollback = publish_rollback(rollback)
    deploy_rollback = CmlDeployModelOperator.partial(
        task_id="deploy_rollback", cml_conn_id=CML_CONN_ID, poll_interval=CML_POLL_INTERVAL_S, retries=1,
    ).expand_kwargs(published_rollback)

    @task
    def record_rollback(rollback: dict, published: list[dict], deployed: list[dict]) -> dict:
        """The rollback in model_deployments: the version's lineage, action rollback, who and why."""
        from factory_tasks.stages.rollback import record_rollback

        context = get_current_context()
        with no_retry_on_bad_input():
            return record_rollback(warehouse_hook(), target=rollback["target"], deployed=deployed[0],
                                   requested_by=rollback["requested_by"], reason=rollback["reason"],
                                   deployed_at=context["ti"].start_date.isoformat(),
                                   environment=published[0]["environment"],
                                   test_verdict=context["params"]["test_verdict"])

    record_rollback(rollback, published_rollback, deploy_rollback.output)


deploy_best_model()
