"""Model metrics for the ``cml.metrics_v1`` stand-in (local, not CML API v2):
``POST /local/model_metrics/{track_delayed,track_aggregate,read}``, bearer-authenticated like
``/api/v2``. Per-prediction metrics do not come here: replicas hand them to the router."""

from __future__ import annotations

from fastapi import APIRouter

from ..schemas import ReadMetricsBody, TrackAggregateBody, TrackDelayedBody
from . import WorkspaceDep

PREFIX = "/local/model_metrics"
router = APIRouter(tags=["model metrics (local)"])


@router.post("/track_delayed")
def track_delayed(body: TrackDelayedBody, ws: WorkspaceDep) -> dict:
    ws.models.track_delayed(body)
    return {}


@router.post("/track_aggregate")
def track_aggregate(body: TrackAggregateBody, ws: WorkspaceDep) -> dict:
    ws.models.track_aggregate(body)
    return {}


@router.post("/read")
def read(body: ReadMetricsBody, ws: WorkspaceDep) -> dict:
    return ws.models.read_metrics(body)
