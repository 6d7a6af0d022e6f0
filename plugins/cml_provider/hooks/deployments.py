"""CML model deployments and the model service: what serves a build, and calling it.

API v2 lists deployments per build, so the deployments of a whole model are read through its
builds (:class:`~cml_provider.hooks.model_builds.CmlModelsMixin`). The model service is another
host than the workspace (``POST <model service>/model``), reached through the same choke point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cml_provider.errors import CmlConfigurationError, CmlModelServiceError
from cml_provider.hooks.connection import mask_secret
from cml_provider.hooks.endpoints import (
    CALL_MODEL,
    CREATE_MODEL_DEPLOYMENT,
    GET_MODEL_DEPLOYMENT,
    LIST_MODEL_DEPLOYMENTS,
    RESTART_MODEL_DEPLOYMENT,
    STOP_MODEL_DEPLOYMENT,
    normalise_service_url,
)
from cml_provider.hooks.model_builds import CmlModelsMixin
from cml_provider.models import (
    CmlModel,
    CmlModelDeployment,
    CmlModelResponse,
    environment_to_request,
)

__all__ = ["CmlDeploymentsMixin"]


class CmlDeploymentsMixin(CmlModelsMixin):
    """Deployments of model builds and calls to deployed models (part of
    :class:`~cml_provider.hooks.cml.CmlHook`)."""

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
            mask_secret(token)
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


def _deployment_params(project_id: str, model_id: str, build_id: str, deployment_id: str) -> dict[str, str]:
    return {
        "project_id": project_id,
        "model_id": model_id,
        "build_id": build_id,
        "deployment_id": deployment_id,
    }
