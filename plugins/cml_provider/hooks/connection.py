"""Which CML workspace a hook talks to, and as whom: the Airflow connection (or explicit
arguments) read into a :class:`~cml_provider.models.CmlWorkspaceConfig`.

This is the root of the hook classes and speaks no HTTP; the choke point that does is
:class:`~cml_provider.hooks.cml_base.BaseCmlHook`. Two ways to configure a hook:

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

from collections.abc import Iterable
from typing import Any, Self

from airflow.sdk.bases.hook import BaseHook

from cml_provider.errors import CmlConfigurationError, CmlNotFoundError
from cml_provider.hooks.endpoints import (
    default_model_service_url,
    normalise_service_url,
    normalise_workspace_url,
)
from cml_provider.models import CmlProject, CmlWorkspaceConfig

__all__ = ["CmlConnectionHook", "mask_secret"]


class CmlConnectionHook(BaseHook):
    """The workspace, key and project of a CML hook, from its arguments or an Airflow connection.

    :param cml_conn_id: Airflow connection id (ignored when ``host`` and ``api_key`` are given).
    :param host: workspace URL, to use the hook without an Airflow connection.
    :param api_key: API v2 key, to use the hook without an Airflow connection.
    :param project_id: project id; overrides the connection's extra.
    :param project_name: project name, resolved to an id by listing projects.
    :param runtime_identifier: default ML Runtime image for jobs and model builds created
        without one (required by CML in ML Runtimes projects); overrides the connection's extra.
    :param model_service_url: base URL of the model service (``POST <it>/model``); overrides
        the connection extra ``model_service_url``. Default: ``https://modelservice.<workspace
        host>`` for https workspaces.
    :param model_api_key: key sent as ``Authorization: Bearer`` to models with authentication
        enabled; overrides the connection extra ``model_api_key``. Default: the API key.
    """

    conn_name_attr = "cml_conn_id"
    default_conn_name = "cml_default"
    conn_type = "cml"
    hook_name = "Cloudera Machine Learning"

    def __init__(
        self,
        cml_conn_id: str = default_conn_name,
        *,
        host: str | None = None,
        api_key: str | None = None,
        project_id: str | None = None,
        project_name: str | None = None,
        runtime_identifier: str | None = None,
        model_service_url: str | None = None,
        model_api_key: str | None = None,
    ) -> None:
        super().__init__()
        if (host is None) != (api_key is None):
            raise ValueError("Pass both host and api_key to use the hook without an Airflow connection")
        self.cml_conn_id = cml_conn_id
        self._explicit_host = host
        self._explicit_api_key = api_key
        self._explicit_project_id = project_id
        self._explicit_project_name = project_name
        self._explicit_runtime_identifier = runtime_identifier
        self._explicit_model_service_url = model_service_url
        self._explicit_model_api_key = model_api_key
        self._resolved_config: CmlWorkspaceConfig | None = None
        for secret in (api_key, model_api_key):
            if secret:
                mask_secret(secret)

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str,
        *,
        project_id: str | None = None,
        project_name: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """A hook for ``url`` and ``api_key`` without any Airflow connection."""
        return cls(host=url, api_key=api_key, project_id=project_id, project_name=project_name, **kwargs)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel the standard connection form (also declared in ``get_provider_info()``)."""
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Workspace URL", "password": "API key"},
            "placeholders": {
                "host": "https://ml-xxxx.cloudera.site",
                "password": "CML API v2 key",
                "extra": '{"project_name": "model-factory"}',
            },
        }

    # -- Configuration --------------------------------------------------------------------
    @property
    def config(self) -> CmlWorkspaceConfig:
        """Workspace URL, key and project, from the constructor or the Airflow connection."""
        if self._resolved_config is None:
            if self._explicit_host is not None:
                self._resolved_config = self._config_from_explicit()
            else:
                self._resolved_config = self._config_from_connection(self.get_connection(self.cml_conn_id))
        return self._resolved_config

    async def a_config(self) -> CmlWorkspaceConfig:
        """Async twin of :attr:`config`: reads the connection without blocking the event loop."""
        if self._resolved_config is None:
            if self._explicit_host is not None:
                self._resolved_config = self._config_from_explicit()
            else:
                conn = await self.aget_connection(self.cml_conn_id)
                self._resolved_config = self._config_from_connection(conn)
        return self._resolved_config

    def _config_from_explicit(self) -> CmlWorkspaceConfig:
        assert self._explicit_host is not None and self._explicit_api_key is not None
        return CmlWorkspaceConfig(
            base_url=normalise_workspace_url(self._explicit_host),
            api_key=self._explicit_api_key,
            project_id=self._explicit_project_id,
            project_name=self._explicit_project_name,
            runtime_identifier=self._explicit_runtime_identifier,
            model_service_url=self._service_url_or_none(self._explicit_model_service_url),
            model_api_key=self._explicit_model_api_key,
        )

    def _config_from_connection(self, conn: Any) -> CmlWorkspaceConfig:
        if not conn.host:
            raise CmlConfigurationError(
                f"Connection {self.cml_conn_id!r} has no host: set it to the workspace URL"
            )
        if not conn.password:
            raise CmlConfigurationError(
                f"Connection {self.cml_conn_id!r} has no password: set it to a CML API v2 key"
            )
        extra = conn.extra_dejson or {}

        def _extra(name: str) -> str | None:
            value = extra.get(name) or extra.get(f"extra__cml__{name}")
            return str(value) if value else None

        return CmlWorkspaceConfig(
            base_url=normalise_workspace_url(conn.host, conn.port),
            api_key=conn.password,
            project_id=self._explicit_project_id or _extra("project_id"),
            project_name=self._explicit_project_name or _extra("project_name"),
            runtime_identifier=self._explicit_runtime_identifier or _extra("runtime_identifier"),
            model_service_url=self._service_url_or_none(
                self._explicit_model_service_url or _extra("model_service_url")
            ),
            model_api_key=self._model_api_key_from(_extra("model_api_key")),
        )

    def model_service_url(self) -> str:
        """Base URL of the model service: the configured one, else ``https://modelservice.<host>/``."""
        config = self.config
        return config.model_service_url or default_model_service_url(config.base_url)

    @staticmethod
    def _service_url_or_none(url: str | None) -> str | None:
        return normalise_service_url(url) if url else None

    def _model_api_key_from(self, extra_key: str | None) -> str | None:
        key = self._explicit_model_api_key or extra_key
        if key:
            mask_secret(key)
        return key

    # -- Which project --------------------------------------------------------------------
    def _require_project_name(self, config: CmlWorkspaceConfig) -> str:
        if not config.project_name:
            source = "hook arguments" if self._explicit_host else f"connection {self.cml_conn_id!r}"
            raise CmlConfigurationError(
                f"No CML project configured in the {source}: "
                'set extra {"project_id": ...} or {"project_name": ...}'
            )
        return config.project_name

    @staticmethod
    def _pick_project(name: str, candidates: Iterable[CmlProject]) -> str:
        exact = [p for p in candidates if p.name == name]
        if not exact:
            raise CmlNotFoundError(f"No CML project named {name!r} is visible to this API key")
        if len(exact) > 1:
            owners = ", ".join(f"{p.id} (owner {p.owner})" for p in exact)
            raise CmlConfigurationError(
                f"Several CML projects are named {name!r}: {owners}. Set project_id instead."
            )
        return exact[0].id


def mask_secret(secret: str) -> None:
    """Register a secret with Airflow's log masker when one is available."""
    try:
        from airflow.sdk.log import mask_secret as airflow_mask_secret

        airflow_mask_secret(secret)
    except Exception:  # pragma: no cover - masking is best effort outside Airflow
        pass
