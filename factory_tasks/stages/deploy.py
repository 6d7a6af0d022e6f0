"""The deploy_best_model DAG's stages as plain functions (like :mod:`factory_tasks.stages.model_factory`).

Hooks are passed in; every hand-off is a small JSON value or a contract in the CML project or
the warehouse. See docs/deploy.md for the flow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from factory_tasks.core.contracts import (
    MODELS_DIR,
    ChampionRef,
    Choice,
    DeploymentRecord,
    GateDecision,
    Lineage,
    LiveTrafficRef,
    RetrainRequest,
    RetrainResult,
)
from factory_tasks.core.limits import (
    MAX_EXPLORATION_EPSILON,
    MAX_MARGIN,
    MAX_REPLICA_CPU,
    MAX_REPLICA_MEMORY_GB,
    MAX_REPLICAS,
    MAX_REVIEW_WINDOW_MINUTES,
)
from factory_tasks.core.names import (
    CHALLENGER_SHARE_ENV,
    CHALLENGER_VERSION_ENV,
    EXPLORATION_EPSILON_ENV,
    FACTORY_RUN_ENV,
    MODEL_ARTIFACT_ENV,
    MODEL_DIR_ENV,
    MODEL_ENTRY_POINT,
    MODEL_FUNCTION,
    MODEL_NAME,
    MODEL_VERSION_ENV,
    POLICY_TEST_ID_ENV,
    RETRAIN_SCRIPT,
    WAREHOUSE_CONN_ID,
)
from factory_tasks.loop.selection import SelectionError, choose, rank_candidates, review_options
from factory_tasks.stages.cml_client import CmlClient
from factory_tasks.stages.errors import in_range
from factory_tasks.stages.model_factory import load_plan, result_reader
from factory_tasks.warehouse.deployments import (
    DEPLOYMENTS,
    champion,
    champion_record,
    latest,
    record_deployment,
    serving,
)
from factory_tasks.warehouse.outcomes import OutcomeStore
from factory_tasks.warehouse.promotions import latest_promotion

log = logging.getLogger(__name__)

#: the retrain job's resource profile: one job per profile, like the experiments'
RETRAIN_JOB_PREFIX = "model-factory-retrain-"
RETRAIN_CPU = 2.0
RETRAIN_MEMORY_GB = 4.0
#: the customer of the deploy operator's smoke test (a real request through the model service)
SMOKE_CUSTOMER: dict[str, Any] = {"customer_id": "smoke-test", "recency": 6, "history": 250.0, "used_discount": 1,
                                  "used_bogo": 0, "zip_code": "Urban", "is_referral": 0, "channel": "Web"}
#: the shortest review (HITL) offered; a shorter one is left to the time sensor. Airflow 3.3.2
#: fails a review that times out before the executor reports its task's deferral, which its
#: workers notice up to ``[workers] min_heartbeat_interval`` (5 s) late (docs/deploy.md, step 1)
MIN_REVIEW = timedelta(seconds=8)
#: files of a model version copied to object storage for the replicas
MODEL_FILES = ("model.skops", "model.metadata.json", "model.onnx")
#: the files a replica needs in object storage (``model.onnx`` too when the version has one)
REQUIRED_FILES = ("model.skops", "model.metadata.json")


class FactoryRunEvent(NamedTuple):
    """What an ``experiment_outcomes`` asset event says: which factory run, when its outcomes
    were recorded, and the review window that run asked for (None: the deploy DAG's default)."""

    factory_run_id: str
    recorded_at: datetime
    review_window_minutes: float | None
    #: the closed loop's settings the run's interactions come from (None: the deploy DAG's param)
    loop_config_path: str | None = None
    #: the A/B test's challenger share the run asked for (None: the deploy DAG's param)
    challenger_share: float | None = None


def newest_factory_run(events: Iterable[Any]) -> FactoryRunEvent | None:
    """The newest ``experiment_outcomes`` asset event that names a factory run; None when none does.

    Airflow hands a run the events queued since the previous run in no guaranteed order, so
    the newest by timestamp wins; equal timestamps are ordered by the source run id, then the
    factory run id, so the same events always give the same run."""
    named = [(event.timestamp, str(event.source_run_id or ""), str(event.extra["factory_run_id"]), event.extra)
             for event in events if (event.extra or {}).get("factory_run_id")]
    if not named:
        return None
    timestamp, _, factory_run_id, extra = max(named, key=lambda n: n[:3])
    return FactoryRunEvent(factory_run_id, timestamp, extra.get("review_window_minutes"),
                           extra.get("loop_config_path"), extra.get("challenger_share"))


def check_factory_run(warehouse: Any, factory_run_id: str) -> int:
    """The number of succeeded experiments of the factory run; a :class:`SelectionError`
    naming the run and where it was looked for when there is none (there is nothing to
    review, so there is no window to wait out)."""
    store = OutcomeStore(warehouse)
    outcomes = store.read(factory_run_id)
    where = f"table {store.table} of the warehouse connection {WAREHOUSE_CONN_ID}"
    if outcomes.empty:
        raise SelectionError(f"factory run {factory_run_id!r} has no experiment in {where}: give the run id of a "
                             f"model_factory run that recorded its outcomes (param factory_run_id)")
    succeeded = len(rank_candidates(outcomes))
    if not succeeded:
        raise SelectionError(f"factory run {factory_run_id!r} has no succeeded experiment to deploy "
                             f"({len(outcomes)} experiment(s) in {where}, none succeeded)")
    return succeeded


def reconcile_serving(warehouse: Any, cml: CmlClient) -> list[str]:
    """Stop the deployments of the model that ``model_deployments`` does not record; return
    their ids.

    A deploy that failed where the deploy operator could not stop its new deployment (the
    workspace was down, or the task was killed with it) leaves that deployment for CML to
    bring up later, beside the recorded one. A deploy run starts here, so the model serving is
    the recorded one again. When the recorded deployment is not active itself, the others are
    left serving (stopping them would leave nothing serving) and a warning says so."""
    model = cml.find_model(MODEL_NAME)
    if model is None:
        return []
    recorded = serving(warehouse)
    active = [d for d in cml.list_model_deployments(model.id) if d.status.is_active]
    strays = [d for d in active if recorded is None or d.id != recorded.deployment_id]
    if not strays:
        return []
    if recorded is not None and len(strays) == len(active):
        log.warning("model_deployments records deployment %s of %s, which is not active; leaving %s serving "
                    "(the next deployment replaces them)", recorded.deployment_id, MODEL_NAME,
                    ", ".join(d.id for d in strays))
        return []
    for d in strays:
        cml.stop_model_deployment(model.id, d.build_id, d.id)
        log.warning("stopped deployment %s (build %s) of %s: model_deployments does not record it (%s serves)",
                    d.id, d.build_id, MODEL_NAME, recorded.deployment_id if recorded else "nothing")
    return [d.id for d in strays]


def review_window(finished_at: str, minutes: float) -> dict[str, Any]:
    """When the review window closes: ``minutes`` after the experiments were recorded."""
    minutes = in_range("review_window_minutes", minutes, 0, MAX_REVIEW_WINDOW_MINUTES)
    closes = datetime.fromisoformat(finished_at) + timedelta(minutes=float(minutes))
    return {"finished_at": finished_at, "closes_at": closes.isoformat(), "minutes": float(minutes)}


def review_request(warehouse: Any, factory_run_id: str, *, closes_at: str, started_at: str, top: int = 5) -> list[dict]:
    """Keyword arguments of the one review (HITL) task: the top candidates, the best as the
    default, a timeout that ends with the window. A list, because the options are known only at
    run time (``expand_kwargs``); empty when there is nothing to offer or less than
    ``MIN_REVIEW`` of the window is left."""
    timeout = datetime.fromisoformat(closes_at) - datetime.fromisoformat(started_at)
    if timeout < MIN_REVIEW:
        return []
    options = review_options(OutcomeStore(warehouse).read(factory_run_id), top)
    if not options:
        return []
    return [{"options": options, "defaults": [options[0]], "response_timeout": timeout,
             "body": f"Pick the experiment of factory run {factory_run_id} to deploy. The window closes at "
                     f"{closes_at}; if nobody answers, the best ({options[0]}) is deployed."}]


def choose_experiment(warehouse: Any, factory_run_id: str, *, closes_at: str | None,
                      review: dict[str, Any] | None, manual_experiment_id: str | None) -> dict[str, Any]:
    """The :class:`Choice` (see :func:`factory_tasks.loop.selection.choose`), as a JSON value."""
    choice = choose(OutcomeStore(warehouse).read(factory_run_id), factory_run_id=factory_run_id,
                    promotion=latest_promotion(warehouse, factory_run_id,
                                               promoted_by=datetime.fromisoformat(closes_at) if closes_at else None),
                    review=review,
                    manual_experiment_id=manual_experiment_id)
    log.info("chose experiment %s (%s%s): %s", choice.experiment_id, choice.chosen_by,
             f" by {choice.chosen_by_user}" if choice.chosen_by_user else "", choice.reason)
    return choice.model_dump(mode="json")


def model_version_for(experiment_id: str, snapshot_hash: str, code_version: str) -> str:
    """The same choice on the same data and code is the same model version."""
    return f"{experiment_id}-{snapshot_hash[:8]}-{code_version.rsplit('+', 1)[-1][:8]}"


def champion_ref(cml: CmlClient, champion: DeploymentRecord | None) -> ChampionRef | None:
    """The model now serving and its recipe — estimator, hyperparameters, seed — from its model
    metadata (``model.metadata.json``, written by the retrain job): the retrain job refits the
    recipe on the challenger's fit rows, so the two are compared on rows neither trained on."""
    if champion is None:
        return None
    meta = json.loads(cml.download_file(champion.metadata_path))
    recipe = {name: meta[name] for name in ("experiment_id", "estimator", "params", "random_state") if name in meta}
    return ChampionRef.from_data({"model_version": champion.model_version, "artifact_path": champion.artifact_path,
                                  **recipe}, f"the champion's model metadata {champion.metadata_path}")


def export_live_traffic(warehouse: Any, cml: CmlClient, champion_version: str, model_version: str, *,
                        now: datetime, response_window_minutes: float) -> LiveTrafficRef | None:
    """The champion's matured live decisions as a Parquet file in the challenger's model folder,
    for the retrain job's shadow evaluation; None when none has matured."""
    import hashlib
    import io

    from factory_tasks.loop.live_traffic import matured_traffic

    traffic = matured_traffic(warehouse, champion_version, now=now, response_window_minutes=response_window_minutes)
    if traffic.empty:
        log.info("no matured live decision of %s: the gate has no live evidence", champion_version)
        return None
    buffer = io.BytesIO()
    traffic.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    path = f"{MODELS_DIR}/{model_version}/live_traffic.parquet"
    cml.upload_file(path, data, overwrite=True)
    log.info("exported %d matured live decisions of %s to %s", len(traffic), champion_version, path)
    return LiveTrafficRef(champion_version=champion_version, path=path, hash=hashlib.sha256(data).hexdigest(),
                          n_rows=len(traffic))


def retrain_request(warehouse: Any, cml: CmlClient, choice: dict[str, Any], *, holdout_fraction: float = 0.2,
                    now: datetime | None = None, loop_config_path: str | None = None) -> list[dict]:
    """The retrain job run, as ``[{"request": <CmlJobRunOperator kwargs, result_file included>,
    "model_version"}]`` (a list: the run is known only at run time, ``expand_kwargs``).

    With a champion serving and ``now``, its live traffic matured by then (response window from
    the loop config at ``loop_config_path``) goes with the request (:func:`export_live_traffic`)."""
    chosen = Choice.from_data(choice, "the choose_experiment task's output")
    plan = load_plan(cml, chosen.factory_run_id)
    spec = next(s for s in plan.specs if s.experiment_id == chosen.experiment_id)
    result = result_reader(cml)(spec.experiment_id)
    if result is None or result.status != "succeeded":
        raise ValueError(f"experiment {spec.experiment_id} has no succeeded result to retrain from")
    champion_ = champion_ref(cml, champion(warehouse))  # during an A/B test, its champion
    lineage = Lineage(
        experiment_id=spec.experiment_id, factory_run_id=chosen.factory_run_id, grid_hash=plan.grid.grid_hash,
        data_snapshot_path=spec.data_snapshot.path, data_snapshot_hash=spec.data_snapshot.hash,
        code_version=plan.provenance.code_version, library_versions=plan.provenance.library_versions,
        chosen_by=chosen.chosen_by, chosen_by_user=chosen.chosen_by_user, choice_reason=chosen.reason)
    model_version = model_version_for(spec.experiment_id, spec.data_snapshot.hash, plan.provenance.code_version)
    live = None
    if champion_ is not None and now is not None:
        from factory_tasks.loop.config import DEFAULT_LOOP_CONFIG, load_loop_config
        from factory_tasks.stages.paths import config_path

        config = load_loop_config(config_path(loop_config_path, "loop_config_path") if loop_config_path
                                  else DEFAULT_LOOP_CONFIG)
        live = export_live_traffic(warehouse, cml, champion_.model_version, model_version, now=now,
                                   response_window_minutes=config.responses.window_minutes)
    request = RetrainRequest(
        model_version=model_version, spec=spec, cv_estimate=result.metrics[spec.ranking_metric],
        holdout_fraction=holdout_fraction, champion=champion_, live_traffic=live, lineage=lineage)
    return [{
        "request": {
            "job_name": f"{RETRAIN_JOB_PREFIX}{RETRAIN_CPU:g}cpu-{RETRAIN_MEMORY_GB:g}gb",
            "script": RETRAIN_SCRIPT,
            "cpu": RETRAIN_CPU,
            "memory_gb": RETRAIN_MEMORY_GB,
            "environment": {RetrainRequest.ENV: request.model_dump_json(), FACTORY_RUN_ENV: chosen.factory_run_id},
            "result_file": request.result_path,
        },
        "model_version": request.model_version,
    }]


def load_retrain_result(cml: CmlClient, model_version: str) -> RetrainResult:
    path = RetrainResult.path_for(model_version)
    return RetrainResult.parse(cml.download_file(path), f"retrain result {path}")


def gate_decision(warehouse: Any, cml: CmlClient, choice: dict[str, Any], model_version: str, *,
                  ranking_margin: float, policy_value_margin: float, challenger_share: float = 0.0) -> dict[str, Any]:
    """The champion/challenger decision (:func:`factory_tasks.loop.selection.gate`), logged; with
    ``challenger_share`` above 0 the bar of an A/B test's challenger (not shown worse)."""
    from factory_tasks.loop.selection import evidence_table, gate

    in_range("ranking_margin", ranking_margin, 0, MAX_MARGIN)
    in_range("policy_value_margin", policy_value_margin, 0, MAX_MARGIN)
    records = DEPLOYMENTS.read_all(warehouse)
    champion_, now = champion_record(records), latest(records)  # during an A/B test, its champion
    retrain = load_retrain_result(cml, model_version)
    decision = gate(retrain, Choice.from_data(choice, "choice"),
                    champion_version=champion_.model_version if champion_ else None,
                    ranking_margin=ranking_margin, policy_value_margin=policy_value_margin, live=retrain.live,
                    test_share=challenger_share)
    if now is not None and now.action == "ab_start" and now.model_version == model_version:
        decision = decision.model_copy(update={"deploy": False, "overridable": False, "reason": (
            f"not deployed again: {model_version} is being A/B tested against {now.champion_version} since "
            f"{now.deployed_at} (test {now.test_id}); the test's verdict decides")})
    (log.info if decision.deploy else log.warning)("gate for %s: %s", model_version, decision.reason)
    log.info("the gate's evidence for %s (challenger − champion %s):\n%s", model_version,
             decision.champion_version or "(none)", evidence_table(decision.evidence))
    return decision.model_dump(mode="json")


def override_request(decision: dict[str, Any], *, minutes: float) -> list[dict]:
    """Keyword arguments of the override review (HITL): a champion the gate kept on evidence
    that fell short is put to a reviewer with the evidence table, keeping it by default when
    nobody answers within ``minutes``. Empty (no review) when the gate deploys, keeps for a
    reason no reviewer may overrule, or ``minutes`` is shorter than ``MIN_REVIEW``."""
    from factory_tasks.loop.selection import DEPLOY_CHALLENGER, KEEP_CHAMPION, evidence_table

    gate_ = GateDecision.from_data(decision, "the gate task's output")
    timeout = timedelta(minutes=float(minutes))
    if gate_.deploy or not gate_.overridable or timeout < MIN_REVIEW:
        return []
    return [{"options": [KEEP_CHAMPION, DEPLOY_CHALLENGER], "defaults": [KEEP_CHAMPION], "response_timeout": timeout,
             "body": f"The gate keeps the champion {gate_.champion_version}: {gate_.reason}\n\n"
                     f"```\n{evidence_table(gate_.evidence)}\n```\n\n"
                     f"Deploy the challenger anyway? The answer is recorded as an override by you. If nobody "
                     f"answers within {float(minutes):g} minutes, the champion stays."}]


def final_decision(decision: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    """The gate's decision after the override review (:func:`factory_tasks.loop.selection.overridden`)."""
    from factory_tasks.loop.selection import overridden

    gate_ = GateDecision.from_data(decision, "the gate task's output")
    final = overridden(gate_, answer)
    if final is not gate_:  # a reviewer overrode the gate
        log.warning("%s", final.reason)
    return final.model_dump(mode="json")


def publish_model(cml: CmlClient, model_version: str, object_store: Any) -> dict[str, Any]:
    """Copy a model version's files from the project to object storage, where replicas can
    read them (a CML build leaves gitignored files out of the image), and return the
    deployment's environment."""
    retrain = load_retrain_result(cml, model_version)
    source_dir = retrain.artifact_path.rsplit("/", 1)[0]
    target = object_store.joinpath("models", model_version)
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        path = f"{source_dir}/{name}"
        if name == "model.onnx" and not retrain.onnx_path:
            continue
        target.joinpath(name).write_bytes(cml.download_file(path))
    log.info("published %s to %s", model_version, target)
    return model_environment(target, model_version)


def published_environment(cml: CmlClient, model_version: str, object_store: Any) -> dict[str, str]:
    """The environment of a version deployed before: its files in object storage as its first
    deployment left them (``models/<version>/``), or copied there again from the project
    (:func:`publish_model`) when any is missing."""
    target = object_store.joinpath("models", model_version)
    if all(target.joinpath(name).exists() for name in REQUIRED_FILES):
        log.info("reusing %s's files in %s", model_version, target)
        return model_environment(target, model_version)
    log.info("%s's files are not all in %s: copying them from the project again", model_version, target)
    return publish_model(cml, model_version, object_store)


def model_environment(target: Any, model_version: str) -> dict[str, str]:
    """The deployment's environment naming a model version's files in object storage (``target``)."""
    return {MODEL_ARTIFACT_ENV: str(target.joinpath("model.skops")), MODEL_DIR_ENV: str(target),
            MODEL_VERSION_ENV: model_version}


def deployment_fields(deployed: dict[str, Any]) -> dict[str, Any]:
    """What a :class:`DeploymentRecord` takes of the deploy operator's output: the CML model,
    build and deployment ids, a reference to the access key (never the key), what it replaced."""
    return {"model_name": deployed["model_name"], "model_id": deployed["model_id"], "model_crn": deployed.get("crn"),
            "build_id": deployed["build_id"], "deployment_id": deployed["deployment_id"],
            "deployment_crn": deployed.get("deployment_crn"),
            "access_key_ref": f"CML model {deployed['model_id']}: access_key (read from the CML API, never stored here)",
            "replaced_deployment_ids": list(deployed.get("replaced_deployment_ids") or [])}


def deploy_request(environment: dict[str, str], *, cpu: float, memory_gb: float, replicas: int,
                   exploration_epsilon: float) -> dict[str, Any]:
    """Keyword arguments of the deploy operator. The deployment's environment is the model's
    files (``environment``) plus its policy's exploration: ``MF_EXPLORATION_EPSILON`` =
    ``exploration_epsilon`` (the share of customers the endpoint offers a uniformly random
    offer, with the exact propensity in its answer: what the closed loop's off-policy estimates
    need). Both the deploy and the rollback path deploy through here, so a rollback explores too."""
    in_range("cpu", cpu, 0, MAX_REPLICA_CPU, above_low=True)
    in_range("memory_gb", memory_gb, 0, MAX_REPLICA_MEMORY_GB, above_low=True)
    in_range("replicas", replicas, 1, MAX_REPLICAS, whole=True)
    in_range("exploration_epsilon", exploration_epsilon, 0, MAX_EXPLORATION_EPSILON)
    environment = {**environment, EXPLORATION_EPSILON_ENV: repr(float(exploration_epsilon))}
    return {"model_name": MODEL_NAME, "file_path": MODEL_ENTRY_POINT, "function_name": MODEL_FUNCTION,
            "cpu": cpu, "memory_gb": memory_gb, "replicas": replicas, "environment": environment,
            "smoke_request": {"customers": [SMOKE_CUSTOMER]}}


def policy_fields(environment: dict[str, str], model_version: str) -> dict[str, Any]:
    """What a :class:`~factory_tasks.core.contracts.DeploymentRecord` of ``model_version``
    records of the policy its deployment's ``environment`` serves: the exploration, and for a
    test (the challenger is ``model_version``) the champion, the split, the test id and
    ``action`` ``ab_start``."""
    fields: dict[str, Any] = {}
    if EXPLORATION_EPSILON_ENV in environment:
        fields["exploration_epsilon"] = float(environment[EXPLORATION_EPSILON_ENV])
    if environment.get(CHALLENGER_VERSION_ENV):
        if environment[CHALLENGER_VERSION_ENV] != model_version:
            raise ValueError(f"the deployment's challenger is {environment[CHALLENGER_VERSION_ENV]}, not the version "
                             f"recorded, {model_version}")
        fields.update(action="ab_start", champion_version=environment[MODEL_VERSION_ENV],
                      challenger_share=float(environment[CHALLENGER_SHARE_ENV]),
                      test_id=environment[POLICY_TEST_ID_ENV])
    return fields


def record(warehouse: Any, cml: CmlClient, *, model_version: str, deployed: dict[str, Any], decision: dict[str, Any],
           deployed_at: str, environment: dict[str, str] | None = None) -> dict[str, Any]:
    """Append the :class:`DeploymentRecord` of a deployment that answered its smoke test; its
    policy (exploration, an A/B test's champion and split) as its ``environment`` set it."""

    retrain = load_retrain_result(cml, model_version)
    lineage = json.loads(cml.download_file(retrain.metadata_path))["lineage"]
    gate_ = GateDecision.from_data(decision, "the gate task's output")
    entry = DeploymentRecord(
        model_version=model_version, **deployment_fields(deployed), artifact_path=retrain.artifact_path, metadata_path=retrain.metadata_path,
        experiment_id=lineage["experiment_id"], factory_run_id=lineage["factory_run_id"],
        grid_hash=lineage["grid_hash"], data_snapshot_hash=lineage["data_snapshot_hash"],
        code_version=lineage["code_version"], chosen_by=lineage["chosen_by"],
        chosen_by_user=lineage.get("chosen_by_user"), choice_reason=lineage["choice_reason"],
        gate_reason=gate_.reason, gate_override=gate_.override, gate_evidence=list(gate_.evidence),
        deployed_at=deployed_at, **policy_fields(environment or {}, model_version))
    record_deployment(warehouse, entry)
    log.info("recorded deployment %s of %s in model_deployments", entry.deployment_id, model_version)
    return entry.model_dump(mode="json")


