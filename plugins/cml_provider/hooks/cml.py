"""Hook for Cloudera Machine Learning (CML) REST API v2: one thin method per endpoint.

This module (with its base, :mod:`cml_provider.hooks.cml_base`) is the only code in the
project that speaks HTTP to a CML workspace or its model service. Every call goes through one
choke point, :meth:`~cml_provider.hooks.cml_base.BaseCmlHook._do_api_call` (and its async twin
used by triggers), with an endpoint constant of :mod:`cml_provider.hooks.endpoints` such as
:data:`CREATE_JOB_RUN`. Retries are configured once there: connection errors, timeouts, HTTP
429 and 5xx are retried, any other 4xx fails fast as a named error of :mod:`cml_provider.errors`.

Where things live:

* :mod:`cml_provider.errors` — ``CmlError`` and its subclasses, the HTTP-status mapping, the
  retry predicates;
* :mod:`cml_provider.models` — the value types returned here (``CmlJob``, ``CmlModel``, ...);
* :mod:`cml_provider.states` — status enums (``JobRunStatus``, ``CmlBuildStatus``,
  ``CmlDeploymentStatus``);
* :mod:`cml_provider.hooks.endpoints` — the endpoint table and URL helpers.

The names importers used before that split (``from cml_provider.hooks.cml import CmlHook,
CmlError, CREATE_JOB, ...``) are re-exported here.

Field facts follow ``shared/CML_API.md``: int64 fields arrive as JSON strings, ``environment``
is a map on requests but a JSON-encoded string on responses, lists paginate with
``next_page_token`` (default page size 10), file uploads never overwrite, a create call that
answered 5xx may have created its object (so the ``get_or_create_*`` / ``ensure_*`` methods
list before creating again).

Two ways to configure the hook:

* **Airflow connection** (``conn_type="cml"``, default id ``cml_default``): *host* is the
  workspace URL (``https://ml-xxxx.cloudera.site`` or ``http://127.0.0.1:8787``; a host without
  a scheme means https), *password* is the API v2 key, *extra* names the project,
  ``{"project_id": "..."}`` or ``{"project_name": "..."}`` (resolved by listing projects), and
  may give ``"runtime_identifier"`` (the ML Runtime for jobs and builds created without one),
  ``"model_service_url"`` (default ``https://modelservice.<host>``; required for a plain-http
  workspace) and ``"model_api_key"`` (for models with authentication; default the API key).
  As an environment variable::

      AIRFLOW_CONN_CML_DEFAULT='{"conn_type": "cml", "host": "https://ml-xxxx.cloudera.site",
                                 "password": "<API v2 key>", "extra": {"project_name": "model-factory"}}'

* **No Airflow connection** (scripts, the dashboard, the local workspace's tools)::

      hook = CmlHook.from_url("http://127.0.0.1:8787", api_key, project_name="model-factory")
      # or: CmlHook(host=..., api_key=..., project_id=...)

  Airflow is still imported (the hook subclasses ``BaseHook``) but no metadata database,
  connection or task context is needed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cml_provider.errors import (
    CmlApiError,
    CmlAuthError,
    CmlBadRequestError,
    CmlConfigurationError,
    CmlConflictError,
    CmlConnectionError,
    CmlError,
    CmlFileExistsError,
    CmlModelServiceError,
    CmlNotFoundError,
    CmlRateLimitError,
    CmlServerError,
)
from cml_provider.errors import _error_from_response as _error_from_response  # noqa: F401 (old name)
from cml_provider.errors import is_retryable as _is_retryable  # noqa: F401 (old name)
from cml_provider.errors import is_safe_to_repeat as _is_safe_to_repeat  # noqa: F401 (old name)
from cml_provider.hooks.cml_base import DEFAULT_PAGE_SIZE, BaseCmlHook, _mask
from cml_provider.hooks.endpoints import (
    CALL_MODEL,
    CREATE_JOB,
    CREATE_JOB_RUN,
    CREATE_MODEL,
    CREATE_MODEL_BUILD,
    CREATE_MODEL_DEPLOYMENT,
    DELETE_FILE,
    DELETE_MODEL,
    DOWNLOAD_FILE,
    GET_JOB,
    GET_JOB_RUN,
    GET_MODEL,
    GET_MODEL_BUILD,
    GET_MODEL_DEPLOYMENT,
    GET_PROJECT,
    LIST_FILES,
    LIST_JOB_RUNS,
    LIST_JOBS,
    LIST_MODEL_BUILDS,
    LIST_MODEL_DEPLOYMENTS,
    LIST_MODELS,
    LIST_PROJECTS,
    NON_IDEMPOTENT,
    RESTART_MODEL_DEPLOYMENT,
    STOP_JOB_RUN,
    STOP_MODEL_DEPLOYMENT,
    UPDATE_JOB,
    UPLOAD_FILE,
    Endpoint,
    clean_file_path,
    encode_search_filter,
    normalise_service_url,
    normalise_workspace_url,
)
from cml_provider.models import (
    CmlFile,
    CmlJob,
    CmlJobRun,
    CmlModel,
    CmlModelBuild,
    CmlModelDeployment,
    CmlModelResponse,
    CmlProject,
    CmlWorkspaceConfig,
    environment_to_request,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "CmlApiError",
    "CmlAuthError",
    "CmlBadRequestError",
    "CmlConfigurationError",
    "CmlConflictError",
    "CmlConnectionError",
    "CmlError",
    "CmlFile",
    "CmlFileExistsError",
    "CmlHook",
    "CmlJob",
    "CmlJobRun",
    "CmlModel",
    "CmlModelBuild",
    "CmlModelDeployment",
    "CmlModelResponse",
    "CmlModelServiceError",
    "CmlNotFoundError",
    "CmlProject",
    "CmlRateLimitError",
    "CmlServerError",
    "CmlWorkspaceConfig",
    "Endpoint",
    "environment_to_request",
    "normalise_service_url",
    "normalise_workspace_url",
]


class CmlHook(BaseCmlHook):
    """Talk to a CML workspace through API v2: jobs, runs, files, models, builds, deployments,
    and the model service.

    Configuration, retries and pagination come from
    :class:`~cml_provider.hooks.cml_base.BaseCmlHook` (see its parameters).
    """

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

    async def a_list_jobs(
        self, search_filter: Mapping[str, Any] | str | None = None, *, project_id: str | None = None
    ) -> list[CmlJob]:
        """Async twin of :meth:`list_jobs`."""
        pid = project_id or await self.a_get_project_id()
        params = {"search_filter": encode_search_filter(search_filter)}
        items = self._a_paginate(LIST_JOBS, "jobs", path_params={"project_id": pid}, params=params)
        return [CmlJob.from_api(j) async for j in items]

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

    async def a_list_job_runs(
        self,
        job_id: str,
        sort: str | None = "-created_at",
        max_pages: int | None = None,
        *,
        project_id: str | None = None,
    ) -> list[CmlJobRun]:
        """Async twin of :meth:`list_job_runs`."""
        pid = project_id or await self.a_get_project_id()
        items = self._a_paginate(
            LIST_JOB_RUNS,
            "job_runs",
            path_params={"project_id": pid, "job_id": job_id},
            params={"sort": sort},
            max_pages=max_pages,
        )
        return [CmlJobRun.from_api(r, job_id=job_id, project_id=pid) async for r in items]

    def stop_job_run(self, job_id: str, run_id: str, *, project_id: str | None = None) -> None:
        """Ask the workspace to stop a run (idempotent: stopping a finished run is harmless)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(STOP_JOB_RUN, path_params={"project_id": pid, "job_id": job_id, "run_id": run_id})

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
        project_id: str | None = None,
        recent_runs: Sequence[CmlJobRun] | None = None,
    ) -> tuple[CmlJobRun, bool]:
        """Start a run unless a live or succeeded run with the same marker exists.

        ``idempotency_env`` (e.g. ``{"MF_AIRFLOW_TI_KEY": "dag/run/task/-1"}``) is added to the
        run's environment and looked up among the job's recent runs (``max_pages`` pages, newest
        first) before creating: a run carrying it that is still active, or has succeeded (unless
        ``reuse_succeeded=False``), is reused; a failed, timed-out, stopped or skipped one is not.
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
                    existing.status.is_active or (reuse_succeeded and existing.status.is_successful)
                ):
                    return existing, True
                return self.create_job_run(job_id, env, arguments, project_id=pid), False
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    async def a_count_active_runs(
        self,
        job_ids: Iterable[str],
        environment: Mapping[str, str],
        *,
        max_pages: int | None = 5,
        project_id: str | None = None,
    ) -> int:
        """How many non-terminal runs of ``job_ids`` carry all of ``environment``."""
        pid = project_id or await self.a_get_project_id()
        count = 0
        for job_id in job_ids:
            runs = await self.a_list_job_runs(job_id, max_pages=max_pages, project_id=pid)
            count += sum(1 for r in runs if r.status.is_active and r.matches(environment))
        return count

    def count_active_runs(
        self,
        job_ids: Iterable[str],
        environment: Mapping[str, str],
        *,
        max_pages: int | None = 5,
        project_id: str | None = None,
        recent_runs: Mapping[str, Sequence[CmlJobRun]] | None = None,
    ) -> int:
        """Sync twin of :meth:`a_count_active_runs`; ``recent_runs`` maps job ids to runs the
        caller has just listed (the same ``max_pages``), which are counted instead of listing."""
        pid = project_id or self.get_project_id()
        count = 0
        known = recent_runs or {}
        for job_id in job_ids:
            runs = known[job_id] if job_id in known else self.list_job_runs(job_id, max_pages=max_pages, project_id=pid)
            count += sum(1 for r in runs if r.status.is_active and r.matches(environment))
        return count

    # -- Project files --------------------------------------------------------------------
    def list_files(self, path: str = ".", *, project_id: str | None = None) -> list[CmlFile]:
        """Entries of a project directory (basenames; the API does not paginate files)."""
        pid = project_id or self.get_project_id()
        data = self._do_api_call(LIST_FILES, path_params={"project_id": pid, "path": clean_file_path(path)})
        return [CmlFile.from_api(f) for f in data.get("files") or []]

    def download_file(self, path: str, *, project_id: str | None = None) -> bytes:
        """The bytes of a project file; :class:`CmlNotFoundError` when it does not exist."""
        pid = project_id or self.get_project_id()
        clean = clean_file_path(path)
        try:
            return self._do_api_call(DOWNLOAD_FILE, path_params={"project_id": pid, "path": clean}, raw=True)
        except CmlNotFoundError as exc:
            raise CmlNotFoundError(
                f"Project file {clean!r} does not exist", body=exc.body, method=exc.method, path=exc.path
            ) from exc

    def download_file_if_exists(self, path: str, *, project_id: str | None = None) -> bytes | None:
        """The bytes of a project file, or None when it does not exist: one call, where
        :meth:`file_exists` then :meth:`download_file` is two."""
        try:
            return self.download_file(path, project_id=project_id)
        except CmlNotFoundError:
            return None

    async def a_download_file_if_exists(self, path: str, *, project_id: str | None = None) -> bytes | None:
        """Async twin of :meth:`download_file_if_exists`."""
        pid = project_id or await self.a_get_project_id()
        try:
            return await self._a_do_api_call(
                DOWNLOAD_FILE, path_params={"project_id": pid, "path": clean_file_path(path)}, raw=True)
        except CmlNotFoundError:
            return None

    def file_exists(self, path: str, *, project_id: str | None = None) -> bool:
        """Whether a project file or directory exists (lists its parent directory)."""
        clean = clean_file_path(path)
        if clean == ".":
            return True
        parent, name = posixpath.split(clean)
        try:
            entries = self.list_files(parent or ".", project_id=project_id)
        except CmlNotFoundError:
            return False
        return any(posixpath.basename(e.path.rstrip("/")) == name for e in entries)

    def delete_file(self, path: str, *, project_id: str | None = None) -> None:
        """Delete a project file (or directory)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(DELETE_FILE, path_params={"project_id": pid, "path": clean_file_path(path)})

    def upload_file(
        self, path: str, data: bytes, overwrite: bool = False, *, project_id: str | None = None
    ) -> str:
        """Store ``data`` at project path ``path`` and return the path.

        A CML upload never overwrites (an existing path makes it store ``name(1).ext``), so:

        * ``overwrite=True`` deletes an existing file first, then uploads;
        * ``overwrite=False`` raises :class:`CmlFileExistsError` when the path exists — write
          to a fresh, content-addressed path instead, or catch the error to skip.

        After an ambiguous failure (5xx, read timeout) the path is checked before uploading
        again: if it now holds exactly ``data``, the upload had landed.
        """
        pid = project_id or self.get_project_id()
        clean = clean_file_path(path)
        if clean == ".":
            raise ValueError("upload_file needs a file path, not the project root")
        if self.file_exists(clean, project_id=pid):
            if not overwrite:
                raise CmlFileExistsError(clean)
            self.log.info("Deleting project file %r before upload (overwrite=True)", clean)
            self.delete_file(clean, project_id=pid)
        payload = bytes(data)
        files = {clean: (posixpath.basename(clean), payload, "application/octet-stream")}
        tried = False
        for attempt in self._retry_unsafe(f"upload {clean!r}"):
            with attempt:
                if tried and self.file_exists(clean, project_id=pid):
                    if self.download_file(clean, project_id=pid) == payload:
                        return clean  # the failed attempt had landed after all
                    raise CmlError(
                        f"A failed upload left other content at project file {clean!r}; not retrying"
                    )
                tried = True
                self._do_api_call(UPLOAD_FILE, path_params={"project_id": pid}, files=files)
        return clean

    # -- Models ---------------------------------------------------------------------------
    def _model(self, data: Mapping[str, Any], project_id: str) -> CmlModel:
        model = CmlModel.from_api(data, project_id=project_id)
        if model.access_key:
            _mask(model.access_key)
        return model

    def list_models(
        self, search_filter: Mapping[str, Any] | str | None = None, *, project_id: str | None = None
    ) -> list[CmlModel]:
        """All models of the project (every page), optionally filtered server-side
        (``{"name": "next-best"}``: a case-sensitive substring match)."""
        pid = project_id or self.get_project_id()
        params = {"search_filter": encode_search_filter(search_filter)}
        items = self._paginate(LIST_MODELS, "models", path_params={"project_id": pid}, params=params)
        return [self._model(m, pid) for m in items]

    def create_model(
        self,
        name: str,
        description: str | None = None,
        *,
        disable_authentication: bool = False,
        project_id: str | None = None,
    ) -> CmlModel:
        """Create a model (authentication stays on unless ``disable_authentication``).

        Not repeated after a 5xx or a read timeout (the model may exist): use
        :meth:`get_or_create_model` for an idempotent create.
        """
        pid = project_id or self.get_project_id()
        body: dict[str, Any] = {"project_id": pid, "name": name, "description": description or ""}
        if disable_authentication:
            body["disable_authentication"] = True
        return self._model(self._do_api_call(CREATE_MODEL, path_params={"project_id": pid}, json=body), pid)

    def get_model(self, model_id: str, *, project_id: str | None = None) -> CmlModel:
        pid = project_id or self.get_project_id()
        data = self._do_api_call(GET_MODEL, path_params={"project_id": pid, "model_id": model_id})
        return self._model(data, pid)

    def delete_model(self, model_id: str, *, project_id: str | None = None) -> None:
        pid = project_id or self.get_project_id()
        self._do_api_call(DELETE_MODEL, path_params={"project_id": pid, "model_id": model_id})

    def find_model(self, name: str, *, project_id: str | None = None) -> CmlModel | None:
        """The model with exactly this name (the oldest one if a race created several), or None."""
        exact = [m for m in self.list_models({"name": name}, project_id=project_id) if m.name == name]
        if len(exact) > 1:
            self.log.warning("%d CML models are named %r; using the oldest", len(exact), name)
        exact.sort(key=lambda m: (m.created_at or "", m.id))
        return exact[0] if exact else None

    def get_or_create_model(
        self,
        name: str,
        description: str | None = None,
        *,
        disable_authentication: bool = False,
        project_id: str | None = None,
    ) -> CmlModel:
        """The model named ``name``, created if absent (one model per name).

        Lists by name first. After a failed create (5xx, read timeout: CML's gateway may answer
        500 after 30 s while the workspace goes on creating) the models are listed again before
        re-creating. An existing model is returned as it is (its authentication setting is not
        changed).
        """
        pid = project_id or self.get_project_id()
        for attempt in self._retry_unsafe(f"get or create model {name!r}"):
            with attempt:
                model = self.find_model(name, project_id=pid)
                if model is not None:
                    return model
                model = self.create_model(
                    name, description, disable_authentication=disable_authentication, project_id=pid
                )
                self.log.info("Created CML model %r (%s)", name, model.id)
                return model
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    # -- Model builds ---------------------------------------------------------------------
    def list_model_builds(
        self,
        model_id: str,
        sort: str | None = "-created_at",
        max_pages: int | None = None,
        *,
        project_id: str | None = None,
    ) -> list[CmlModelBuild]:
        """Builds of a model, newest first by default; ``max_pages`` bounds how far back to look."""
        pid = project_id or self.get_project_id()
        items = self._paginate(
            LIST_MODEL_BUILDS,
            "model_builds",
            path_params={"project_id": pid, "model_id": model_id},
            params={"sort": sort},
            max_pages=max_pages,
        )
        return [CmlModelBuild.from_api(b, model_id=model_id) for b in items]

    def create_model_build(
        self,
        model_id: str,
        file_path: str,
        function_name: str,
        runtime_identifier: str | None = None,
        *,
        comment: str | None = None,
        kernel: str | None = None,
        project_id: str | None = None,
    ) -> CmlModelBuild:
        """Build ``file_path``'s ``function_name`` into an image (a snapshot of the project that
        respects ``.gitignore``). ML Runtimes projects need ``runtime_identifier`` (default: the
        connection's); legacy engines take ``kernel``. Not repeated after a 5xx: see
        :meth:`ensure_model_build`."""
        pid = project_id or self.get_project_id()
        body: dict[str, Any] = {
            "project_id": pid,
            "model_id": model_id,
            "file_path": clean_file_path(file_path),
            "function_name": function_name,
        }
        runtime_identifier = runtime_identifier or (None if kernel else self.config.runtime_identifier)
        if runtime_identifier:
            body["runtime_identifier"] = runtime_identifier
        if kernel:
            body["kernel"] = kernel
        if comment:
            body["comment"] = comment
        data = self._do_api_call(
            CREATE_MODEL_BUILD, path_params={"project_id": pid, "model_id": model_id}, json=body
        )
        return CmlModelBuild.from_api(data, model_id=model_id)

    def get_model_build(
        self, model_id: str, build_id: str, *, project_id: str | None = None
    ) -> CmlModelBuild:
        pid = project_id or self.get_project_id()
        data = self._do_api_call(
            GET_MODEL_BUILD, path_params={"project_id": pid, "model_id": model_id, "build_id": build_id}
        )
        return CmlModelBuild.from_api(data, model_id=model_id)

    async def a_get_model_build(
        self, model_id: str, build_id: str, *, project_id: str | None = None
    ) -> CmlModelBuild:
        """Async twin of :meth:`get_model_build`."""
        pid = project_id or await self.a_get_project_id()
        data = await self._a_do_api_call(
            GET_MODEL_BUILD, path_params={"project_id": pid, "model_id": model_id, "build_id": build_id}
        )
        return CmlModelBuild.from_api(data, model_id=model_id)

    def ensure_model_build(
        self,
        model_id: str,
        file_path: str,
        function_name: str,
        runtime_identifier: str | None = None,
        *,
        marker: str,
        comment: str | None = None,
        max_pages: int | None = 5,
        project_id: str | None = None,
    ) -> tuple[CmlModelBuild, bool]:
        """Start a build unless a recent build whose comment carries ``marker`` is under way or built.

        The comment becomes ``"<comment> [<marker>]"``. The model's recent builds (``max_pages``
        pages, newest first) are searched for the marker before creating, and again after an
        ambiguous create failure (5xx, read timeout); a failed or timed-out build is not reused.

        :return: ``(build, reused)``
        """
        pid = project_id or self.get_project_id()
        tag = f"[{marker}]"
        text = f"{comment} {tag}" if comment else tag
        for attempt in self._retry_unsafe(f"build model {model_id}"):
            with attempt:
                for build in self.list_model_builds(model_id, max_pages=max_pages, project_id=pid):
                    if tag in (build.comment or "") and not build.status.is_failed:
                        return build, True
                build = self.create_model_build(
                    model_id, file_path, function_name, runtime_identifier, comment=text, project_id=pid
                )
                return build, False
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    # -- Model deployments ----------------------------------------------------------------
    def list_model_deployments(
        self,
        model_id: str,
        build_id: str | None = None,
        *,
        max_build_pages: int | None = None,
        project_id: str | None = None,
    ) -> list[CmlModelDeployment]:
        """Deployments of one build, or (``build_id=None``) of every build of the model.

        API v2 lists deployments per build, so the model-wide listing costs one call per build
        (``max_build_pages`` bounds it to the newest builds).
        """
        pid = project_id or self.get_project_id()
        if build_id is None:
            builds = self.list_model_builds(model_id, max_pages=max_build_pages, project_id=pid)
            return [d for b in builds for d in self.list_model_deployments(model_id, b.id, project_id=pid)]
        items = self._paginate(
            LIST_MODEL_DEPLOYMENTS,
            "model_deployments",
            path_params={"project_id": pid, "model_id": model_id, "build_id": build_id},
        )
        return [CmlModelDeployment.from_api(d, model_id=model_id, build_id=build_id) for d in items]

    def create_model_deployment(
        self,
        model_id: str,
        build_id: str,
        cpu: float,
        memory_gb: float,
        replicas: int = 1,
        environment: Mapping[str, Any] | None = None,
        nvidia_gpus: int | None = None,
        *,
        project_id: str | None = None,
    ) -> CmlModelDeployment:
        """Deploy a build with ``replicas`` replicas of ``cpu`` vCPU and ``memory_gb`` GB each;
        ``environment`` is the replicas' environment. Not repeated after a 5xx: see
        :meth:`ensure_model_deployment`."""
        pid = project_id or self.get_project_id()
        body: dict[str, Any] = {
            "project_id": pid,
            "model_id": model_id,
            "build_id": build_id,
            "cpu": float(cpu),
            "memory": float(memory_gb),
            "replicas": int(replicas),
        }
        if nvidia_gpus:
            body["nvidia_gpus"] = int(nvidia_gpus)
        if environment:
            body["environment"] = environment_to_request(environment)
        data = self._do_api_call(
            CREATE_MODEL_DEPLOYMENT,
            path_params={"project_id": pid, "model_id": model_id, "build_id": build_id},
            json=body,
        )
        return CmlModelDeployment.from_api(data, model_id=model_id, build_id=build_id)

    def get_model_deployment(
        self, model_id: str, build_id: str, deployment_id: str, *, project_id: str | None = None
    ) -> CmlModelDeployment:
        pid = project_id or self.get_project_id()
        data = self._do_api_call(
            GET_MODEL_DEPLOYMENT, path_params=_deployment_params(pid, model_id, build_id, deployment_id)
        )
        return CmlModelDeployment.from_api(data, model_id=model_id, build_id=build_id)

    async def a_get_model_deployment(
        self, model_id: str, build_id: str, deployment_id: str, *, project_id: str | None = None
    ) -> CmlModelDeployment:
        """Async twin of :meth:`get_model_deployment`."""
        pid = project_id or await self.a_get_project_id()
        data = await self._a_do_api_call(
            GET_MODEL_DEPLOYMENT, path_params=_deployment_params(pid, model_id, build_id, deployment_id)
        )
        return CmlModelDeployment.from_api(data, model_id=model_id, build_id=build_id)

    def stop_model_deployment(
        self, model_id: str, build_id: str, deployment_id: str, *, project_id: str | None = None
    ) -> None:
        """Ask the workspace to stop a deployment (stopping a stopped one is harmless)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(
            STOP_MODEL_DEPLOYMENT, path_params=_deployment_params(pid, model_id, build_id, deployment_id)
        )

    async def a_stop_model_deployment(
        self, model_id: str, build_id: str, deployment_id: str, *, project_id: str | None = None
    ) -> None:
        """Async twin of :meth:`stop_model_deployment` (a trigger's ``on_kill``)."""
        pid = project_id or await self.a_get_project_id()
        await self._a_do_api_call(
            STOP_MODEL_DEPLOYMENT, path_params=_deployment_params(pid, model_id, build_id, deployment_id)
        )

    def restart_model_deployment(
        self, model_id: str, build_id: str, deployment_id: str, *, project_id: str | None = None
    ) -> None:
        """Restart a deployment's replicas (a short downtime of that model)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(
            RESTART_MODEL_DEPLOYMENT, path_params=_deployment_params(pid, model_id, build_id, deployment_id)
        )

    def ensure_model_deployment(
        self,
        model_id: str,
        build_id: str,
        cpu: float,
        memory_gb: float,
        replicas: int = 1,
        environment: Mapping[str, Any] | None = None,
        nvidia_gpus: int | None = None,
        *,
        project_id: str | None = None,
    ) -> tuple[CmlModelDeployment, bool]:
        """Deploy a build unless it already has an active (pending, deploying, deployed) deployment.

        One build serves through at most one active deployment here, so the build's deployments
        are listed first, and again after an ambiguous create failure (CML's gateway may answer
        500 after 30 s while the workspace goes on creating the deployment).

        :return: ``(deployment, reused)``
        """
        pid = project_id or self.get_project_id()
        for attempt in self._retry_unsafe(f"deploy build {build_id} of model {model_id}"):
            with attempt:
                existing = self.list_model_deployments(model_id, build_id, project_id=pid)
                active = [d for d in existing if d.status.is_active]
                if active:
                    active.sort(key=lambda d: (d.created_at or "", d.id))
                    return active[-1], True
                deployment = self.create_model_deployment(
                    model_id, build_id, cpu, memory_gb, replicas, environment, nvidia_gpus, project_id=pid
                )
                return deployment, False
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    # -- The model service ----------------------------------------------------------------
    def call_model(
        self,
        model: CmlModel,
        request: Mapping[str, Any],
        *,
        model_service_url: str | None = None,
        api_key: str | None = None,
    ) -> CmlModelResponse:
        """Call a deployed model: ``POST <model service>/model`` with ``{"accessKey", "request"}``.

        ``model`` comes from :meth:`get_model` (its ``access_key`` identifies it; it is sent in
        the body only, never logged). When the model has authentication enabled the call carries
        ``Authorization: Bearer <api_key>`` (default: the connection's ``model_api_key``, else
        its API key). A busy model's 429 is retried with the hook's backoff, as is a connection
        that was refused; a 5xx is not repeated (the prediction may have run and tracked
        metrics).

        :param model_service_url: default :meth:`model_service_url`
        :return: what ``predict`` returned, unwrapped from ``{"prediction", "uuid"}`` when the
            model tracks metrics
        """
        if not model.access_key:
            raise CmlConfigurationError(
                f"Model {model.id} has no access key in the answer read from CML; read it with get_model()"
            )
        base = normalise_service_url(model_service_url) if model_service_url else self.model_service_url()
        token = None
        if model.auth_enabled:
            token = api_key or self.config.model_api_key or self.config.api_key
            _mask(token)
        body = self._do_api_call(
            CALL_MODEL,
            json={"accessKey": model.access_key, "request": dict(request)},
            service_url=base,
            token=token,
        )
        if not isinstance(body, Mapping) or body.get("success") is False or "response" not in body:
            detail = body
            if isinstance(body, Mapping):
                detail = body.get("response") or body.get("message") or body.get("error") or body
            raise CmlModelServiceError(
                f"The CML model service at {base} answered model {model.id}'s call without success: "
                f"{detail!r:.500}",
                body=body,
            )
        return CmlModelResponse.from_api(body["response"])

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


def _deployment_params(project_id: str, model_id: str, build_id: str, deployment_id: str) -> dict[str, str]:
    return {
        "project_id": project_id,
        "model_id": model_id,
        "build_id": build_id,
        "deployment_id": deployment_id,
    }
