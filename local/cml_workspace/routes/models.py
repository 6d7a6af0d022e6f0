"""Models, builds and deployments: ``/api/v2/projects/{project_id}/models[/{model_id}[/builds[/{build_id}
[/deployments[/{deployment_id}[:stop|:restart]]]]]]``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from ..schemas import (
    BUILD_FIELDS,
    DEPLOYMENT_FIELDS,
    MODEL_FIELDS,
    CreateModelBody,
    CreateModelBuildBody,
    CreateModelDeploymentBody,
    build_out,
    deployment_out,
    model_out,
)
from . import ListDep, WorkspaceDep

router = APIRouter(tags=["models"])

MODELS = "/projects/{project_id}/models"
MODEL = MODELS + "/{model_id}"
BUILDS = MODEL + "/builds"
BUILD = BUILDS + "/{build_id}"
DEPLOYMENTS = BUILD + "/deployments"
DEPLOYMENT = DEPLOYMENTS + "/{deployment_id}"


@router.get(MODELS)
def list_models(project_id: str, params: ListDep, ws: WorkspaceDep) -> dict:
    return params.respond("models", [model_out(m) for m in ws.models.list_models(project_id)], MODEL_FIELDS)


@router.post(MODELS)
def create_model(project_id: str, body: CreateModelBody, ws: WorkspaceDep) -> dict:
    return model_out(ws.models.create_model(project_id, body))


@router.get(MODEL)
def get_model(project_id: str, model_id: str, ws: WorkspaceDep) -> dict:
    return model_out(ws.models.model(project_id, model_id))


@router.delete(MODEL)
def delete_model(project_id: str, model_id: str, ws: WorkspaceDep) -> dict:
    ws.models.delete_model(project_id, model_id)
    return {}


@router.get(BUILDS)
def list_builds(project_id: str, model_id: str, params: ListDep, ws: WorkspaceDep) -> dict:
    builds = ws.models.list_builds(project_id, model_id)
    return params.respond("model_builds", [build_out(b) for b in builds], BUILD_FIELDS)


@router.post(BUILDS)
def create_build(project_id: str, model_id: str, body: CreateModelBuildBody, ws: WorkspaceDep) -> dict:
    return build_out(ws.models.create_build(project_id, model_id, body))


@router.get(BUILD)
def get_build(project_id: str, model_id: str, build_id: str, ws: WorkspaceDep) -> dict:
    return build_out(ws.models.build(project_id, model_id, build_id))


@router.get(DEPLOYMENTS)
def list_deployments(project_id: str, model_id: str, build_id: str, params: ListDep, ws: WorkspaceDep) -> dict:
    deployments = ws.models.list_deployments(project_id, model_id, build_id)
    return params.respond("model_deployments", [deployment_out(d) for d in deployments], DEPLOYMENT_FIELDS)


@router.post(DEPLOYMENTS)
def create_deployment(project_id: str, model_id: str, build_id: str, ws: WorkspaceDep,
                      body: Annotated[CreateModelDeploymentBody | None, Body()] = None) -> dict:
    return deployment_out(ws.models.create_deployment(project_id, model_id, build_id, body))


@router.post(DEPLOYMENT + ":stop")
def stop_deployment(project_id: str, model_id: str, build_id: str, deployment_id: str, ws: WorkspaceDep) -> dict:
    return deployment_out(ws.models.stop_deployment(project_id, model_id, build_id, deployment_id))


@router.post(DEPLOYMENT + ":restart")
def restart_deployment(project_id: str, model_id: str, build_id: str, deployment_id: str, ws: WorkspaceDep) -> dict:
    return deployment_out(ws.models.restart_deployment(project_id, model_id, build_id, deployment_id))


@router.get(DEPLOYMENT)
def get_deployment(project_id: str, model_id: str, build_id: str, deployment_id: str, ws: WorkspaceDep) -> dict:
    return deployment_out(ws.models.deployment(project_id, model_id, build_id, deployment_id))
