"""Choosing the experiment to deploy, and the champion/challenger gate."""

from __future__ import annotations

import pandas as pd
import pytest

from factory_tasks.core.contracts import ExperimentResult, HoldoutScores, PairedDifference, Promotion, RetrainResult
from factory_tasks.loop.selection import (
    SelectionError,
    choose,
    evidence_table,
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


def _diff(measure: str, difference: float, low: float, high: float, *, source: str = "holdout", n_rows: int = 3200,
          greater_is_better: bool = True) -> PairedDifference:
    return PairedDifference(measure=measure, source=source, challenger=10.0 + difference, champion=10.0,
                            difference=difference, low=low, high=high, greater_is_better=greater_is_better,
                            n_rows=n_rows, method="paired bootstrap, 400 resamples")


def _retrain(challenger: dict, champion: dict | None, consistent: bool = True,
             comparison: list[PairedDifference] | None = None, metric: str = "roc_auc") -> RetrainResult:
    return RetrainResult(
        model_version="v2", status="succeeded", ranking_metric=metric,
        holdout=HoldoutScores(metrics=challenger, n_rows=3200),
        champion_holdout=HoldoutScores(metrics=champion, n_rows=3200) if champion else None,
        comparison=comparison or [],
        consistent=consistent, consistency_note="held-out roc_auc 0.70 vs CV 0.71", artifact_path="a",
        metadata_path="m", n_rows=16000, code_version="v")


AUTO = choose(_frame(_row(1, 0.8)), factory_run_id=RUN)
PICKED = AUTO.model_copy(update={"chosen_by": "promotion", "chosen_by_user": "ana"})
MARGINS = {"ranking_margin": 0.01, "policy_value_margin": 0.0}
SCORES = {"roc_auc": 0.72, "policy_value": 9.5}, {"roc_auc": 0.71, "policy_value": 9.0}
#: paired comparisons: the ranking metric clearly not worse; policy value better, within noise, worse
RANK_OK = _diff("roc_auc", 0.012, 0.004, 0.020)
RANK_WORSE = _diff("roc_auc", -0.02, -0.031, -0.009)
VALUE_BETTER = _diff("policy_value", 0.9, 0.2, 1.6)
VALUE_NOISE = _diff("policy_value", 0.41, -0.62, 1.44)
VALUE_WORSE = _diff("policy_value", -1.1, -1.8, -0.4)


@pytest.mark.parametrize("comparison, choice, consistent, deploy, override, says", [
    ([RANK_OK, VALUE_BETTER], AUTO, True, True, False,
     "better than the champion v1: holdout policy_value gain +0.900 [+0.200, +1.600] per customer on 3,200 held-out "
     "rows: its lower bound is above the margin 0"),
    ([RANK_OK, VALUE_NOISE], AUTO, True, False, False,
     "not shown better than the champion v1: holdout policy_value gain +0.410 [-0.620, +1.440] per customer on 3,200 "
     "held-out rows: its lower bound is not above the margin 0"),
    ([RANK_OK, VALUE_WORSE], AUTO, True, False, False, "its upper bound is below 0, worse with confidence"),
    ([RANK_WORSE, VALUE_BETTER], AUTO, True, False, False,
     "the ranking metric may be worse: holdout roc_auc difference -0.0200 [-0.0310, -0.0090] on 3,200 held-out rows: "
     "its lower bound is not above -0.01"),
    ([RANK_OK, VALUE_NOISE], PICKED, True, True, True,
     "deployed on ana promotion although it is not shown better than the champion v1: holdout policy_value gain "
     "+0.410"),
    ([RANK_OK, VALUE_BETTER], PICKED, False, False, False, "disagrees with its CV estimate"),
    ([], AUTO, True, False, False, "no interval of the ranking metric's difference (none computed)"),
])
def test_the_gate_decides_on_the_paired_intervals(comparison, choice, consistent, deploy, override, says):
    challenger, champion = SCORES
    decision = gate(_retrain(challenger, champion, consistent, comparison), choice, champion_version="v1", **MARGINS)
    assert (decision.deploy, decision.override) == (deploy, override)
    assert says in decision.reason, decision.reason
    assert decision.challenger == challenger and decision.champion == champion
    assert decision.evidence == comparison
    # only a champion kept on evidence that fell short may be put to a reviewer
    assert decision.overridable == (not deploy and consistent and choice is AUTO)


def test_the_gate_checks_the_lower_bound_not_the_point():
    """The same point gain deploys with a tight interval and keeps the champion with a wide one;
    the margin moves the bar."""
    challenger, champion = SCORES
    tight = _retrain(challenger, champion, comparison=[RANK_OK, _diff("policy_value", 0.41, 0.05, 0.77)])
    wide = _retrain(challenger, champion, comparison=[RANK_OK, VALUE_NOISE])
    assert gate(tight, AUTO, champion_version="v1", **MARGINS).deploy
    assert not gate(wide, AUTO, champion_version="v1", **MARGINS).deploy
    assert not gate(tight, AUTO, champion_version="v1", ranking_margin=0.01, policy_value_margin=0.1).deploy
    # the ranking metric's margin is how much worse it may be: a small loss within it passes
    slightly_worse = _diff("roc_auc", -0.002, -0.008, 0.004)
    assert gate(_retrain(challenger, champion, comparison=[slightly_worse, VALUE_BETTER]), AUTO,
                champion_version="v1", **MARGINS).deploy
    assert not gate(_retrain(challenger, champion, comparison=[slightly_worse, VALUE_BETTER]), AUTO,
                    champion_version="v1", ranking_margin=0.005, policy_value_margin=0.0).deploy


def test_a_lower_is_better_ranking_metric_is_checked_on_its_upper_bound():
    challenger, champion = {"log_loss": 0.40, "policy_value": 9.5}, {"log_loss": 0.41, "policy_value": 9.0}
    better = _diff("log_loss", -0.01, -0.02, -0.001, greater_is_better=False)
    worse = _diff("log_loss", 0.01, 0.004, 0.02, greater_is_better=False)
    ok = gate(_retrain(challenger, champion, comparison=[better, VALUE_BETTER], metric="log_loss"), AUTO,
              champion_version="v1", **MARGINS)
    kept = gate(_retrain(challenger, champion, comparison=[worse, VALUE_BETTER], metric="log_loss"), AUTO,
                champion_version="v1", **MARGINS)
    assert ok.deploy and not kept.deploy
    assert "(lower is better)" in kept.reason and "its upper bound is not below +0.01" in kept.reason


def test_first_deployment_and_already_serving():
    challenger, _ = SCORES
    first = gate(_retrain(challenger, None), AUTO, champion_version=None, **MARGINS)
    assert first.deploy and "first deployment" in first.reason and first.evidence == []
    same = _retrain(challenger, challenger, comparison=[_diff("roc_auc", 0, 0, 0), _diff("policy_value", 0, 0, 0)])
    kept = gate(same, PICKED, champion_version="v2", **MARGINS)
    assert not kept.deploy and "v2 is already serving" in kept.reason and not kept.override


NO_LIVE = PairedDifference(measure="policy_value", source="live", challenger=None, champion=None, difference=None,
                           low=None, high=None, n_rows=0, method="DR influence function: no matured traffic yet")


@pytest.mark.parametrize("offline, live, deploy, says", [
    # the held-out slice inconclusive: the live comparison decides
    (VALUE_NOISE, _diff("policy_value", 0.6, 0.2, 1.0, source="live", n_rows=12000), True,
     "the held-out slice is inconclusive (holdout policy_value gain +0.410 [-0.620, +1.440] per customer on 3,200 "
     "held-out rows: its lower bound is not above the margin 0), live traffic is not: live policy_value gain +0.600 "
     "[+0.200, +1.000] per customer on 12,000 rows of live traffic: its lower bound is above the margin 0"),
    (VALUE_NOISE, _diff("policy_value", 0.3, -0.1, 0.7, source="live"), False, "; live: live policy_value gain +0.300"),
    # live says worse with confidence: the champion stays whatever the slice says
    (VALUE_BETTER, _diff("policy_value", -0.5, -0.9, -0.1, source="live"), False,
     "live traffic says it is worse: live policy_value gain -0.500 [-0.900, -0.100]"),
    # a slice that says worse is not overturned by live traffic
    (VALUE_WORSE, _diff("policy_value", 0.6, 0.2, 1.0, source="live"), False, "worse with confidence (live:"),
    (VALUE_BETTER, _diff("policy_value", 0.1, -0.2, 0.4, source="live"), True, "its lower bound is above the margin 0"),
    # the shadow evaluation's "no live evidence" (no rows, no values): the held-out slice decides alone
    (VALUE_BETTER, NO_LIVE, True, "holdout policy_value gain +0.900 [+0.200, +1.600]"),
    (VALUE_NOISE, NO_LIVE, False, "; live: no interval of the policy_value difference (live policy_value gain n/a"),
])
def test_live_evidence_decides_when_the_held_out_slice_does_not(offline, live, deploy, says):
    challenger, champion = SCORES
    decision = gate(_retrain(challenger, champion, comparison=[RANK_OK, offline]), AUTO, champion_version="v1",
                    live=live, **MARGINS)
    assert decision.deploy == deploy and says in decision.reason, decision.reason
    assert decision.evidence == [RANK_OK, offline, live]


@pytest.mark.parametrize("comparison, live, deploy, says", [
    # inconclusive evidence: an A/B test's challenger (live traffic decides), not a replacement
    ([RANK_OK, VALUE_NOISE], None, True, "A/B tested on 30% of the customers: not shown better than the champion "
                                         "v1, nor worse"),
    ([RANK_OK, VALUE_NOISE], _diff("policy_value", 0.3, -0.1, 0.7, source="live"), True, "live traffic decides"),
    ([RANK_OK, VALUE_BETTER], None, True, "better than the champion v1"),
    # shown worse anywhere, or a ranking metric that may be worse: no test either
    ([RANK_OK, VALUE_WORSE], None, False, "worse with confidence"),
    ([RANK_OK, VALUE_NOISE], _diff("policy_value", -0.5, -0.9, -0.1, source="live"), False,
     "live traffic says it is worse"),
    ([RANK_WORSE, VALUE_NOISE], None, False, "the ranking metric may be worse"),
])
def test_a_tests_challenger_needs_only_not_to_be_shown_worse(comparison, live, deploy, says):
    challenger, champion = SCORES
    decision = gate(_retrain(challenger, champion, comparison=comparison), AUTO, champion_version="v1", live=live,
                    test_share=0.3, **MARGINS)
    assert decision.deploy == deploy and says in decision.reason, decision.reason
    assert decision.overridable == (not deploy)
    # without a test the same inconclusive evidence keeps the champion
    if "nor worse" in decision.reason:
        assert not gate(_retrain(challenger, champion, comparison=comparison), AUTO, champion_version="v1",
                        live=live, **MARGINS).deploy


def test_live_evidence_must_be_a_live_policy_value_difference():
    challenger, champion = SCORES
    retrain = _retrain(challenger, champion, comparison=[RANK_OK, VALUE_NOISE])
    with pytest.raises(ValueError, match="policy_value difference from live traffic, got roc_auc from live"):
        gate(retrain, AUTO, champion_version="v1", live=_diff("roc_auc", 0.1, 0.0, 0.2, source="live"), **MARGINS)
    with pytest.raises(ValueError, match="got policy_value from holdout"):
        gate(retrain, AUTO, champion_version="v1", live=VALUE_BETTER, **MARGINS)


def test_the_evidence_table():
    log_loss = _diff("log_loss", 0.01, 0.004, 0.02, greater_is_better=False)
    no_interval = _diff("policy_value", 0.3, 0.0, 0.0, source="live", n_rows=0).model_copy(update={"low": None,
                                                                                                 "high": None})
    table = evidence_table([RANK_OK, VALUE_NOISE.model_dump(mode="json"), log_loss, no_interval])
    lines = table.splitlines()
    assert lines[0].split() == ["measure", "source", "challenger", "champion", "difference", "interval", "rows"]
    assert set(lines[1]) <= {"-", " "} and len(lines) == 6
    assert lines[2].split() == ["roc_auc", "holdout", "10.0120", "10.0000", "+0.0120", "95%", "[+0.0040,", "+0.0200]",
                                "3,200"]
    assert lines[3].split() == ["policy_value", "holdout", "10.410", "10.000", "+0.410", "95%", "[-0.620,", "+1.440]",
                                "3,200"]
    assert "log_loss (lower is better)" in lines[4] and "[n/a, n/a]" in lines[5]
    assert "no paired comparison" in evidence_table([])


def test_a_kept_champion_may_be_overridden_by_a_reviewers_deploy_answer_only():
    """The override review: "deploy" by a user replaces a kept, overridable champion and is
    recorded as that user's override; the timeout's default, "keep", or a decision that may not
    be overruled (inconsistent refit, already serving) stay as they were."""
    from factory_tasks.core.contracts import GateDecision
    from factory_tasks.loop.selection import DEPLOY_CHALLENGER, KEEP_CHAMPION, overridden

    kept = GateDecision(deploy=False, reason="not deployed: not shown better than the champion v1: policy_value …",
                        ranking_metric="roc_auc", challenger={}, champion_version="v1", overridable=True)
    answer = {"chosen_options": [DEPLOY_CHALLENGER], "responded_by_user": "ana", "params_input": {"reason": "Q4"}}
    final = overridden(kept, answer)
    assert final.deploy and final.override and not final.overridable
    assert final.reason.startswith("deployed on ana's override in the Airflow review of the gate (Q4), although "
                                   "not shown better than the champion v1")
    assert overridden(kept, {**answer, "responded_by_user": None}) == kept  # timed out: its default
    assert overridden(kept, {**answer, "chosen_options": [KEEP_CHAMPION]}) == kept
    assert overridden(kept, None) == kept
    never = kept.model_copy(update={"overridable": False, "reason": "not deployed: the refit disagrees …"})
    assert overridden(never, answer) == never
