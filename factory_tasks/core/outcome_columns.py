"""The columns of ``experiment_outcomes`` (and of ``experiments_summary.csv``, in the same order):
one row per experiment per factory run. The warehouse creates the table from them and the
record stage fills them; :func:`folds_matrix` reads their per-fold scores back."""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from factory_tasks.core.metrics import METRICS

#: (name, type) in the documented column order; type is one of string, double, bigint
OUTCOME_COLUMN_TYPES: tuple[tuple[str, str], ...] = (
    ("factory_run_id", "string"),
    ("experiment_id", "string"),
    ("family", "string"),
    ("estimator", "string"),
    ("params_json", "string"),
    ("status", "string"),
    ("error", "string"),
    ("cv_folds", "bigint"),
    ("ranking_metric", "string"),
    ("ranking_score", "double"),
    *(
        col
        for name in METRICS
        for col in (
            (f"{name}_mean", "double"),
            (f"{name}_std", "double"),
            (f"{name}_folds", "string"),
        )
    ),
    ("fit_time_mean", "double"),
    ("score_time_mean", "double"),
    ("wall_time_s", "double"),
    ("cpu", "double"),
    ("memory_gb", "double"),
    ("job_id", "string"),
    ("job_run_id", "string"),
    ("run_status", "string"),
    ("artifact_path", "string"),
    ("data_snapshot_hash", "string"),
    ("grid_hash", "string"),
    ("code_version", "string"),
    ("library_versions", "string"),
    ("run_reason", "string"),
    ("started_at", "string"),
    ("finished_at", "string"),
    ("recorded_at", "string"),
)
OUTCOME_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in OUTCOME_COLUMN_TYPES)


def folds_matrix(values: Iterable[Any]) -> np.ndarray:
    """The ``<metric>_folds`` column (a JSON list of per-fold scores per row, ``null`` for a fold
    without one) as an experiments × folds float array, NaN where a row has no such fold, no
    finite score there, or no valid list at all. One JSON parse for the whole column when every
    row is valid: 50,000 rows of five folds take about a tenth of a second."""
    texts = [v if isinstance(v, str) and v else "null" for v in values]
    parsed: list[Any] | None = None
    try:
        parsed = json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        pass
    if parsed is None or len(parsed) != len(texts):  # a bad row: parse each on its own
        parsed = [_loads_or_none(t) for t in texts]
    rows = [p if isinstance(p, list) else [] for p in parsed]
    width = max(map(len, rows), default=0)
    out = np.full((len(rows), width), np.nan)
    full = [i for i, r in enumerate(rows) if len(r) == width]  # usually every row with scores
    rest = [i for i, r in enumerate(rows) if 0 < len(r) < width]
    if full and width:
        try:
            out[full] = np.array([rows[i] for i in full], dtype=np.float64)  # null -> NaN
        except (TypeError, ValueError):  # a string or a nested list among the scores
            rest = sorted([*full, *rest])
    for i in rest:
        out[i] = [v if isinstance(v, (int, float)) else np.nan
                  for v in [*rows[i], *[None] * (width - len(rows[i]))]]
    out[~np.isfinite(out)] = np.nan
    return out


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
