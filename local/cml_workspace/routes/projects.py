"""Projects and runtimes: ``/api/v2/projects``, ``/api/v2/runtimes``."""

from __future__ import annotations

import sys

from fastapi import APIRouter

from ..schemas import PROJECT_FIELDS, CreateProjectBody, project_out
from . import ListDep, WorkspaceDep

router = APIRouter(tags=["projects"])


@router.get("/projects")
def list_projects(params: ListDep, ws: WorkspaceDep) -> dict:
    return params.respond("projects", [project_out(p) for p in ws.list_projects()], PROJECT_FIELDS)


@router.post("/projects")
def create_project(body: CreateProjectBody, ws: WorkspaceDep) -> dict:
    return project_out(ws.create_project(body))


@router.get("/projects/{project_id}")
def get_project(project_id: str, ws: WorkspaceDep) -> dict:
    return project_out(ws.project(project_id))


_PY = f"{sys.version_info.major}.{sys.version_info.minor}"
LOCAL_RUNTIME = {
    "image_identifier": f"local/cml-workspace-python{_PY}:local",
    "editor": "Workbench",
    "kernel": f"Python {_PY}",
    "edition": "Standard",
    "description": "The workspace server's own Python interpreter (local stand-in for an ML Runtime)",
    "full_version": "local",
    "short_version": "local",
    "maintenance_version": 0,
    "status": "ENABLED",
    "register_user_id": 0,
}
RUNTIME_FIELDS = tuple(LOCAL_RUNTIME)


@router.get("/runtimes")
def list_runtimes(params: ListDep) -> dict:
    """One runtime: jobs need a ``runtime_identifier`` in ML Runtimes projects; any value
    is accepted locally, this one is what a client that looks runtimes up finds."""
    return params.respond("runtimes", [dict(LOCAL_RUNTIME)], RUNTIME_FIELDS)
