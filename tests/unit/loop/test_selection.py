"""Choosing the experiment to deploy, and the champion/challenger gate."""

from __future__ import annotations

import pandas as pd
import pytest

from factory_tasks.core.contracts import ExperimentResult, HoldoutScores, Promotion, RetrainResult
from factory_tasks.loop.selection import (
    SelectionError,
    choose,
    experiment_of_option,
    gate,
    rank_candidates,
    review_options,
)
from factory_tasks.warehouse.outcomes import RunContext, outcome_row
from tests.contract_factories import make_result, make_spec

RUN = "manual__2026-12-01T00:00:00+00:00"


def _row(c: float, auc: float | None, *, uplift: float = 0.1, std: float = 0.01, fit: float = 1.0,
         metric: str = "roc_auc"):
    spec = make_spec("LogisticRegression", {"C": c}, ranking_metric=metric)
    ctx = RunContext(factory_run_id=RUN, grid_hash="g", recorded_at="t")
    if auc is None:
        result = ExperimentResult(experiment_id=spec.experiment_id, status="failed", error="ValueError: boom")
    else:
        result = make_result(spec, auc, fit_time={"mean": fit, "std": 0.0, "total": fit})
        metrics = dict(result.metrics)
        metrics[metric] = metrics[metric].model_copy(update={"std": std})
        metrics["policy_uplift"] = metrics["policy_uplift"].model_copy(update={"mean": uplift})
        result = result.model_copy(update={"metrics": metrics})
    return outcome_row(spec, result, ctx)


def _frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def test_best_by_the_ranking_metric_then_the_documented_tie_breaks():
    a, b, c, d, e, failed = (_row(1, 0.70), _row(2, 0.72), _row(3, 0.72, uplift=0.5), _row(4, 0.72, uplift=0.5, std=0.001),
                             _row(5, 0.72, uplift=0.5, std=0.001, fit=0.1), _row(6, None))
    ranked = list(rank_candidates(_frame(a, b, c, d, e, failed))["experiment_id"])
    assert ranked == [e["experiment_id"], d["experiment_id"], c["experiment_id"], b["experiment_id"], a["experiment_id"]]
    # lower is better for log loss
    low, high = _row(1, 0.3, metric="log_loss"), _row(2, 0.5, metric="log_loss")
    assert rank_candidates(_frame(high, low))["experiment_id"].iloc[0] == low["experiment_id"]


def test_nobody_picked_means_the_best_succeeded_experiment():
    best, other, failed = _row(1, 0.8), _row(2, 0.7), _row(3, None)
    choice = choose(_frame(other, failed, best), factory_run_id=RUN)
    assert (choice.experiment_id, choice.chosen_by, choice.chosen_by_user) == (best["experiment_id"], "automatic", None)
    assert "nobody picked" in choice.reason
    # a review that timed out took its default: no one answered
    timed_out = {"chosen_options": [review_options(_frame(best, other))[1]], "responded_by_user": None,
                 "responded_at": "2026-12-01T02:00:00+00:00", "params_input": {}}
    assert choose(_frame(best, other), factory_run_id=RUN, review=timed_out).chosen_by == "automatic"


def _promotion(row, at: str, who: str = "ana") -> Promotion:
    return Promotion(experiment_id=row["experiment_id"], factory_run_id=RUN, reviewer=who, reason="stable",
                     promoted_at=at, family="test", estimator="LogisticRegression", ranking_metric="roc_auc",
                     ranking_score=row["ranking_score"])


def test_a_pick_wins_over_the_best_and_the_latest_pick_wins():
    best, other = _row(1, 0.8), _row(2, 0.7)
    promoted = choose(_frame(best, other), factory_run_id=RUN, promotion=_promotion(other, "2026-12-01T01:00:00+00:00"))
    assert (promoted.experiment_id, promoted.chosen_by, promoted.chosen_by_user) == (other["experiment_id"], "promotion", "ana")
    options = review_options(_frame(best, other))
    assert [experiment_of_option(o) for o in options] == [best["experiment_id"], other["experiment_id"]]
    answer = {"chosen_options": [options[0]], "responded_by_user": "bo", "responded_at": "2026-12-01T01:30:00+00:00",
              "params_input": {"reason": "best AUC"}}
    later = choose(_frame(best, other), factory_run_id=RUN, review=answer,
                   promotion=_promotion(other, "2026-12-01T01:00:00+00:00"))
    assert (later.experiment_id, later.chosen_by, later.chosen_by_user, later.reason) == (
        best["experiment_id"], "review", "bo", "best AUC")


def test_failed_experiments_never_qualify():
    ok, failed = _row(1, 0.8), _row(2, None)
    with pytest.raises(SelectionError, match="failed and cannot be deployed.*boom"):
        choose(_frame(ok, failed), factory_run_id=RUN, promotion=_promotion(failed, "2026-12-01T01:00:00+00:00"))
    with pytest.raises(SelectionError, match="no succeeded experiment"):
        choose(_frame(failed), factory_run_id=RUN)
    with pytest.raises(SelectionError, match="not in this factory run"):
        choose(_frame(ok), factory_run_id=RUN, manual_experiment_id="0" * 16)


def _retrain(challenger: dict, champion: dict | None, consistent: bool = True) -> RetrainResult:
    return RetrainResult(
        model_version="v2", status="succeeded", ranking_metric="roc_auc",
        holdout=HoldoutScores(metrics=challenger, n_rows=1000),
        champion_holdout=HoldoutScores(metrics=champion, n_rows=1000) if champion else None,
        consistent=consistent, consistency_note="held-out roc_auc 0.70 vs CV 0.71", artifact_path="a",
        metadata_path="m", n_rows=5000, code_version="v")


AUTO = choose(_frame(_row(1, 0.8)), factory_run_id=RUN)
PICKED = AUTO.model_copy(update={"chosen_by": "promotion", "chosen_by_user": "ana"})
MARGINS = {"ranking_margin": 0.002, "policy_value_margin": 0.0}


@pytest.mark.parametrize("challenger, champion, choice, consistent, deploy, override, says", [
    ({"roc_auc": 0.71, "policy_value": 9.0}, None, AUTO, True, True, False, "first deployment"),
    ({"roc_auc": 0.72, "policy_value": 9.5}, {"roc_auc": 0.71, "policy_value": 9.0}, AUTO, True, True, False, "better than"),
    ({"roc_auc": 0.711, "policy_value": 9.5}, {"roc_auc": 0.71, "policy_value": 9.0}, AUTO, True, False, False,
     "not better than the champion v1 by the margins"),
    ({"roc_auc": 0.72, "policy_value": 8.0}, {"roc_auc": 0.71, "policy_value": 9.0}, AUTO, True, False, False, "not better"),
    ({"roc_auc": 0.70, "policy_value": 8.0}, {"roc_auc": 0.71, "policy_value": 9.0}, PICKED, True, True, True,
     "deployed on ana promotion although it is not better"),
    ({"roc_auc": 0.72, "policy_value": 9.5}, {"roc_auc": 0.71, "policy_value": 9.0}, PICKED, False, False, False,
     "disagrees with its CV estimate"),
])
def test_the_gate(challenger, champion, choice, consistent, deploy, override, says):
    decision = gate(_retrain(challenger, champion, consistent), choice,
                    champion_version="v1" if champion else None, **MARGINS)
    assert (decision.deploy, decision.override) == (deploy, override)
    assert says in decision.reason
    assert decision.challenger == challenger and decision.champion == champion
