"""The workspace service: the resources' rules, between the HTTP routes and the store /
scheduler / project files. Routes stay thin. Models, builds, deployments and model metrics
live in :mod:`models_service` (``Workspace.models``).
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import os

from . import files
from .config import WorkspaceConfig
from .errors import ApiError, GrpcCode, invalid, not_found
from .files import ProjectFiles
from .models_service import ModelsService
from .scheduler import RunScheduler, RunStatus
from .schemas import CreateJobBody, CreateJobRunBody, CreateProjectBody, JobFields
from .store import Doc, Store
from .util import new_id, now_ts

log = logging.getLogger("cml_workspace")

DEFAULT_JOB_CPU = 1.0
DEFAULT_JOB_MEMORY_GB = 2.0


def _local_user() -> dict:
    try:
        name = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        name = "cdsw"
    return {"username": name, "name": name, "email": f"{name}@localhost"}


class Workspace:
    def __init__(self, config: WorkspaceConfig):
        self.config = config
        config.root.mkdir(parents=True, exist_ok=True)
        config.projects_dir.mkdir(parents=True, exist_ok=True)
        config.runs_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db_path)
        self.scheduler = RunScheduler(config, self.store, on_finished=self._run_finished)
        self.user = _local_user()
        self.models = ModelsService(config, self.store, project=self.project, user=self.user)
        self._lock_fh = None

    def start(self) -> None:
        self._lock_root()
        for name in self.config.projects:
            self.ensure_project(name)
        self.scheduler.start()

    async def start_models(self) -> None:
        """The model service (its port, the deployments' replicas, builds): on the event loop."""
        await self.models.start()

    async def close_models(self) -> None:
        await self.models.close()

    def close(self) -> None:
        self.scheduler.shutdown()
        self.store.close()
        if self._lock_fh is not None:
            self._lock_fh.close()  # releases the flock
            self._lock_fh = None

    def _lock_root(self) -> None:
        """One server per root: two would both start the same queued runs."""
        path = self.config.root / "server.lock"
        self._lock_fh = open(path, "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.seek(0)
            holder = self._lock_fh.read().strip() or "another process"
            self._lock_fh.close()
            self._lock_fh = None
            raise RuntimeError(f"another workspace server ({holder}) is using {self.config.root}") from None
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(f"pid {os.getpid()} on {self.config.url}\n")
        self._lock_fh.flush()

    @staticmethod
    def _note_ignored(what: str, body) -> None:
        if body is not None and body.model_extra:
            log.info("%s: ignored fields not modelled locally: %s", what, sorted(body.model_extra))

    # -- projects ----------------------------------------------------------------------------
    def list_projects(self) -> list[Doc]:
        return self.store.list("projects")

    def project(self, project_id: str) -> Doc:
        doc = self.store.get("projects", project_id)
        if doc is None:
            raise not_found("project", project_id)
        return doc

    def create_project(self, body: CreateProjectBody) -> Doc:
        try:
            engine_type = body.engine_type()
        except ValueError as exc:
            raise invalid(str(exc)) from None
        if any(p["name"] == body.name for p in self.list_projects()):
            raise ApiError(GrpcCode.ALREADY_EXISTS, f"a project named {body.name!r} already exists")
        now = now_ts()
        doc = {
            "id": new_id(),
            "name": body.name,
            "description": body.description,
            "owner": self.user,
            "creator": self.user,
            "created_at": now,
            "updated_at": now,
            "default_engine_type": engine_type,
            "visibility": body.visibility,
            "creation_status": "success",
            "permissions": {"inherit": False, "admin": True, "business_user": False,
                            "operator": False, "read": True, "write": True},
            "shared_memory_limit": 0,
        }
        self.config.project_files_dir(doc["id"]).mkdir(parents=True, exist_ok=True)
        self.store.insert("projects", doc)
        log.info("project %s created: %s", doc["id"], body.name)
        return doc

    def ensure_project(self, name: str) -> Doc:
        for doc in self.list_projects():
            if doc["name"] == name:
                self.config.project_files_dir(doc["id"]).mkdir(parents=True, exist_ok=True)
                return doc
        return self.create_project(CreateProjectBody(name=name))

    def files(self, project_id: str) -> ProjectFiles:
        self.project(project_id)
        project_files = ProjectFiles(self.config.project_files_dir(project_id))
        project_files.ensure()
        return project_files

    # -- jobs --------------------------------------------------------------------------------
    def list_jobs(self, project_id: str) -> list[Doc]:
        self.project(project_id)
        return self.store.list("jobs", project_id=project_id)

    def job(self, project_id: str, job_id: str) -> Doc:
        self.project(project_id)
        doc = self.store.get("jobs", job_id)
        if doc is None or doc["project_id"] != project_id:
            raise not_found("job", job_id)
        return doc

    def _check_parent(self, project_id: str, job_id: str | None, parent: str | None) -> str | None:
        if not parent:
            return None
        seen = {job_id} if job_id else set()
        current: str | None = parent
        while current:
            if current in seen:
                raise invalid(f"job dependency cycle through {current}")
            seen.add(current)
            doc = self.store.get("jobs", current)
            if doc is None or doc["project_id"] != project_id:
                raise invalid(f"parent job not found in this project: {current}")
            current = doc.get("parent_id")
        return parent

    @staticmethod
    def _job_type(doc: Doc) -> str:
        if doc.get("parent_id"):
            return "dependent"
        return "cron" if doc.get("schedule") else "manual"

    def create_job(self, project_id: str, body: CreateJobBody) -> Doc:
        project = self.project(project_id)
        self._note_ignored("create job", body)
        if project.get("default_engine_type") == "ml_runtime" and not body.runtime_identifier:
            message = ("runtime_identifier is required for jobs in ML Runtimes projects "
                       "(any value works in the local workspace; see GET /api/v2/runtimes)")
            if self.config.require_runtime_identifier:
                raise invalid(message)
            log.warning("job %r: %s; accepted here, a real CML workspace would reject it", body.name, message)
        now = now_ts()
        doc = {
            "id": new_id(),
            "project_id": project_id,
            "name": body.name,
            "script": files.normalize(body.script),
            "cpu": body.cpu or DEFAULT_JOB_CPU,
            "memory": body.memory or DEFAULT_JOB_MEMORY_GB,
            "nvidia_gpu": body.nvidia_gpu or 0,
            "arguments": body.arguments or "",
            "environment": body.environment or {},
            "timeout": body.timeout or 0,
            "kill_on_timeout": bool(body.kill_on_timeout),
            "runtime_identifier": body.runtime_identifier or "",
            "runtime_addon_identifiers": body.runtime_addon_identifiers or [],
            "kernel": body.kernel or "",
            "engine_image_id": body.engine_image_id or "",
            "schedule": body.schedule or "",
            "timezone": body.timezone or "",
            "parent_id": self._check_parent(project_id, None, body.parent()) or "",
            "paused": bool(body.paused),
            "retry_enabled": bool(body.retry_enabled),
            "max_retry": body.max_retry or 0,
            "retry_delay": body.retry_delay or 0,
            "creator": self.user,
            "created_at": now,
            "updated_at": now,
        }
        if not doc["script"]:
            raise invalid("script must name a file in the project")
        doc["type"] = self._job_type(doc)
        self.store.insert("jobs", doc)
        log.info("job %s created in project %s: %s (%s)", doc["id"], project_id, doc["name"], doc["script"])
        return doc

    def update_job(self, project_id: str, job_id: str, body: JobFields) -> Doc:
        self.job(project_id, job_id)
        self._note_ignored("update job", body)
        given = {name for name in body.model_fields_set if name in JobFields.model_fields}
        given.discard("project_id")
        changes: dict = {}
        for name in given - {"parent_job_id", "parent_id"}:
            value = getattr(body, name)
            if value is None:
                continue
            if name in ("name", "script") and not value:
                raise invalid(f"{name} must not be empty")
            changes[name] = files.normalize(value) if name == "script" else value
        if {"parent_job_id", "parent_id"} & given:
            changes["parent_id"] = self._check_parent(project_id, job_id, body.parent()) or ""
        if changes.get("cpu") == 0:
            changes["cpu"] = DEFAULT_JOB_CPU
        if changes.get("memory") == 0:
            changes["memory"] = DEFAULT_JOB_MEMORY_GB
        changes["updated_at"] = now_ts()

        def apply(doc: Doc) -> None:
            doc.update(changes)
            doc["type"] = self._job_type(doc)

        return self.store.update("jobs", job_id, apply)

    def delete_job(self, project_id: str, job_id: str) -> None:
        """Stops the job's live runs, then deletes the job. Its runs stay in the store (they
        finish and free their budget normally) but are no longer reachable through the API.
        Jobs that depended on it lose that dependency."""
        self.job(project_id, job_id)
        self.scheduler.stop_job_runs(job_id)
        for child in self.store.list("jobs", project_id=project_id):
            if child.get("parent_id") == job_id:
                self.store.update("jobs", child["id"], {"parent_id": "", "type": "manual"})
        self.store.delete("jobs", job_id)
        log.info("job %s deleted", job_id)

    # -- runs --------------------------------------------------------------------------------
    def list_runs(self, project_id: str, job_id: str) -> list[Doc]:
        self.job(project_id, job_id)
        return self.store.list("runs", parent_id=job_id)

    def run(self, project_id: str, job_id: str, run_id: str) -> Doc:
        self.job(project_id, job_id)
        doc = self.store.get("runs", run_id)
        if doc is None or doc["job_id"] != job_id:
            raise not_found("job run", run_id)
        return doc

    def create_run(self, project_id: str, job_id: str, body: CreateJobRunBody | None) -> Doc:
        job = self.job(project_id, job_id)
        self._note_ignored("create job run", body)
        body = body or CreateJobRunBody()
        now = now_ts()
        doc = {
            "id": new_id(),
            "job_id": job_id,
            "project_id": project_id,
            "status": RunStatus.SCHEDULING.value,
            "created_at": now,
            "scheduling_at": now,
            "starting_at": None,
            "running_at": None,
            "finished_at": None,
            "cpu": job["cpu"],
            "memory": job["memory"],
            "nvidia_gpu": job.get("nvidia_gpu", 0),
            "arguments": body.arguments if body.arguments else job.get("arguments", ""),
            "environment": {**(job.get("environment") or {}), **(body.environment or {})},
            "kernel": job.get("kernel", ""),
            "runtime_identifier": job.get("runtime_identifier", ""),
            "creator": self.user,
            # what the scheduler needs, frozen at submission like a real engine's spec
            "_script": job["script"],
            "_timeout": int(job.get("timeout") or 0),
            "_kill_on_timeout": bool(job.get("kill_on_timeout")),
        }
        self.scheduler.enqueue(doc)
        log.info("run %s of job %s queued (%g cpu, %g GB)", doc["id"], job_id, doc["cpu"], doc["memory"])
        return doc

    def stop_run(self, project_id: str, job_id: str, run_id: str) -> Doc:
        self.run(project_id, job_id, run_id)
        doc = self.scheduler.stop(run_id)
        if doc is None:
            raise not_found("job run", run_id)
        return doc

    def _run_finished(self, run: Doc) -> None:
        """CML job dependencies: a successful run starts the jobs that depend on its job."""
        if run["status"] != RunStatus.SUCCEEDED.value:
            return
        for child in self.store.list("jobs", project_id=run["project_id"]):
            if child.get("parent_id") == run["job_id"] and not child.get("paused"):
                started = self.create_run(run["project_id"], child["id"], None)
                log.info("dependent job %s started (run %s) after run %s", child["id"], started["id"], run["id"])
