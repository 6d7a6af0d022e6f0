"""`make run`'s A/B phase: the closed loop's retrain, through the gate, is tested live beside the
champion, and the test concludes itself.

The demo's loop settings set ``monitoring.retrain_challenger_share``, so the retrain's deploy run
starts an A/B test instead of replacing the champion (``action = ab_start`` in
``model_deployments``). Then three more hourly windows of traffic (the drift still on: the
champion, trained before it, offers Discount to Web customers for whom it no longer works; the
challenger learned from the drifted interactions) are asked of the test's deployment and
monitored, each monitoring run writing the test's always-valid difference challenger − champion
(docs/ab-test.md). A verdict makes monitoring trigger the deploy run that serves the winner
alone; the demo follows it. The A/B windows' monitoring runs with ``retrain_on_alert`` off (the
settings ``closed_loop_ab.yaml``): the test, not another retrain, answers for those hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from stack.airflow_api import iso
from stack.backfill import HOUR, backfill
from stack.deploy import DeployReport, watch_deploy_run
from stack.running import RunningStack

TRAFFIC_DAG = "customer_interactions"
MONITORING_DAG = "model_monitoring"
DEPLOY_DAG = "deploy_best_model"
#: the A/B phase's hourly windows
AB_WINDOWS = 3
#: the share of the customers the challenger decides for during the demo's test
DEMO_CHALLENGER_SHARE = 0.5
#: customers per A/B hour: the always-valid interval is about ±1.2 per customer on the ~40,000
#: decisions matured by the last look (a 50/50 split; docs/ab-test.md)
AB_CUSTOMERS = 20_000


def _say(msg: str = "") -> None:
    print(msg, flush=True)


@dataclass
class AbReport:
    started: bool = False
    test_id: str | None = None
    windows: list[datetime] = field(default_factory=list)
    #: the test's standing after each monitoring run: (window start, state, reason)
    standings: list[tuple[str, str, str]] = field(default_factory=list)
    verdict_deploy: DeployReport | None = None
    #: the model_deployments action that ends the test (ab_promote / ab_end), None while it runs
    concluded_by: str | None = None
    #: each arm's true value per customer of its greedy decisions (the simulator's response model)
    truth: dict[str, float] = field(default_factory=dict)
    note: str | None = None


def ab_phase(stack: RunningStack, windows: list[datetime], traffic_conf: dict, monitoring_conf: dict) -> AbReport:
    """The A/B phase over ``windows`` when the serving deployment is an A/B test; what it showed."""
    from factory_tasks.warehouse.deployments import serving

    hook = stack.warehouse_hook()
    record = serving(hook)
    report = AbReport(windows=windows)
    if record is None or record.action != "ab_start":
        report.note = "no A/B test is running (the gate kept the champion, so nothing was tested)"
        _say(f"  A/B test: {report.note}")
        return report
    report.started, report.test_id = True, record.test_id
    _say(f"  A/B test {record.test_id}: the challenger {record.model_version} decides for "
         f"{record.challenger_share:.0%} of the customers (sticky per customer id), the champion "
         f"{record.champion_version} for the rest; exploration ε {record.exploration_epsilon}; deployment "
         f"{record.deployment_id}")
    backfill(stack, TRAFFIC_DAG, windows, (windows[0], windows[-1]), traffic_conf)
    _say(f"  A/B traffic: {_arm_counts(hook, windows)}")
    backfill(stack, MONITORING_DAG, windows, (windows[0] + HOUR, windows[-1] + HOUR), monitoring_conf)
    rows = _test_rows(hook, windows)
    for line in _test_table(rows, windows):
        _say(f"  {line}")
    report.truth = _truth(hook, record.deployment_crn or record.deployment_id, traffic_conf["loop_config_path"],
                          monitoring_conf.get("grid_path") or "config/grid.yaml", windows)
    if report.truth:
        champion, challenger = report.truth["champion"], report.truth["challenger"]
        _say(f"  the simulator's truth (it knows the response model): each arm's greedy decisions are worth "
             f"{champion:.2f} (champion) and {challenger:.2f} (challenger) per customer, a difference of "
             f"{challenger - champion:+.2f}")
    report.standings = _standings(rows, windows)
    return _follow_verdict(stack, record.test_id, record.deployment_id, report)


def _follow_verdict(stack: RunningStack, test_id: str, deployment_id: str, report: AbReport) -> AbReport:
    from factory_tasks.stages.monitoring import verdict_run_id
    from factory_tasks.warehouse.deployments import serving

    run_id = verdict_run_id(test_id, deployment_id)
    found = stack.api.call("GET", f"/api/v2/dags/{DEPLOY_DAG}/dagRuns/{run_id}", ok=(404,))
    if found.status_code == 404:
        report.note = (f"no verdict yet: the test goes on (model_monitoring checks it every hour; "
                       f"{DEPLOY_DAG} run {run_id} will carry out its verdict)")
        _say(f"  A/B test: {report.note}")
        return report
    _say(f"  the verdict's {DEPLOY_DAG} run {run_id}:")
    report.verdict_deploy = watch_deploy_run(stack, run_id, review_minutes=0, indent="    ")
    now = serving(stack.warehouse_hook())
    if report.verdict_deploy.ok and now is not None and now.action in ("ab_promote", "ab_end"):
        report.concluded_by = now.action
        what = "promoted: the challenger" if now.action == "ab_promote" else "ended: the champion"
        _say(f"  A/B test {what} {now.model_version} now serves every customer ({now.request_reason})")
    else:
        report.note = f"the verdict's deploy run did not complete: {report.verdict_deploy.error}"
        _say(f"  A/B test: {report.note}")
    return report


def _truth(hook, deployment_crn: str, loop_config_path: str, grid_path: str, windows: list[datetime]) -> dict[str, float]:
    """Each arm's true value per customer of its greedy picks (``model_offer``) on the customers
    it decided, under the simulated world of the test's hours (the drift in force)."""
    import pandas as pd

    from factory_tasks.core.schema import CUSTOMER_COLUMNS
    from factory_tasks.core.settings import REPO_ROOT
    from factory_tasks.loop import simulator
    from factory_tasks.loop.config import load_loop_config
    from factory_tasks.loop.interactions import Window, active_drift
    from factory_tasks.loop.monitoring import grid_economics
    from factory_tasks.warehouse.dialects import dialect_for
    from factory_tasks.warehouse.loop_tables import PREDICTION_LOG

    config = load_loop_config(loop_config_path)
    drift = active_drift(config, Window(windows[0], windows[0] + HOUR))
    economics = grid_economics(grid_path if Path(grid_path).is_absolute() else REPO_ROOT / grid_path)
    columns = ["arm", "model_offer", *CUSTOMER_COLUMNS]
    rows = dialect_for(hook).select(hook, PREDICTION_LOG, columns, {"deployment_crn": deployment_crn})
    frame = pd.DataFrame(rows, columns=columns)
    return {arm: simulator.true_policy_value(group[list(CUSTOMER_COLUMNS)].reset_index(drop=True),
                                             group["model_offer"].to_numpy(object), economics, drift=drift)
            for arm, group in frame.groupby("arm")}


def _arm_counts(hook, windows: list[datetime]) -> str:
    from factory_tasks.warehouse.dialects import dialect_for
    from factory_tasks.warehouse.loop_tables import PREDICTION_LOG

    counts: dict[str, int] = {}
    explored = 0
    for start in windows:
        for arm, was_explored in dialect_for(hook).select(hook, PREDICTION_LOG, ["arm", "explored"],
                                                          {"window_start": iso(start)}):
            counts[arm or "?"] = counts.get(arm or "?", 0) + 1
            explored += int(was_explored or 0)
    total = sum(counts.values())
    arms = ", ".join(f"{n:,} {arm} ({n / total:.0%})" for arm, n in sorted(counts.items())) if total else "none"
    return f"{total:,} decisions: {arms}; {explored:,} explored"


def _test_rows(hook, windows: list[datetime]) -> dict:
    """The test's rows of each A/B window's monitoring run, by (window, metric, dimension)."""
    from factory_tasks.loop.monitoring import read_rows

    found = {}
    for start in windows:
        rows = read_rows(hook, iso(start))
        rows = rows[rows["metric"].str.startswith("ab_")]
        for row in rows.itertuples():
            found[(iso(start), row.metric, row.dimension)] = row
    return found


def _verdict(rows: dict, window: str) -> str | None:
    """The state of the window's ``ab_verdict`` row (None: the run wrote none)."""
    return next((k[2].removeprefix("verdict=") for k in rows if k[0] == window and k[1] == "ab_verdict"), None)


def _standings(rows: dict, windows: list[datetime]) -> list[tuple[str, str, str]]:
    out = []
    for start in windows:
        verdict = _verdict(rows, iso(start))
        if verdict:
            out.append((iso(start), verdict, _interval(rows.get((iso(start), "ab_difference_dr", "")))))
    return out


def _interval(row) -> str:
    if row is None or row.lower is None or row.upper is None or row.lower != row.lower:
        return "-"
    return f"{row.value:+.2f} [{row.lower:+.2f}, {row.upper:+.2f}]"


def _test_table(rows: dict, windows: list[datetime]) -> list[str]:
    lines = [f"{'as of':>5}  {'matured':>7}  {'champion DR value':>22}  {'challenger DR value':>22}  "
             f"{'challenger − champion (always-valid 95%)':>40}  verdict"]
    for start in windows:
        key = iso(start)
        diff = rows.get((key, "ab_difference_dr", ""))
        if diff is None:
            lines.append(f"{start + HOUR:%H:%M}  (no test rows: no decision of the test had been made)")
            continue
        verdict = _verdict(rows, key) or "?"
        arms = [_interval(rows.get((key, "ab_value_dr", f"arm={arm}"))) for arm in ("champion", "challenger")]
        lines.append(f"{start + HOUR:%H:%M}  {diff.n:>7,}  {arms[0]:>22}  {arms[1]:>22}  {_interval(diff):>40}  "
                     f"{verdict}")
    lines.append("(per customer; each arm's value on its own matured decisions, DR; the difference's interval is "
                 "valid at every hourly look, so the test may stop at any of them)")
    return lines
