"""Rollback in one step: serve a model version recorded in ``model_deployments`` again, from its
files, without review, retrain or gate (the ``model_version`` branch of ``deploy_best_model``),
and the rollback requests the monitoring dashboard records (the DAG ``rollback_requests``).

Like :mod:`factory_tasks.stages.deploy`: plain functions, hooks passed in, every hand-off a small
JSON value or a contract in the warehouse. The deployment itself is the deploy path's
(:func:`factory_tasks.stages.deploy.deploy_request`, the same operator and smoke test).
"""

from __future__ import annotations

import logging
from typing import Any

from factory_tasks.core.contracts import DeploymentRecord
from factory_tasks.core.names import WAREHOUSE_CONN_ID
from factory_tasks.loop.selection import SelectionError
from factory_tasks.stages.cml_client import CmlClient
from factory_tasks.stages.deploy import deployment_fields, policy_fields, published_environment
from factory_tasks.stages.errors import ParamError
from factory_tasks.warehouse.deployments import DEPLOYMENTS, deployed_at, record_deployment
from factory_tasks.warehouse.rollbacks import (
    deployed_versions,
    load_requests,
    pending_request,
    run_id_for,
)

log = logging.getLogger(__name__)

#: how many recorded versions an error about an unknown one lists
LISTED_VERSIONS = 10


def rollback_target(warehouse: Any, model_version: str) -> dict[str, Any]:
    """The first :class:`DeploymentRecord` of ``model_version`` (its lineage, as a JSON value); a
    :class:`SelectionError` naming the version, and the versions that can be served again, when
    ``model_deployments`` has no record of it."""
    model_version = (model_version or "").strip()
    records = sorted(DEPLOYMENTS.read_all(warehouse), key=deployed_at)
    mine = [r for r in records if r.model_version == model_version]
    if not mine:
        versions = deployed_versions(records)
        known = (f"the recorded versions, newest first: {', '.join(versions[:LISTED_VERSIONS])}"
                 f"{' ...' if len(versions) > LISTED_VERSIONS else ''}" if versions else "none is recorded yet")
        raise SelectionError(f"model version {model_version!r} was never deployed: table {DeploymentRecord.TABLE} "
                             f"of the warehouse connection {WAREHOUSE_CONN_ID} has no record of it ({known}); "
                             f"only a version deployed before can be rolled back to (param model_version)")
    first = mine[0]
    log.info("rolling back to %s: experiment %s of factory run %s, first deployed %s", model_version,
             first.experiment_id, first.factory_run_id, first.deployed_at)
    return first.model_dump(mode="json")


def check_request(requested_by: str | None, reason: str | None) -> dict[str, str]:
    """Who asks and why, both required (a :class:`ParamError` naming the missing param)."""
    requested_by, reason = (requested_by or "").strip(), (reason or "").strip()
    if not requested_by:
        raise ParamError("param requested_by: a rollback records who asked for it; give a name")
    if not reason:
        raise ParamError("param reason: a rollback records why; give a reason")
    return {"requested_by": requested_by, "reason": reason}


def publish_rollback(cml: CmlClient, model_version: str, object_store: Any) -> dict[str, str]:
    """The deployment's environment for ``model_version`` (:func:`~factory_tasks.stages.deploy.published_environment`)."""
    return published_environment(cml, model_version, object_store)


#: the ``model_deployments`` action of a redeploy that carries out an A/B test's verdict
VERDICT_ACTIONS = {"promote": "ab_promote", "end": "ab_end"}


def record_rollback(warehouse: Any, *, target: dict[str, Any], deployed: dict[str, Any], requested_by: str,
                    reason: str, deployed_at: str, environment: dict[str, str] | None = None,
                    test_verdict: str | None = None) -> dict[str, Any]:
    """Append the rollback's :class:`DeploymentRecord`: the version's lineage as first recorded,
    this deployment's ids and policy, ``action="rollback"`` (or, carrying out an A/B test's
    ``test_verdict``, ``ab_promote`` / ``ab_end``), who asked and why. The version serves alone."""
    first = DeploymentRecord.from_data(target, "the rollback_target task's output")
    if test_verdict is not None and test_verdict not in VERDICT_ACTIONS:
        raise ParamError(f"param test_verdict: {test_verdict!r} is not a verdict ({', '.join(VERDICT_ACTIONS)})")
    action = VERDICT_ACTIONS[test_verdict] if test_verdict else "rollback"
    what = {"rollback": "rollback to", "ab_promote": "the A/B test promotes", "ab_end": "the A/B test ends with"}[action]
    entry = first.model_copy(update={
        **deployment_fields(deployed), **policy_fields(environment or {}, first.model_version),
        "gate_reason": f"{what} {first.model_version} (first deployed {first.deployed_at}): redeployed as it "
                       f"was, without review, retrain or gate",
        "gate_override": False, "gate_evidence": [], "deployed_at": deployed_at, "action": action,
        "requested_by": requested_by, "request_reason": reason,
        "champion_version": None, "challenger_share": 0.0, "test_id": None,
    })
    entry = DeploymentRecord.from_data(entry.model_dump(mode="json"), "the rollback's deployment record")
    record_deployment(warehouse, entry)
    log.info("recorded the %s of %s (deployment %s, asked by %s) in %s", action, entry.model_version,
             entry.deployment_id, requested_by, DeploymentRecord.TABLE)
    return entry.model_dump(mode="json")


def pending_rollback(warehouse: Any) -> list[dict[str, Any]]:
    """The deploy_best_model run that carries out the pending rollback request, as
    ``TriggerDagRunOperator`` kwargs (``trigger_run_id``, ``conf``); none when no request is
    pending (a list: mapped over, so nothing pending skips the trigger)."""
    deployments = DEPLOYMENTS.read_all(warehouse)
    request = pending_request(load_requests(warehouse), deployments)
    if request is None:
        log.info("no rollback request is pending")
        return []
    log.info("rollback request %s: %s asked at %s to serve %s again: %s", request.request_id, request.requested_by,
             request.requested_at, request.model_version, request.reason)
    return [{"trigger_run_id": run_id_for(request),
             "conf": {"model_version": request.model_version, "requested_by": request.requested_by,
                      "reason": request.reason}}]
