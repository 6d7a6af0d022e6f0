"""`make run`'s last part: a short closed-loop demo on the embedded default.

Three hourly windows of simulated traffic against the model just deployed (``customer_interactions``,
with a drift switched on from the second window: Discount stops working for Web customers and the
customer mix moves to Web), then ``model_monitoring`` for the second and third windows, which
sees the drift, raises alerts and triggers ``model_factory`` on history plus the new
interactions. Under ``airflow dags test`` there is no scheduler, so the retrain is *queued*
(``make up`` runs it); the demo says so and stops there.

The demo's settings are the default ``config/closed_loop.yaml`` with a shorter response window
(so labels mature within the demo) and the drift's start set to the second window; they are
written, validated, to ``var/closed_loop_demo.yaml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from stack.airflow_cli import AirflowCommandError, dags_test, find_dag_run, task_errors

TRAFFIC_DAG = "customer_interactions"
MONITORING_DAG = "model_monitoring"
WINDOWS = 3
DAG_TIMEOUT_S = 10 * 60
#: labels mature within the demo: a 60-minute response window, conversions ~12 minutes late
DEMO_RESPONSES = {"window_minutes": 60.0, "delay_median_minutes": 12.0}
#: the monitoring rows the demo prints per cohort, in this order
SHOWN = (("volume", "volume", 6), ("label_completeness", "labels", 7), ("estimated_roc_auc", "est. AUC", 8),
         ("roc_auc", "AUC", 8), ("estimated_conversion_rate", "est. conv.", 10), ("conversion_rate", "conv.", 7),
         ("policy_vs_best_blast_dr", "policy - best blast", 19))


def _say(msg: str = "") -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class DemoReport:
    ok: bool
    logs: list[Path]


def demo_windows(now: datetime) -> list[datetime]:
    """The starts of the last :data:`WINDOWS` full UTC hours before ``now``, oldest first."""
    hour = now.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return [hour - timedelta(hours=WINDOWS - i) for i in range(WINDOWS)]


def write_demo_config(source: Path, target: Path, drift_start: datetime) -> Path:
    """The default settings with the demo's response window and the drift on from ``drift_start``."""
    from factory_tasks.loop.config import load_loop_config

    config = load_loop_config(source).model_dump(mode="json")
    config["responses"].update(DEMO_RESPONSES)
    config["drift"].update(enabled=True, start=drift_start.isoformat().replace("+00:00", "Z"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# written by `make run` for its closed-loop demo (see stack/closed_loop.py)\n"
                      + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    load_loop_config(target)  # what the DAGs will read must validate
    return target


def _run(stack, dag_id: str, logical_date: datetime, conf: dict, log: Path) -> tuple[bool, str]:
    offset = log.stat().st_size if log.exists() else 0
    rc = dags_test(dag_id, conf, stack.env, log, logical_date=logical_date, timeout_s=DAG_TIMEOUT_S)
    try:
        run = find_dag_run(dag_id, logical_date, stack.env)
    except AirflowCommandError:
        run = None
    if run is not None and run.state == "success":
        return True, run.run_id
    errors = task_errors(log, offset)
    first = next(iter(errors.items()), None)
    why = f"task {first[0]}: {first[1]}" if first else f"exit code {rc}; see {log}"
    return False, why


def closed_loop_demo(stack, started: float, step: str = "[8/8]") -> DemoReport:
    """Traffic for three windows, monitoring for the last two; prints what monitoring saw."""
    from factory_tasks.core.settings import REPO_ROOT

    stamp = time.strftime("%Y%m%dT%H%M%S")
    traffic_log = stack.paths.logs / f"{TRAFFIC_DAG}-{stamp}.log"
    monitoring_log = stack.paths.logs / f"{MONITORING_DAG}-{stamp}.log"
    windows = demo_windows(datetime.now(timezone.utc))
    config = write_demo_config(REPO_ROOT / "config" / "closed_loop.yaml", stack.paths.config / "closed_loop_demo.yaml",
                               drift_start=windows[1])
    _say(f"{step} closed-loop demo: {WINDOWS} hourly windows of traffic from {windows[0]:%H:%M} UTC, drift on from "
         f"{windows[1]:%H:%M} (Discount stops working for Web customers; more Web customers); settings {config}")
    for start in windows:
        # a manual run's data interval is the hour *before* its logical date (as the scheduler's
        # run for that hour would be), so each window's run is at its end
        end = start + timedelta(hours=1)
        ok, what = _run(stack, TRAFFIC_DAG, end, {"loop_config_path": str(config)}, traffic_log)
        if not ok:
            _say(f"  {TRAFFIC_DAG} for {start:%H:%M} failed: {what}")
            return DemoReport(False, [traffic_log])
    _say(f"  traffic: {_traffic_counts(stack.warehouse_hook(), windows)}")
    for start in windows[1:]:
        end = start + timedelta(hours=1)  # the monitoring run at `end` covers [start, end)
        ok, what = _run(stack, MONITORING_DAG, end, {"loop_config_path": str(config)}, monitoring_log)
        if not ok:
            _say(f"  {MONITORING_DAG} for {start:%H:%M} failed: {what}")
            return DemoReport(False, [traffic_log, monitoring_log])
    hook = stack.warehouse_hook()
    for line in _monitoring_table(hook, windows):
        _say(f"  {line}")
    alerts = _alerts(hook, windows)
    for alert in alerts[:6]:
        _say(f"  ALERT {alert.cohort_start[11:16]} {alert.kind}: {alert.message}")
    if len(alerts) > 6:
        _say(f"  … and {len(alerts) - 6} more alert(s) in model_alerts")
    retrain = next((a.retrain_run_id for a in alerts if a.retrain_run_id), None)
    if retrain:
        _say(f"  retrain queued: model_factory run {retrain} (include_interactions=true). `airflow dags test` has "
             "no scheduler, so the demo stops here; `make up` starts one and the run proceeds.")
    elif alerts:
        _say("  alerts raised, but no retrain was triggered (monitoring.retrain_on_alert is off)")
    else:
        _say("  no alert raised: monitoring saw nothing above its thresholds")
    _say(f"  closed loop done after {time.time() - started:.0f}s; logs: {traffic_log}, {monitoring_log}")
    return DemoReport(True, [traffic_log, monitoring_log])


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _traffic_counts(hook, windows: list[datetime]) -> str:
    from factory_tasks.warehouse.dialects import dialect_for
    from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS, CUSTOMER_RESPONSES, PREDICTION_LOG

    dialect = dialect_for(hook)
    decisions = explored = matured = 0
    statuses: dict[str, int] = {}
    for start in windows:
        where = {"window_start": _iso(start)}
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
        cohort = _iso(start)
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


def _alerts(hook, windows: list[datetime]):
    from factory_tasks.core.contracts import MonitoringAlert
    from factory_tasks.warehouse.contract_table import ContractTable

    cohorts = {_iso(start) for start in windows}
    documents, _problems = ContractTable(MonitoringAlert).read(hook)
    return [a for a in documents if a.cohort_start in cohorts]
