"""The champion's matured live traffic: its logged decisions joined to their ground truth, for
judging a challenger on it (:mod:`factory_tasks.loop.shadow`).

Read with monitoring's own parts (:mod:`factory_tasks.loop.cohorts`): ``prediction_log`` rows of
one ``model_version`` decided in ``[since, ...)``, their ``attached`` ``customer_responses``,
schema-breaking rows left out (:func:`~factory_tasks.loop.cohorts.cohort_frame`), and labels
as of ``now`` or the response feed's watermark when that is earlier
(:func:`~factory_tasks.loop.cohorts.responses_ingested_through`), matured as monitoring
matures them (:func:`~factory_tasks.loop.windows.label_state`: decided + W <= labels' instant).
Only matured rows are returned: an open window's early conversions alone would read high.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from factory_tasks.core.schema import CUSTOMER_COLUMNS, INTERACTION_DTYPES, OFFERS
from factory_tasks.loop.cohorts import PREDICTION_COLUMNS, cohort_frame, responses_ingested_through
from factory_tasks.loop.windows import MINUTE_MS, MonitoringWindow, epoch_ms, iso
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import CUSTOMER_RESPONSES, OFFER_PROBA_COLUMNS, PREDICTION_LOG

log = logging.getLogger(__name__)

#: the columns of :func:`matured_traffic` (offers by name, ``model_offer`` the champion's greedy pick;
#: ``prediction_uuid`` names the decision, as a training snapshot's interaction rows do)
TRAFFIC_COLUMNS: tuple[str, ...] = (
    "prediction_uuid", "decided_at_ms", "model_version", *CUSTOMER_COLUMNS, "model_offer", "offer", "propensity",
    "conversion", *OFFER_PROBA_COLUMNS,
)


def _ms(moment: datetime | str | int) -> int:
    return int(moment) if isinstance(moment, (int, np.integer)) else epoch_ms(moment)


_DTYPES = {"prediction_uuid": "object", "decided_at_ms": "int64", "conversion": "int64", "model_version": "object",
           "model_offer": "object", "offer": "object",
           **{c: {"str": "object"}.get(t, t) for c, t in INTERACTION_DTYPES.items()}}


def empty_traffic() -> pd.DataFrame:
    """No traffic, with the columns and dtypes of :func:`matured_traffic`'s answer."""
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "float64")) for c in TRAFFIC_COLUMNS})


def matured_traffic(hook: Any, model_version: str, *, now: datetime | str | int, response_window_minutes: float,
                    since: datetime | str | int | None = None, predictions: str = PREDICTION_LOG,
                    responses: str = CUSTOMER_RESPONSES) -> pd.DataFrame:
    """The decisions ``model_version`` made from ``since`` (default: its first) whose response
    window ``response_window_minutes`` (``LoopConfig.responses.window_minutes``) had closed by
    ``now`` (or by the response feed's watermark, if earlier), with ``conversion`` 0/1; columns
    :data:`TRAFFIC_COLUMNS`, in decision order. Empty when nothing has matured.

    The challenger must not be judged on outcomes it was fitted to: ``since`` after its
    training data (its snapshot's newest interaction), or the answer without the rows it was
    fitted on, by ``prediction_uuid`` (:func:`factory_tasks.loop.shadow.unseen_traffic`).
    Times: aware datetimes, ISO-8601 text or epoch ms.
    """
    dialect = dialect_for(hook)
    window_ms = int(round(float(response_window_minutes) * MINUTE_MS))
    if window_ms <= 0:
        raise ValueError(f"response_window_minutes must be > 0, got {response_window_minutes}")
    now_ms = _ms(now)
    low = 0 if since is None else _ms(since)
    if not dialect.table_exists(hook, predictions):
        log.warning("%s does not exist (yet): no live traffic", predictions)
        return empty_traffic()
    through = responses_ingested_through(hook, None if since is None else low)
    if through is None:
        log.warning("the response feed has delivered nothing yet: no decision of %s has matured", model_version)
        return empty_traffic()
    labels_as_of = min(now_ms, through)
    if through < now_ms:
        log.warning("the response feed has delivered the responses through %s only: labels as of then, not %s",
                    iso(through), iso(now_ms))
    high = labels_as_of - window_ms + 1  # matured: decided + W <= labels_as_of
    if high <= low:
        return empty_traffic()
    prediction_rows = dialect.select_between(hook, predictions, PREDICTION_COLUMNS, "decided_at_ms", low, high,
                                             where={"model_version": model_version})
    response_rows: list[tuple] = []
    if prediction_rows and dialect.table_exists(hook, responses):
        response_rows = dialect.select_between(hook, responses, ("prediction_uuid", "responded_at_ms"),
                                               "responded_at_ms", low, labels_as_of, where={"status": "attached"})
    data = cohort_frame(prediction_rows, response_rows, MonitoringWindow(low, labels_as_of, window_ms),
                        labels_as_of)
    keep = np.flatnonzero(data.matured)
    offers = np.asarray(OFFERS, dtype=object)
    frame = pd.DataFrame({
        "prediction_uuid": data.prediction_uuid[keep], "decided_at_ms": data.decided_ms[keep],
        "model_version": data.model_version[keep],
        **{c: data.customers[c].to_numpy()[keep] for c in CUSTOMER_COLUMNS},
        "model_offer": offers[data.model_offer[keep]], "offer": offers[data.offer[keep]],
        "propensity": data.propensity[keep], "conversion": data.conversion[keep],
        **{c: data.proba[keep, j] for j, c in enumerate(OFFER_PROBA_COLUMNS)},
    }, columns=list(TRAFFIC_COLUMNS))
    frame = frame.sort_values("decided_at_ms", kind="stable").reset_index(drop=True)
    log.info("%d matured decision(s) of %s decided %s .. %s (labels as of %s; %d row(s) left out by the schema)",
             len(frame), model_version, iso(low), iso(high), iso(labels_as_of), data.rejected.count)
    return frame
