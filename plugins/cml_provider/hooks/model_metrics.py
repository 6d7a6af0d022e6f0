"""Model metrics (``cml.metrics_v1``) from outside CML — on the local workspace only.

On a real CML workspace, model metrics are **Python calls inside CML**, not REST API v2:
``import cml.metrics_v1 as metrics`` in an ML Runtime session, job or model replica, then
``metrics.track_delayed_metrics(metrics_dict, prediction_uuid)``,
``metrics.track_aggregate_metrics(metrics_dict, start_ms, end_ms, model_deployment_crn=...)``
and ``metrics.read_metrics(model_deployment_crn=..., start_timestamp_ms=..., end_timestamp_ms=...)``
(see ``shared/CML_API.md``, "Model metrics inside CML"). API v2 has no route for them, so this
hook does not invent one: against a real workspace every method raises
:class:`CmlModelMetricsUnavailable`, whose message says what to do instead (run the call in a
CML job, e.g. a job that reads the ``customer_responses`` table and calls
``track_delayed_metrics`` for its ``attached`` rows).

The local CML-compatible workspace answers the same three functions over HTTP at
``POST /local/model_metrics/{track_delayed,track_aggregate,read}`` (bearer-authenticated like
``/api/v2``; what its ``cml.metrics_v1`` stand-in calls), with the bodies

* ``track_delayed``: ``{"prediction_uuid": str, "metrics": {...}}`` — merged into that
  prediction's metrics (later keys win); an unknown uuid is HTTP 404;
* ``track_aggregate``: ``{"model_deployment_crn", "metrics", "start_timestamp_ms", "end_timestamp_ms"}``;
* ``read``: ``{"model_deployment_crn", "model_crn", "model_build_crn", "start_timestamp_ms",
  "end_timestamp_ms"}`` (all optional) → ``{"metrics": [{"modelDeploymentCrn", "modelBuildCrn",
  "modelCrn", "startTimeStampMs", "endTimeStampMs", "predictionUuid", "metrics"}, ...]}``.

Whether the connection is the local workspace is decided once per hook: ``local_workspace=``
when given, else its unauthenticated ``GET /health`` (the local workspace answers
``{"status": "ok", "model_service_url": ..., ...}``; a CML workspace does not).

Calls go through the base hook's choke point (retries of connection errors, 429 and 5xx; other
4xx fail fast as named errors). ``track_delayed`` is safe to repeat (a merge of the same keys);
``track_aggregate`` inserts a row, so a retry after a 5xx may store it twice (readers should
take the latest row per window).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cml_provider.errors import CmlApiError, CmlConfigurationError, CmlConnectionError, CmlError
from cml_provider.hooks.cml_base import BaseCmlHook
from cml_provider.hooks.endpoints import Endpoint

__all__ = [
    "LOCAL_HEALTH",
    "LOCAL_READ_METRICS",
    "LOCAL_TRACK_AGGREGATE",
    "LOCAL_TRACK_DELAYED",
    "CmlModelMetricsHook",
    "CmlModelMetricsUnavailable",
]

#: the local workspace's routes (not CML API v2: CML has no REST route for model metrics)
LOCAL_TRACK_DELAYED: Endpoint = ("POST", "local/model_metrics/track_delayed")
LOCAL_TRACK_AGGREGATE: Endpoint = ("POST", "local/model_metrics/track_aggregate")
LOCAL_READ_METRICS: Endpoint = ("POST", "local/model_metrics/read")
LOCAL_HEALTH: Endpoint = ("GET", "health")


class CmlModelMetricsUnavailable(CmlConfigurationError):
    """The connection is a real CML workspace: model metrics exist there only as Python inside CML."""


class CmlModelMetricsHook(BaseCmlHook):
    """``track_delayed_metrics``, ``track_aggregate_metrics`` and ``read_metrics`` with CML's
    signatures, answered by the local workspace (see the module docstring).

    :param local_workspace: True/False to skip the ``/health`` probe; None to probe once.
    Other parameters: :class:`~cml_provider.hooks.cml_base.BaseCmlHook`.
    """

    hook_name = "Cloudera Machine Learning model metrics (local workspace)"

    def __init__(self, cml_conn_id: str = BaseCmlHook.default_conn_name, *,
                 local_workspace: bool | None = None, **kwargs: Any) -> None:
        super().__init__(cml_conn_id, **kwargs)
        self._local: bool | None = local_workspace

    # -- which workspace --------------------------------------------------------------------
    def is_local_workspace(self) -> bool:
        """Whether the connection's workspace is the local CML-compatible workspace (probed once)."""
        if self._local is None:
            try:
                body = self._do_api_call(LOCAL_HEALTH, token=None)
            except CmlConnectionError:
                raise  # unreachable: say so, do not guess what it is
            except CmlError:
                body = None  # a 404 / login redirect / non-JSON page: not the local workspace
            self._local = (isinstance(body, Mapping) and body.get("status") == "ok"
                           and "model_service_url" in body)
        return self._local

    def require_local_workspace(self, function: str = "track_delayed_metrics") -> None:
        """Raise :class:`CmlModelMetricsUnavailable` unless the workspace is the local one (a
        caller can check before doing work whose results it then could not report)."""
        if not self.is_local_workspace():
            raise CmlModelMetricsUnavailable(
                f"{function}() cannot be called from here: the workspace at {self.config.base_url} "
                f"(connection {self.cml_conn_id!r}) is a CML workspace, where model metrics exist only as "
                f"Python inside CML (`import cml.metrics_v1 as metrics; metrics.{function}(...)` in a job, "
                f"session or model replica) — CML API v2 has no REST route for them. Run that call in a CML "
                f"job instead (e.g. one that reads the attached rows of customer_responses), or point "
                f"the connection at the local workspace.")

    # -- the three calls --------------------------------------------------------------------
    def track_delayed_metrics(self, metrics: Mapping[str, Any], prediction_uuid: str) -> None:
        """Merge ``metrics`` (ground truth that arrived later) into prediction ``prediction_uuid``.

        :raises CmlNotFoundError: no prediction with that uuid is stored
        """
        if not isinstance(metrics, Mapping):
            raise TypeError("metrics must be a mapping")
        self.require_local_workspace("track_delayed_metrics")
        self._do_api_call(LOCAL_TRACK_DELAYED, json={"metrics": dict(metrics), "prediction_uuid": str(prediction_uuid)})

    def track_aggregate_metrics(self, metrics: Mapping[str, Any], start_timestamp_ms: int, end_timestamp_ms: int,
                                model_deployment_crn: str) -> None:
        """A metrics row for deployment ``model_deployment_crn`` over ``[start, end]`` (epoch ms)."""
        if not isinstance(metrics, Mapping):
            raise TypeError("metrics must be a mapping")
        if not model_deployment_crn:
            raise ValueError("model_deployment_crn is required outside a model replica")
        self.require_local_workspace("track_aggregate_metrics")
        self._do_api_call(LOCAL_TRACK_AGGREGATE, json={
            "metrics": dict(metrics), "start_timestamp_ms": int(start_timestamp_ms),
            "end_timestamp_ms": int(end_timestamp_ms), "model_deployment_crn": model_deployment_crn,
        })

    def read_metrics(self, model_deployment_crn: str | None = None, start_timestamp_ms: int | None = None,
                     end_timestamp_ms: int | None = None, model_crn: str | None = None,
                     model_build_crn: str | None = None) -> dict[str, Any]:
        """CML's ``read_metrics``: ``{"metrics": [...]}``, per-prediction and aggregate rows mixed,
        start default 0, end default now; no filter by prediction uuid (as in CML)."""
        self.require_local_workspace("read_metrics")
        body = self._do_api_call(LOCAL_READ_METRICS, json={
            "model_deployment_crn": model_deployment_crn, "model_crn": model_crn,
            "model_build_crn": model_build_crn, "start_timestamp_ms": start_timestamp_ms,
            "end_timestamp_ms": end_timestamp_ms,
        })
        if not isinstance(body, Mapping) or not isinstance(body.get("metrics"), list):
            raise CmlApiError(f"read_metrics answered without a metrics list: {body!r:.300}",
                              status_code=200, body=body, method=LOCAL_READ_METRICS[0], path=LOCAL_READ_METRICS[1])
        return dict(body)
