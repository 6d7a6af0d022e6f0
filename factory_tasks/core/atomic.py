"""Writing a file so readers see the old content or the new, never a torn one.

The one helper for every such write in the project (stdlib only, so the local workspace's run
wrapper can use it too): the bytes go to a temporary file with a unique name in the same folder
(a rename is atomic only within one file system), are fsynced, renamed over the target, and the
folder is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes | str | Callable[[Path], None],
                 *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns the path.

    ``data`` is bytes, text (UTF-8), or a callable that writes the temporary file it is given
    (for writers that want a path, like ``to_parquet`` or ``skops.io.dump``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else data
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path
