"""A plain-text leaderboard of one factory run, for task logs and the `make run` report."""

from __future__ import annotations

import json

import pandas as pd

from factory_tasks.core.metrics import METRICS

_SHOWN_METRICS = ("roc_auc", "log_loss", "policy_value", "policy_uplift")


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


def format_leaderboard(frame: pd.DataFrame, top: int = 10) -> str:
    """Top experiments with mean ± std of the CV metrics, then every failure with its error."""
    if frame.empty:
        return "(no experiments recorded)"
    ranked = rank_outcomes(frame).head(top)
    lines = []
    if not ranked.empty:
        metric = ranked["ranking_metric"].iloc[0]
        lines.append(f"Top {len(ranked)} of {len(frame)} experiments, ranked by {metric}:")
        header = f"{'#':>2}  {'experiment':16}  {'family':24}  {'params':46}"
        header += "".join(f"  {m:>17}" for m in _SHOWN_METRICS) + f"  {'fit s':>6}"
        lines.append(header)
        for i, row in enumerate(ranked.itertuples(index=False), start=1):
            line = f"{i:>2}  {row.experiment_id:16}  {row.family[:24]:24}  {_params(row.params_json):46}"
            for m in _SHOWN_METRICS:
                mean, std = getattr(row, f"{m}_mean"), getattr(row, f"{m}_std")
                line += f"  {mean:>8.4f} ± {std:<6.4f}" if pd.notna(mean) else f"  {'—':>17}"
            fit = row.fit_time_mean
            line += f"  {fit:>6.2f}" if pd.notna(fit) else f"  {'—':>6}"
            lines.append(line)
    if "run_reason" in frame.columns and frame["run_reason"].notna().any():
        lines.append("Why each ran or was reused: " + _reasons(frame["run_reason"].fillna("unknown")))
    failed = frame[frame["status"] != "succeeded"]
    if not failed.empty:
        lines.append(f"{len(failed)} failed:")
        for row in failed.itertuples(index=False):
            lines.append(f"  {row.experiment_id}  {row.family}  {_params(row.params_json)}: {row.error}")
    return "\n".join(lines)
