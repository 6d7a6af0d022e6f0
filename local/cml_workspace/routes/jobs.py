"""Jobs and job runs: ``/api/v2/projects/{project_id}/jobs[/{job_id}[/runs[/{run_id}[:stop]]]]``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from ..schemas import JOB_FIELDS, RUN_FIELDS, CreateJobBody, CreateJobRunBody, JobFields, job_out, run_out
from . import ListDep, WorkspaceDep

router = APIRouter(tags=["jobs"])

JOBS = "/projects/{project_id}/jobs"
JOB = JOBS + "/{job_id}"
RUNS = JOB + "/runs"
RUN = RUNS + "/{run_id}"


@router.get(JOBS)
def list_jobs(project_id: str, params: ListDep, ws: WorkspaceDep) -> dict:
    return params.respond("jobs", [job_out(j) for j in ws.list_jobs(project_id)], JOB_FIELDS)


@router.post(JOBS)
def create_job(project_id: str, body: CreateJobBody, ws: WorkspaceDep) -> dict:
    return job_out(ws.create_job(project_id, body))


@router.get(JOB)
def get_job(project_id: str, job_id: str, ws: WorkspaceDep) -> dict:
    return job_out(ws.job(project_id, job_id))


@router.patch(JOB)
def update_job(project_id: str, job_id: str, body: JobFields, ws: WorkspaceDep) -> dict:
    return job_out(ws.update_job(project_id, job_id, body))


@router.delete(JOB)
def delete_job(project_id: str, job_id: str, ws: WorkspaceDep) -> dict:
    ws.delete_job(project_id, job_id)
    return {}


@router.get(RUNS)
def list_runs(project_id: str, job_id: str, params: ListDep,
              ws: WorkspaceDep) -> dict:
    return params.respond("job_runs", [run_out(r) for r in ws.list_runs(project_id, job_id)], RUN_FIELDS)


@router.post(RUNS)
def create_run(project_id: str, job_id: str, ws: WorkspaceDep,
               body: Annotated[CreateJobRunBody | None, Body()] = None) -> dict:
    return run_out(ws.create_run(project_id, job_id, body))


# The custom method is registered before the plain GET so the intent is obvious; Starlette
# would match it anyway ("{run_id}" cannot contain "/", and the GET route is method-specific).
@router.post(RUN + ":stop")
def stop_run(project_id: str, job_id: str, run_id: str, ws: WorkspaceDep) -> dict:
    return run_out(ws.stop_run(project_id, job_id, run_id))


@router.get(RUN)
def get_run(project_id: str, job_id: str, run_id: str, ws: WorkspaceDep) -> dict:
    return run_out(ws.run(project_id, job_id, run_id))
