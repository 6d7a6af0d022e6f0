"""Operator that deploys a CML model: model (idempotent) → build → deployment → smoke test →
stop the previous deployment.

The previous deployment keeps serving until the new one is ``deployed`` *and* has answered a
real request correctly; only then is it stopped. A failed build, a failed or late deployment,
or a failed smoke test fails the task with CML's status and message and leaves the previous
deployment alone (a new deployment that did come up is stopped instead).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from cml_provider.durations import seconds
from cml_provider.errors import CmlError
from cml_provider.hooks.cml import CmlHook
from cml_provider.models import CmlModelDeployment, CmlModelResponse
from cml_provider.operators.cml import ti_key
from cml_provider.states import CmlDeploymentStatus
from cml_provider.triggers.deploy import CmlModelBuildTrigger, CmlModelDeploymentTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["SMOKE_RESPONSE_MAX_BYTES", "CmlDeployModelOperator"]

#: a smoke answer larger than this (JSON bytes) is summarised in XCom, not copied
SMOKE_RESPONSE_MAX_BYTES = 4096

_EVENT_STATUSES = ("success", "error", "timeout")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _created_before(a: CmlModelDeployment, b: CmlModelDeployment) -> bool:
    """True only when both creation times are known and ``a``'s is earlier."""
    ta, tb = _parse_time(a.created_at), _parse_time(b.created_at)
    return ta is not None and tb is not None and ta < tb


def _smoke_failure(prediction: Any) -> str | None:
    """Why a smoke answer is not acceptable, or None: it must be a JSON object without ``error``."""
    if not isinstance(prediction, Mapping):
        return f"the answer is not a JSON object but {type(prediction).__name__}: {prediction!r:.300}"
    if "error" in prediction:
        return f"the answer carries an error: {json.dumps(prediction['error'], default=str)[:500]}"
    return None


def _small(prediction: Any) -> Any:
    """The smoke answer for XCom: as it is when small, else a summary."""
    text = json.dumps(prediction, default=str)
    if len(text.encode()) <= SMOKE_RESPONSE_MAX_BYTES:
        return prediction
    keys = sorted(map(str, prediction))[:20] if isinstance(prediction, Mapping) else None
    return {"truncated": True, "size_bytes": len(text.encode()), "keys": keys}


class CmlDeployModelOperator(BaseOperator):
    """Deploy ``file_path``'s ``function_name`` as the CML model ``model_name``.

    Steps (deferrable: the waits run in the triggerer):

    1. the model named ``model_name``, created if absent (listed by name first; after a 5xx on
       create it is listed again before re-creating);
    2. the deployments of that model that are ``deployed`` now are remembered as *previous*;
    3. a build of ``file_path`` / ``function_name`` on ``runtime_identifier`` (default: the
       connection's), then a wait in :class:`~cml_provider.triggers.deploy.CmlModelBuildTrigger`
       until it is built; a failed or timed-out build fails the task with CML's status;
    4. a deployment with ``cpu``, ``memory_gb``, ``replicas`` and ``environment`` (e.g.
       ``MF_MODEL_ARTIFACT``, ``MF_MODEL_DIR``, ``MF_MODEL_VERSION``), then a wait in
       :class:`~cml_provider.triggers.deploy.CmlModelDeploymentTrigger` until it is
       ``deployed``; ``failed``/``stopped`` fails the task, and a deployment still coming up at
       the deadline is stopped before failing;
    5. a smoke test: ``smoke_request`` sent through the model service
       (:meth:`~cml_provider.hooks.cml.CmlHook.call_model`, the model's access key read from
       CML); the answer must be a JSON object without an ``error`` key. On failure the *new*
       deployment is stopped and the task fails;
    6. with ``stop_previous``, the previous deployments (those remembered in step 2, and any
       other ``deployed`` one created before the new one) are stopped.

    The timeout covers steps 3 and 4 together. Until step 6 the previous deployment is never
    touched, so whatever fails, it keeps serving.

    **Retries are idempotent**: the build's comment carries a marker made of the task
    instance key (``<dag_id>/<run_id>/<task_id>/<map_index>``) and a hash of the deployment
    spec; a retry (or a clear with the same inputs) finds that build among the model's recent
    builds and reuses it unless it failed, and reuses its active deployment.

    While it waits, XCom key ``cml_ids`` holds ``{"project_id", "model_id", "build_id"[,
    "deployment_id"]}``. Returns (XCom) ``{"project_id", "model_id", "model_name", "crn", "build_id",
    "deployment_id", "deployment_crn", "replaced_deployment_ids", "smoke_response",
    "smoke_prediction_uuid"}`` — never the access key; ``smoke_response`` is summarised when
    larger than :data:`SMOKE_RESPONSE_MAX_BYTES`.

    :param model_name: CML model name (templated)
    :param file_path: the entry point, relative to the project root (templated)
    :param function_name: the function the model service calls (templated)
    :param smoke_request: the ``request`` dict of the smoke-test call (templated)
    :param runtime_identifier: ML Runtime image of the build (templated; default: connection extra)
    :param cpu: vCPUs per replica
    :param memory_gb: memory per replica, GB
    :param replicas: replicas (each serves one request at a time)
    :param environment: the replicas' environment (templated); non-string values are JSON-encoded
    :param model_description: description of a model created here
    :param build_comment: comment of the build (templated); the idempotency marker is appended
    :param stop_previous: stop the previous deployments once the new one passed the smoke test
    :param timeout: how long the build and the deployment may take together
    :param poll_interval: seconds between status checks while deferred
    :param recent_build_pages: pages of recent builds searched for this task instance's build
    :param cml_conn_id: Airflow connection of the workspace
    :param cml_retry_limit: hook attempts per API call
    :param cml_retry_delay: hook backoff base, seconds (``retry_delay`` is Airflow's task retry
        delay, a different thing; the names are prefixed as in the Databricks operators)
    """

    template_fields: Sequence[str] = (
        "model_name",
        "file_path",
        "function_name",
        "runtime_identifier",
        "environment",
        "smoke_request",
        "build_comment",
    )
    template_fields_renderers = {"environment": "json", "smoke_request": "json"}
    ui_color = "#eaf7ee"

    def __init__(
        self,
        *,
        model_name: str,
        file_path: str,
        smoke_request: Mapping[str, Any],
        function_name: str = "predict",
        runtime_identifier: str | None = None,
        cpu: float = 1.0,
        memory_gb: float = 2.0,
        replicas: int = 1,
        environment: Mapping[str, Any] | None = None,
        model_description: str | None = None,
        build_comment: str | None = None,
        stop_previous: bool = True,
        timeout: float | timedelta = timedelta(hours=1),
        poll_interval: float = 15.0,
        recent_build_pages: int = 5,
        cml_conn_id: str = CmlHook.default_conn_name,
        cml_retry_limit: int = 3,
        cml_retry_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.file_path = file_path
        self.smoke_request = smoke_request
        self.function_name = function_name
        self.runtime_identifier = runtime_identifier
        self.cpu = cpu
        self.memory_gb = memory_gb
        self.replicas = replicas
        self.environment = environment
        self.model_description = model_description
        self.build_comment = build_comment
        self.stop_previous = stop_previous
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.recent_build_pages = recent_build_pages
        self.cml_conn_id = cml_conn_id
        self.cml_retry_limit = cml_retry_limit
        self.cml_retry_delay = cml_retry_delay
        self.project_id = self.model_id = self.build_id = self.deployment_id = None
        #: the deployment this try started (or resumed waiting for): what ``on_kill`` stops
        self.started_deployment: dict[str, str] | None = None

    @cached_property
    def hook(self) -> CmlHook:
        return CmlHook(self.cml_conn_id, retry_limit=self.cml_retry_limit, retry_delay=self.cml_retry_delay)

    # -- execution ------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        if not isinstance(self.smoke_request, Mapping):
            raise AirflowException(
                f"smoke_request must be a dict, got {type(self.smoke_request).__name__}"
            )
        pid = self.project_id = self.hook.get_project_id()
        model = self.hook.get_or_create_model(self.model_name, self.model_description, project_id=pid)
        self.model_id = model.id
        previous = [
            d.id
            for d in self.hook.list_model_deployments(model.id, project_id=pid)
            if d.status is CmlDeploymentStatus.DEPLOYED
        ]
        self.log.info(
            "CML model %r (%s): deployments serving now: %s",
            model.name,
            model.id,
            ", ".join(previous) or "none",
        )
        build, reused = self.hook.ensure_model_build(
            model.id,
            self.file_path,
            self.function_name,
            self.runtime_identifier,
            marker=self._marker(context),
            comment=self.build_comment or f"Airflow {ti_key(context)}",
            max_pages=self.recent_build_pages,
            project_id=pid,
        )
        self.build_id = build.id
        self.log.info(
            "%s build %s of %s:%s (%s)",
            "Reusing" if reused else "Started",
            build.id,
            self.file_path,
            self.function_name,
            build.status,
        )
        state = {
            "project_id": pid,
            "model_id": model.id,
            "model_name": model.name,
            "model_crn": model.crn,
            "build_id": build.id,
            "previous_deployment_ids": previous,
            "deadline": time.time() + seconds(self.timeout),
        }
        if build.status.is_terminal:  # a reused build that is already built (or failed)
            event = {
                "status": "success" if build.status.is_successful else "error",
                "build_status": build.status.value,
                "message": f"CML model build {build.id} is {build.status}"
                + (f": {build.status_message}" if build.status_message else ""),
            }
            return self.execute_after_build(context, event=event, state=state)
        self._push_ids(context, state)
        self.defer(
            trigger=CmlModelBuildTrigger(
                cml_conn_id=self.cml_conn_id,
                project_id=pid,
                model_id=model.id,
                build_id=build.id,
                poll_interval=self.poll_interval,
                deadline=state["deadline"],
                retry_limit=self.cml_retry_limit,
                retry_delay=self.cml_retry_delay,
            ),
            method_name="execute_after_build",
            kwargs={"state": state},
            timeout=self._defer_timeout(state),
        )

    def execute_after_build(
        self, context: Context, event: dict[str, Any] | None = None, state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after :class:`CmlModelBuildTrigger`: deploy the build, or fail with its status."""
        state = self._resume(state, event, "CmlModelBuildTrigger")
        assert event is not None
        if event["status"] != "success":
            raise AirflowException(
                f"CML model build {state['build_id']} of model {state['model_name']!r} "
                f"({event.get('build_status') or 'status unknown'}): {event.get('message')}. "
                f"{self._previous_note(state)}"
            )
        self.log.info("%s", event.get("message"))
        deployment, reused = self.hook.ensure_model_deployment(
            state["model_id"],
            state["build_id"],
            self.cpu,
            self.memory_gb,
            self.replicas,
            self.environment,
            project_id=state["project_id"],
        )
        state["deployment_id"] = self.deployment_id = deployment.id
        self._track(state)
        self.log.info(
            "%s deployment %s of build %s (%s; %g vCPU, %g GB, %d replica(s))",
            "Reusing" if reused else "Started",
            deployment.id,
            state["build_id"],
            deployment.status,
            self.cpu,
            self.memory_gb,
            self.replicas,
        )
        if deployment.status.is_terminal:
            event = {
                "status": "success" if deployment.status.is_successful else "error",
                "deployment_status": deployment.status.value,
                "message": f"CML model deployment {deployment.id} is {deployment.status}"
                + (f": {deployment.status_message}" if deployment.status_message else ""),
            }
            return self.execute_after_deployment(context, event=event, state=state)
        self._push_ids(context, state)
        self.defer(
            trigger=CmlModelDeploymentTrigger(
                cml_conn_id=self.cml_conn_id,
                project_id=state["project_id"],
                model_id=state["model_id"],
                build_id=state["build_id"],
                deployment_id=deployment.id,
                poll_interval=self.poll_interval,
                deadline=state["deadline"],
                stop_on_kill=self._is_new(state),
                retry_limit=self.cml_retry_limit,
                retry_delay=self.cml_retry_delay,
            ),
            method_name="execute_after_deployment",
            kwargs={"state": state},
            timeout=self._defer_timeout(state),
        )

    def execute_after_deployment(
        self, context: Context, event: dict[str, Any] | None = None, state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after :class:`CmlModelDeploymentTrigger`: smoke-test, then replace the previous."""
        state = self._resume(state, event, "CmlModelDeploymentTrigger")
        assert event is not None
        self.deployment_id = state["deployment_id"]
        self._track(state)
        if event["status"] != "success":
            status = event.get("deployment_status")
            ended = status in {s.value for s in CmlDeploymentStatus if s.is_terminal}
            unstopped = ""
            if not ended:  # still coming up (timeout) or unreadable: it must not start serving later
                unstopped = self._stop_new(state, "it did not become deployed in time")
            raise AirflowException(
                f"CML model deployment {state['deployment_id']} of model {state['model_name']!r} "
                f"({status or 'status unknown'}): {event.get('message')}. {self._previous_note(state)}{unstopped}"
            )
        self.log.info("%s", event.get("message"))
        smoke = self._smoke_test(state)
        self.started_deployment = None  # it passed: from now on on_kill leaves it serving
        replaced = self._replace_previous(state) if self.stop_previous else []
        if not self.stop_previous:
            self.log.info("stop_previous=False: %s", self._previous_note(state))
        deployment = self.hook.get_model_deployment(
            state["model_id"], state["build_id"], state["deployment_id"], project_id=state["project_id"]
        )
        return {
            "project_id": state["project_id"],
            "model_id": state["model_id"],
            "model_name": state["model_name"],
            "crn": state["model_crn"],
            "build_id": state["build_id"],
            "deployment_id": state["deployment_id"],
            "deployment_crn": deployment.crn,
            "replaced_deployment_ids": replaced,
            "smoke_response": _small(smoke.prediction),
            "smoke_prediction_uuid": smoke.uuid,
        }

    def on_kill(self) -> None:
        """Stop the deployment this try started, if any (never a previous one)."""
        dep = self.started_deployment
        if not dep:
            return
        try:
            self.hook.stop_model_deployment(
                dep["model_id"], dep["build_id"], dep["deployment_id"], project_id=dep["project_id"]
            )
            self.log.info("Asked CML to stop model deployment %s", dep["deployment_id"])
        except Exception:  # on_kill must not raise: the task is being torn down anyway
            self.log.exception("Could not stop CML model deployment %s", dep["deployment_id"])

    # -- steps ----------------------------------------------------------------------------
    def _marker(self, context: Context) -> str:
        """Task instance key plus a hash of what is built and deployed (the build's comment tag)."""
        spec = {
            "model_name": self.model_name,
            "file_path": self.file_path,
            "function_name": self.function_name,
            "runtime_identifier": self.runtime_identifier or self.hook.config.runtime_identifier,
            "cpu": float(self.cpu),
            "memory_gb": float(self.memory_gb),
            "replicas": int(self.replicas),
            "environment": dict(self.environment or {}),
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"mf:{ti_key(context)}:{digest}"

    @staticmethod
    def _push_ids(context: Context, state: Mapping[str, Any]) -> None:
        """Show the ids in XCom (key ``cml_ids``) while the task waits, as Databricks does."""
        keys = ("project_id", "model_id", "build_id", "deployment_id")
        context["ti"].xcom_push(key="cml_ids", value={k: state[k] for k in keys if k in state})

    def _resume(
        self, state: dict[str, Any] | None, event: dict[str, Any] | None, source: str
    ) -> dict[str, Any]:
        if not state or "model_id" not in state:
            raise AirflowException(f"Resumed without the deploy state from {source}: {state!r}")
        if not event or event.get("status") not in _EVENT_STATUSES:
            raise AirflowException(f"Invalid event from {source}: {event!r}")
        self.project_id, self.model_id = state["project_id"], state["model_id"]
        self.build_id = state["build_id"]
        return dict(state)

    def _defer_timeout(self, state: Mapping[str, Any]) -> timedelta:
        return timedelta(seconds=max(state["deadline"] - time.time(), 0) + 300)

    @staticmethod
    def _is_new(state: Mapping[str, Any]) -> bool:
        return state["deployment_id"] not in state["previous_deployment_ids"]

    def _track(self, state: Mapping[str, Any]) -> None:
        if self._is_new(state):
            self.started_deployment = {
                k: state[k] for k in ("project_id", "model_id", "build_id", "deployment_id")
            }

    @staticmethod
    def _previous_note(state: Mapping[str, Any]) -> str:
        previous = state["previous_deployment_ids"]
        if not previous:
            return "No previous deployment was serving."
        return f"The previous deployment(s) {', '.join(previous)} keep serving."

    def _stop_new(self, state: Mapping[str, Any], why: str) -> str:
        """Stop the new deployment (never one that was serving before this task). Returns ""
        or, when CML could not be asked, a sentence for the task's error: CML may still bring
        that deployment up (e.g. a workspace that restarts resumes the deployments it accepted),
        and then it serves beside the previous one until someone stops it."""
        if not self._is_new(state):
            self.log.warning(
                "Deployment %s was serving before this task; leaving it running although %s",
                state["deployment_id"],
                why,
            )
            return ""
        self.log.warning("Stopping the new deployment %s: %s", state["deployment_id"], why)
        try:
            self.hook.stop_model_deployment(
                state["model_id"], state["build_id"], state["deployment_id"], project_id=state["project_id"]
            )
            self.started_deployment = None
            return ""
        except CmlError as exc:
            self.log.exception("Could not stop the new deployment %s", state["deployment_id"])
            return (
                f" The new deployment {state['deployment_id']} could not be stopped ({exc}): it may still "
                "come up when CML answers again; stop it then."
            )

    def _smoke_test(self, state: Mapping[str, Any]) -> CmlModelResponse:
        model = self.hook.get_model(state["model_id"], project_id=state["project_id"])
        self.log.info(
            "Smoke test of deployment %s: calling model %s (access key read from CML)",
            state["deployment_id"],
            model.id,
        )
        try:
            answer = self.hook.call_model(model, self.smoke_request)
        except CmlError as exc:
            failure = f"the model service call failed: {exc}"
        else:
            failure = _smoke_failure(answer.prediction)
        if failure:
            unstopped = self._stop_new(state, f"smoke test failed ({failure})")
            raise AirflowException(
                f"Smoke test of CML model deployment {state['deployment_id']} of model "
                f"{state['model_name']!r} failed: {failure}. {self._previous_note(state)}{unstopped}"
            )
        self.log.info("Smoke test passed (prediction uuid %s)", answer.uuid or "none")
        return answer

    def _replace_previous(self, state: Mapping[str, Any]) -> list[str]:
        """Stop the deployments that served before this one; return their ids."""
        pid, model_id, new_id = state["project_id"], state["model_id"], state["deployment_id"]
        deployments = self.hook.list_model_deployments(model_id, project_id=pid)
        new = next((d for d in deployments if d.id == new_id), None)
        remembered = set(state["previous_deployment_ids"])
        replaced = [
            d
            for d in deployments
            if d.id != new_id
            and (
                d.id in remembered
                or (new is not None and d.status is CmlDeploymentStatus.DEPLOYED and _created_before(d, new))
            )
        ]
        failures = []
        for d in replaced:
            if not d.status.is_active:
                self.log.info("Previous deployment %s is already %s", d.id, d.status)
                continue
            try:
                self.hook.stop_model_deployment(model_id, d.build_id, d.id, project_id=pid)
                self.log.info("Stopped the previous deployment %s (build %s)", d.id, d.build_id)
            except CmlError as exc:
                failures.append(f"{d.id}: {exc}")
        if failures:
            raise AirflowException(
                f"Deployment {new_id} serves, but previous deployment(s) could not be stopped: "
                f"{'; '.join(failures)}. A retry reuses the new deployment and tries again."
            )
        return sorted(d.id for d in replaced)
