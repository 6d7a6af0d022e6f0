"""Paths the DAGs pass as params (``config/grid.yaml``, ``config/closed_loop.yaml``)."""

from __future__ import annotations

from pathlib import Path

from factory_tasks.core.settings import REPO_ROOT


def repo_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else relative to the repository root: a param's default
    names a file of the repository, whatever directory the worker runs in."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path
