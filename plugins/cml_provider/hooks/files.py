"""CML project files: list, download, upload, delete.

The API does not paginate file listings, and an upload never overwrites (an existing path
makes CML store ``name(1).ext``), so :meth:`CmlFilesMixin.upload_file` checks the path first
and, after an ambiguous failure, checks what landed before uploading again.
"""

from __future__ import annotations

import posixpath

from cml_provider.errors import CmlError, CmlFileExistsError, CmlNotFoundError
from cml_provider.hooks.cml_base import BaseCmlHook
from cml_provider.hooks.endpoints import (
    DELETE_FILE,
    DOWNLOAD_FILE,
    LIST_FILES,
    UPLOAD_FILE,
    clean_file_path,
)
from cml_provider.models import CmlFile

__all__ = ["CmlFilesMixin"]


class CmlFilesMixin(BaseCmlHook):
    """Files of the project (part of :class:`~cml_provider.hooks.cml.CmlHook`)."""

    # -- Project files --------------------------------------------------------------------
    def list_files(self, path: str = ".", *, project_id: str | None = None) -> list[CmlFile]:
        """Entries of a project directory (basenames; the API does not paginate files)."""
        pid = project_id or self.get_project_id()
        data = self._do_api_call(LIST_FILES, path_params={"project_id": pid, "path": clean_file_path(path)})
        return [CmlFile.from_api(f) for f in data.get("files") or []]

    def download_file(self, path: str, *, project_id: str | None = None) -> bytes:
        """The bytes of a project file; :class:`CmlNotFoundError` when it does not exist."""
        pid = project_id or self.get_project_id()
        clean = clean_file_path(path)
        try:
            return self._do_api_call(DOWNLOAD_FILE, path_params={"project_id": pid, "path": clean}, raw=True)
        except CmlNotFoundError as exc:
            raise CmlNotFoundError(
                f"Project file {clean!r} does not exist", body=exc.body, method=exc.method, path=exc.path
            ) from exc

    def download_file_if_exists(self, path: str, *, project_id: str | None = None) -> bytes | None:
        """The bytes of a project file, or None when it does not exist: one call, where
        :meth:`file_exists` then :meth:`download_file` is two."""
        try:
            return self.download_file(path, project_id=project_id)
        except CmlNotFoundError:
            return None

    async def a_download_file_if_exists(self, path: str, *, project_id: str | None = None) -> bytes | None:
        """Async twin of :meth:`download_file_if_exists`."""
        pid = project_id or await self.a_get_project_id()
        try:
            return await self._a_do_api_call(
                DOWNLOAD_FILE, path_params={"project_id": pid, "path": clean_file_path(path)}, raw=True)
        except CmlNotFoundError:
            return None

    def file_exists(self, path: str, *, project_id: str | None = None) -> bool:
        """Whether a project file or directory exists (lists its parent directory)."""
        clean = clean_file_path(path)
        if clean == ".":
            return True
        parent, name = posixpath.split(clean)
        try:
            entries = self.list_files(parent or ".", project_id=project_id)
        except CmlNotFoundError:
            return False
        return any(posixpath.basename(e.path.rstrip("/")) == name for e in entries)

    def delete_file(self, path: str, *, project_id: str | None = None) -> None:
        """Delete a project file (or directory)."""
        pid = project_id or self.get_project_id()
        self._do_api_call(DELETE_FILE, path_params={"project_id": pid, "path": clean_file_path(path)})

    def upload_file(
        self, path: str, data: bytes, overwrite: bool = False, *, project_id: str | None = None
    ) -> str:
        """Store ``data`` at project path ``path`` and return the path.

        A CML upload never overwrites (an existing path makes it store ``name(1).ext``), so:

        * ``overwrite=True`` deletes an existing file first, then uploads;
        * ``overwrite=False`` raises :class:`CmlFileExistsError` when the path exists — write
          to a fresh, content-addressed path instead, or catch the error to skip.

        After an ambiguous failure (5xx, read timeout) the path is checked before uploading
        again: if it now holds exactly ``data``, the upload had landed.
        """
        pid = project_id or self.get_project_id()
        clean = clean_file_path(path)
        if clean == ".":
            raise ValueError("upload_file needs a file path, not the project root")
        if self.file_exists(clean, project_id=pid):
            if not overwrite:
                raise CmlFileExistsError(clean)
            self.log.info("Deleting project file %r before upload (overwrite=True)", clean)
            self.delete_file(clean, project_id=pid)
        payload = bytes(data)
        files = {clean: (posixpath.basename(clean), payload, "application/octet-stream")}
        tried = False
        for attempt in self._retry_unsafe(f"upload {clean!r}"):
            with attempt:
                if tried and self.file_exists(clean, project_id=pid):
                    if self.download_file(clean, project_id=pid) == payload:
                        return clean  # the failed attempt had landed after all
                    raise CmlError(
                        f"A failed upload left other content at project file {clean!r}; not retrying"
                    )
                tried = True
                self._do_api_call(UPLOAD_FILE, path_params={"project_id": pid}, files=files)
        return clean
