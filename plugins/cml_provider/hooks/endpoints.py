"""The CML API v2 endpoint table and how a request is addressed.

Each endpoint is a module constant ``(METHOD, path template)``, the template relative to the
workspace URL (``https://<workspace domain>/``), except :data:`CALL_MODEL`, which is relative
to the model service (``https://modelservice.<workspace domain>/``). Path parameters are quoted
as the generated ``cmlapi`` client quotes them (``/`` → ``%2F``). See ``shared/CML_API.md``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from cml_provider.errors import CmlConfigurationError

__all__ = [
    "CALL_MODEL",
    "CREATE_JOB",
    "CREATE_JOB_RUN",
    "CREATE_MODEL",
    "CREATE_MODEL_BUILD",
    "CREATE_MODEL_DEPLOYMENT",
    "DELETE_FILE",
    "DELETE_MODEL",
    "DOWNLOAD_FILE",
    "GET_JOB",
    "GET_JOB_RUN",
    "GET_MODEL",
    "GET_MODEL_BUILD",
    "GET_MODEL_DEPLOYMENT",
    "GET_PROJECT",
    "LIST_FILES",
    "LIST_JOBS",
    "LIST_JOB_RUNS",
    "LIST_MODELS",
    "LIST_MODEL_BUILDS",
    "LIST_MODEL_DEPLOYMENTS",
    "LIST_PROJECTS",
    "NON_IDEMPOTENT",
    "RESTART_MODEL_DEPLOYMENT",
    "STOP_JOB_RUN",
    "STOP_MODEL_DEPLOYMENT",
    "UPDATE_JOB",
    "UPLOAD_FILE",
    "Endpoint",
    "clean_file_path",
    "default_model_service_url",
    "encode_search_filter",
    "normalise_service_url",
    "normalise_workspace_url",
    "quote_path_param",
    "render_path",
]

Endpoint = tuple[str, str]

# --- Projects --------------------------------------------------------------------------------
LIST_PROJECTS: Endpoint = ("GET", "api/v2/projects")
GET_PROJECT: Endpoint = ("GET", "api/v2/projects/{project_id}")

# --- Jobs and runs ---------------------------------------------------------------------------
LIST_JOBS: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs")
CREATE_JOB: Endpoint = ("POST", "api/v2/projects/{project_id}/jobs")
GET_JOB: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs/{job_id}")
UPDATE_JOB: Endpoint = ("PATCH", "api/v2/projects/{project_id}/jobs/{job_id}")
LIST_JOB_RUNS: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs/{job_id}/runs")
CREATE_JOB_RUN: Endpoint = ("POST", "api/v2/projects/{project_id}/jobs/{job_id}/runs")
GET_JOB_RUN: Endpoint = ("GET", "api/v2/projects/{project_id}/jobs/{job_id}/runs/{run_id}")
STOP_JOB_RUN: Endpoint = ("POST", "api/v2/projects/{project_id}/jobs/{job_id}/runs/{run_id}:stop")

# --- Project files ---------------------------------------------------------------------------
LIST_FILES: Endpoint = ("GET", "api/v2/projects/{project_id}/files/{path}")
DOWNLOAD_FILE: Endpoint = ("POST", "api/v2/projects/{project_id}/files/{path}:download")
UPLOAD_FILE: Endpoint = ("POST", "api/v2/projects/{project_id}/files")
DELETE_FILE: Endpoint = ("DELETE", "api/v2/projects/{project_id}/files/{path}")

# --- Models, builds, deployments -------------------------------------------------------------
_M = "api/v2/projects/{project_id}/models"
_D = _M + "/{model_id}/builds/{build_id}/deployments"
LIST_MODELS: Endpoint = ("GET", _M)
CREATE_MODEL: Endpoint = ("POST", _M)
GET_MODEL: Endpoint = ("GET", _M + "/{model_id}")
DELETE_MODEL: Endpoint = ("DELETE", _M + "/{model_id}")
LIST_MODEL_BUILDS: Endpoint = ("GET", _M + "/{model_id}/builds")
CREATE_MODEL_BUILD: Endpoint = ("POST", _M + "/{model_id}/builds")
GET_MODEL_BUILD: Endpoint = ("GET", _M + "/{model_id}/builds/{build_id}")
LIST_MODEL_DEPLOYMENTS: Endpoint = ("GET", _D)
CREATE_MODEL_DEPLOYMENT: Endpoint = ("POST", _D)
GET_MODEL_DEPLOYMENT: Endpoint = ("GET", _D + "/{deployment_id}")
STOP_MODEL_DEPLOYMENT: Endpoint = ("POST", _D + "/{deployment_id}:stop")
RESTART_MODEL_DEPLOYMENT: Endpoint = ("POST", _D + "/{deployment_id}:restart")

# --- The model service (relative to its own base URL, not the workspace's) -------------------
CALL_MODEL: Endpoint = ("POST", "model")

#: Calls that create something (or, for the model service, run a prediction that may track
#: metrics). A 5xx or a read timeout does not tell whether the workspace acted (the gateway may
#: answer 500 while the workspace goes on creating), so these are never repeated blindly: the
#: choke point retries them only when the request surely did not land (connection refused,
#: 429) and the thin methods list before re-creating.
NON_IDEMPOTENT: frozenset[Endpoint] = frozenset(
    {
        CREATE_JOB,
        CREATE_JOB_RUN,
        UPLOAD_FILE,
        CREATE_MODEL,
        CREATE_MODEL_BUILD,
        CREATE_MODEL_DEPLOYMENT,
        CALL_MODEL,
    }
)


# --- Addressing ------------------------------------------------------------------------------
def normalise_workspace_url(host: str, port: int | None = None) -> str:
    """``ml-x.cloudera.site`` → ``https://ml-x.cloudera.site/``; keeps an explicit scheme and port.

    A trailing ``/api/v2`` (pasted from the API docs) is dropped; the result ends with ``/``.
    """
    url = (host or "").strip()
    if not url:
        raise CmlConfigurationError("The CML workspace URL (connection host) is empty")
    if "://" not in url:
        url = f"https://{url}"
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CmlConfigurationError(f"Not an http(s) workspace URL: {host!r}")
    if port and parsed.port is None:
        parsed = parsed.copy_with(port=int(port))
    path = parsed.path.rstrip("/")
    if path.endswith("/api/v2"):
        path = path[: -len("/api/v2")]
    return str(parsed.copy_with(path=path + "/", query=None, fragment=None))


def normalise_service_url(url: str) -> str:
    """An http(s) base URL ending with ``/`` (a model service URL from the connection)."""
    text = (url or "").strip()
    if "://" not in text:
        text = f"https://{text}"
    parsed = httpx.URL(text)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CmlConfigurationError(f"Not an http(s) model service URL: {url!r}")
    path = parsed.path.rstrip("/")
    if path.endswith("/model"):  # pasted with the endpoint
        path = path[: -len("/model")]
    return str(parsed.copy_with(path=path + "/", query=None, fragment=None))


def default_model_service_url(workspace_url: str) -> str:
    """CML's model service for a workspace: ``https://modelservice.<workspace domain>/``.

    Only https workspaces have one there; a plain-http workspace (the local stand-in) must name
    its model service in the connection extra ``model_service_url``.
    """
    parsed = httpx.URL(workspace_url)
    if parsed.scheme != "https":
        raise CmlConfigurationError(
            f"No model service URL for the workspace at {workspace_url}: set the connection extra "
            '{"model_service_url": "http://..."} (only https workspaces have https://modelservice.<domain>)'
        )
    return str(httpx.URL(scheme="https", host=f"modelservice.{parsed.host}", port=parsed.port, path="/"))


def quote_path_param(value: Any) -> str:
    """Quote one path parameter as the generated ``cmlapi`` client does (``/`` → ``%2F``).

    ``.`` and ``..`` are percent-encoded too, otherwise HTTP clients normalise them away
    (``files/.`` would become ``files``).
    """
    text = str(value)
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


def render_path(template: str, path_params: Mapping[str, Any] | None) -> str:
    """Fill an endpoint template's ``{placeholders}`` with quoted values."""
    params = {k: quote_path_param(v) for k, v in (path_params or {}).items() if v is not None}
    try:
        return template.format(**params)
    except KeyError as exc:
        raise ValueError(f"Missing path parameter {exc.args[0]!r} for endpoint {template!r}") from None


def clean_file_path(path: str) -> str:
    """Project-relative file path (relative to ``/home/cdsw``), no leading ``./`` or ``/``."""
    text = str(path).strip()
    if text.startswith("/home/cdsw/"):
        text = text[len("/home/cdsw/") :]
    text = text.lstrip("/")
    norm = posixpath.normpath(text) if text else "."
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"Project file path escapes the project: {path!r}")
    return norm


def encode_search_filter(value: Mapping[str, Any] | str | None) -> str | None:
    """The ``search_filter`` query value: a JSON object string (a case-sensitive substring match)."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(dict(value), separators=(",", ":"))
