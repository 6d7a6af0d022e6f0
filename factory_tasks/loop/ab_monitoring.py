"""A live A/B test in ``model_monitoring``: each arm's policy value and the test's verdict, as rows.

During a test (an ``ab_start`` deployment serving) every monitoring run reads *all* the test's
decisions so far — those its deployment made (``prediction_log.deployment_crn``), from its first
to the window's end — and on the matured ones
(:mod:`factory_tasks.loop.ab_test`) writes into its partition:

| metric | dimension | model_version | value, lower, upper | n |
| --- | --- | --- | --- | --- |
| ``ab_decisions`` | ``arm=<arm>`` | the arm's | decisions so far (matured or not) | the same |
| ``ab_value_ipw/snipw/dr`` | ``arm=<arm>`` | the arm's | the arm's greedy policy on its own matured rows, fixed-n interval | matured rows of the arm |
| ``ab_difference_dr`` | ``""`` | the challenger's | challenger − champion, the always-valid interval | matured decisions |
| ``ab_share`` | ``""`` | the challenger's | the challenger's share by design | decisions so far |
| ``ab_verdict`` | ``verdict=<state>`` | the challenger's | +1 promote, −1 end, 0 expired or continue | matured decisions |

Their cohort is the test's span ``[first decision, window end)``, so a test's rows are told apart
from the hourly cohorts' by their cohort and metric names. The alert decisions read
``ab_verdict`` (:mod:`factory_tasks.loop.alerts`, kind ``ab_test``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from factory_tasks.core.schema import ARM_CHALLENGER, ARM_CHAMPION, expected_values
from factory_tasks.loop import ab_test, off_policy
from factory_tasks.loop.cohorts import CohortData, cohort_frame, read_decisions
from factory_tasks.loop.config import ABTestConfig
from factory_tasks.loop.monitoring import MonitoringRows
from factory_tasks.loop.windows import MonitoringWindow
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import PREDICTION_LOG

VERDICT_VALUES = {"promote": 1.0, "end": -1.0, "expired": 0.0, "continue": 0.0}


#: matured decisions the smaller arm needs, on average, before a verdict (docs/ab-test.md: at a
#: challenger share of 0.05 and 250 decisions the rule concluded 9% of equal tests, with ~12
#: challenger rows at its first look)
MIN_ARM_DECISIONS = 50


def min_decisions(config: ABTestConfig, share: float) -> int:
    """The matured decisions before any verdict: the config's, or more at a lopsided split."""
    return max(config.min_decisions, math.ceil(MIN_ARM_DECISIONS / min(share, 1 - share)))


@dataclass(frozen=True)
class LiveTest:
    """The A/B test a serving deployment runs (from its ``model_deployments`` record)."""

    test_id: str
    champion_version: str
    challenger_version: str
    share: float
    #: the deployment that serves the test: its decisions are the test's (``prediction_log.deployment_crn``)
    deployment_crn: str

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> "LiveTest | None":
        """The test of ``deployment`` (the fields of :func:`factory_tasks.stages.monitoring.serving_model`),
        None outside a test."""
        if not deployment.get("champion_version"):
            return None
        return cls(deployment["test_id"], deployment["champion_version"], deployment["model_version"],
                   float(deployment["challenger_share"]), deployment.get("deployment_crn") or deployment["deployment_id"])


def decisions_of_test(hook: Any, test: LiveTest, window: MonitoringWindow) -> CohortData | None:
    """Every decision of the test's deployment up to the window's end, labelled as of its end;
    None before its first. The test starts at its deployment's first decision, wherever its
    window lies (a replayed window is decided when it is replayed)."""
    dialect = dialect_for(hook)
    if not dialect.table_exists(hook, PREDICTION_LOG):
        return None
    decided = [int(t) for (t,) in dialect.select(hook, PREDICTION_LOG, ["decided_at_ms"],
                                                 {"deployment_crn": test.deployment_crn}) if t is not None]
    first = min((t for t in decided if t < window.end_ms), default=None)
    return None if first is None else read_decisions(hook, first, window)


def live_test_rows(data: CohortData | None, window: MonitoringWindow, test: LiveTest, config: ABTestConfig,
                   economics: Mapping) -> tuple[list[dict], ab_test.AbVerdict]:
    """The test's rows as of the window's end and its verdict, from the decisions of its
    deployment in ``data`` (:func:`decisions_of_test`)."""
    if data is None:
        data = cohort_frame([], [], window)
    ours = data.deployment_crn == test.deployment_crn
    span = (int(data.decided_ms[ours].min()) if ours.any() else window.end_ms, window.end_ms)
    order = np.flatnonzero(ours)[np.argsort(data.decided_ms[ours], kind="stable")]  # decision order
    challenger = data.model_version[order] == test.challenger_version
    rows = {arm: MonitoringRows(window, span, version) for arm, version in
            ((ARM_CHAMPION, test.champion_version), (ARM_CHALLENGER, test.challenger_version))}
    for arm, in_arm in ((ARM_CHAMPION, ~challenger), (ARM_CHALLENGER, challenger)):
        rows[arm].add("ab_decisions", int(in_arm.sum()), int(in_arm.sum()), "final", f"arm={arm}")

    matured = order[data.matured[order]]
    is_challenger = data.model_version[matured] == test.challenger_version
    logged, greedy = data.offer[matured], data.model_offer[matured]
    rewards = off_policy.logged_rewards(data.conversion[matured].astype(np.float64), logged, economics)
    arms, outcome = ab_test.arm_test(
        rewards, logged, data.propensity[matured], greedy, expected_values(data.proba[matured], economics),
        is_challenger, test.share, alpha=config.alpha, min_decisions=min_decisions(config, test.share),
        max_decisions=config.max_decisions, planned_n=config.planned_decisions)
    for arm, estimates in arms.items():
        for method, estimate in estimates.items():
            if estimate.n:
                rows[arm].estimate(f"ab_value_{method}", estimate, "final", f"arm={arm}")
    ci, out = outcome.interval, rows[ARM_CHALLENGER]
    out.add("ab_difference_dr", ci.estimate, ci.n, "final", lower=ci.lower if np.isfinite(ci.lower) else None,
            upper=ci.upper if np.isfinite(ci.upper) else None)
    out.add("ab_share", test.share, len(order), "final")
    out.add("ab_verdict", VERDICT_VALUES[outcome.state], ci.n, "final", f"verdict={outcome.state}")
    return rows[ARM_CHAMPION].rows + out.rows, outcome
