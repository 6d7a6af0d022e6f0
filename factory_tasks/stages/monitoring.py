"""The model_monitoring DAG's stages as plain functions (see the DAG's doc for the flow, and
:mod:`factory_tasks.loop.monitoring` and :mod:`factory_tasks.loop.alerts` for the computation).

The warehouse hook and the CML clients are passed in, so this module never imports Airflow or
``cml_provider``; a task keeps what is Airflow's or CML's own (the run's context, a missing
project file).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pandas as pd

from factory_tasks.core.settings import artifacts_dir
from factory_tasks.loop.alerts import alerts_of_run, monitor_window, record_alerts
from factory_tasks.loop.cohorts import feed_runs, watermark
from factory_tasks.loop.config import LoopConfig, load_loop_config
from factory_tasks.loop.monitoring import grid_economics, read_rows, reference_frame, snapshot_path
from factory_tasks.loop.windows import MonitoringWindow, epoch_ms, iso
from factory_tasks.stages.cml_client import CmlClient, CmlModelMetrics
from factory_tasks.stages.paths import config_path
from factory_tasks.warehouse.deployments import serving

log = logging.getLogger(__name__)


def monitoring_window(loop_config_path: str, start: datetime, end: datetime) -> tuple[LoopConfig, MonitoringWindow]:
    """The closed-loop settings and the run's window ``[start, end)`` with their response window."""
    config = load_loop_config(config_path(loop_config_path, "loop_config_path"))
    return config, MonitoringWindow.from_interval(start, end, config.responses.window_minutes)


def serving_model(warehouse: Any) -> dict[str, Any] | None:
    """The deployment now serving, as the fields monitoring needs; None when none is."""
    record = serving(warehouse)
    if record is None:
        return None
    return {"model_version": record.model_version, "deployment_crn": record.deployment_crn,
            "data_snapshot_hash": record.data_snapshot_hash, "metadata_path": record.metadata_path}


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
    """The serving model's training snapshot (the drift reference), downloaded from the CML
    project once per snapshot hash and cached; the client's not-found error when it is gone."""
    digest = deployment["data_snapshot_hash"]

    def fetch() -> bytes:
        path = snapshot_path(cml.download_file(deployment["metadata_path"]), digest)
        return cml.download_file(path)

    return {deployment["model_version"]: reference_frame(digest, fetch, artifacts_dir() / "monitoring")}


def monitor(warehouse: Any, window: MonitoringWindow, config: LoopConfig, grid_path: str,
            references: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The window's rows into model_monitoring (partition ``as_of_window``) and the alert
    decisions, rewards priced by the grid's economics."""
    return monitor_window(warehouse, window, config, grid_economics(config_path(grid_path, "grid_path")), references)


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
    for one and retraining on alerts is on; None otherwise. The retrain runs the grid whose
    economics priced this window (``grid_path``); ``loop_config_path`` (this loop's settings)
    travels on to the deploy run, whose shadow evaluation needs the same response window."""
    if not (summary["alert_ids"] and config.monitoring.retrain_on_alert):
        return None
    return {"grid_path": grid_path, "include_interactions": True, "reason": ", ".join(summary["alert_ids"]),
            "review_window_minutes": config.monitoring.retrain_review_window_minutes,
            "loop_config_path": loop_config_path}


def record_run_alerts(warehouse: Any, window: MonitoringWindow, config: LoopConfig,
                      retrain_run_id: str | None) -> list[str]:
    """The run's alerts into model_alerts, each with the retrain's run id (None: no retrain)."""
    return record_alerts(warehouse, alerts_of_run(warehouse, window, config), retrain_run_id=retrain_run_id)
