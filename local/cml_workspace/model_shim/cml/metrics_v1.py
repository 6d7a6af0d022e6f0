"""``cml.metrics_v1`` stand-in: model metrics stored by the local workspace.

- :func:`track_metric` inside a ``@cml_model(metrics=True)`` call: kept with that prediction
  (any JSON value). Outside such a call it does nothing (with a warning once).
- :func:`track_delayed_metrics`: merged into an earlier prediction's metrics (ground truth).
- :func:`track_aggregate_metrics`: a row for a time window of a deployment.
- :func:`read_metrics`: ``{"metrics": [{"modelDeploymentCrn", "modelBuildCrn", "modelCrn",
  "startTimeStampMs", "endTimeStampMs", "predictionUuid", "metrics"}, ...]}``; start defaults
  to 0, end to now; no filter by prediction uuid (as in CML).

The last three talk to the workspace over HTTP (``$CML_WORKSPACE_URL``, ``$CDSW_APIV2_KEY``).
"""

from __future__ import annotations

import os
from typing import Any

from . import _local

_PREFIX = "/local/model_metrics"


def track_metric(key: str, value: Any) -> None:
    record = _local.current()
    if record is None:
        _local.warn_once("track_metric", "track_metric() outside a @cml_model(metrics=True) call: ignored")
        return
    record["metrics"][str(key)] = value


def track_delayed_metrics(metrics: dict, prediction_uuid: str) -> None:
    if not isinstance(metrics, dict):
        raise TypeError("metrics must be a dict")
    _local.call_workspace(f"{_PREFIX}/track_delayed",
                          {"metrics": metrics, "prediction_uuid": str(prediction_uuid)})


def track_aggregate_metrics(metrics: dict, start_timestamp_ms: int, end_timestamp_ms: int,
                            model_deployment_crn: str | None = None) -> None:
    if not isinstance(metrics, dict):
        raise TypeError("metrics must be a dict")
    crn = model_deployment_crn or os.environ.get("CML_MODEL_DEPLOYMENT_CRN")
    if not crn:
        raise ValueError("model_deployment_crn is required outside a model replica")
    _local.call_workspace(f"{_PREFIX}/track_aggregate", {
        "metrics": metrics, "start_timestamp_ms": int(start_timestamp_ms),
        "end_timestamp_ms": int(end_timestamp_ms), "model_deployment_crn": crn,
    })


def read_metrics(model_deployment_crn: str | None = None, start_timestamp_ms: int | None = None,
                 end_timestamp_ms: int | None = None, model_crn: str | None = None,
                 model_build_crn: str | None = None) -> dict:
    return _local.call_workspace(f"{_PREFIX}/read", {
        "model_deployment_crn": model_deployment_crn, "model_crn": model_crn,
        "model_build_crn": model_build_crn, "start_timestamp_ms": start_timestamp_ms,
        "end_timestamp_ms": end_timestamp_ms,
    })


__all__ = ["read_metrics", "track_aggregate_metrics", "track_delayed_metrics", "track_metric"]
