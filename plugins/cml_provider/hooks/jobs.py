"""CML jobs and job runs: one thin method per endpoint, plus the idempotent "look, then
create" calls (:meth:`CmlJobsMixin.get_or_create_job`, :meth:`CmlJobsMixin.ensure_job_run`)
that a task retry relies on.

A create call that answered 5xx may have created its object, so those calls list before
creating again. ``environment`` is a map on requests but a JSON-encoded string on responses
(``shared/CML_API.md``); :class:`~cml_provider.models.CmlJobRun` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cml_provider.hooks.cml_base import BaseCmlHook
from cml_provider.hooks.endpoints import (
    CREATE_JOB,
    CREATE_JOB_RUN,
    GET_JOB,
    GET_JOB_RUN,
    LIST_JOB_RUNS,
    LIST_JOBS,
    STOP_JOB_RUN,
    UPDATE_JOB,
    encode_search_filter,
)
from cml_provider.models import CmlJob, CmlJobRun, environment_to_request
from cml_provider.states import JobRunStatus

__all__ = ["CmlJobsMixin"]


class CmlJobsMixin(BaseCmlHook):
    """Jobs and their runs (part of :class:`~cml_provider.hooks.cml.CmlHook`)."""

    # -- Jobs -----------------------------------------------------------------------------
    def list_jobs(
        self, search_filter: Mapping[str, Any] | str | None = None, *, project_id: str | None = None
    ) -> list[CmlJob]:
        """All jobs of the project (every page), optionally filtered server-side.

        ``search_filter`` is a mapping such as ``{"name": "train"}`` (a case-sensitive
        substring match in CML) or an already JSON-encoded string.
        """
        pid = project_id or self.get_project_id()
        params = {"search_filter": encode_search_filter(search_filter)}
        items = self._paginate(LIST_JOBS, "jobs", path_params={"project_id": pid}, params=params)
        return [CmlJob.from_api(j) for j in items]

    def get_job(self, job_id: str, *, project_id: str | None = None) -> CmlJob:
        pid = project_id or self.get_project_id()
        return CmlJob.from_api(self._do_api_call(GET_JOB, path_params={"project_id": pid, "job_id": job_id}))

    def find_job(self, name: str, *, project_id: str | None = None) -> CmlJob | None:
        """The job with exactly this name (the oldest one if a race created several), or None."""
        exact = [j for j in self.list_jobs({"name": name}, project_id=project_id) if j.name == name]
        if len(exact) > 1:
            self.log.warning("%d CML jobs are named %r; using the oldest", len(exact), name)
        exact.sort(key=lambda j: (j.created_at or "", j.id))
        return exact[0] if exact else None

    def get_or_create_job(
        self,
        name: str,
        script: str,
        cpu: float,
        memory_gb: float,
        timeout_s: int | None = None,
        runtime_identifier: str | None = None,
        environment: Mapping[str, Any] | None = None,
        *,
        project_id: str | None = None,
    ) -> CmlJob:
        """The job named ``name``, created if absent (one job per name).

        CPU and memory are per job in CML, so callers put the resource profile in the name
        (``train-2cpu-4gb``). An existing job whose script, CPU, memory, timeout or runtime
        differ from the request is updated to match (and says so in the log). After a failed
        create (5xx, read timeout) the jobs are listed again before re-creating, because the
        workspace may have created the job despite the error.
        """
        pid = project_id or self.get_project_id()
        wanted: dict[str, Any] = {"script": script, "cpu": float(cpu), "memory": float(memory_gb)}
        if timeout_s is not None:
            wanted["timeout"] = int(timeout_s)
            wanted["kill_on_timeout"] = True
        runtime_identifier = runtime_identifier or self.config.runtime_identifier
        if runtime_identifier:
            wanted["runtime_identifier"] = runtime_identifier
        if environment:
            wanted["environment"] = environment_to_request(environment)

        for attempt in self._retry_unsafe(f"get or create job {name!r}"):
            with attempt:
                job = self.find_job(name, project_id=pid)
                if job is None:
                    body = {"project_id": pid, "name": name, **wanted}
                    created = self._do_api_call(CREATE_JOB, path_params={"project_id": pid}, json=body)
                    self.log.info("Created CML job %r (%s)", name, created.get("id"))
                    return CmlJob.from_api(created)
        assert job is not None
        changes = _job_changes(job, wanted)
        if changes:
            self.log.info("Updating CML job %r (%s): %s", name, job.id, sorted(changes))
            updated = self._do_api_call(
                UPDATE_JOB, path_params={"project_id": pid, "job_id": job.id}, json=changes
            )
            return CmlJob.from_api(updated) if updated.get("id") else self.get_job(job.id, project_id=pid)
        return job

    # -- Job runs -------------------------------------------------------------------------
    def create_job_run(
        self,
        job_id: str,
        environment: Mapping[str, Any] | None = None,
        arguments: str | None = None,
        *,
        project_id: str | None = None,
    ) -> CmlJobRun:
        """Start a run of ``job_id`` with per-run ``environment`` and ``arguments``.

        Not repeated after a 5xx or a read timeout (the run may exist): use
        :meth:`ensure_job_run` for an idempotent submit.
        """
        pid = project_id or self.get_project_id()
        body: dict[str, Any] = {"project_id": pid, "job_id": job_id}
        if environment:
            body["environment"] = environment_to_request(environment)
        if arguments:
            body["arguments"] = arguments
        data = self._do_api_call(CREATE_JOB_RUN, path_params={"project_id": pid, "job_id": job_id}, json=body)
        return CmlJobRun.from_api(data, job_id=job_id, project_id=pid)

    def get_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> CmlJobRun:
        pid = project_id or self.get_project_id()
        data = self._do_api_call(
            GET_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id}
        )
        return CmlJobRun.from_api(data, job_id=job_id, project_id=pid)

    async def a_get_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> CmlJobRun:
        """Async twin of :meth:`get_job_run`."""
        pid = project_id or await self.a_get_project_id()
        data = await self._a_do_api_call(
            GET_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id}
        )
        return CmlJobRun.from_api(data, job_id=job_id, project_id=pid)

    def list_job_runs(
        self,
        job_id: str,
        sort: str | None = "-created_at",
        max_pages: int | None = None,
        *,
        project_id: str | None = None,
    ) -> list[CmlJobRun]:
        """Runs of a job, newest first by default; ``max_pages`` bounds how far back to look."""
        pid = project_id or self.get_project_id()
        items = self._paginate(
            LIST_JOB_RUNS,
            "job_runs",
            path_params={"project_id": pid, "job_id": job_id},
            params={"sort": sort},
            max_pages=max_pages,
        )
        return [CmlJobRun.from_api(r, job_id=job_id, project_id=pid) for r in items]

    def stop_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> None:
        """Ask the workspace to stop a run (idempotent: stopping a finished run is harmless)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(STOP_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id})

    async def a_stop_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> None:
        """Async twin of :meth:`stop_job_run`."""
        pid = project_id or await self.a_get_project_id()
        await self._a_do_api_call(
            STOP_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id}
        )

    def find_job_run(
        self,
        job_id: str,
        environment: Mapping[str, str],
        *,
        max_pages: int | None = 5,
        project_id: str | None = None,
    ) -> CmlJobRun | None:
        """The newest recent run of ``job_id`` whose environment carries all of ``environment``."""
        for run in self.list_job_runs(job_id, max_pages=max_pages, project_id=project_id):
            if run.matches(environment):
                return run
        return None

    def ensure_job_run(
        self,
        job_id: str,
        *,
        idempotency_env: Mapping[str, str],
        environment: Mapping[str, Any] | None = None,
        arguments: str | None = None,
        max_pages: int | None = 5,
        reuse_succeeded: bool = True,
        reuse_failed: bool = False,
        project_id: str | None = None,
        recent_runs: Sequence[CmlJobRun] | None = None,
    ) -> tuple[CmlJobRun, bool]:
        """Start a run unless a live or succeeded run with the same marker exists.

        ``idempotency_env`` (e.g. ``{"MF_AIRFLOW_TI_KEY": "dag/run/task/-1"}``) is added to the
        run's environment and looked up among the job's recent runs (``max_pages`` pages, newest
        first) before creating: a run carrying it that is still active, or has succeeded (unless
        ``reuse_succeeded=False``), is reused; a failed or timed-out one only with
        ``reuse_failed=True`` (its failure is then the outcome); a stopped or skipped one never.
        After an ambiguous create failure (5xx, read timeout) the runs are listed again before
        re-creating.

        ``recent_runs``: the job's recent runs as the caller has just listed them (newest first,
        :meth:`list_job_runs`); the first attempt looks there instead of listing again.

        :return: ``(run, reused)``
        """
        pid = project_id or self.get_project_id()
        env = {**environment_to_request(environment), **dict(idempotency_env)}
        for attempt in self._retry_unsafe(f"submit run of job {job_id}"):
            with attempt:
                if recent_runs is not None:
                    existing = next((r for r in recent_runs if r.matches(idempotency_env)), None)
                    recent_runs = None  # a later attempt (after an ambiguous failure) lists afresh
                else:
                    existing = self.find_job_run(job_id, idempotency_env, max_pages=max_pages, project_id=pid)
                if existing is not None and (
                    existing.status.is_active
                    or (reuse_succeeded and existing.status.is_successful)
                    or (reuse_failed and existing.status in (JobRunStatus.FAILED, JobRunStatus.TIMEDOUT))
                ):
                    return existing, True
                return self.create_job_run(job_id, env, arguments, project_id=pid), False
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises


def _job_changes(job: CmlJob, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``wanted`` that the existing job does not already have."""
    changes: dict[str, Any] = {}
    for key, value in wanted.items():
        if key == "kill_on_timeout":
            continue
        if key == "environment":
            if any(job.environment.get(k) != v for k, v in value.items()):
                changes[key] = {**job.environment, **value}
            continue
        current = getattr(job, key)
        if isinstance(value, float):
            if current is None or abs(float(current) - value) > 1e-9:
                changes[key] = value
        elif current != value:
            changes[key] = value
    if "timeout" in changes:
        changes["kill_on_timeout"] = True
    return changes
