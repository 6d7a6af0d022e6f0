"""Where the factory keeps files on the orchestrator side. One environment variable each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # universal_pathlib (fsspec) is imported only where a location is built
    from upath import UPath

REPO_ROOT = Path(__file__).resolve().parents[2]

#: the summary's key below the object store's base URL
SUMMARY_KEY = "experiments_summary/experiments_summary.csv"


def artifacts_dir() -> Path:
    """Root for snapshots and collected outcome files on the orchestrator's disk."""
    return Path(os.environ.get("MODEL_FACTORY_ARTIFACTS", REPO_ROOT / "var" / "artifacts"))


def object_store() -> "UPath":
    """The base URL of the factory's object storage, ``$MODEL_FACTORY_OBJECT_STORE``.

    Any fsspec URL (``s3://bucket/model-factory``, ``abfs://...``, ``file:///srv/mf``); by
    default the artifacts folder as a ``file://`` URL (``file://<repo>/var/artifacts``).
    """
    from upath import UPath

    # "file://" + the path, not Path.as_uri(): fsspec does not percent-decode file:// URLs.
    return UPath(os.environ.get("MODEL_FACTORY_OBJECT_STORE") or f"file://{artifacts_dir().resolve()}")


def summary_location() -> "UPath":
    """``<object store>/experiments_summary/experiments_summary.csv``: written by the
    experiments_summary DAG, read by the dashboard."""
    return object_store().joinpath(*SUMMARY_KEY.split("/"))
