"""Models, builds, deployments and model metrics: the resources' rules, between the routes and
the build runner / deployment supervisor / model router / metrics store.

- A model has a random ``access_key`` (it only identifies the model on the model service),
  a ``crn`` (``crn:cdp:ml:local:workspace:model/<id>``) and ``auth_enabled`` (= not
  ``disable_authentication``). Names are unique per project (409). Deleting a model ends its
  deployments and builds.
- A build starts at once in the background (:mod:`builds`); ``auto_deploy_model`` deploys it
  with ``auto_deployment_config`` once built.
- A deployment needs a built build (else 400 FAILED_PRECONDITION); defaults 1 vCPU, 2 GB,
  1 replica. Its replicas are started by :mod:`deployments`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
from collections.abc import Callable

from . import files
from .builds import IN_PROGRESS, SUCCESSFUL, BuildRunner, BuildStatus
from .config import WorkspaceConfig, reachable_host
from .deployments import DeploymentStatus, DeploymentSupervisor
from .errors import ApiError, GrpcCode, invalid, not_found
from .model_metrics import MetricsStore, UnknownPrediction
from .model_router import ModelRouter
from .schemas import (
    AutoDeploymentConfig,
    CreateModelBody,
    CreateModelBuildBody,
    CreateModelDeploymentBody,
    ReadMetricsBody,
    TrackAggregateBody,
    TrackDelayedBody,
)
from .store import Doc, Store
from .util import new_id, now_ts

log = logging.getLogger("cml_workspace.models")

#: CML caps model requests at 5 MB
MAX_MODEL_REQUEST_BYTES = 5 * 1024 * 1024
DEFAULT_DEPLOYMENT_CPU = 1.0
DEFAULT_DEPLOYMENT_MEMORY_GB = 2.0
CRN_PREFIX = "crn:cdp:ml:local:workspace"
_KEY_ALPHABET = string.ascii_lowercase + string.digits
#: how often buffered model metrics are written
METRICS_FLUSH_S = 0.25


def new_access_key() -> str:
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(32))


def crn(kind: str, ident: str) -> str:
    return f"{CRN_PREFIX}:{kind}/{ident}"


class ModelsService:
    def __init__(self, config: WorkspaceConfig, store: Store, *, project: Callable[[str], Doc], user: dict):
        self.config = config
        self.store = store
        self._project = project
        self.user = user
        self.metrics = MetricsStore(config.metrics_db_path)
        self.router = ModelRouter(api_key=config.api_key, busy_timeout=config.model_busy_timeout_s,
                                  request_timeout=config.model_request_timeout_s,
                                  max_body_bytes=MAX_MODEL_REQUEST_BYTES, metrics_sink=self.metrics.buffer)
        self.supervisor = DeploymentSupervisor(config, store, self.router, self.metrics)
        self.builds = BuildRunner(config, store, on_built=self._auto_deploy)
        self._flusher: asyncio.Task | None = None

    # -- lifecycle (event loop) ------------------------------------------------------------------
    async def start(self) -> None:
        port = await self.router.start(self.config.model_host, self.config.model_port)
        log.info("model service on %s", self.model_service_url or f"port {port}")
        await self.supervisor.start()
        self.builds.start()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_metrics(), name="model-metrics")

    async def close(self) -> None:
        await self.router.close()
        await self.supervisor.close()
        self.builds.close()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.metrics.close()

    async def _flush_metrics(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            if self.metrics.pending():
                try:
                    await loop.run_in_executor(None, self.metrics.flush)
                except Exception:
                    log.exception("writing model metrics failed")

    @property
    def model_service_url(self) -> str | None:
        if self.router.port is None:
            return None
        return f"http://{reachable_host(self.config.model_host)}:{self.router.port}"

    def usage(self) -> dict:
        return {"model_service_url": self.model_service_url, **self.supervisor.usage()}

    # -- models --------------------------------------------------------------------------------
    def list_models(self, project_id: str) -> list[Doc]:
        self._project(project_id)
        return self.store.list("models", project_id=project_id)

    def model(self, project_id: str, model_id: str) -> Doc:
        self._project(project_id)
        doc = self.store.get("models", model_id)
        if doc is None or doc["project_id"] != project_id:
            raise not_found("model", model_id)
        return doc

    def create_model(self, project_id: str, body: CreateModelBody) -> Doc:
        self._project(project_id)
        _note_ignored("create model", body)
        if any(m["name"] == body.name for m in self.store.list("models", project_id=project_id)):
            raise ApiError(GrpcCode.ALREADY_EXISTS, f"a model named {body.name!r} already exists in this project")
        now = now_ts()
        model_id = new_id()
        doc = {
            "id": model_id,
            "project_id": project_id,
            "name": body.name,
            "description": body.description or "",
            "access_key": new_access_key(),
            "crn": crn("model", model_id),
            "auth_enabled": not body.disable_authentication,
            "default_resources": {"cpu_millicores": "1000", "memory_mb": "2048", "nvidia_gpus": "0"},
            "default_replication_policy": {"type": "fixed", "num_replicas": "1"},
            "registered_model_id": body.registered_model_id or "",
            "visibility": body.visibility or "private",
            "creator": self.user,
            "created_at": now,
            "updated_at": now,
        }
        self.store.insert("models", doc)
        self.supervisor.call(self.supervisor.add_model, doc)
        log.info("model %s created in project %s: %s (auth %s)", model_id, project_id, body.name,
                 "on" if doc["auth_enabled"] else "off")
        return doc

    def delete_model(self, project_id: str, model_id: str) -> None:
        """Ends the model's deployments and builds, then forgets all of them."""
        doc = self.model(project_id, model_id)
        self.supervisor.call(self.supervisor.remove_model, doc)
        for build in self.store.list("builds", parent_id=model_id):
            for deployment in self.store.list("deployments", parent_id=build["id"]):
                self.supervisor.call(self.supervisor.forget, deployment["id"], timeout=60)
                self.store.delete("deployments", deployment["id"])
            self.builds.cancel(build["id"])
            self.store.delete("builds", build["id"])
        self.store.delete("models", model_id)
        log.info("model %s deleted", model_id)

    # -- builds --------------------------------------------------------------------------------
    def list_builds(self, project_id: str, model_id: str) -> list[Doc]:
        self.model(project_id, model_id)
        return self.store.list("builds", parent_id=model_id)

    def build(self, project_id: str, model_id: str, build_id: str) -> Doc:
        self.model(project_id, model_id)
        doc = self.store.get("builds", build_id)
        if doc is None or doc["model_id"] != model_id:
            raise not_found("model build", build_id)
        return doc

    def create_build(self, project_id: str, model_id: str, body: CreateModelBuildBody) -> Doc:
        self.model(project_id, model_id)
        project = self._project(project_id)
        _note_ignored("create model build", body)
        file_path = files.normalize(body.file_path)
        if not file_path:
            raise invalid("file_path must name a file in the project")
        if not body.function_name.isidentifier():
            raise invalid(f"function_name must be a Python identifier, not {body.function_name!r}")
        if project.get("default_engine_type") == "ml_runtime" and not body.runtime_identifier and not body.kernel:
            message = "runtime_identifier is required for model builds in ML Runtimes projects"
            if self.config.require_runtime_identifier:
                raise invalid(message)
            log.warning("model build of %s: %s; accepted here, a real CML workspace would reject it", model_id, message)
        now = now_ts()
        build_id = new_id()
        doc = {
            "id": build_id,
            "project_id": project_id,
            "model_id": model_id,
            "crn": crn("build", build_id),
            "status": BuildStatus.QUEUED.value,
            "status_message": "queued",
            "file_path": file_path,
            "function_name": body.function_name,
            "runtime_identifier": body.runtime_identifier or "",
            "runtime_addon_identifiers": body.runtime_addon_identifiers or [],
            "kernel": body.kernel or "",
            "comment": body.comment or "",
            "creator": self.user,
            "created_at": now,
            "updated_at": now,
            "built_at": None,
            "_auto_deploy": bool(body.auto_deploy_model),
            "_auto_config": (body.auto_deployment_config or AutoDeploymentConfig()).model_dump(exclude_none=True),
        }
        self.store.insert("builds", doc)
        self.builds.submit(build_id)
        log.info("model build %s of model %s queued: %s:%s", build_id, model_id, file_path, body.function_name)
        return doc

    def _auto_deploy(self, build: Doc) -> None:
        if not build.get("_auto_deploy"):
            return
        body = CreateModelDeploymentBody(**(build.get("_auto_config") or {}))
        deployment = self.create_deployment(build["project_id"], build["model_id"], build["id"], body)
        log.info("build %s auto-deployed as %s", build["id"], deployment["id"])

    # -- deployments ---------------------------------------------------------------------------
    def list_deployments(self, project_id: str, model_id: str, build_id: str) -> list[Doc]:
        self.build(project_id, model_id, build_id)
        return self.store.list("deployments", parent_id=build_id)

    def deployment(self, project_id: str, model_id: str, build_id: str, deployment_id: str) -> Doc:
        self.build(project_id, model_id, build_id)
        doc = self.store.get("deployments", deployment_id)
        if doc is None or doc["build_id"] != build_id:
            raise not_found("model deployment", deployment_id)
        return doc

    def create_deployment(self, project_id: str, model_id: str, build_id: str,
                          body: CreateModelDeploymentBody | None) -> Doc:
        build = self.build(project_id, model_id, build_id)
        body = body or CreateModelDeploymentBody()
        _note_ignored("create model deployment", body)
        if build["status"] not in SUCCESSFUL:
            state = "still building" if build["status"] in IN_PROGRESS else "not built"
            raise ApiError(GrpcCode.FAILED_PRECONDITION, f"build {build_id} is {state} (status "
                                                         f"{build['status']!r}): only a built build can be deployed")
        gpus = body.nvidia_gpus if body.nvidia_gpus is not None else body.nvidia_gpu
        if gpus:
            log.warning("deployment of build %s asks for %d GPU(s): the local workspace has none", build_id, gpus)
        now = now_ts()
        deployment_id = new_id()
        doc = {
            "id": deployment_id,
            "project_id": project_id,
            "model_id": model_id,
            "build_id": build_id,
            "crn": crn("deployment", deployment_id),
            "status": DeploymentStatus.PENDING.value,
            "status_message": "pending",
            "cpu": body.cpu or DEFAULT_DEPLOYMENT_CPU,
            "memory": body.memory or DEFAULT_DEPLOYMENT_MEMORY_GB,
            "nvidia_gpu": gpus or 0,
            "replicas": body.replicas or 1,
            "environment": body.environment or {},
            "deployer": self.user,
            "created_at": now,
            "updated_at": now,
            "stopped_at": None,
        }
        self.store.insert("deployments", doc)
        started = self.supervisor.call(self.supervisor.deploy, deployment_id, "pending: starting the replicas")
        log.info("deployment %s of build %s: %d replica(s), %g cpu, %g GB", deployment_id, build_id,
                 doc["replicas"], doc["cpu"], doc["memory"])
        return started or doc

    def stop_deployment(self, project_id: str, model_id: str, build_id: str, deployment_id: str) -> Doc:
        self.deployment(project_id, model_id, build_id, deployment_id)
        return self.supervisor.call(self.supervisor.stop, deployment_id)

    def restart_deployment(self, project_id: str, model_id: str, build_id: str, deployment_id: str) -> Doc:
        self.deployment(project_id, model_id, build_id, deployment_id)
        return self.supervisor.call(self.supervisor.deploy, deployment_id, "restart requested")

    # -- metrics -------------------------------------------------------------------------------
    def track_delayed(self, body: TrackDelayedBody) -> None:
        try:
            self.metrics.track_delayed(body.prediction_uuid, body.metrics)
        except UnknownPrediction:
            raise not_found("prediction", body.prediction_uuid) from None

    def track_aggregate(self, body: TrackAggregateBody) -> None:
        if body.end_timestamp_ms < body.start_timestamp_ms:
            raise invalid("end_timestamp_ms is before start_timestamp_ms")
        for deployment in self.store.list("deployments"):
            if deployment["crn"] == body.model_deployment_crn:
                build = self.store.get("builds", deployment["build_id"]) or {}
                model = self.store.get("models", deployment["model_id"]) or {}
                crns = (deployment["crn"], build.get("crn", ""), model.get("crn", ""))
                self.metrics.track_aggregate(crns, body.metrics, body.start_timestamp_ms, body.end_timestamp_ms)
                return
        raise not_found("model deployment", body.model_deployment_crn)

    def read_metrics(self, body: ReadMetricsBody) -> dict:
        rows = self.metrics.read(deployment_crn=body.model_deployment_crn, build_crn=body.model_build_crn,
                                 model_crn=body.model_crn, start_ms=body.start_timestamp_ms,
                                 end_ms=body.end_timestamp_ms)
        return {"metrics": rows}


def _note_ignored(what: str, body) -> None:
    if body is not None and body.model_extra:
        log.info("%s: ignored fields not modelled locally: %s", what, sorted(body.model_extra))


__all__ = ["ModelsService"]
