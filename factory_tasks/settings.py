"""Where the factory keeps files on the orchestrator side. One environment variable each."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def artifacts_dir() -> Path:
    """Root for snapshots, collected outcome files, the summary CSV and promotions."""
    return Path(os.environ.get("MODEL_FACTORY_ARTIFACTS", REPO_ROOT / "var" / "artifacts"))


def summary_path() -> Path:
    return artifacts_dir() / "experiments_summary" / "experiments_summary.csv"


def promotions_path() -> Path:
    return artifacts_dir() / "experiments_summary" / "promotions.jsonl"
