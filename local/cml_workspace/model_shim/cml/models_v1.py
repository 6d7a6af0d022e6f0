"""``cml.models_v1`` stand-in: the ``cml_model`` decorator of CML model entry points.

``@cml_model(metrics=True)`` gives each call a prediction uuid, collects what
``cml.metrics_v1.track_metric`` records during it, and wraps the return value as
``{"prediction": <return value>, "uuid": "<prediction uuid>"}`` (what the model service then
answers as ``response``). Without ``metrics=True`` the function is returned unchanged.
"""

from __future__ import annotations

import functools
import uuid as _uuid
from typing import Any, Callable

from . import _local


def cml_model(func: Callable | None = None, *, metrics: bool = False) -> Any:
    """``@cml_model(metrics=True)`` (also usable bare, ``@cml_model``)."""

    def decorate(function: Callable) -> Callable:
        if not metrics:
            return function

        @functools.wraps(function)
        def predict_with_metrics(args: Any) -> dict:
            record = _local.begin(str(_uuid.uuid4()))
            try:
                prediction = function(args)
            finally:
                _local.end(record)
            return {"prediction": prediction, "uuid": record["uuid"]}

        return predict_with_metrics

    return decorate(func) if func is not None else decorate


__all__ = ["cml_model"]
