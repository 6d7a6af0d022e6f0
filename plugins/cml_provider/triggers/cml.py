"""Triggers that wait on a CML workspace in Airflow's triggerer.

The triggers take only serialisable primitives, ``serialize()`` mirrors ``__init__``, the loop
sleeps with ``asyncio.sleep`` until an absolute ``deadline`` (epoch seconds, so a triggerer
restart does not extend the wait; for a task started in the triggerer, its trigger timeout), and
each yields exactly one event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async

from airflow.triggers.base import BaseTrigger, TaskFailedEvent, TaskSuccessEvent, TriggerEvent
from cml_provider.durations import seconds
from cml_provider.hooks.cml import CmlHook
from cml_provider.states import JobRunStatus

__all__ = ["CmlCapacityTrigger", "CmlJobRunTrigger", "CmlSubmittedRunTrigger", "parse_run_ref", "result_file_error"]


class _SharedCount:
    """One count of active runs shared by the capacity triggers of one DAG run in this process
    (the triggerer runs every trigger in one event loop): counted at most once per poll
    interval, whichever trigger asks first, and the slots handed out since."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
        self.counted_at: float | None = None  # time.monotonic() of the count
        self.active = 0
        self.granted = 0  # slots handed to triggers since the count (their runs are not in it yet)


#: keyed by what a count depends on (connection, project, jobs, marker, pages)
_SHARED_COUNTS: dict[tuple, _SharedCount] = {}


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
    ended any other way or could not be read, ``timeout`` when the deadline passed first.

    :param cml_conn_id: Airflow connection id of the workspace
    :param project_id: CML project id
    :param job_id: CML job id
    :param run_id: CML job run id
    :param poll_interval: seconds between status checks
    :param deadline: epoch seconds after which the trigger gives up with ``timeout``
    :param retry_limit: hook attempts per API call
    :param retry_delay: hook backoff base, seconds
    """

    _serialized = ("cml_conn_id", "project_id", "job_id", "run_id", "poll_interval", "deadline", "retry_limit",
                   "retry_delay")

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
        yield self._event(status, message, last)


async def _follow_run(
    trigger: BaseTrigger, hook: CmlHook, project_id: str, job_id: str, run_id: str,
    poll_interval: float, deadline: float | None,
) -> tuple[str, str, JobRunStatus | None]:
    """Poll a run until it ends or ``deadline`` (epoch seconds; None = never) passes: ``(status,
    message, last run status)``, status ``success``, ``error`` (ended otherwise, or could not
    be read) or ``timeout``. Never raises."""
    last: JobRunStatus | None = None
    try:
        while True:
            run = await hook.a_get_job_run(job_id, run_id, project_id=project_id)
            last = run.status
            if last.is_terminal:
                if last.is_successful:
                    return "success", f"CML job run {run_id} succeeded", last
                return "error", f"CML job run {run_id} ended with {last}", last
            remaining = float("inf") if deadline is None else deadline - time.time()
            if remaining <= 0:
                return "timeout", (
                    f"CML job run {run_id} still {last} at the deadline "
                    f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(deadline))})"
                ), last
            trigger.log.info("CML job run %s is %s; next check in %gs", run_id, last, poll_interval)
            await asyncio.sleep(min(poll_interval, remaining))
    except Exception as exc:
        return "error", f"Could not follow CML job run {run_id}: {type(exc).__name__}: {exc}", last


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


class CmlSubmittedRunTrigger(_CmlTrigger):
    """Wait for the CML run that the same map index of ``run_task_id`` submitted, and end the
    task here, in the triggerer.

    The trigger of :meth:`~cml_provider.sensors.cml.CmlJobRunSensor.start_in_triggerer`: under a
    scheduler, a mapped sensor so configured goes from scheduled straight to this trigger
    (Airflow's ``start_from_trigger``) and never takes a worker, where starting a task process
    to look once at a run that is usually over costs more than the look. The scheduler builds
    the trigger from the sensor's static arguments, so the run is read here: the XCom of
    ``run_task_id`` at this task's map index (``{"project_id", "job_id", "run_id"}``, what
    :class:`~cml_provider.operators.cml.CmlJobRunOperator` returns; None or no ``run_id`` = no
    run, success). A failed run's explanation is read from the ``result_file`` of item *map
    index* of ``result_files_task_id``'s XCom, a list of paths or of mappings holding one.

    Ends the task with :class:`TaskSuccessEvent` (XCom ``{"project_id", "job_id", "run_id",
    "status"}``, as the sensor returns) or :class:`TaskFailedEvent`, having logged why (the
    trigger's log is part of the task's). The deadline is the task's trigger timeout.

    :param cml_conn_id: Airflow connection id of the workspace
    :param run_task_id: the mapped submit task whose XCom names the run
    :param poll_interval: seconds between status checks
    :param result_files_task_id: task whose XCom lists each map index's result file
    :param retry_limit: hook attempts per API call
    :param retry_delay: hook backoff base, seconds
    """

    _serialized = ("cml_conn_id", "run_task_id", "poll_interval", "result_files_task_id", "retry_limit",
                   "retry_delay")

    def __init__(
        self,
        cml_conn_id: str,
        run_task_id: str,
        poll_interval: float,
        result_files_task_id: str | None = None,
        retry_limit: int = 3,
        retry_delay: float | timedelta = 1.0,
    ) -> None:
        super().__init__()
        self.cml_conn_id = cml_conn_id
        self.run_task_id = run_task_id
        self.poll_interval = float(poll_interval)
        self.result_files_task_id = result_files_task_id
        self.retry_limit = retry_limit
        self.retry_delay = seconds(retry_delay)

    async def _pull(self, task_id: str, map_index: int) -> Any:
        # The triggerer's task instance reads XComs asynchronously (through the triggerer's
        # supervisor, without blocking the event loop the other triggers share). Always one map
        # index (-1: an unmapped task's value): without one the SDK asks for a sequence slice,
        # a message the triggerer's supervisor cannot decode and never answers.
        ti = self.task_instance
        pull = ti.axcom_pull if hasattr(ti, "axcom_pull") else sync_to_async(ti.xcom_pull)
        return await pull(task_ids=task_id, map_indexes=map_index)

    async def _result_file_error(self, hook: CmlHook, project_id: str) -> str | None:
        if not self.result_files_task_id:
            return None
        index = self.task_instance.map_index
        try:
            items = await self._pull(self.result_files_task_id, -1)  # the list of an unmapped task
            item = items[index] if index >= 0 else items
            path = item if isinstance(item, str) else item["result_file"]
        except Exception as exc:
            return f"No result file for map index {index} in {self.result_files_task_id}: {type(exc).__name__}: {exc}"
        try:
            return result_file_error(path, await hook.a_download_file_if_exists(path, project_id=project_id))
        except Exception as exc:
            return result_file_error(path, None, exc)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        index = self.task_instance.map_index
        try:
            ref = await self._pull(self.run_task_id, index)
        except Exception as exc:
            self.log.error("Could not read the run %s[%s] submitted: %s: %s",
                           self.run_task_id, index, type(exc).__name__, exc)
            yield TaskFailedEvent()
            return
        try:
            run_ref = parse_run_ref(ref)
        except ValueError as exc:
            self.log.error("%s[%s] returned no run reference: %s", self.run_task_id, index, exc)
            yield TaskFailedEvent()
            return
        if run_ref is None:
            self.log.info("No CML run to wait for (%s[%s] returned %r)", self.run_task_id, index, ref)
            yield TaskSuccessEvent()
            return
        hook = self._hook()
        project_id = run_ref["project_id"] or await hook.a_get_project_id()
        job_id, run_id = run_ref["job_id"], run_ref["run_id"]
        status, message, last = await _follow_run(self, hook, project_id, job_id, run_id, self.poll_interval, None)
        if status == "success":
            self.log.info("%s", message)
            done = {"project_id": project_id, "job_id": job_id, "run_id": run_id,
                    "status": last.value if last else None}
            yield TaskSuccessEvent(xcoms={"return_value": done})
            return
        explained = await self._result_file_error(hook, project_id)
        self.log.error("%s (job %s)%s", message, job_id, f". {explained}" if explained else "")
        yield TaskFailedEvent()


class CmlCapacityTrigger(_CmlTrigger):
    """Wait until fewer than ``max_active`` runs carrying a marker are still active.

    Counts the non-terminal runs, across ``job_ids`` (or, when ``job_ids`` is None, across the
    project's jobs whose name contains ``job_name_filter``, listed afresh on every check so that
    jobs created meanwhile count too), whose environment has ``marker_key == marker_value``
    (for example ``MF_AIRFLOW_DAG_RUN_KEY=<dag_id>/<run_id>``). Used to cap how many CML runs one
    DAG run keeps busy at once.

    The capacity triggers of one DAG run deferred in the same triggerer share one count per
    poll interval (:class:`_SharedCount`): each count lists the jobs and up to ``max_pages``
    pages of runs per job, which N deferred tasks counting apart would repeat N times. A trigger
    that finds a free slot takes it from the shared count, so the others do not all take the
    same slot before the next count (the cap stays soft across triggerers, and between a
    count and the resumed task's submission).

    Yields one event ``{"status": "success" | "error" | "timeout", "message", "active",
    "max_active"}``.

    :param max_pages: pages of recent runs (newest first) looked at per job
    """

    _serialized = ("cml_conn_id", "project_id", "job_ids", "marker_key", "marker_value", "max_active",
                   "poll_interval", "deadline", "job_name_filter", "max_pages", "retry_limit", "retry_delay")

    def __init__(
        self,
        cml_conn_id: str,
        project_id: str,
        job_ids: list[str] | None,
        marker_key: str,
        marker_value: str,
        max_active: int,
        poll_interval: float,
        deadline: float,
        job_name_filter: str | None = None,
        max_pages: int = 5,
        retry_limit: int = 3,
        retry_delay: float | timedelta = 1.0,
    ) -> None:
        super().__init__()
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        self.cml_conn_id = cml_conn_id
        self.project_id = project_id
        self.job_ids = list(job_ids) if job_ids is not None else None
        self.marker_key = marker_key
        self.marker_value = marker_value
        self.max_active = int(max_active)
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline)
        self.job_name_filter = job_name_filter
        self.max_pages = max_pages
        self.retry_limit = retry_limit
        self.retry_delay = seconds(retry_delay)

    def _event(self, status: str, message: str, active: int | None) -> TriggerEvent:
        return TriggerEvent(
            {"status": status, "message": message, "active": active, "max_active": self.max_active}
        )

    async def _job_ids(self, hook: CmlHook) -> list[str]:
        if self.job_ids is not None:
            return self.job_ids
        search = {"name": self.job_name_filter} if self.job_name_filter else None
        return [j.id for j in await hook.a_list_jobs(search, project_id=self.project_id)]

    def _share_key(self) -> tuple:
        return (self.cml_conn_id, self.project_id, tuple(self.job_ids) if self.job_ids is not None else None,
                self.job_name_filter, self.marker_key, self.marker_value, self.max_pages)

    async def _take_slot(self, hook: CmlHook, shared: _SharedCount) -> tuple[int, bool]:
        """(active runs as last counted plus slots handed out since, whether this trigger got a
        slot); counts afresh when the shared count is a poll interval old."""
        async with shared.lock:
            if shared.counted_at is None or time.monotonic() - shared.counted_at >= self.poll_interval:
                job_ids = await self._job_ids(hook)
                shared.active = await hook.a_count_active_runs(
                    job_ids, {self.marker_key: self.marker_value}, max_pages=self.max_pages,
                    project_id=self.project_id,
                )
                shared.counted_at, shared.granted = time.monotonic(), 0
            active = shared.active + shared.granted
            if active < self.max_active:
                shared.granted += 1
                return active, True
            return active, False

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        key = self._share_key()
        shared = _SHARED_COUNTS.setdefault(key, _SharedCount())
        shared.users += 1
        active: int | None = None
        try:
            while True:
                active, free = await self._take_slot(hook, shared)
                if free:
                    event = self._event(
                        "success",
                        f"{active} of at most {self.max_active} runs active for {self.marker_value}",
                        active,
                    )
                    break
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    event = self._event(
                        "timeout",
                        f"Still {active} runs active for {self.marker_value} (cap {self.max_active}) at the deadline",
                        active,
                    )
                    break
                self.log.info(
                    "%d CML runs active for %s (cap %d); next check in %gs",
                    active,
                    self.marker_value,
                    self.max_active,
                    self.poll_interval,
                )
                await asyncio.sleep(min(self.poll_interval, remaining))
        except Exception as exc:
            event = self._event("error", f"Could not count CML runs: {type(exc).__name__}: {exc}", active)
        finally:
            shared.users -= 1
            if shared.users == 0 and _SHARED_COUNTS.get(key) is shared:
                del _SHARED_COUNTS[key]
        yield event
