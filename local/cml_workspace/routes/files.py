"""Project files: list, download (``:download``), upload (multipart, no overwrite), delete.

Paths are relative to the project folder (``/home/cdsw`` in CML) and may contain slashes
(``{path:path}``); clients may also send them percent-encoded (``a%2Fb``).
"""

from __future__ import annotations

import io

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .. import files as project_files
from ..errors import invalid
from . import WorkspaceDep

router = APIRouter(tags=["files"])

FILES = "/projects/{project_id}/files"
MAX_FIELD_BYTES = 256 * 1024 * 1024  # uploads sent as plain form fields (no filename) are held in memory


@router.get(FILES)
def list_root(project_id: str, ws: WorkspaceDep) -> dict:
    return {"files": ws.files(project_id).list("")}


@router.post(FILES)
async def upload(project_id: str, request: Request, ws: WorkspaceDep) -> dict:
    """Multipart upload: each form field's *name* is the destination path. An existing
    path is not overwritten: the file is stored as ``name(1).ext`` (``(2)``, ...). The
    answer lists the stored paths (a local addition; CML clients ignore it)."""
    target = await run_in_threadpool(ws.files, project_id)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid("upload needs a multipart/form-data body; the field name is the destination path")
    form = await request.form(max_part_size=MAX_FIELD_BYTES)
    try:
        items = list(form.multi_items())
        if not items:
            raise invalid("the upload holds no files")
        for name, _ in items:  # check every destination before storing anything
            if not project_files.normalize(name):
                raise invalid("every form field name must be a destination path")
        stored = []
        for name, value in items:
            source = value.file if isinstance(value, UploadFile) else io.BytesIO(value.encode())
            stored_path = await run_in_threadpool(target.upload, name, source)
            stored.append(project_files.file_info(target.base / stored_path, name=stored_path))
    finally:
        await form.close()
    return {"files": stored}


@router.post(FILES + "/{path:path}:download")
def download(project_id: str, path: str, ws: WorkspaceDep) -> FileResponse:
    file_path = ws.files(project_id).file_for_download(path)
    return FileResponse(file_path, media_type="application/octet-stream")


@router.get(FILES + "/{path:path}")
def list_files(project_id: str, path: str, ws: WorkspaceDep) -> dict:
    return {"files": ws.files(project_id).list(path)}


@router.delete(FILES + "/{path:path}")
def delete_file(project_id: str, path: str, ws: WorkspaceDep) -> dict:
    ws.files(project_id).delete(path)
    return {}
