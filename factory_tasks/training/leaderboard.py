"""A plain-text leaderboard of one factory run, for task logs and the `make run` report."""

from __future__ import annotations

import json
import math

import pandas as pd

from factory_tasks.core.metrics import INCLUDES_ZERO_MARK, METRICS, fold_intervals
from factory_tasks.core.outcome_columns import folds_matrix

# log_loss is left out for width (it is in the summary and the dashboard): the decision value
# with its interval says more about which model to deploy.
_SPREAD_METRIC = "roc_auc"  # mean ± std over the folds
_INTERVAL_METRIC = "policy_uplift"  # mean [95% interval over the folds], marked where it includes 0
_MEAN_METRIC = "policy_value"  # mean only
_INTERVAL_WIDTH = 29
LEGEND = (
    f"{_INTERVAL_METRIC}: value per customer over the best single offer sent to everyone, mean [95% interval "
    "across folds]\n"
    f"{INCLUDES_ZERO_MARK}: the interval includes 0, not distinguishable from sending everyone the best offer "
    "(a rough guide: folds overlap)"
)


def rank_outcomes(frame: pd.DataFrame) -> pd.DataFrame:
    """Succeeded experiments best first by each row's ranking metric (direction from the registry)."""
    ok = frame[frame["status"] == "succeeded"].copy()
    if ok.empty:
        return ok
    sign = ok["ranking_metric"].map(lambda m: 1.0 if METRICS[m].greater_is_better else -1.0)
    ok["_key"] = ok["ranking_score"].astype(float) * sign
    return ok.sort_values(["_key", "experiment_id"], ascending=[False, True]).drop(columns="_key")


def _params(text: str | None, width: int = 46) -> str:
    params = json.loads(text) if text else {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def _reasons(reasons: pd.Series) -> str:
    """Counts per reason; reasons of one kind with different details ("code changed (a -> b)",
    "code changed (c -> b)") are counted together, their details shown only when they agree."""
    kinds: dict[str, list[str]] = {}
    for reason in reasons:
        kinds.setdefault(reason.split(" (", 1)[0], []).append(reason)
    parts = []
    for kind, members in kinds.items():
        shown = members[0] if len(set(members)) == 1 else f"{kind} (from {len(set(members))} earlier versions)"
        parts.append(f"{len(members)} {shown}")
    return "; ".join(parts)


def _interval_text(mean: float, low: float, high: float) -> str:
    """``+0.1234 [-0.0100, +0.2568] ≈0``, the mark where the interval includes 0; the mean
    alone where there is no interval (fewer than two folds), ``—`` where there is no mean."""
    if math.isnan(mean):
        return f"{'—':>{_INTERVAL_WIDTH}}   "
    if math.isnan(low):
        return f"{mean:>+8.4f}{'':{_INTERVAL_WIDTH - 8}}   "
    mark = INCLUDES_ZERO_MARK if low <= 0 <= high else ""
    return f"{f'{mean:+.4f} [{low:+.4f}, {high:+.4f}]':>{_INTERVAL_WIDTH}} {mark:2}"


def format_leaderboard(frame: pd.DataFrame, top: int = 10) -> str:
    """Top experiments with the folds' mean ± std of ROC AUC, the decision value over the best
    single offer with its 95% interval across folds (:func:`fold_intervals`) and the policy value,
    then every failure with its error."""
    if frame.empty:
        return "(no experiments recorded)"
    ranked = rank_outcomes(frame).head(top)
    lines = []
    if not ranked.empty:
        metric = ranked["ranking_metric"].iloc[0]
        lines.append(f"Top {len(ranked)} of {len(frame)} experiments, ranked by {metric}:")
        uplift = fold_intervals(folds_matrix(ranked[f"{_INTERVAL_METRIC}_folds"]))
        stored = ranked[f"{_INTERVAL_METRIC}_mean"].astype(float).to_numpy()
        means = [float(m) if n else float(s) for m, n, s in zip(uplift.mean, uplift.n_folds, stored)]
        header = f"{'#':>2}  {'experiment':16}  {'family':22}  {'params':38}  {_SPREAD_METRIC:>17}"
        header += f"  {_INTERVAL_METRIC + ' [95% interval]':>{_INTERVAL_WIDTH}}     {_MEAN_METRIC:>12}  {'fit s':>6}"
        lines.append(header)
        for i, row in enumerate(ranked.itertuples(index=False), start=1):
            line = f"{i:>2}  {row.experiment_id:16}  {row.family[:22]:22}  {_params(row.params_json, 38):38}"
            mean, std = getattr(row, f"{_SPREAD_METRIC}_mean"), getattr(row, f"{_SPREAD_METRIC}_std")
            line += f"  {mean:>8.4f} ± {std:<6.4f}" if pd.notna(mean) else f"  {'—':>17}"
            line += "  " + _interval_text(means[i - 1], float(uplift.low[i - 1]), float(uplift.high[i - 1]))
            value = getattr(row, f"{_MEAN_METRIC}_mean")
            line += f"  {value:>12.4f}" if pd.notna(value) else f"  {'—':>12}"
            fit = row.fit_time_mean
            line += f"  {fit:>6.2f}" if pd.notna(fit) else f"  {'—':>6}"
            lines.append(line.rstrip())
        lines.append(LEGEND)
    if "run_reason" in frame.columns and frame["run_reason"].notna().any():
        lines.append("Why each ran or was reused: " + _reasons(frame["run_reason"].fillna("unknown")))
    failed = frame[frame["status"] != "succeeded"]
    if not failed.empty:
        lines.append(f"{len(failed)} failed:")
        for row in failed.itertuples(index=False):
            lines.append(f"  {row.experiment_id}  {row.family}  {_params(row.params_json)}: {row.error}")
    return "\n".join(lines)
