"""Request bodies (pydantic) and response shaping for the API v2 resources.

Wire conventions (CML_API.md): snake_case; int64 fields as JSON strings (``Job.timeout``,
``FileInfo.file_size``); ``environment`` a map on requests but a JSON-encoded string on
responses; unknown request fields are ignored (and named in the server log).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .store import Doc

ENGINE_TYPES = ("ml_runtime", "legacy_engine")


def _environment(value: Any) -> Any:
    """Accept the map CML expects, and (tolerantly) the JSON string CML answers with."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("environment must be a map of strings (or a JSON object string)") from None
    if not isinstance(value, dict):
        raise ValueError("environment must be a map of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"environment[{key!r}] must be a string, got {type(item).__name__}")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CreateProjectBody(_Body):
    name: str = Field(min_length=1)
    description: str = ""
    visibility: str = "private"
    default_project_engine_type: str | None = None
    default_engine_type: str | None = None
    template: str | None = None
    git_url: str | None = None

    def engine_type(self) -> str:
        value = self.default_project_engine_type or self.default_engine_type or "ml_runtime"
        if value not in ENGINE_TYPES:
            raise ValueError(f"default_project_engine_type must be one of {ENGINE_TYPES}")
        return value


class JobFields(_Body):
    """Fields shared by CreateJobRequest and UpdateJobRequest (all optional here)."""

    project_id: str | None = None
    name: str | None = None
    script: str | None = None
    cpu: float | None = Field(default=None, ge=0)
    memory: float | None = Field(default=None, ge=0)
    nvidia_gpu: int | None = Field(default=None, ge=0)
    arguments: str | None = None
    environment: dict[str, str] | None = None
    timeout: int | None = Field(default=None, ge=0)
    kill_on_timeout: bool | None = None
    runtime_identifier: str | None = None
    runtime_addon_identifiers: list[str] | None = None
    kernel: str | None = None
    engine_image_id: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    parent_job_id: str | None = None
    parent_id: str | None = None
    retry_enabled: bool | None = None
    max_retry: int | None = Field(default=None, ge=0)
    retry_delay: int | None = Field(default=None, ge=0)
    paused: bool | None = None

    @field_validator("environment", mode="before")
    @classmethod
    def _check_environment(cls, value: Any) -> Any:
        return _environment(value)

    def parent(self) -> str | None:
        return self.parent_job_id or self.parent_id


class CreateJobBody(JobFields):
    name: str = Field(min_length=1)
    script: str = Field(min_length=1)


class CreateJobRunBody(_Body):
    project_id: str | None = None
    job_id: str | None = None
    environment: dict[str, str] | None = None
    arguments: str | None = None

    @field_validator("environment", mode="before")
    @classmethod
    def _check_environment(cls, value: Any) -> Any:
        return _environment(value)


# -- responses -----------------------------------------------------------------------------
def public(doc: Doc) -> dict:
    """A document without its internal (``_``-prefixed) keys."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


PROJECT_FIELDS = (
    "id", "name", "description", "owner", "creator", "created_at", "updated_at",
    "default_engine_type", "visibility", "creation_status", "permissions", "shared_memory_limit",
)


def project_out(doc: Doc) -> dict:
    return public(doc)


JOB_FIELDS = (
    "id", "project_id", "name", "script", "cpu", "memory", "nvidia_gpu", "arguments",
    "environment", "timeout", "kill_on_timeout", "runtime_identifier", "runtime_addon_identifiers",
    "kernel", "engine_image_id", "schedule", "timezone", "parent_id", "type", "paused",
    "retry_enabled", "max_retry", "retry_delay", "creator", "created_at", "updated_at",
)


def job_out(doc: Doc) -> dict:
    out = public(doc)
    out["environment"] = json.dumps(doc.get("environment") or {})
    out["timeout"] = str(int(doc.get("timeout") or 0))
    return out


RUN_FIELDS = (
    "id", "job_id", "project_id", "status", "created_at", "scheduling_at", "starting_at",
    "running_at", "finished_at", "cpu", "memory", "nvidia_gpu", "arguments", "environment",
    "kernel", "runtime_identifier", "creator",
)


def run_out(doc: Doc) -> dict:
    out = public(doc)
    out["environment"] = json.dumps(doc.get("environment") or {})
    return out


# -- models, builds, deployments -------------------------------------------------------------
class CreateModelBody(_Body):
    project_id: str | None = None
    name: str = Field(min_length=1)
    description: str = ""
    disable_authentication: bool = False
    registered_model_id: str | None = None
    visibility: str | None = None


class AutoDeploymentConfig(_Body):
    cpu: float | None = Field(default=None, gt=0)
    memory: float | None = Field(default=None, gt=0)
    nvidia_gpus: int | None = Field(default=None, ge=0)
    environment: dict[str, str] | None = None
    replicas: int | None = Field(default=None, ge=1)

    @field_validator("environment", mode="before")
    @classmethod
    def _check_environment(cls, value: Any) -> Any:
        return _environment(value)


class CreateModelBuildBody(_Body):
    project_id: str | None = None
    model_id: str | None = None
    file_path: str = Field(min_length=1)
    function_name: str = Field(min_length=1)
    kernel: str | None = None
    runtime_identifier: str | None = None
    runtime_addon_identifiers: list[str] | None = None
    comment: str | None = None
    auto_deploy_model: bool | None = None
    auto_deployment_config: AutoDeploymentConfig | None = None


class CreateModelDeploymentBody(_Body):
    project_id: str | None = None
    model_id: str | None = None
    build_id: str | None = None
    cpu: float | None = Field(default=None, gt=0)
    memory: float | None = Field(default=None, gt=0)
    nvidia_gpus: int | None = Field(default=None, ge=0)
    nvidia_gpu: int | None = Field(default=None, ge=0)
    replicas: int | None = Field(default=None, ge=1, le=64)
    environment: dict[str, str] | None = None

    @field_validator("environment", mode="before")
    @classmethod
    def _check_environment(cls, value: Any) -> Any:
        return _environment(value)


MODEL_FIELDS = (
    "id", "project_id", "name", "description", "access_key", "crn", "auth_enabled", "default_resources",
    "default_replication_policy", "registered_model_id", "visibility", "creator", "created_at", "updated_at",
)


def model_out(doc: Doc) -> dict:
    return public(doc)


BUILD_FIELDS = (
    "id", "project_id", "model_id", "crn", "status", "status_message", "file_path", "function_name",
    "runtime_identifier", "runtime_addon_identifiers", "kernel", "comment", "creator", "created_at",
    "updated_at", "built_at",
)


def build_out(doc: Doc) -> dict:
    return public(doc)


DEPLOYMENT_FIELDS = (
    "id", "project_id", "model_id", "build_id", "crn", "status", "status_message", "cpu", "memory",
    "nvidia_gpu", "replicas", "environment", "deployer", "created_at", "updated_at", "stopped_at",
)


def deployment_out(doc: Doc) -> dict:
    out = public(doc)
    out["environment"] = json.dumps(doc.get("environment") or {})
    return out


class TrackDelayedBody(_Body):
    prediction_uuid: str = Field(min_length=1)
    metrics: dict[str, Any]


class TrackAggregateBody(_Body):
    model_deployment_crn: str = Field(min_length=1)
    metrics: dict[str, Any]
    start_timestamp_ms: int = Field(ge=0)
    end_timestamp_ms: int = Field(ge=0)


class ReadMetricsBody(_Body):
    model_deployment_crn: str | None = None
    model_crn: str | None = None
    model_build_crn: str | None = None
    start_timestamp_ms: int | None = Field(default=None, ge=0)
    end_timestamp_ms: int | None = Field(default=None, ge=0)
