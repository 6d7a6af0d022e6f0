"""The model_monitoring DAG's stages as plain functions (see the DAG's doc for the flow, and
:mod:`factory_tasks.loop.monitoring` and :mod:`factory_tasks.loop.alerts` for the computation).

The warehouse hook and the CML clients are passed in, so this module never imports Airflow or
``cml_provider``; a task keeps what is Airflow's or CML's own (the run's context, a missing
project file).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable

import pandas as pd

from factory_tasks.core.settings import artifacts_dir
from factory_tasks.loop.ab_monitoring import LiveTest
from factory_tasks.loop.alerts import alerts_of_run, answering_retrain, monitor_window, record_alerts
from factory_tasks.loop.cohorts import feed_runs, watermark
from factory_tasks.loop.config import LoopConfig, load_loop_config
from factory_tasks.loop.monitoring import grid_economics, read_rows, reference_frame, snapshot_path
from factory_tasks.loop.windows import MINUTE_MS, MonitoringWindow, epoch_ms, iso
from factory_tasks.stages.cml_client import CmlClient, CmlModelMetrics
from factory_tasks.stages.paths import config_path
from factory_tasks.warehouse.deployments import DEPLOYMENTS, champion_record, latest

log = logging.getLogger(__name__)


def monitoring_window(loop_config_path: str, start: datetime, end: datetime) -> tuple[LoopConfig, MonitoringWindow]:
    """The closed-loop settings and the run's window ``[start, end)`` with their response window."""
    config = load_loop_config(config_path(loop_config_path, "loop_config_path"))
    return config, MonitoringWindow.from_interval(start, end, config.responses.window_minutes)


def serving_model(warehouse: Any) -> dict[str, Any] | None:
    """The deployment now serving, as the fields monitoring needs; None when none is. During an
    A/B test also the test (champion, split, id, start) and each arm's training snapshot."""
    records = DEPLOYMENTS.read_all(warehouse)
    record = latest(records)
    if record is None:
        return None
    arms = [record] if record.champion_version is None else [champion_record(records), record]
    return {"model_version": record.model_version, "deployment_crn": record.deployment_crn,
            "deployment_id": record.deployment_id, "data_snapshot_hash": record.data_snapshot_hash, "metadata_path": record.metadata_path,
            "deployed_at": record.deployed_at, "exploration_epsilon": record.exploration_epsilon,
            "champion_version": record.champion_version, "challenger_share": record.challenger_share,
            "test_id": record.test_id,
            "snapshots": [{"model_version": r.model_version, "data_snapshot_hash": r.data_snapshot_hash,
                           "metadata_path": r.metadata_path} for r in arms]}


def responses_ingested(warehouse: Any, window: MonitoringWindow) -> tuple[int | None, bool]:
    """(the response feed's watermark from the window's oldest cohort on, whether it reaches the
    window's end), logged; a missing window that holds it back is named."""
    runs = feed_runs(warehouse)
    through = watermark(runs, window.cohorts()[0][0])
    ready = through is not None and through >= window.end_ms
    resumes = [start for start, _ in runs if through is not None and start > through]
    gap = (f"; the responses received from {iso(through)} to {iso(resumes[0])} were not delivered, later ones "
           f"were: rerun customer_interactions for those windows (or replay the NiFi flow)"
           if resumes and not ready else "")
    log.info("response feed ingested through %s; monitoring needs %s: %s%s", iso(through) if through else "nothing yet",
             iso(window.end_ms), "ready" if ready else "waiting for customer_interactions (or the NiFi flow)", gap)
    return through, ready


def reference_frames(cml: CmlClient, deployment: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Each serving model's training snapshot (the drift reference; two during an A/B test),
    downloaded from the CML project once per snapshot hash and cached; the client's not-found
    error when it is gone."""
    frames = {}
    for arm in deployment.get("snapshots") or [deployment]:
        def fetch(arm: dict[str, Any] = arm) -> bytes:
            return cml.download_file(snapshot_path(cml.download_file(arm["metadata_path"]), arm["data_snapshot_hash"]))

        frames[arm["model_version"]] = reference_frame(arm["data_snapshot_hash"], fetch,
                                                       artifacts_dir() / "monitoring")
    return frames


def monitor(warehouse: Any, window: MonitoringWindow, config: LoopConfig, grid_path: str,
            references: dict[str, pd.DataFrame], deployment: dict[str, Any] | None = None) -> dict[str, Any]:
    """The window's rows into model_monitoring (partition ``as_of_window``) and the alert
    decisions, rewards priced by the grid's economics; during an A/B test (``deployment``'s)
    its rows and standing too."""
    return monitor_window(warehouse, window, config, grid_economics(config_path(grid_path, "grid_path")), references,
                          test=LiveTest.of(deployment or {}))


def post_aggregate_metrics(warehouse: Any, window: MonitoringWindow, deployment_crn: str | None,
                           metrics_client: CmlModelMetrics) -> dict[str, Any]:
    """Each cohort's dimensionless values to CML's model metrics store. A failure is logged and
    reported in the answer, never raised: the warehouse rows are written already."""
    rows = read_rows(warehouse, window.as_of_window)
    if not deployment_crn or rows.empty:
        return {"posted": 0, "error": None if not rows.empty else "no rows"}
    posted = 0
    try:
        plain = rows[(rows["dimension"] == "") & rows["value"].notna()]
        for (cohort_start, cohort_end, version), group in plain.groupby(
                ["cohort_start", "cohort_end", "model_version"], sort=True):
            metrics = {"model_version": version, "as_of_ms": int(window.end_ms),
                       **{m: float(v) for m, v in zip(group["metric"], group["value"])}}
            metrics_client.track_aggregate_metrics(metrics, epoch_ms(cohort_start), epoch_ms(cohort_end),
                                                   deployment_crn)
            posted += 1
    except Exception as exc:  # the warehouse rows are written; this must not lose them
        log.error("could not post the aggregate metrics to CML (%d of the cohorts posted): %s: %s",
                  posted, type(exc).__name__, exc)
        return {"posted": posted, "error": f"{type(exc).__name__}: {exc}"}
    log.info("posted the aggregate metrics of %d cohort(s) to %s", posted, deployment_crn)
    return {"posted": posted, "error": None}


def retrain_conf(summary: dict[str, Any], config: LoopConfig, grid_path: str,
                 loop_config_path: str | None = None) -> dict[str, Any] | None:
    """The conf of the model_factory run that retrains on fresh data, when the run's alerts ask
    for one, retraining on alerts is on and no A/B test is running; None otherwise. The retrain runs the grid whose
    economics priced this window (``grid_path``); ``loop_config_path`` (this loop's settings)
    travels on to the deploy run, whose shadow evaluation needs the same response window."""
    alert_ids = summary.get("retrain_alert_ids", summary["alert_ids"])  # an A/B verdict is no reason to retrain
    if not (alert_ids and config.monitoring.retrain_on_alert):
        return None
    if summary.get("ab_test"):
        # a retrain's deploy would replace the test: the test's verdict decides first
        log.info("A/B test %s is running: its verdict, not a retrain, answers the alerts %s",
                 summary["ab_test"]["test_id"], ", ".join(alert_ids))
        return None
    return {"grid_path": grid_path, "include_interactions": True, "reason": ", ".join(alert_ids),
            "review_window_minutes": config.monitoring.retrain_review_window_minutes,
            "loop_config_path": loop_config_path, "challenger_share": config.monitoring.retrain_challenger_share}


def retrain_due(warehouse: Any, window: MonitoringWindow, summary: dict[str, Any], config: LoopConfig,
                grid_path: str, loop_config_path: str | None = None, *,
                retrain_failed: Callable[[str], bool]) -> dict[str, Any] | None:
    """:func:`retrain_conf`'s conf, unless the retrain an earlier window asked for still answers
    these alerts (``monitoring.retrain_cooldown_minutes``; not one that ``retrain_failed``):
    then None, and the log names it."""
    conf = retrain_conf(summary, config, grid_path, loop_config_path)
    if conf is None:
        return None
    cooldown = config.monitoring.retrain_cooldown_minutes
    earlier = answering_retrain(warehouse, summary.get("retrain_alert_versions", ()), window, cooldown,
                                retrain_failed=retrain_failed)
    if earlier is None:
        return conf
    log.info("retrain %s, asked for by the alerts on %s of the window %s, answers this window's alerts too "
             "(monitoring.retrain_cooldown_minutes: %g): no new retrain before %s", earlier.retrain_run_id,
             earlier.model_version, earlier.as_of_window, cooldown,
             iso(epoch_ms(earlier.as_of_window) + int(cooldown * MINUTE_MS)))
    return None


def record_run_alerts(warehouse: Any, window: MonitoringWindow, config: LoopConfig,
                      retrain_run_id: str | None, *, retrain_failed: Callable[[str], bool]) -> list[str]:
    """The run's alerts into model_alerts, each with the retrain that answers it: the one this
    run triggered (``retrain_run_id``), else an earlier window's still within its cooldown
    (:func:`retrain_due`), else none."""
    alerts = alerts_of_run(warehouse, window, config)
    if retrain_run_id is None and config.monitoring.retrain_on_alert:
        earlier = answering_retrain(warehouse, {a.model_version for a in alerts if a.kind != "ab_test"}, window,
                                    config.monitoring.retrain_cooldown_minutes, retrain_failed=retrain_failed)
        retrain_run_id = earlier.retrain_run_id if earlier is not None else None
    return record_alerts(warehouse, alerts, retrain_run_id=retrain_run_id)


def verdict_run(summary: dict[str, Any], config: LoopConfig, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The deploy_best_model run that carries out an A/B test's verdict, as
    ``TriggerDagRunOperator`` kwargs: the winner redeployed alone (``promote``: the challenger;
    ``end`` or ``expired``: the champion), the reason the verdict with its interval. Empty (a
    list, mapped over: nothing skips the trigger) when no test concluded or ``ab_test.conclude``
    is off. One run per test (its run id is the test's and its deployment's), so a verdict seen
    again the next hour does not redeploy twice."""
    standing = summary.get("ab_test")
    if not standing or standing["state"] == "continue":
        return []
    if not config.ab_test.conclude:
        log.info("A/B test %s concluded (%s) but ab_test.conclude is off: it goes on", standing["test_id"],
                 standing["state"])
        return []
    verdict = "promote" if standing["state"] == "promote" else "end"
    conf: dict[str, Any] = {"model_version": standing["winner"], "requested_by": "model_monitoring",
                            "reason": f"A/B test {standing['test_id']}: {standing['reason']}", "test_verdict": verdict}
    if deployment.get("exploration_epsilon") is not None:
        conf["exploration_epsilon"] = deployment["exploration_epsilon"]  # the test's, kept
    log.info("A/B test %s: %s; redeploying %s alone", standing["test_id"], standing["reason"], standing["winner"])
    return [{"trigger_run_id": verdict_run_id(standing["test_id"], deployment["deployment_id"]), "conf": conf}]


def verdict_run_id(test_id: str, deployment_id: str) -> str:
    """The run id of the deploy_best_model run that carries out the verdict of the test
    ``test_id`` served by ``deployment_id`` (the same two versions tested again later are
    another test, with its own verdict)."""
    import hashlib

    digest = hashlib.blake2b(f"{test_id}\0{deployment_id}".encode(), digest_size=8).hexdigest()
    return f"ab_test__{digest}"
