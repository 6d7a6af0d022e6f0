"""Triggers that wait on a CML workspace in Airflow's triggerer.

The triggers take only serialisable primitives, ``serialize()`` mirrors ``__init__``, the loop
sleeps with ``asyncio.sleep`` until an absolute ``deadline`` (epoch seconds, so a triggerer
restart does not extend the wait), and each yields exactly one event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from cml_provider.durations import seconds
from cml_provider.hooks.cml import CmlHook
from cml_provider.states import JobRunStatus

__all__ = ["CmlJobRunTrigger", "parse_run_ref", "result_file_error", "run_outcome"]

#: the wait before the second check of a run; each wait then doubles up to ``poll_interval``.
#: A short run is seen to end within a fraction of a second, a long one costs a few checks more.
FIRST_POLL_S = 0.25


class _CmlTrigger(BaseTrigger):
    """A trigger that polls CML through a fresh hook (triggers share no state between polls)."""

    cml_conn_id: str
    retry_limit: int
    retry_delay: float
    #: the ``__init__`` parameters, which ``serialize()`` mirrors
    _serialized: tuple[str, ...]

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {name: getattr(self, name) for name in self._serialized})

    def _hook(self) -> CmlHook:
        return CmlHook(self.cml_conn_id, retry_limit=self.retry_limit, retry_delay=self.retry_delay)


class CmlJobRunTrigger(_CmlTrigger):
    """Wait until a CML job run reaches a terminal status or ``deadline`` passes.

    Yields one event ``{"status": "success" | "error" | "timeout", "message", "run_id",
    "job_id", "project_id", "run_status"}``: ``success`` when the run succeeded, ``error`` when it
    ended any other way or could not be read, ``timeout`` when the deadline passed first. When a
    user kills the deferred task, :meth:`on_kill` stops the run, as the task's own ``on_kill`` would.

    With ``end_task_on_success``, a run that succeeded ends the task right here instead:
    the trigger yields ``TaskSuccessEvent`` with the XCom ``return_value`` :func:`run_outcome`,
    which the triggerer writes with the task's success (no worker resumes it, so a success
    costs no task start and no scheduling round). Every other end still yields the event
    above, for the task to resume and raise with the run's own error.

    :param cml_conn_id: Airflow connection id of the workspace
    :param project_id: CML project id
    :param job_id: CML job id
    :param run_id: CML job run id
    :param poll_interval: seconds between status checks
    :param deadline: epoch seconds after which the trigger gives up with ``timeout``
    :param retry_limit: hook attempts per API call
    :param retry_delay: hook backoff base, seconds
    :param end_task_on_success: end the task in the triggerer when the run succeeded (see above)
    """

    _serialized = ("cml_conn_id", "project_id", "job_id", "run_id", "poll_interval", "deadline", "retry_limit",
                   "retry_delay", "end_task_on_success")

    def __init__(
        self,
        cml_conn_id: str,
        project_id: str,
        job_id: str,
        run_id: str,
        poll_interval: float,
        deadline: float,
        retry_limit: int = 3,
        retry_delay: float | timedelta = 1.0,
        end_task_on_success: bool = False,
    ) -> None:
        super().__init__()
        self.cml_conn_id = cml_conn_id
        self.project_id = project_id
        self.job_id = job_id
        self.run_id = run_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline)
        self.retry_limit = retry_limit
        self.retry_delay = seconds(retry_delay)
        self.end_task_on_success = bool(end_task_on_success)

    def _event(self, status: str, message: str, run_status: JobRunStatus | None) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "message": message,
                "run_id": self.run_id,
                "job_id": self.job_id,
                "project_id": self.project_id,
                "run_status": run_status.value if run_status else None,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        status, message, last = await _follow_run(
            self, self._hook(), self.project_id, self.job_id, self.run_id, self.poll_interval, self.deadline)
        if status == "success" and self.end_task_on_success:
            self.log.info("%s; the task ends here, in the triggerer", message)
            outcome = run_outcome(self.project_id, self.job_id, self.run_id, last)
            yield TaskSuccessEvent(xcoms={"return_value": outcome})
            return
        if status == "success":
            self.log.info("%s", message)
        else:
            self.log.warning("%s; the task resumes to fail", message)
        yield self._event(status, message, last)

    async def on_kill(self) -> None:
        """A user killed the deferred task (mark failed, clear): stop the run it waited for."""
        await self._hook().a_stop_job_run(self.job_id, self.run_id, project_id=self.project_id)
        self.log.info("Asked CML to stop job run %s (task killed)", self.run_id)


async def _follow_run(
    trigger: BaseTrigger, hook: CmlHook, project_id: str, job_id: str, run_id: str,
    poll_interval: float, deadline: float,
) -> tuple[str, str, JobRunStatus | None]:
    """Poll a run until it ends or ``deadline`` (epoch seconds) passes: ``(status,
    message, last run status)``, status ``success``, ``error`` (ended otherwise, or could not
    be read) or ``timeout``. Never raises."""
    last: JobRunStatus | None = None
    wait = min(FIRST_POLL_S, poll_interval)
    try:
        while True:
            run = await hook.a_get_job_run(job_id, run_id, project_id=project_id)
            last = run.status
            if last.is_terminal:
                if last.is_successful:
                    return "success", f"CML job run {run_id} succeeded", last
                return "error", f"CML job run {run_id} ended with {last}", last
            remaining = deadline - time.time()
            if remaining <= 0:
                return "timeout", (
                    f"CML job run {run_id} still {last} at the deadline "
                    f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(deadline))})"
                ), last
            trigger.log.info("CML job run %s is %s; next check in %gs", run_id, last, wait)
            await asyncio.sleep(min(wait, remaining))
            wait = min(wait * 2, poll_interval)
    except Exception as exc:
        return "error", f"Could not follow CML job run {run_id}: {type(exc).__name__}: {exc}", last


def run_outcome(project_id: str | None, job_id: str, run_id: str, status: JobRunStatus) -> dict[str, Any]:
    """The XCom of a waited-for run that succeeded, whether the task or its trigger ends the task."""
    return {"project_id": project_id, "job_id": job_id, "run_id": run_id, "status": status.value}


def parse_run_ref(run: Any) -> dict[str, str | None] | None:
    """``{"project_id" (or None), "job_id", "run_id"}`` from a submit task's reference (a dict,
    or its JSON as text when a template rendered it); None when there is no run to wait for.
    Raises ValueError naming what is wrong with it."""
    if run is None:
        return None
    if isinstance(run, str):  # an XCom rendered as text
        run = json.loads(run)
    if not isinstance(run, Mapping):
        raise ValueError(f"run must be a dict with job_id and run_id, got {run!r}")
    if run.get("run_id") in (None, ""):
        return None
    if not run.get("job_id"):
        raise ValueError(f"run {dict(run)!r} has a run_id but no job_id")
    return {"project_id": run.get("project_id") or None, "job_id": str(run["job_id"]), "run_id": str(run["run_id"])}


def result_file_error(path: str, data: bytes | None, read_error: Exception | None = None) -> str:
    """What a job's result file (its JSON ``"error"`` field) says about a failed run."""
    if read_error is not None:
        return f"Result file {path!r} could not be read: {read_error}"
    if data is None:
        return f"Result file {path!r} does not exist"
    try:
        doc = json.loads(data)
    except ValueError:
        return f"Result file {path!r} is not JSON: {data[:200]!r}"
    error = doc.get("error") if isinstance(doc, Mapping) else None
    if not error:
        return f"Result file {path!r} has no error field"
    return f"Error from {path}: {error}"
