"""Which experiment goes to production, and whether it may replace the model now serving.

:func:`rank_candidates` orders a factory run's succeeded experiments, best first, by the grid's
ranking metric; ties are broken, in this order, by the higher ``policy_uplift`` (the decisions'
value over the best single offer sent to everyone), the smaller spread of the ranking metric
across folds, the shorter mean fit time, and the experiment id. Failed experiments never
qualify.

:func:`choose` takes a reviewer's pick when there is one — the most recent of a dashboard
promotion and an answer to the Airflow review — and the best candidate otherwise.

:func:`gate` is the champion/challenger rule, decided on paired intervals (challenger −
champion on the same held-out rows, both fitted on the same rows: see
:mod:`factory_tasks.jobs.retrain`), never on two point estimates. A choice nobody overrode
replaces the model now serving only when

* the ranking metric is not worse beyond ``ranking_margin`` with confidence: the lower 95%
  bound of the difference (sign-adjusted for lower-is-better metrics) is above
  ``-ranking_margin``; and
* policy value is better: the lower 95% bound of the ``policy_value`` difference on the
  held-out slice is above ``policy_value_margin`` — or, when that interval is inconclusive
  (neither above the margin nor wholly below 0), a *live* comparison on the champion's logged
  traffic (``live``, from the shadow evaluation) has its lower bound above the margin. A live
  comparison that says the challenger is worse (its upper bound below 0) keeps the champion
  whatever the held-out slice says; a held-out slice that says it is worse is not overturned
  by a live one.

When the deploy starts an A/B test (``test_share``), the bar is lower: a challenger whose ranking
metric is non-inferior and whose policy value is not shown worse (held out or live) is deployed
as the test's challenger on that share of the customers, and the test's always-valid verdict
decides (docs/ab-test.md). A refit whose held-out score disagrees with its CV estimate is never deployed; a reviewer's
explicit pick may override the intervals (the override is recorded); the first deployment
passes trivially. :func:`evidence_table` shows the comparisons as plain text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import pandas as pd

from factory_tasks.core.contracts import Choice, GateDecision, PairedDifference, Promotion, RetrainResult
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


Verdict = Literal["better", "inconclusive", "worse"]


def _number(value: float | None, digits: int, signed: bool = False) -> str:
    return "n/a" if value is None else f"{value:{'+' if signed else ''},.{digits}f}"


def _digits(measure: str) -> int:
    return 3 if measure.startswith("policy_") else 4


def _interval(diff: PairedDifference) -> str:
    d = _digits(diff.measure)
    return f"[{_number(diff.low, d, True)}, {_number(diff.high, d, True)}]"


def _shown(diff: PairedDifference) -> str:
    """``policy_value gain +0.410 [-0.620, +1.440] per customer on 3,200 held-out rows``."""
    d = _digits(diff.measure)
    what = "gain" if diff.measure.startswith("policy_") else "difference"
    unit = " per customer" if diff.measure == "policy_value" else ""
    where = "held-out rows" if diff.source == "holdout" else "rows of live traffic"
    order = "" if diff.greater_is_better else " (lower is better)"
    return (f"{diff.source} {diff.measure} {what} {_number(diff.difference, d, True)} {_interval(diff)}{unit}"
            f"{order} on {diff.n_rows:,} {where}")


def _non_inferior(diff: PairedDifference | None, margin: float) -> tuple[bool, str]:
    """Whether the challenger is not worse than the champion beyond ``margin`` with confidence."""
    if diff is None or diff.low is None or diff.high is None:
        return False, f"no interval of the ranking metric's difference ({_shown(diff) if diff else 'none computed'})"
    if diff.greater_is_better:
        return diff.low > -margin, (f"{_shown(diff)}: its lower bound is "
                                    f"{'above' if diff.low > -margin else 'not above'} -{margin:g}, the margin it may "
                                    f"be worse by")
    return diff.high < margin, (f"{_shown(diff)}: its upper bound is {'below' if diff.high < margin else 'not below'} "
                                f"+{margin:g}, the margin it may be worse by")


def _value_verdict(diff: PairedDifference | None, margin: float) -> tuple[Verdict, str]:
    """``policy_value``: better (the lower bound above the margin), worse (the upper bound below
    0) or inconclusive, with the sentence that says so."""
    if diff is None or diff.low is None or diff.high is None:
        shown = _shown(diff) if diff else "none computed"
        return "inconclusive", f"no interval of the policy_value difference ({shown})"
    if diff.low > margin:
        return "better", f"{_shown(diff)}: its lower bound is above the margin {margin:g}"
    if diff.high < 0:
        return "worse", f"{_shown(diff)}: its upper bound is below 0, worse with confidence"
    return "inconclusive", f"{_shown(diff)}: its lower bound is not above the margin {margin:g}"


def _find(evidence: Iterable[PairedDifference], measure: str, source: str) -> PairedDifference | None:
    return next((d for d in evidence if d.measure == measure and d.source == source), None)


def gate(
    retrain: RetrainResult,
    choice: Choice,
    *,
    champion_version: str | None,
    ranking_margin: float,
    policy_value_margin: float,
    live: PairedDifference | None = None,
    test_share: float = 0.0,
) -> GateDecision:
    """Whether the retrained challenger replaces the champion (see the module doc). ``live``:
    the shadow evaluation's ``policy_value`` difference on the champion's traffic, if any.
    ``test_share`` above 0: a deploy starts an A/B test on that share of the customers, so a
    challenger not shown better but not shown worse either (inconclusive evidence) is deployed
    as the test's challenger: live traffic decides."""
    if retrain.status != "succeeded" or retrain.holdout is None:
        raise ValueError(f"the retrain of {retrain.model_version} failed: {retrain.error}")
    if live is not None and (live.measure, live.source) != ("policy_value", "live"):
        raise ValueError(f"the live evidence must be a policy_value difference from live traffic, "
                         f"got {live.measure} from {live.source}")
    metric = retrain.ranking_metric or ""
    challenger = dict(retrain.holdout.metrics)
    evidence = [*retrain.comparison, *([live] if live is not None else [])]

    def decision(deploy: bool, reason: str, override: bool = False, overridable: bool = False) -> GateDecision:
        champion = dict(retrain.champion_holdout.metrics) if retrain.champion_holdout else None
        return GateDecision(deploy=deploy, reason=reason, override=override, ranking_metric=metric,
                            challenger=challenger, champion=champion, champion_version=champion_version,
                            evidence=evidence, overridable=overridable)

    if not retrain.consistent:
        return decision(False, f"not deployed: the refit disagrees with its CV estimate ({retrain.consistency_note})")
    if retrain.champion_holdout is None or champion_version is None:
        return decision(True, "first deployment: no model is serving yet")
    if champion_version == retrain.model_version:
        return decision(False, f"not deployed: {champion_version} is already serving")

    ranking_ok, ranking_says = _non_inferior(_find(retrain.comparison, metric, "holdout"), ranking_margin)
    offline, offline_says = _value_verdict(_find(retrain.comparison, "policy_value", "holdout"), policy_value_margin)
    online, online_says = _value_verdict(live, policy_value_margin) if live is not None else (None, "")
    if not ranking_ok:
        deploy, why = False, f"the ranking metric may be worse: {ranking_says}"
    elif online == "worse":
        deploy, why = False, f"live traffic says it is worse: {online_says} (held out: {offline_says})"
    elif offline == "better":
        deploy, why = True, f"{offline_says}; {ranking_says}"
    elif offline == "worse":
        deploy, why = False, offline_says + (f" (live: {online_says})" if live is not None else "")
    elif online == "better":
        deploy, why = True, f"the held-out slice is inconclusive ({offline_says}), live traffic is not: {online_says}"
    else:
        deploy, why = False, offline_says + (f"; live: {online_says}" if live is not None else "")
    if deploy:
        return decision(True, f"better than the champion {champion_version}: {why}")
    if test_share > 0 and ranking_ok and "worse" not in (offline, online):
        return decision(True, f"A/B tested on {test_share:.0%} of the customers: not shown better than the champion "
                              f"{champion_version}, nor worse ({why}); live traffic decides")
    if choice.chosen_by in ("promotion", "review", "manual"):
        return decision(True, f"deployed on {choice.chosen_by_user or 'a manual'} {choice.chosen_by} although it is "
                              f"not shown better than the champion {champion_version}: {why}", override=True)
    return decision(False, f"not deployed: not shown better than the champion {champion_version}: {why}",
                    overridable=True)


#: the options of the override review (a kept champion put to a reviewer)
KEEP_CHAMPION, DEPLOY_CHALLENGER = "Keep the champion", "Deploy the challenger"


def overridden(decision: GateDecision, answer: Mapping[str, Any] | None) -> GateDecision:
    """The gate's decision after the override review: a reviewer's "deploy" answer replaces a
    kept (overridable) champion, recorded as an override by that user; an answer nobody gave
    (the timeout's default) or "keep" leaves the decision as it was."""
    user = (answer or {}).get("responded_by_user")
    if not decision.overridable or not user or list(answer.get("chosen_options") or []) != [DEPLOY_CHALLENGER]:
        return decision
    reason = str((answer.get("params_input") or {}).get("reason") or "").strip()
    return decision.model_copy(update={
        "deploy": True, "override": True, "overridable": False,
        "reason": f"deployed on {user}'s override in the Airflow review of the gate"
                  f"{f' ({reason})' if reason else ''}, although {decision.reason.removeprefix('not deployed: ')}"})


def evidence_table(evidence: Iterable[PairedDifference | Mapping[str, Any]]) -> str:
    """The gate's paired comparisons as a plain-text table (one row per comparison: measure,
    source, challenger, champion, difference, interval, rows); decoded JSON is accepted too."""
    rows = [d if isinstance(d, PairedDifference) else PairedDifference.from_data(d, "the gate's evidence")
            for d in evidence]
    if not rows:
        return "(no paired comparison: nothing serving to compare with)"
    header = ["measure", "source", "challenger", "champion", "difference", "interval", "rows"]
    body = []
    for d in rows:
        digits = _digits(d.measure)
        body.append([d.measure + ("" if d.greater_is_better else " (lower is better)"), d.source,
                     _number(d.challenger, digits), _number(d.champion, digits),
                     _number(d.difference, digits, True), f"{d.confidence:.0%} {_interval(d)}", f"{d.n_rows:,}"])
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])
