"""Rollback requests: a reviewer asks to serve an earlier model version again.

Each request is one :class:`~factory_tasks.core.contracts.RollbackRequest` appended as one row to
the warehouse table ``model_rollback_requests`` (``RollbackRequest.TABLE``; SQLite or Hive, a
:class:`~factory_tasks.warehouse.contract_table.ContractTable`). The monitoring dashboard writes
it (the requester is the signed-in user); the DAG ``rollback_requests`` reads it and has
``deploy_best_model`` carry it out. Nothing is updated in place: a request is *handled* once
``model_deployments`` holds a rollback record of its version deployed at or after it was asked;
only the newest request counts (an older one left unhandled is *superseded*).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from factory_tasks.core.contracts import ContractError, DeploymentRecord, RollbackRequest
from factory_tasks.warehouse.contract_table import ContractTable
from factory_tasks.warehouse.deployments import deployed_at, latest

ROLLBACK_REQUESTS = ContractTable(RollbackRequest)
#: the prefix of the deploy_best_model run that carries a request out (``rollback__<request_id>``)
RUN_ID_PREFIX = "rollback__"

RequestState = Literal["pending", "done", "superseded"]


class RollbackRefused(ValueError):
    """A rollback request that breaks a rule; the message says which, for the reviewer."""


def request_id_for(model_version: str, requested_by: str, requested_at: str) -> str:
    text = "\0".join((model_version, requested_by, requested_at))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_id_for(request: RollbackRequest) -> str:
    """The id of the deploy_best_model run that carries ``request`` out: one run per request."""
    return f"{RUN_ID_PREFIX}{request.request_id}"


def deployed_versions(deployments: list[DeploymentRecord]) -> list[str]:
    """Every version ``model_deployments`` records, newest deployment first, each once."""
    ordered = sorted(deployments, key=deployed_at, reverse=True)
    return list(dict.fromkeys(r.model_version for r in ordered))


def request_rollback(hook: Any, deployments: list[DeploymentRecord], model_version: str, requested_by: str,
                     reason: str, now: datetime) -> RollbackRequest:
    """Record that ``requested_by`` asks to serve ``model_version`` again: one row appended to
    ``model_rollback_requests`` through ``hook``.

    ``requested_by`` is the authenticated user, never typed in; ``deployments`` are the rows of
    ``model_deployments``. Raises :class:`RollbackRefused` (and writes nothing) for an empty user
    or reason, a version never deployed, or the version serving now.
    """
    requested_by, reason, model_version = (requested_by or "").strip(), (reason or "").strip(), model_version or ""
    if not requested_by:
        raise RollbackRefused("A rollback needs a signed-in reviewer: sign in to the dashboard first.")
    if not reason:
        raise RollbackRefused("A rollback needs a reason (why serve the earlier version again?).")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    serving = latest(deployments)
    if model_version not in {r.model_version for r in deployments}:
        raise RollbackRefused(f"Model version {model_version!r} was never deployed (it is not in "
                              f"{DeploymentRecord.TABLE}): only a recorded version can be served again.")
    if serving is not None and serving.model_version == model_version:
        raise RollbackRefused(f"Model version {model_version} is serving now: there is nothing to roll back.")
    requested_at = now.astimezone(timezone.utc).isoformat()
    try:
        request = RollbackRequest.from_data({
            "request_id": request_id_for(model_version, requested_by, requested_at),
            "model_version": model_version, "requested_by": requested_by, "reason": reason,
            "requested_at": requested_at, "serving_version": serving.model_version if serving else None,
        }, f"the rollback request to {model_version}")
    except ContractError as exc:
        raise RollbackRefused(f"Not a valid rollback request: {'; '.join(exc.problems)}") from exc
    ROLLBACK_REQUESTS.append(hook, request)
    return request


def load_requests(hook: Any) -> list[RollbackRequest]:
    """Every request, oldest first (by ``requested_at``, then id). A row that does not parse is a
    :class:`ContractError` naming it: nothing may act on half a table."""
    return sorted(ROLLBACK_REQUESTS.read_all(hook), key=lambda r: (datetime.fromisoformat(r.requested_at),
                                                                   r.request_id))


def handled_by(request: RollbackRequest, deployments: list[DeploymentRecord]) -> DeploymentRecord | None:
    """The rollback record that carried ``request`` out: the first one of its version deployed at
    or after it was asked (None while there is none)."""
    asked = datetime.fromisoformat(request.requested_at)
    done = [r for r in deployments if r.action == "rollback" and r.model_version == request.model_version
            and deployed_at(r) >= asked]
    return min(done, key=deployed_at) if done else None


@dataclass(frozen=True)
class RequestStatus:
    request: RollbackRequest
    state: RequestState
    #: the rollback deployment that carried it out (``done`` only)
    deployment: DeploymentRecord | None = None


def request_statuses(requests: list[RollbackRequest], deployments: list[DeploymentRecord]) -> list[RequestStatus]:
    """Each request (``requests`` oldest first) and its state: ``done`` when a rollback record
    carried it out, else ``pending`` if it is the newest request, else ``superseded``."""
    out = []
    for number, request in enumerate(requests, start=1):
        record = handled_by(request, deployments)
        state: RequestState = "done" if record else "pending" if number == len(requests) else "superseded"
        out.append(RequestStatus(request, state, record))
    return out


def pending_request(requests: list[RollbackRequest], deployments: list[DeploymentRecord]) -> RollbackRequest | None:
    """The request to carry out now: the newest one, unless it has been handled."""
    statuses = request_statuses(requests, deployments)
    return statuses[-1].request if statuses and statuses[-1].state == "pending" else None
