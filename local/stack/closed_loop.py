"""`make run`'s last part: the closed loop, closing by itself on the scheduler.

Three hourly windows of simulated traffic against the model just deployed (``customer_interactions``,
with a drift switched on from the second window: Discount stops working for Web customers and the
customer mix moves to Web), then ``model_monitoring`` for the second and third windows, both as
Airflow backfills (:mod:`stack.backfill`), so the hourly schedules go on after them with no
window run twice or skipped. Monitoring sees the drift, raises alerts and triggers
``model_factory`` on history plus the new interactions; the third window's alerts name that
retrain and start none (``monitoring.retrain_cooldown_minutes``). The retrain's
``experiment_outcomes`` event starts ``deploy_best_model``, whose gate deploys a new champion or
keeps the one serving. The demo follows the chain to its end and prints it.

The demo's settings are the default ``config/closed_loop.yaml`` with a shorter response window
(so labels mature within the demo), the drift's start set to the second window and a 15-second
review window for the retrain's deployment, whose challenger starts an A/B test; they are
written, validated, to ``var/config/closed_loop_demo.yaml``. A window that the hourly schedule
already decided keeps its decisions when the backfill runs it again (its responses follow the
demo's settings). Then the A/B phase (:mod:`stack.ab_demo`) on the three hours after the loop's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import yaml

from stack.ab_demo import AB_CUSTOMERS, AB_WINDOWS, DEMO_CHALLENGER_SHARE, AbReport, ab_phase
from stack.airflow_api import FINISHED_RUN_STATES, AirflowApi, AirflowApiError, iso, when
from stack.backfill import HOUR, BackfillFailed, backfill
from stack.deploy import DeployReport, DeployRunMissing, failed_task, find_deploy_run, watch_deploy_run
from stack.running import RunningStack, StackNotUp

TRAFFIC_DAG = "customer_interactions"
MONITORING_DAG = "model_monitoring"
FACTORY_DAG = "model_factory"
DEPLOY_DAG = "deploy_best_model"
#: the demo's loop settings, under the stack's config folder
DEMO_CONFIG = "closed_loop_demo.yaml"
WINDOWS = 3
#: monitoring runs for the last windows (the first has no drift to see)
MONITORED = 2
RETRAIN_TIMEOUT_S = 45 * 60
#: the retrain's deployment is reviewed this long (config monitoring.retrain_review_window_minutes)
RETRAIN_REVIEW_MINUTES = 0.4
#: a retrain whose deployment waits longer than this for a review is not followed to its end
MAX_FOLLOWED_REVIEW_MINUTES = 10
TICK_S = 3.0
#: labels mature within the demo: a 60-minute response window, conversions ~12 minutes late
DEMO_RESPONSES = {"window_minutes": 60.0, "delay_median_minutes": 12.0}
#: customers per hour: enough drifted interactions for the retrain to learn the drift (on the
#: simulator, +2.1 per customer over the champion with 10,000 of them; +0.6 with 2,000)
DEMO_CUSTOMERS = 10_000
#: the demo's drift: Discount stops working for Web customers (the default file's -1.2 only weakens it)
DEMO_DRIFT_LOG_ODDS = -2.5
#: the monitoring rows the demo prints per cohort, in this order
SHOWN = (("volume", "volume", 6), ("label_completeness", "labels", 7), ("estimated_roc_auc", "est. AUC", 8),
         ("roc_auc", "AUC", 8), ("estimated_conversion_rate", "est. conv.", 10), ("conversion_rate", "conv.", 7),
         ("policy_vs_best_blast_dr", "policy - best blast", 19))


def _say(msg: str = "") -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Retrain:
    run_id: str
    state: str
    #: matured interaction rows in its training snapshot, and the snapshot's rows
    interaction_rows: int | None = None
    snapshot_rows: int | None = None
    deploy: DeployReport | None = None
    #: from a make run before this one (its windows' alerts were already recorded)
    earlier: bool = False
    #: its deployment started an A/B test beside the champion (``ab_start``) instead of replacing it
    started_test: bool = False
    error: str | None = None


@dataclass
class DemoReport:
    ok: bool = False
    #: the windows' starts (UTC), oldest first
    windows: list[datetime] = field(default_factory=list)
    #: run ids of the backfills' runs, oldest window first
    traffic_runs: list[str] = field(default_factory=list)
    monitoring_runs: list[str] = field(default_factory=list)
    alert_ids: list[str] = field(default_factory=list)
    retrains: list[Retrain] = field(default_factory=list)
    #: the A/B phase's windows, after the loop's, and what it showed
    ab_windows: list[datetime] = field(default_factory=list)
    ab: AbReport | None = None
    error: str | None = None


def demo_windows(now: datetime, decided: set[str] | frozenset[str] = frozenset()) -> tuple[list[datetime], list[datetime]]:
    """The loop's :data:`WINDOWS` hours and the A/B phase's :data:`AB_WINDOWS` hours right after
    them (UTC starts, oldest first): the latest full hours before ``now`` whose A/B hours no
    deployment has decided yet (``decided``: window starts with decisions), so the test's
    deployment decides them itself. A fresh stack takes the last six hours; a second ``make
    run`` goes further back."""
    end = now.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    while any(iso(end - HOUR * (k + 1)) in decided for k in range(AB_WINDOWS)):
        end -= HOUR
    hours = [end - HOUR * (WINDOWS + AB_WINDOWS - i) for i in range(WINDOWS + AB_WINDOWS)]
    return hours[:WINDOWS], hours[WINDOWS:]


def decided_windows(hook) -> set[str]:
    """The windows ``prediction_log`` holds decisions of."""
    from factory_tasks.warehouse.dialects import dialect_for
    from factory_tasks.warehouse.loop_tables import PREDICTION_LOG

    dialect = dialect_for(hook)
    if not dialect.table_exists(hook, PREDICTION_LOG):
        return set()
    return {start for (start,) in dialect.select(hook, PREDICTION_LOG, ["window_start"])}


# A run's logical date is its window's start under every timetable, but what a backfill's from
# and to dates bound is the timetable's own: the interval's start for CronDataIntervalTimetable,
# the trigger time (the interval's end) for CronTriggerTimetable.
def traffic_range(windows: list[datetime]) -> tuple[datetime, datetime]:
    """customer_interactions (CronDataIntervalTimetable): from the first window's start to the last's."""
    return windows[0], windows[-1]


def monitoring_range(windows: list[datetime]) -> tuple[datetime, datetime]:
    """model_monitoring (CronTriggerTimetable, 1-hour interval): from the first window's trigger,
    at its end, to the last's."""
    return windows[0] + HOUR, windows[-1] + HOUR


def write_demo_config(source: Path, target: Path, drift_start: datetime, *, customers: int = DEMO_CUSTOMERS,
                      challenger_share: float = DEMO_CHALLENGER_SHARE, **monitoring) -> Path:
    """The default settings with the demo's response window, the drift on from ``drift_start``,
    a short review window for the retrain's deployment, whose challenger is A/B tested on
    ``challenger_share`` of the customers (0: the gate alone decides), and ``monitoring`` overrides."""
    from factory_tasks.loop.config import load_loop_config

    config = load_loop_config(source).model_dump(mode="json")
    config["traffic"]["customers_per_window"] = customers
    config["responses"].update(DEMO_RESPONSES)
    config["drift"].update(enabled=True, start=iso(drift_start), log_odds_change=DEMO_DRIFT_LOG_ODDS)
    config["monitoring"].update(retrain_review_window_minutes=RETRAIN_REVIEW_MINUTES,
                                retrain_challenger_share=challenger_share, **monitoring)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# written by `make run` for its closed-loop demo (see local/stack/closed_loop.py)\n"
                      + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    load_loop_config(target)  # what the DAGs will read must validate
    return target


def closed_loop_demo(stack: RunningStack, started: float, *, step: str = "[8/8]",
                     grid_path: str | None = None, ab_test: bool = True) -> DemoReport:
    """Backfill traffic and monitoring, then follow the retrain monitoring triggers and its
    deployment, and (``ab_test``) the A/B test the gate puts it in; prints the chain.
    ``grid_path``: the grid monitoring prices rewards with (its default when None)."""
    from factory_tasks.core.settings import REPO_ROOT

    report = DemoReport()
    report.windows, report.ab_windows = demo_windows(datetime.now(timezone.utc), decided_windows(stack.warehouse_hook()))
    windows = report.windows
    source = REPO_ROOT / "config" / "closed_loop.yaml"
    config = write_demo_config(source, stack.paths.config / DEMO_CONFIG, drift_start=windows[1],
                               challenger_share=DEMO_CHALLENGER_SHARE if ab_test else 0.0)
    ab_config = write_demo_config(source, stack.paths.config / "closed_loop_ab.yaml", drift_start=windows[1],
                                  customers=AB_CUSTOMERS, retrain_on_alert=False) if ab_test else None
    then = (f"then an A/B test of the retrain over {report.ab_windows[0]:%H:%M}–{report.ab_windows[-1] + HOUR:%H:%M}"
            if ab_test else "the retrain decided by the gate alone (--no-ab-test)")
    _say(f"{step} closed-loop demo: {WINDOWS} hourly windows of traffic from {windows[0]:%H:%M} UTC, drift on from "
         f"{windows[1]:%H:%M} (Discount stops working for Web customers; more Web customers), {then}; "
         f"settings {config}")
    conf: dict = {"loop_config_path": str(config)}
    try:
        traffic = backfill(stack, TRAFFIC_DAG, windows, traffic_range(windows), conf)
        report.traffic_runs = [r["dag_run_id"] for r in traffic]
        hook = stack.warehouse_hook()
        _say(f"  traffic: {_traffic_counts(hook, windows)}")
        monitored = windows[-MONITORED:]
        monitoring_conf = {**conf, "grid_path": grid_path} if grid_path else conf
        monitoring = backfill(stack, MONITORING_DAG, monitored, monitoring_range(monitored), monitoring_conf)
        report.monitoring_runs = [r["dag_run_id"] for r in monitoring]
        for line in _monitoring_table(hook, windows):
            _say(f"  {line}")
        alerts = _alerts(hook, monitored)
        report.alert_ids = [a.alert_id for a in alerts]
        for alert in alerts[:6]:
            _say(f"  ALERT {alert.cohort_start[11:16]} {alert.kind}: {alert.message}")
        if len(alerts) > 6:
            _say(f"  … and {len(alerts) - 6} more alert(s) in model_alerts")
        retrain_ids = sorted({a.retrain_run_id for a in alerts if a.retrain_run_id})
        if not retrain_ids:
            _say("  alerts raised, but no retrain was triggered (monitoring.retrain_on_alert is off)" if alerts
                 else "  no alert raised: monitoring saw nothing above its thresholds")
            report.ok = True
            return report
        for run_id in retrain_ids:
            report.retrains.append(_follow_retrain(stack, run_id, started))
        _print_chain(report, alerts)
        report.ok = all(r.state == "success" and r.deploy is not None and r.deploy.ok for r in report.retrains)
        if report.ok and ab_test:
            ab_conf = {"loop_config_path": str(ab_config)}
            report.ab = ab_phase(stack, report.ab_windows, ab_conf,
                                 {**ab_conf, "grid_path": grid_path} if grid_path else ab_conf)
    except (BackfillFailed, TimeoutError, AirflowApiError, StackNotUp) as exc:
        report.error = str(exc)
        _say(f"  closed loop failed after {time.time() - started:.0f}s: {exc}")
        return report
    _say(f"  closed loop {'closed' if report.ok else 'did not close'} after {time.time() - started:.0f}s")
    return report


# -- the retrain and its deployment -------------------------------------------------------------
def _follow_retrain(stack: RunningStack, run_id: str, started: float) -> Retrain:
    """Wait for the retrain and the deploy run its outcomes trigger. On Ctrl-C both are stopped
    when this demo started them (they are its consequence), then the interrupt goes on."""
    api = stack.api
    run = api.dag_run(FACTORY_DAG, run_id)
    earlier = bool(run.get("queued_at")) and when(run["queued_at"]).timestamp() < started
    _say(f"  retrain: {FACTORY_DAG} run {run_id} ({run['state']}{', from an earlier make run' if earlier else ''}; "
         f"include_interactions={(run.get('conf') or {}).get('include_interactions')})")
    try:
        return _retrain_and_deploy(stack, run_id)
    except KeyboardInterrupt:
        if not earlier:
            _stop_unfinished(api, FACTORY_DAG, run_id)
        raise


def _retrain_and_deploy(stack: RunningStack, run_id: str) -> Retrain:
    api = stack.api
    run = api.wait_for_run(FACTORY_DAG, run_id, timeout_s=RETRAIN_TIMEOUT_S, tick_s=TICK_S,
                           on_tick=lambda _run: stack.check_alive())
    interaction_rows = snapshot_rows = None
    try:
        from factory_tasks.stages.model_factory import load_plan

        snapshot = load_plan(stack.cml_hook(), run_id).snapshot
        interaction_rows, snapshot_rows = snapshot.interaction_rows, snapshot.n_rows
    except Exception as exc:  # a plan that never got written: the run's own error says why
        _say(f"  (the retrain's plan is not readable: {exc})")
    _say(f"  {time.strftime('%H:%M:%S')} retrain {run_id}: {run['state']}"
         + (f", trained on {snapshot_rows:,} rows of which {interaction_rows:,} matured interactions"
            if snapshot_rows is not None else ""))
    found = Retrain(run_id, run["state"], interaction_rows, snapshot_rows)
    if run["state"] != "success":
        return replace(found, error=failed_task(api, FACTORY_DAG, run_id))
    try:
        trigger = find_deploy_run(api, run_id)
    except DeployRunMissing as exc:
        return replace(found, error=str(exc))
    minutes = trigger.review_window_minutes
    long_review = minutes is None or minutes > MAX_FOLLOWED_REVIEW_MINUTES
    if long_review and api.dag_run(DEPLOY_DAG, trigger.run_id)["state"] not in FINISHED_RUN_STATES:
        window = "default (deploy_best_model's)" if minutes is None else f"{minutes:g}-minute"
        note = (f"its {window} review window is longer than the demo waits: follow {trigger.run_id} in the "
                "Airflow UI")
        _say(f"  deploy run {trigger.run_id}: {note}")
        return replace(found, error=note)
    deploy = watch_deploy_run(stack, trigger.run_id, review_minutes=minutes, indent="    ")
    started_test = False
    if deploy.deployed:
        from factory_tasks.warehouse.deployments import serving

        now = serving(stack.warehouse_hook())
        started_test = now is not None and now.action == "ab_start" and now.factory_run_id == deploy.factory_run_id
    return replace(found, deploy=deploy, error=deploy.error, started_test=started_test)


def _stop_unfinished(api: AirflowApi, dag_id: str, run_id: str) -> None:
    try:
        api.fail_unfinished(dag_id, run_id)
    except AirflowApiError as exc:
        _say(f"  (could not stop {dag_id} run {run_id}: {exc})")


def _print_chain(report: DemoReport, alerts) -> None:
    by_retrain: dict[str, list] = {}
    for alert in alerts:
        if alert.retrain_run_id:
            by_retrain.setdefault(alert.retrain_run_id, []).append(alert)
    _say("  The loop, end to end:")
    for retrain in report.retrains:
        raised = by_retrain.get(retrain.run_id, [])
        kinds = ", ".join(sorted({a.kind for a in raised}))
        starts = sorted({when(a.as_of_window) for a in raised})
        windows = " and ".join(f"{s:%H:%M}–{s + HOUR:%H:%M}" for s in starts) or "?"
        rows = (f"{retrain.interaction_rows:,} interaction rows in its snapshot"
                if retrain.interaction_rows is not None else "snapshot unknown")
        answered = " (the later window's alerts name it: its cooldown)" if len(starts) > 1 else ""
        _say(f"    interactions → {len(raised)} alert(s) on the window{'s' if len(starts) > 1 else ''} {windows} "
             f"({kinds}) → retrain {retrain.run_id} ({retrain.state}, {rows}){answered}")
        deploy = retrain.deploy
        if deploy is None:
            _say(f"      → no deployment followed: {retrain.error}")
            continue
        if not deploy.ok:
            _say(f"      → {DEPLOY_DAG} run {deploy.run_id} failed: {deploy.error}; "
                 "the model now serving keeps serving")
            continue
        verdict = ("an A/B test started beside the champion" if retrain.started_test
                   else "a new champion deployed" if deploy.deployed else "the champion kept")
        gate = deploy.gate or {}
        newer = (f" (deploying the newer {deploy.factory_run_id}, whose event it consumed too)"
                 if deploy.factory_run_id and deploy.factory_run_id != retrain.run_id else "")
        _say(f"      → {DEPLOY_DAG} run {deploy.run_id}{newer} → {verdict}: {gate.get('reason')}")
        if gate.get("evidence"):
            _say("        evidence (challenger − champion, paired, on rows neither model trained on):")
            _say(_evidence_table(gate["evidence"], "          "))
        elif gate.get("ranking_metric") and f"{gate['ranking_metric']} " not in str(gate.get("reason")):
            _say(f"        evidence: {_evidence(gate)}")


def _evidence_table(evidence: list[dict], indent: str) -> str:
    """The gate's paired comparisons as the deploy DAG's gate task logs them."""
    from factory_tasks.loop.selection import evidence_table

    return "\n".join(indent + line for line in evidence_table(evidence).splitlines())


def _evidence(gate: dict) -> str:
    """The ranking metric and policy value of challenger and champion on the held-out rows (a
    gate without paired comparisons: the first deployment)."""
    shown = [m for m in (gate.get("ranking_metric"), "policy_value") if m]
    challenger, champion = gate.get("challenger") or {}, gate.get("champion") or {}

    def of(values: dict) -> str:
        return ", ".join(f"{m} {values[m]:.4f}" for m in shown if values.get(m) is not None)

    parts = [f"challenger {of(challenger)}"] if of(challenger) else []
    if of(champion):
        parts.append(f"champion {gate.get('champion_version')} {of(champion)}")
    return "; ".join(parts)


# -- what the warehouse shows -------------------------------------------------------------------
def _traffic_counts(hook, windows: list[datetime]) -> str:
    from factory_tasks.warehouse.dialects import dialect_for
    from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS, CUSTOMER_RESPONSES, PREDICTION_LOG

    dialect = dialect_for(hook)
    decisions = explored = matured = 0
    statuses: dict[str, int] = {}
    for start in windows:
        where = {"window_start": iso(start)}
        rows = dialect.select(hook, PREDICTION_LOG, ["explored"], where)
        decisions += len(rows)
        explored += sum(int(r[0]) for r in rows)
        for (status,) in dialect.select(hook, CUSTOMER_RESPONSES, ["status"], where):
            statuses[status] = statuses.get(status, 0) + 1
        matured += len(dialect.select(hook, CUSTOMER_INTERACTIONS, ["window_start"], where))
    received = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none"
    return (f"{decisions:,} decisions ({explored:,} explored), responses: {received}; "
            f"{matured:,} matured rows in customer_interactions")


def _monitoring_table(hook, windows: list[datetime]) -> list[str]:
    """The latest value of each shown metric per cohort, with the drift's worst feature."""
    from factory_tasks.warehouse.dialects import dialect_for
    from factory_tasks.warehouse.loop_tables import MODEL_MONITORING

    columns = ["as_of_ms", "cohort_start", "metric", "dimension", "value", "lower", "upper", "maturity"]
    latest: dict[tuple[str, str, str], tuple] = {}
    for (as_of, cohort, metric, dimension, value, lower, upper, maturity) in dialect_for(hook).select(
            hook, MODEL_MONITORING, columns):
        key = (cohort, metric, dimension)
        if key not in latest or latest[key][0] <= as_of:
            latest[key] = (as_of, value, lower, upper, maturity)
    header = "cohort " + " ".join(f"{label:>{width}}" for _, label, width in SHOWN) + "  worst drift (PSI)"
    lines = [header]
    for start in windows:
        cohort = iso(start)
        cells = [f"{_cell(metric, latest.get((cohort, metric, ''))):>{width}}" for metric, _, width in SHOWN]
        drift = [(v[1], dim.removeprefix("feature=")) for (c, m, dim), v in latest.items()
                 if c == cohort and m.startswith("drift_") and v[1] is not None]
        worst = max(drift) if drift else None
        lines.append(f"{start:%H:%M}  " + " ".join(cells) + (f"  {worst[1]} {worst[0]:.2f}" if worst else "  -"))
    lines.append("(as of the latest monitoring run; * = immature, labels still open; est. = from the scores alone, "
                 "before labels; policy - best blast: DR value per customer, 95% CI)")
    return lines


def _cell(metric: str, found: tuple | None) -> str:
    if found is None or found[1] is None:
        return "-"
    _, value, lower, upper, maturity = found
    mark = "*" if maturity == "immature" else ""
    if metric == "volume":
        return f"{value:,.0f}"
    if metric == "label_completeness":
        return f"{value:.0%}{mark}"
    if metric.endswith("conversion_rate"):
        return f"{value:.1%}{mark}"
    if metric.startswith("policy") and lower is not None and upper is not None:
        return f"{value:+.1f} [{lower:+.1f},{upper:+.1f}]{mark}"
    return f"{value:.3f}{mark}"


def _alerts(hook, monitored: list[datetime]):
    """The alerts of the monitoring runs of these windows (recorded by this demo's runs, or by
    earlier runs of the same windows: an alert id is recorded once)."""
    from factory_tasks.core.contracts import MonitoringAlert
    from factory_tasks.warehouse.contract_table import ContractTable

    as_of = {iso(start) for start in monitored}
    documents, _problems = ContractTable(MonitoringAlert).read(hook)
    return [a for a in documents if a.as_of_window in as_of]
