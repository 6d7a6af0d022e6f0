"""Project files: the folder ``<root>/projects/<project_id>/files/`` standing in for
``/home/cdsw``. Every client path goes through :func:`resolve`, which rejects paths that
would leave the folder (``..``, absolute paths, symlinks pointing outside).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import ApiError, GrpcCode, invalid

_COPY_CHUNK = 1024 * 1024


def normalize(rel: str) -> str:
    """Validate a client path and return it relative to the project root (``""`` = root)."""
    if rel is None:
        rel = ""
    if "\x00" in rel:
        raise invalid("path contains a NUL character")
    if rel.startswith("/") or rel.startswith("\\") or PurePosixPath(rel).is_absolute():
        raise invalid(f"absolute paths are not allowed: {rel!r} (paths are relative to the project root)")
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise invalid(f"path escapes the project folder: {rel!r}")
    return "/".join(parts)


def resolve(base: Path, rel: str) -> Path:
    """The absolute path of ``rel`` inside ``base``; 400 if it would escape ``base``."""
    clean = normalize(rel)
    path = base.joinpath(*clean.split("/")) if clean else base
    real_base = base.resolve()
    real = path.resolve()
    if real != real_base and real_base not in real.parents:
        raise invalid(f"path escapes the project folder: {rel!r}")
    return path


def file_info(path: Path, name: str | None = None) -> dict:
    is_dir = path.is_dir()
    size = 0 if is_dir else path.stat().st_size
    return {"path": name if name is not None else path.name, "is_dir": is_dir, "file_size": str(size)}


class ProjectFiles:
    """File operations on one project's folder."""

    def __init__(self, base: Path):
        self.base = base

    def ensure(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)

    def list(self, rel: str) -> list[dict]:
        """Entries of a directory (basenames, directories first is *not* promised: sorted by
        name). A file path lists that one file."""
        path = resolve(self.base, rel)
        if not path.exists():
            raise ApiError(GrpcCode.NOT_FOUND, f"file not found: {normalize(rel) or '.'}")
        if not path.is_dir():
            return [file_info(path)]
        return [file_info(child) for child in sorted(path.iterdir(), key=lambda p: p.name)]

    def file_for_download(self, rel: str) -> Path:
        path = resolve(self.base, rel)
        if not path.exists():
            raise ApiError(GrpcCode.NOT_FOUND, f"file not found: {normalize(rel)}")
        if path.is_dir():
            raise invalid(f"{normalize(rel) or '.'} is a directory; download needs a file")
        return path

    def delete(self, rel: str) -> None:
        clean = normalize(rel)
        if not clean:
            raise invalid("refusing to delete the project root")
        path = resolve(self.base, clean)
        if not path.exists() and not path.is_symlink():
            raise ApiError(GrpcCode.NOT_FOUND, f"file not found: {clean}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    def upload(self, rel: str, source: BinaryIO) -> str:
        """Store ``source`` at ``rel`` without overwriting: if the path exists, store
        ``name(1).ext`` (then ``(2)``, ...) like CML. Returns the stored relative path."""
        clean = normalize(rel)
        if not clean:
            raise invalid("upload needs a destination path (the form field name)")
        target = resolve(self.base, clean)
        parent = target.parent
        for ancestor in [parent, *parent.parents]:
            if ancestor == self.base or self.base not in ancestor.parents:
                break
            if ancestor.exists() and not ancestor.is_dir():
                raise invalid(f"cannot upload {clean!r}: {ancestor.relative_to(self.base)} is a file")
        parent.mkdir(parents=True, exist_ok=True)
        fd, stored = self._reserve(target)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, _COPY_CHUNK)
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        return stored.relative_to(self.base).as_posix()

    @staticmethod
    def _reserve(target: Path) -> tuple[int, Path]:
        """Create the first free name among ``target``, ``stem(1)suffix``, ... atomically."""
        suffix = target.suffix
        stem = target.name[: -len(suffix)] if suffix else target.name
        for n in range(0, 100_000):
            candidate = target if n == 0 else target.with_name(f"{stem}({n}){suffix}")
            try:
                return os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), candidate
            except FileExistsError:
                continue
            except IsADirectoryError:
                continue
        raise ApiError(GrpcCode.RESOURCE_EXHAUSTED, f"too many copies of {target.name}")
