"""Which experiment goes to production, and whether it may replace the model now serving.

:func:`rank_candidates` orders a factory run's succeeded experiments, best first, by the grid's
ranking metric; ties are broken, in this order, by the higher ``policy_uplift`` (the decisions'
value over the best single offer sent to everyone), the smaller spread of the ranking metric
across folds, the shorter mean fit time, and the experiment id. Failed experiments never
qualify.

:func:`choose` takes a reviewer's pick when there is one — the most recent of a dashboard
promotion and an answer to the Airflow review — and the best candidate otherwise.

:func:`gate` is the champion/challenger rule: an automatic choice replaces the model now
serving only if it is better by the configured margins on the ranking metric *and* on policy
value, both measured on the same held-out slice; a refit whose held-out score disagrees with
its CV estimate is never deployed; a reviewer's explicit pick may override the margins (the
override is recorded); the first deployment passes trivially.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pandas as pd

from factory_tasks.core.contracts import Choice, GateDecision, Promotion, RetrainResult
from factory_tasks.core.metrics import METRICS


class SelectionError(ValueError):
    """No experiment can be chosen (none succeeded, or a pick names one that did not)."""


def rank_candidates(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The succeeded experiments of one factory run, best first (see the module doc)."""
    ok = outcomes[(outcomes["status"] == "succeeded") & outcomes["ranking_score"].notna()].copy()
    if ok.empty:
        return ok
    metrics = set(ok["ranking_metric"])
    if len(metrics) != 1:
        raise SelectionError(f"the experiments of one factory run are ranked by one metric, found {sorted(metrics)}")
    sign = 1.0 if METRICS[metrics.pop()].greater_is_better else -1.0
    ok["_score"] = -sign * ok["ranking_score"].astype(float)
    ok["_uplift"] = -ok["policy_uplift_mean"].astype(float).fillna(-math.inf)
    std_column = ok["ranking_metric"].iloc[0] + "_std"
    ok["_spread"] = ok[std_column].astype(float).fillna(math.inf)
    ok["_fit"] = ok["fit_time_mean"].astype(float).fillna(math.inf)
    ok = ok.sort_values(["_score", "_uplift", "_spread", "_fit", "experiment_id"], kind="mergesort")
    return ok.drop(columns=["_score", "_uplift", "_spread", "_fit"]).reset_index(drop=True)


def _checked_pick(candidates: pd.DataFrame, outcomes: pd.DataFrame, experiment_id: str, who: str) -> None:
    if experiment_id in set(candidates["experiment_id"]):
        return
    row = outcomes[outcomes["experiment_id"] == experiment_id]
    if row.empty:
        raise SelectionError(f"{who} picked experiment {experiment_id}, which is not in this factory run")
    raise SelectionError(f"{who} picked experiment {experiment_id}, which {row['status'].iloc[0]} "
                         f"and cannot be deployed (error: {row['error'].iloc[0]})")


def choose(
    outcomes: pd.DataFrame,
    *,
    factory_run_id: str,
    promotion: Promotion | None = None,
    review: dict[str, Any] | None = None,
    manual_experiment_id: str | None = None,
) -> Choice:
    """The experiment to deploy. ``review`` is the HITL task's answer (``chosen_options``,
    ``responded_by_user``, ``responded_at``); an answer nobody gave (the timeout's default)
    counts as no pick."""
    candidates = rank_candidates(outcomes)
    if candidates.empty:
        raise SelectionError(f"factory run {factory_run_id} has no succeeded experiment to deploy")
    if manual_experiment_id:
        _checked_pick(candidates, outcomes, manual_experiment_id, "the manual DAG run")
        return Choice(factory_run_id=factory_run_id, experiment_id=manual_experiment_id, chosen_by="manual",
                      reason="experiment id given to a manual run of deploy_best_model")
    picks: list[tuple[datetime, Choice]] = []
    if promotion is not None:
        _checked_pick(candidates, outcomes, promotion.experiment_id, f"the promotion by {promotion.reviewer}")
        picks.append((datetime.fromisoformat(promotion.promoted_at), Choice(
            factory_run_id=factory_run_id, experiment_id=promotion.experiment_id, chosen_by="promotion",
            chosen_by_user=promotion.reviewer, reason=promotion.reason)))
    if review and review.get("responded_by_user"):
        experiment_id = experiment_of_option(review["chosen_options"][0])
        user = str(review["responded_by_user"])
        _checked_pick(candidates, outcomes, experiment_id, f"the review answer by {user}")
        picks.append((datetime.fromisoformat(str(review["responded_at"])), Choice(
            factory_run_id=factory_run_id, experiment_id=experiment_id, chosen_by="review", chosen_by_user=user,
            reason=str((review.get("params_input") or {}).get("reason") or "picked in the Airflow review"))))
    if picks:
        return max(picks, key=lambda pick: pick[0])[1]
    best = candidates.iloc[0]
    return Choice(factory_run_id=factory_run_id, experiment_id=best["experiment_id"], chosen_by="automatic",
                  reason=f"best of {len(candidates)} succeeded experiments by {best['ranking_metric']} "
                         f"({best['ranking_score']:.4f}); nobody picked one during the review window")


def review_options(outcomes: pd.DataFrame, top: int = 5) -> list[str]:
    """The review's options: the top candidates, each labelled with its id and scores."""
    return [f"{row.experiment_id} {row.family} {row.ranking_metric}={row.ranking_score:.4f}"
            for row in rank_candidates(outcomes).head(top).itertuples(index=False)]


def experiment_of_option(option: str) -> str:
    """The experiment id an option of :func:`review_options` stands for."""
    return option.split(" ", 1)[0]


def gate(
    retrain: RetrainResult,
    choice: Choice,
    *,
    champion_version: str | None,
    ranking_margin: float,
    policy_value_margin: float,
) -> GateDecision:
    """Whether the retrained challenger replaces the champion (see the module doc)."""
    if retrain.status != "succeeded" or retrain.holdout is None:
        raise ValueError(f"the retrain of {retrain.model_version} failed: {retrain.error}")
    metric = retrain.ranking_metric or ""
    challenger = dict(retrain.holdout.metrics)

    def decision(deploy: bool, reason: str, override: bool = False) -> GateDecision:
        champion = dict(retrain.champion_holdout.metrics) if retrain.champion_holdout else None
        return GateDecision(deploy=deploy, reason=reason, override=override, ranking_metric=metric,
                            challenger=challenger, champion=champion, champion_version=champion_version)

    if not retrain.consistent:
        return decision(False, f"not deployed: the refit disagrees with its CV estimate ({retrain.consistency_note})")
    if retrain.champion_holdout is None or champion_version is None:
        return decision(True, "first deployment: no model is serving yet")
    if champion_version == retrain.model_version:
        return decision(False, f"not deployed: {champion_version} is already serving")
    sign = 1.0 if METRICS[metric].greater_is_better else -1.0
    champion = retrain.champion_holdout.metrics
    gain = sign * ((challenger.get(metric) or math.nan) - (champion.get(metric) or math.nan))
    value_gain = (challenger.get("policy_value") or math.nan) - (champion.get("policy_value") or math.nan)
    shown = (f"{metric} {challenger.get(metric):.4f} vs {champion.get(metric):.4f} (margin {ranking_margin:g}), "
             f"policy_value {challenger.get('policy_value'):.3f} vs {champion.get('policy_value'):.3f} "
             f"(margin {policy_value_margin:g}) on the same {retrain.holdout.n_rows} held-out rows")
    better = gain > ranking_margin and value_gain > policy_value_margin
    if better:
        return decision(True, f"better than the champion {champion_version}: {shown}")
    if choice.chosen_by in ("promotion", "review", "manual"):
        return decision(True, f"deployed on {choice.chosen_by_user or 'a manual'} {choice.chosen_by} although it is "
                              f"not better than the champion {champion_version} by the margins: {shown}", override=True)
    return decision(False, f"not deployed: not better than the champion {champion_version} by the margins: {shown}")
