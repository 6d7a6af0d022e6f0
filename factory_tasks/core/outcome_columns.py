"""The columns of ``experiment_outcomes`` (and of ``experiments_summary.csv``, in the same order):
one row per experiment per factory run. The warehouse creates the table from them and the
record stage fills them."""

from __future__ import annotations

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
