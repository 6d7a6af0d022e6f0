"""Synthetic outcome rows with the real schema, for demos, tests and benchmarks.

``python -m dashboards.experiments.sample_data OUT [N]`` writes a summary of N rows (OUT: a path or a URL).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from factory_tasks.core.metrics import METRICS
from factory_tasks.core.outcome_columns import OUTCOME_COLUMN_NAMES
from factory_tasks.warehouse.summary import build_summary, write_summary

FAMILIES = {
    "logistic_regression": ("LogisticRegression", {"C": [0.01, 0.1, 1.0, 10.0], "penalty": ["l2", None]}),
    "random_forest": ("RandomForestClassifier", {"n_estimators": [100, 200, 400], "max_depth": [4, 8, None]}),
    "hist_gradient_boosting": ("HistGradientBoostingClassifier", {"learning_rate": [0.03, 0.1, 0.3], "max_leaf_nodes": [15, 31, 63]}),
}


def synthetic_outcomes(n: int, seed: int = 0, runs: int = 3, failure_rate: float = 0.05,
                       start: datetime = datetime(2026, 3, 1, tzinfo=timezone.utc)) -> pd.DataFrame:
    """``n`` outcome rows spread over ``runs`` factory runs and the families above."""
    rng = np.random.default_rng(seed)
    families = list(FAMILIES)
    fam_idx = rng.integers(0, len(families), n)
    run_idx = rng.integers(0, runs, n)
    failed = rng.random(n) < failure_rate
    folds = 5
    rows = {name: [None] * n for name in OUTCOME_COLUMN_NAMES}
    frame = pd.DataFrame(rows)
    frame["factory_run_id"] = [f"manual__2026-03-0{1 + r}T00:00:00+00:00" for r in run_idx]
    frame["experiment_id"] = [f"{seed:04x}{i:012x}" for i in range(n)]
    frame["family"] = [families[i] for i in fam_idx]
    frame["estimator"] = [FAMILIES[families[i]][0] for i in fam_idx]
    params = []
    for i in fam_idx:
        grid = FAMILIES[families[i]][1]
        params.append(json.dumps({k: v[rng.integers(0, len(v))] for k, v in grid.items()}, sort_keys=True))
    frame["params_json"] = params
    frame["status"] = np.where(failed, "failed", "succeeded")
    frame["error"] = np.where(failed, "ValueError: simulated failure", None)
    frame["cv_folds"] = folds
    frame["ranking_metric"] = "roc_auc"
    base = 0.62 + 0.05 * fam_idx + rng.normal(0, 0.03, n)
    fold_scores = base[:, None] + rng.normal(0, 0.01, (n, folds))
    for name, metric in METRICS.items():
        offset = {"roc_auc": 0.0, "average_precision": -0.35, "accuracy": 0.2}.get(name, 0.0)
        if name in ("log_loss", "brier_score"):
            scores = (0.5 - fold_scores * 0.3) if name == "log_loss" else (0.16 - fold_scores * 0.05)
        elif name == "policy_value":
            scores = fold_scores * 12.0
        elif name == "policy_uplift":  # around 0: some beat the best single offer, some do not
            scores = (fold_scores - 0.68) * 10.0
        else:
            scores = fold_scores + offset
        means = scores.mean(axis=1)
        stds = scores.std(axis=1)
        frame[f"{name}_mean"] = np.where(failed, np.nan, means)
        frame[f"{name}_std"] = np.where(failed, np.nan, stds)
        frame[f"{name}_folds"] = [None if f else json.dumps([round(float(v), 6) for v in s])
                                  for f, s in zip(failed, scores)]
    frame["ranking_score"] = frame["roc_auc_mean"]
    frame["fit_time_mean"] = np.where(failed, np.nan, rng.gamma(2.0, 1.5, n))
    frame["score_time_mean"] = np.where(failed, np.nan, rng.gamma(2.0, 0.1, n))
    frame["wall_time_s"] = rng.gamma(3.0, 4.0, n)
    frame["cpu"] = 1.0
    frame["memory_gb"] = 2.0
    frame["job_id"] = "job-experiment"
    frame["job_run_id"] = [f"run-{i}" for i in range(n)]
    frame["run_status"] = np.where(failed, "ENGINE_FAILED", "ENGINE_SUCCEEDED")
    frame["artifact_path"] = [None if f else f"experiments/{e}/model.skops" for f, e in zip(failed, frame["experiment_id"])]
    frame["data_snapshot_hash"] = "ab12cd34ef56"
    frame["grid_hash"] = "grid0001"
    frame["code_version"] = "0.1.0"
    recorded = [(start + timedelta(days=int(r), minutes=int(m))).isoformat()
                for r, m in zip(run_idx, rng.integers(0, 600, n))]
    frame["started_at"] = recorded
    frame["finished_at"] = recorded
    frame["recorded_at"] = recorded
    return frame[list(OUTCOME_COLUMN_NAMES)]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    n = int(argv[1]) if len(argv) > 1 else 1000
    write_summary(build_summary(synthetic_outcomes(n)), argv[0])
    print(f"wrote {n} rows to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
