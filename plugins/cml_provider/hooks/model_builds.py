"""CML models and model builds: one thin method per endpoint, plus the idempotent "look, then
create" calls (:meth:`CmlModelsMixin.get_or_create_model`,
:meth:`CmlModelsMixin.ensure_model_build`).

A model's ``access_key`` identifies it to the model service; it is registered with Airflow's
log masker as soon as it is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cml_provider.hooks.cml_base import BaseCmlHook
from cml_provider.hooks.connection import mask_secret
from cml_provider.hooks.endpoints import (
    CREATE_MODEL,
    CREATE_MODEL_BUILD,
    DELETE_MODEL,
    GET_MODEL,
    GET_MODEL_BUILD,
    LIST_MODEL_BUILDS,
    LIST_MODELS,
    clean_file_path,
    encode_search_filter,
)
from cml_provider.models import CmlModel, CmlModelBuild

__all__ = ["CmlModelsMixin"]


class CmlModelsMixin(BaseCmlHook):
    """Models and their builds (part of :class:`~cml_provider.hooks.cml.CmlHook`)."""

    # -- Models ---------------------------------------------------------------------------
    def _model(self, data: Mapping[str, Any], project_id: str) -> CmlModel:
        model = CmlModel.from_api(data, project_id=project_id)
        if model.access_key:
            mask_secret(model.access_key)
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
