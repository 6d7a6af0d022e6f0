"""What the stages need of a CML workspace, as ``Protocol`` types.

The DAG tasks hand the stages ``cml_provider``'s hooks (``CmlHook``, ``CmlModelMetricsHook``);
the tests hand them fakes or the local workspace. ``factory_tasks`` never imports
``cml_provider`` (the hooks import Airflow and httpx, and the CML job images have neither), so
the stages name the calls they make here instead: the methods below are exactly those calls,
with the hooks' signatures, and nothing else. A hook method the stages start to call belongs
here too; ``tests/test_architecture.py`` checks that the hooks still match.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence


class CmlJobRef(Protocol):
    """A CML job, as far as the stages look at it (``cml_provider.models.CmlJob``)."""

    @property
    def id(self) -> str: ...


class CmlRunStatus(Protocol):
    """A job run's state (``cml_provider.states.JobRunStatus``): its API value."""

    @property
    def value(self) -> str: ...


class CmlJobRunRef(Protocol):
    """A CML job run (``cml_provider.models.CmlJobRun``): its id, state and environment,
    which carries the factory run and experiment ids it was submitted for."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> CmlRunStatus: ...

    @property
    def environment(self) -> Mapping[str, str]: ...


class CmlPrediction(Protocol):
    """What a model-service call answered (``cml_provider.models.CmlModelResponse``)."""

    @property
    def prediction(self) -> Any: ...

    @property
    def uuid(self) -> str | None: ...


class CmlDeploymentStatus(Protocol):
    """A model deployment's state (``cml_provider.states.CmlDeploymentStatus``)."""

    @property
    def is_active(self) -> bool: ...


class CmlDeploymentRef(Protocol):
    """A model deployment (``cml_provider.models.CmlModelDeployment``)."""

    @property
    def id(self) -> str: ...

    @property
    def build_id(self) -> str: ...

    @property
    def status(self) -> CmlDeploymentStatus: ...


class CmlClient(Protocol):
    """The CML calls of the stages: project files, jobs and their runs, and the deployed model
    (``cml_provider.hooks.cml.CmlHook``)."""

    # -- the project ------------------------------------------------------------------------
    def get_project_id(self) -> str: ...

    # -- project files ----------------------------------------------------------------------
    def file_exists(self, path: str, *, project_id: str | None = None) -> bool: ...

    def download_file(self, path: str, *, project_id: str | None = None) -> bytes: ...

    def download_file_if_exists(self, path: str, *, project_id: str | None = None) -> bytes | None: ...

    def upload_file(
        self, path: str, data: bytes, overwrite: bool = False, *, project_id: str | None = None
    ) -> str: ...

    # -- jobs and job runs ------------------------------------------------------------------
    def find_job(self, name: str, *, project_id: str | None = None) -> CmlJobRef | None: ...

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
    ) -> CmlJobRef: ...

    def list_job_runs(
        self,
        job_id: str,
        sort: str | None = "-created_at",
        max_pages: int | None = None,
        *,
        project_id: str | None = None,
    ) -> Sequence[CmlJobRunRef]: ...

    # -- the deployed model -----------------------------------------------------------------
    def find_model(self, name: str, *, project_id: str | None = None) -> CmlJobRef | None: ...

    def list_model_deployments(
        self,
        model_id: str,
        build_id: str | None = None,
        *,
        max_build_pages: int | None = None,
        project_id: str | None = None,
    ) -> Sequence[CmlDeploymentRef]: ...

    def stop_model_deployment(
        self, model_id: str, build_id: str, deployment_id: str, *, project_id: str | None = None
    ) -> None: ...

    def get_model(self, model_id: str, *, project_id: str | None = None) -> Any:
        """The model's handle (with its access key), only ever passed back to :meth:`call_model`."""
        ...

    def call_model(
        self,
        model: Any,
        request: Mapping[str, Any],
        *,
        model_service_url: str | None = None,
        api_key: str | None = None,
    ) -> CmlPrediction: ...

    def model_service_url(self) -> str: ...


class CmlModelMetrics(Protocol):
    """CML's model metrics call of the monitoring stage
    (``cml_provider.hooks.model_metrics.CmlModelMetricsHook``)."""

    def track_aggregate_metrics(
        self, metrics: Mapping[str, Any], start_timestamp_ms: int, end_timestamp_ms: int, model_deployment_crn: str
    ) -> None: ...
