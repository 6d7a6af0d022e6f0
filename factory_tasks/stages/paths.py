"""The config files a run's conf names (``grid_path``, ``loop_config_path``): only files inside
the config folders are read, so a conf cannot make a worker read (and a task log echo) any
other file it can reach, such as ``/etc/shadow`` or ``var/secrets/``.

The folders are ``$MODEL_FACTORY_CONFIG_DIRS`` (separated by ``os.pathsep``; relative ones from
the repository root), by default the repository's ``config/``. A path is checked after
symlinks and ``..`` are resolved."""

from __future__ import annotations

import os
from pathlib import Path

from factory_tasks.core.settings import REPO_ROOT
from factory_tasks.core.text import shorten

CONFIG_DIRS_ENV = "MODEL_FACTORY_CONFIG_DIRS"


class ConfigPathError(ValueError):
    """A config path of a run's conf that lies outside the config folders."""


def repo_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else relative to the repository root: a param's default
    names a file of the repository, whatever directory the worker runs in."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def config_dirs() -> list[Path]:
    """The folders config files may be read from, resolved."""
    listed = [part.strip() for part in os.environ.get(CONFIG_DIRS_ENV, "").split(os.pathsep)]
    return [repo_path(part).resolve() for part in listed if part] or [(REPO_ROOT / "config").resolve()]


def config_path(path: str | Path, param: str) -> Path:
    """The resolved ``path`` (relative ones from the repository root) when it lies inside a
    config folder; else :class:`ConfigPathError` naming the param, without reading the file."""
    resolved = repo_path(path).resolve()
    folders = config_dirs()
    if any(resolved.is_relative_to(folder) for folder in folders):
        return resolved
    shown = repr(shorten(str(path), 120))
    raise ConfigPathError(
        f"param {param}: {shown} is outside the config folders ({', '.join(map(str, folders))}): "
        f"put the file in one of them, or add its folder to {CONFIG_DIRS_ENV} "
        f"(folders separated by {os.pathsep!r})")
