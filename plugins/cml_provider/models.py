"""Value types of the CML provider: what the hook returns, parsed from API v2 answers.

Field facts follow ``shared/CML_API.md``: int64 fields arrive as JSON strings, doubles may be
numbers or strings, ``environment`` is a map on requests but a JSON-encoded string on
responses, statuses are strict enums (:mod:`cml_provider.states`). Each type keeps the raw
answer in ``raw`` (out of ``repr``) for fields this provider does not model.

A model's ``access_key`` identifies it to the model service. It is kept out of ``repr`` and of
``raw``, and nothing in this package logs it or returns it in XCom.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cml_provider.errors import CmlError
from cml_provider.states import CmlBuildStatus, CmlDeploymentStatus, JobRunStatus

__all__ = [
    "CmlFile",
    "CmlJob",
    "CmlJobRun",
    "CmlModel",
    "CmlModelBuild",
    "CmlModelDeployment",
    "CmlModelResponse",
    "CmlProject",
    "CmlWorkspaceConfig",
    "environment_to_request",
]


# --- Field parsing ---------------------------------------------------------------------------
def _as_int(value: Any) -> int | None:
    """int64 fields are JSON strings in API v2; accept numbers too."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    return int(str(value).strip())


def _as_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _as_bool(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _as_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _as_environment(value: Any) -> dict[str, str]:
    """``environment`` is a JSON-encoded string on responses (a map on requests); accept both."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise CmlError(f"Job environment is not valid JSON: {value[:200]!r}") from exc
        if value is None:
            return {}
    if not isinstance(value, Mapping):
        raise CmlError(f"Job environment is not a JSON object: {value!r:.200}")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def environment_to_request(environment: Mapping[str, Any] | None) -> dict[str, str]:
    """Turn an environment mapping into the ``map<string,string>`` a request needs.

    Strings pass unchanged; other values are JSON-encoded (``True`` → ``"true"``, lists → JSON).
    """
    result: dict[str, str] = {}
    for key, value in (environment or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Environment variable names must be non-empty strings, got {key!r}")
        result[key] = value if isinstance(value, str) else json.dumps(value)
    return result


# --- Configuration, projects, jobs, files ---------------------------------------------------
@dataclass(frozen=True)
class CmlWorkspaceConfig:
    """Where and as whom the hook talks. The API key never appears in ``repr``."""

    base_url: str
    api_key: str = field(repr=False)
    project_id: str | None = None
    project_name: str | None = None
    #: default ML Runtime for jobs and model builds created without one (extra ``runtime_identifier``)
    runtime_identifier: str | None = None
    #: model service base URL (extra ``model_service_url``); None: ``https://modelservice.<host>``
    model_service_url: str | None = None
    #: key for model-service calls (extra ``model_api_key``); None: the API key
    model_api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CmlProject:
    id: str
    name: str
    owner: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> CmlProject:
        owner = data.get("owner")
        if isinstance(owner, Mapping):
            owner = owner.get("username") or owner.get("name")
        return cls(id=str(data["id"]), name=str(data.get("name", "")), owner=owner, raw=dict(data))


@dataclass(frozen=True)
class CmlJob:
    id: str
    name: str
    script: str | None = None
    cpu: float | None = None
    memory: float | None = None
    timeout: int | None = None
    runtime_identifier: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> CmlJob:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            script=data.get("script"),
            cpu=_as_float(data.get("cpu")),
            memory=_as_float(data.get("memory")),
            timeout=_as_int(data.get("timeout")),
            runtime_identifier=data.get("runtime_identifier") or None,
            environment=_as_environment(data.get("environment")),
            created_at=data.get("created_at"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class CmlJobRun:
    id: str
    job_id: str
    project_id: str
    status: JobRunStatus
    created_at: str | None = None
    finished_at: str | None = None
    arguments: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(
        cls, data: Mapping[str, Any], *, job_id: str | None = None, project_id: str | None = None
    ) -> CmlJobRun:
        return cls(
            id=str(data["id"]),
            job_id=str(data.get("job_id") or job_id or ""),
            project_id=str(data.get("project_id") or project_id or ""),
            status=JobRunStatus.parse(data.get("status")),
            created_at=data.get("created_at"),
            finished_at=data.get("finished_at") or data.get("ended_at"),
            arguments=data.get("arguments"),
            environment=_as_environment(data.get("environment")),
            raw=dict(data),
        )

    def matches(self, environment: Mapping[str, str]) -> bool:
        """Whether this run's environment carries every given key with the given value."""
        return all(self.environment.get(k) == v for k, v in environment.items())

    def to_ref(self) -> dict[str, str]:
        """The small dict tasks pass along (XCom): ``{"project_id", "job_id", "run_id"}``."""
        return {"project_id": self.project_id, "job_id": self.job_id, "run_id": self.id}


@dataclass(frozen=True)
class CmlFile:
    path: str
    is_dir: bool
    file_size: int | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> CmlFile:
        return cls(
            path=str(data.get("path", "")),
            is_dir=bool(data.get("is_dir", False)),
            file_size=_as_int(data.get("file_size")),
        )


# --- Models, builds, deployments -------------------------------------------------------------
@dataclass(frozen=True)
class CmlModel:
    """A CML model (``Model``). ``access_key`` is never in ``repr`` nor in ``raw``."""

    id: str
    name: str
    project_id: str
    access_key: str | None = field(default=None, repr=False)
    crn: str | None = None
    auth_enabled: bool = True
    description: str | None = None
    created_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any], *, project_id: str | None = None) -> CmlModel:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            project_id=str(data.get("project_id") or project_id or ""),
            access_key=_as_str(data.get("access_key")),
            crn=_as_str(data.get("crn")),
            auth_enabled=_as_bool(data.get("auth_enabled"), default=True),
            description=_as_str(data.get("description")),
            created_at=_as_str(data.get("created_at")),
            raw={k: v for k, v in data.items() if k != "access_key"},
        )

    def to_ref(self) -> dict[str, Any]:
        """What tasks may pass along (XCom): ids, name and CRN, never the access key."""
        return {"project_id": self.project_id, "model_id": self.id, "model_name": self.name, "crn": self.crn}


@dataclass(frozen=True)
class CmlModelBuild:
    """A build of a model (``ModelBuild``): a snapshot of the project turned into an image."""

    id: str
    model_id: str
    status: CmlBuildStatus
    crn: str | None = None
    #: why it is in that status, when the workspace says (not in CML's documented fields)
    status_message: str | None = None
    comment: str | None = None
    file_path: str | None = None
    function_name: str | None = None
    runtime_identifier: str | None = None
    created_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any], *, model_id: str | None = None) -> CmlModelBuild:
        return cls(
            id=str(data["id"]),
            model_id=str(data.get("model_id") or model_id or ""),
            status=CmlBuildStatus.parse(data.get("status")),
            crn=_as_str(data.get("crn")),
            status_message=_as_str(data.get("status_message")),
            comment=_as_str(data.get("comment")),
            file_path=_as_str(data.get("file_path")),
            function_name=_as_str(data.get("function_name")),
            runtime_identifier=_as_str(data.get("runtime_identifier")),
            created_at=_as_str(data.get("created_at")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class CmlModelDeployment:
    """A deployment of a build (``ModelDeployment``); ``crn`` is what the metrics API takes."""

    id: str
    build_id: str
    model_id: str
    status: CmlDeploymentStatus
    crn: str | None = None
    #: why it is in that status (e.g. a replica's start-up error), when the workspace says
    status_message: str | None = None
    cpu: float | None = None
    memory: float | None = None
    nvidia_gpu: int | None = None
    replicas: int | None = None
    created_at: str | None = None
    stopped_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(
        cls, data: Mapping[str, Any], *, model_id: str | None = None, build_id: str | None = None
    ) -> CmlModelDeployment:
        return cls(
            id=str(data["id"]),
            build_id=str(data.get("build_id") or build_id or ""),
            model_id=str(data.get("model_id") or model_id or ""),
            status=CmlDeploymentStatus.parse(data.get("status")),
            crn=_as_str(data.get("crn")),
            status_message=_as_str(data.get("status_message")),
            cpu=_as_float(data.get("cpu")),
            memory=_as_float(data.get("memory")),
            nvidia_gpu=_as_int(data.get("nvidia_gpu", data.get("nvidia_gpus"))),
            replicas=_as_int(data.get("replicas")),
            created_at=_as_str(data.get("created_at")),
            stopped_at=_as_str(data.get("stopped_at")),
            raw=dict(data),
        )

    def to_ref(self) -> dict[str, Any]:
        """``{"model_id", "build_id", "deployment_id", "deployment_crn", "status"}`` for XCom."""
        return {
            "model_id": self.model_id,
            "build_id": self.build_id,
            "deployment_id": self.id,
            "deployment_crn": self.crn,
            "status": self.status.value,
        }


@dataclass(frozen=True)
class CmlModelResponse:
    """What a model-service call answered.

    :ivar prediction: what ``predict`` returned (``response``, or ``response["prediction"]`` when
        the model tracks metrics and the service wrapped the answer)
    :ivar uuid: the prediction id under ``@cml_model(metrics=True)``, else None
    """

    prediction: Any
    uuid: str | None = None

    @classmethod
    def from_api(cls, response: Any) -> CmlModelResponse:
        if isinstance(response, Mapping) and "prediction" in response and "uuid" in response:
            uuid = response.get("uuid")
            return cls(prediction=response["prediction"], uuid=None if uuid is None else str(uuid))
        return cls(prediction=response)
