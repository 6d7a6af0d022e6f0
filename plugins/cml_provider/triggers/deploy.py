"""Triggers that wait for a CML model build and a model deployment in Airflow's triggerer.

Like :mod:`cml_provider.triggers.cml`: only serialisable primitives, ``serialize()`` mirrors
``__init__``, ``asyncio.sleep`` between polls until an absolute ``deadline`` (epoch seconds),
and exactly one :class:`TriggerEvent` ``{"status": "success" | "error" | "timeout",
"message", ...ids, "<thing>_status"}``. A status the provider does not know ends the wait with
``error`` (it is never taken for "still running").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import TriggerEvent

from cml_provider.durations import seconds
from cml_provider.hooks.cml import CmlHook
from cml_provider.states import CmlBuildStatus, CmlDeploymentStatus
from cml_provider.triggers.cml import _CmlTrigger

__all__ = ["CmlModelBuildTrigger", "CmlModelDeploymentTrigger"]


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class _CmlStatusTrigger(_CmlTrigger):
    """Poll one remote object's status until it is terminal or the deadline passes."""

    poll_interval: float
    deadline: float
    #: what the messages call the object ("CML model build 12")
    noun: str
    #: the event key that carries the last status
    status_key: str

    async def _status(self, hook: CmlHook) -> tuple[CmlBuildStatus | CmlDeploymentStatus, str | None]:
        """The object's status and the workspace's ``status_message`` (None when it sends none)."""
        raise NotImplementedError

    #: the ids every event carries (``_serialized``, which ``serialize()`` mirrors, is the base's)
    _id_fields: tuple[str, ...]

    def _ids(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._id_fields}

    def _event(
        self, status: str, message: str, last: CmlBuildStatus | CmlDeploymentStatus | None
    ) -> TriggerEvent:
        payload = {"status": status, "message": message, **self._ids()}
        payload[self.status_key] = last.value if last else None
        return TriggerEvent(payload)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        last: CmlBuildStatus | CmlDeploymentStatus | None = None
        try:
            while True:
                last, detail = await self._status(hook)
                if last.is_terminal:
                    if last.is_successful:
                        event = self._event("success", f"{self.noun} is {last}", last)
                    else:
                        message = f"{self.noun} ended with status {last.value!r}"
                        event = self._event("error", f"{message}: {detail}" if detail else message, last)
                    break
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    message = f"{self.noun} still {last.value!r} at the deadline ({_utc(self.deadline)})"
                    event = self._event("timeout", message, last)
                    break
                self.log.info("%s is %s; next check in %gs", self.noun, last, self.poll_interval)
                await asyncio.sleep(min(self.poll_interval, remaining))
        except Exception as exc:
            event = self._event("error", f"Could not follow {self.noun}: {type(exc).__name__}: {exc}", last)
        yield event


class CmlModelBuildTrigger(_CmlStatusTrigger):
    """Wait until a model build is built (``built`` or ``succeeded``), fails, or ``deadline`` passes.

    Yields one event ``{"status", "message", "project_id", "model_id", "build_id",
    "build_status"}``: ``success`` when built, ``error`` when the build failed or timed out in
    CML or could not be read (including an unknown status), ``timeout`` at the deadline.

    :param cml_conn_id: Airflow connection id of the workspace
    :param project_id: CML project id
    :param model_id: CML model id
    :param build_id: CML model build id
    :param poll_interval: seconds between status checks
    :param deadline: epoch seconds after which the trigger gives up with ``timeout``
    :param retry_limit: hook attempts per API call
    :param retry_delay: hook backoff base, seconds
    """

    status_key = "build_status"

    def __init__(
        self,
        cml_conn_id: str,
        project_id: str,
        model_id: str,
        build_id: str,
        poll_interval: float,
        deadline: float,
        retry_limit: int = 3,
        retry_delay: float = 1.0,
    ) -> None:
        super().__init__()
        self.cml_conn_id = cml_conn_id
        self.project_id = project_id
        self.model_id = model_id
        self.build_id = build_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline)
        self.retry_limit = retry_limit
        self.retry_delay = seconds(retry_delay)
        self.noun = f"CML model build {build_id} (model {model_id})"

    _serialized = ("cml_conn_id", "project_id", "model_id", "build_id", "poll_interval", "deadline",
                   "retry_limit", "retry_delay")
    _id_fields = ("project_id", "model_id", "build_id")

    async def _status(self, hook: CmlHook) -> tuple[CmlBuildStatus, str | None]:
        build = await hook.a_get_model_build(self.model_id, self.build_id, project_id=self.project_id)
        return build.status, build.status_message


class CmlModelDeploymentTrigger(_CmlStatusTrigger):
    """Wait until a model deployment is ``deployed``, ends (``failed``, ``stopped``), or
    ``deadline`` passes.

    Yields one event ``{"status", "message", "project_id", "model_id", "build_id",
    "deployment_id", "deployment_status"}``. When a user kills the deferred task (mark failed,
    clear), :meth:`on_kill` stops the deployment if ``stop_on_kill``: it is the new deployment
    the task started, not the one serving.

    :param deployment_id: CML model deployment id
    :param stop_on_kill: stop the deployment when the user kills the task
    (other parameters as :class:`CmlModelBuildTrigger`)
    """

    status_key = "deployment_status"

    def __init__(
        self,
        cml_conn_id: str,
        project_id: str,
        model_id: str,
        build_id: str,
        deployment_id: str,
        poll_interval: float,
        deadline: float,
        stop_on_kill: bool = True,
        retry_limit: int = 3,
        retry_delay: float = 1.0,
    ) -> None:
        super().__init__()
        self.cml_conn_id = cml_conn_id
        self.project_id = project_id
        self.model_id = model_id
        self.build_id = build_id
        self.deployment_id = deployment_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline)
        self.stop_on_kill = bool(stop_on_kill)
        self.retry_limit = retry_limit
        self.retry_delay = seconds(retry_delay)
        self.noun = f"CML model deployment {deployment_id} (model {model_id}, build {build_id})"

    _serialized = ("cml_conn_id", "project_id", "model_id", "build_id", "deployment_id", "poll_interval",
                   "deadline", "stop_on_kill", "retry_limit", "retry_delay")
    _id_fields = ("project_id", "model_id", "build_id", "deployment_id")

    async def _status(self, hook: CmlHook) -> tuple[CmlDeploymentStatus, str | None]:
        deployment = await hook.a_get_model_deployment(
            self.model_id, self.build_id, self.deployment_id, project_id=self.project_id
        )
        return deployment.status, deployment.status_message

    async def on_kill(self) -> None:
        """The user killed the deferred task: stop the deployment it was waiting for."""
        if not self.stop_on_kill:
            return
        await self._hook().a_stop_model_deployment(
            self.model_id, self.build_id, self.deployment_id, project_id=self.project_id
        )
        self.log.info("Asked CML to stop %s (task killed)", self.noun)
