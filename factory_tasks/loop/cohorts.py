"""Reading a monitoring run's cohorts from the warehouse: the predictions of each cohort joined
to their attached responses, the response feed's watermark (the end of the unbroken run of
delivered windows), and the rows left out because a value breaks the table's schema."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import CUSTOMER_COLUMNS, OFFERS
from factory_tasks.core.text import shorten
from factory_tasks.loop.windows import MonitoringWindow, epoch_ms, iso, label_state
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import (
    CUSTOMER_RESPONSES,
    OFFER_PROBA_COLUMNS,
    PREDICTION_LOG,
    RESPONSE_FEED,
)

log = logging.getLogger(__name__)

#: the prediction_log columns a run reads (nothing else)
PREDICTION_COLUMNS: tuple[str, ...] = (
    "prediction_uuid", "decided_at_ms", "model_version", "deployment_crn", *CUSTOMER_COLUMNS,
    "model_offer", "offer", "propensity", *OFFER_PROBA_COLUMNS,
)


#: at most this many rejected rows are named one by one (the counts cover all of them)
REJECTED_SHOWN = 20


@dataclass
class Rejected:
    """Rows left out of a run because a value breaks the table's schema: counted per
    ``table.column``, the first :data:`REJECTED_SHOWN` named (table, uuid or row, column, value)."""

    count: int = 0
    by_column: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "by_column": dict(self.by_column), "examples": list(self.examples)}


@dataclass
class CohortData:
    """The predictions a run reads, column arrays in one row order, and their labels as of end."""

    prediction_uuid: np.ndarray  # object (non-empty text)
    decided_ms: np.ndarray  # int64
    model_version: np.ndarray  # object
    deployment_crn: np.ndarray  # object: the deployment that decided (an A/B test's rows are its deployment's)
    customers: pd.DataFrame  # CUSTOMER_COLUMNS
    model_offer: np.ndarray  # int64 indices into OFFERS
    offer: np.ndarray  # int64
    propensity: np.ndarray  # float64
    proba: np.ndarray  # (n, 3) float64, OFFERS order
    matured: np.ndarray  # bool
    conversion: np.ndarray  # int64
    rejected: Rejected = field(default_factory=Rejected)  # rows left out of the run
    labels_as_of_ms: int | None = None  # the instant the labels hold for (end, or the feed's watermark)

    def __len__(self) -> int:
        return len(self.decided_ms)


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NULL"
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return shorten(text, 80)


def _numbers(values: np.ndarray) -> np.ndarray:
    """Object values as float64, anything not a number (text, NULL) as NaN."""
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)


_Check = tuple[str, np.ndarray, str]  # (column, mask of the bad rows, what a value must be)


def _screen(table: str, col: Mapping[str, np.ndarray], checks: list[_Check],
            ids: np.ndarray, id_column: str) -> tuple[np.ndarray, Rejected]:
    """The rows passing every check, and the others counted and named (and logged)."""
    n = len(ids)
    bad_any = np.zeros(n, dtype=bool)
    by_column: dict[str, int] = {}
    examples: list[str] = []
    for column, bad, rule in checks:
        if not bad.any():
            continue
        bad_any |= bad
        by_column[f"{table}.{column}"] = int(bad.sum())
        for i in np.flatnonzero(bad)[:REJECTED_SHOWN - len(examples)]:
            uid = ids[i]
            where = (f"{id_column} {uid}" if isinstance(uid, str) and uid
                     else f"row {i + 1} of those read (no {id_column})")
            examples.append(f"{table} {where}: {column} = {_shown(col[column][i])} ({rule})")
    rejected = Rejected(int(bad_any.sum()), by_column, examples)
    if rejected.count:
        more = sum(by_column.values()) - len(examples)
        log.warning("%s: %d row(s) left out of monitoring, their values break the table's schema (%s):\n  %s%s",
                    table, rejected.count, ", ".join(f"{c} {k}" for c, k in by_column.items()),
                    "\n  ".join(examples), f"\n  ... and {more} more" if more else "")
    return ~bad_any, rejected


def _prediction_checks(col: Mapping[str, np.ndarray]) -> tuple[list[_Check], dict[str, np.ndarray]]:
    """The checks of the prediction_log columns a run reads, and the numeric columns as float64."""
    from factory_tasks.core.schema import INTERACTION_DTYPES

    numbers: dict[str, np.ndarray] = {}
    checks: list[_Check] = []

    def text(name: str) -> None:
        values = col[name]
        checks.append((name, pd.isna(values) | (values == ""), "must be non-empty text"))

    def number(name: str, rule: str, ok: Callable[[np.ndarray], np.ndarray]) -> None:
        x = numbers[name] = _numbers(col[name])
        with np.errstate(invalid="ignore"):
            checks.append((name, ~(np.isfinite(x) & ok(x)), rule))

    text("prediction_uuid")
    number("decided_at_ms", "must be an integer (epoch ms)", lambda x: x == np.round(x))
    text("model_version")
    for c in CUSTOMER_COLUMNS:
        kind = INTERACTION_DTYPES[c]
        if kind == "int64":
            number(c, "must be an integer", lambda x: x == np.round(x))
        elif kind == "float64":
            number(c, "must be a number", lambda x: np.ones(len(x), dtype=bool))
        else:
            text(c)
    for name in ("model_offer", "offer"):
        checks.append((name, ~pd.Series(col[name], dtype=object).isin(OFFERS).to_numpy(),
                       f"must be one of {', '.join(OFFERS)}"))
    number("propensity", "must lie in (0, 1]: the probability with which the offer was made",
           lambda x: (x > 0) & (x <= 1))
    for c in OFFER_PROBA_COLUMNS:
        number(c, "must be a probability in [0, 1]", lambda x: (x >= 0) & (x <= 1))
    return checks, numbers


def _offer_codes(values: np.ndarray, name: str) -> np.ndarray:
    codes, uniques = pd.factorize(values)
    lookup = np.empty(len(uniques), dtype=np.int64)
    for i, value in enumerate(uniques):
        if value not in OFFERS:
            raise ValueError(f"prediction_log.{name} holds an unknown offer {value!r}; valid: {list(OFFERS)}")
        lookup[i] = OFFERS.index(value)
    return lookup[codes] if len(codes) else np.empty(0, dtype=np.int64)


def _table(rows: list[tuple], width: int) -> np.ndarray:
    """Rows as one 2-D object array (one C pass; columns are then converted at C speed too)."""
    return np.array(rows, dtype=object).reshape(len(rows), width)


_NUMERIC = {"int64": np.int64, "float64": np.float64}


def cohort_frame(prediction_rows: list[tuple], response_rows: list[tuple], window: MonitoringWindow,
                 labels_as_of_ms: int | None = None) -> CohortData:
    """Column arrays from the raw rows of :data:`PREDICTION_COLUMNS` and ``(prediction_uuid,
    responded_at_ms)`` of the attached responses; the labels as of ``labels_as_of_ms`` (default
    ``window.end_ms``). Rows that break the schema are left out and reported (``rejected``)."""
    from factory_tasks.core.schema import INTERACTION_DTYPES

    as_of = window.end_ms if labels_as_of_ms is None else min(int(labels_as_of_ms), window.end_ms)
    table = _table(prediction_rows, len(PREDICTION_COLUMNS))
    col = {name: table[:, i] for i, name in enumerate(PREDICTION_COLUMNS)}
    checks, numbers = _prediction_checks(col)
    keep, rejected = _screen(PREDICTION_LOG, col, checks, col["prediction_uuid"], "prediction_uuid")
    if rejected.count:
        col = {name: values[keep] for name, values in col.items()}
        numbers = {name: values[keep] for name, values in numbers.items()}
    n = len(col["prediction_uuid"])
    responded = np.full(n, np.nan)
    if response_rows and n:
        uuids = pd.Index(col["prediction_uuid"], dtype=object)  # no string inference: a hash lookup only
        responses = _table(response_rows, 2)
        # a response without a usable time is no label (it cannot be placed in a window)
        r_uuid, r_at = responses[:, 0], _numbers(responses[:, 1])
        if uuids.is_unique:
            position = uuids.get_indexer(r_uuid)
        else:  # a uuid logged twice: its label goes to its first decision
            first = np.flatnonzero(~uuids.duplicated())
            found = uuids[first].get_indexer(r_uuid)
            position = np.where(found >= 0, first[found], -1)
        known = position >= 0
        # the first attached response per prediction (a duplicate delivery is not a second label)
        np.fmin.at(responded, position[known], r_at[known])
    decided = numbers["decided_at_ms"].astype(np.int64)
    matured, conversion = label_state(decided, responded, as_of, window.response_window_ms)
    customers = pd.DataFrame({c: numbers[c].astype(_NUMERIC[INTERACTION_DTYPES[c]]) if c in numbers else col[c]
                              for c in CUSTOMER_COLUMNS}, columns=list(CUSTOMER_COLUMNS))
    proba = np.column_stack([numbers[c] for c in OFFER_PROBA_COLUMNS]) if n else np.empty((0, len(OFFERS)))
    return CohortData(
        prediction_uuid=col["prediction_uuid"], decided_ms=decided, model_version=col["model_version"],
        deployment_crn=col["deployment_crn"],
        customers=customers,
        model_offer=_offer_codes(col["model_offer"], "model_offer"), offer=_offer_codes(col["offer"], "offer"),
        propensity=numbers["propensity"], proba=proba,
        matured=matured, conversion=conversion, rejected=rejected, labels_as_of_ms=as_of,
    )


def feed_runs(hook: Any, table: str = RESPONSE_FEED) -> list[tuple[int, int]]:
    """The windows the response feed has delivered, merged into contiguous runs ``[start, end)``
    (epoch ms), oldest first; empty before the feed's first window."""
    dialect = dialect_for(hook)
    if not dialect.table_exists(hook, table):
        return []
    spans = []
    for start, end in dialect.select(hook, table, ["window_start", "window_end_ms"]):
        try:
            spans.append((epoch_ms(start), int(end)))
        except (TypeError, ValueError):  # not a window: it delivers nothing
            log.warning("%s: a row with window_start %r, window_end_ms %r is not a window; ignored", table, start, end)
    runs: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end))
        else:
            runs.append((start, end))
    return runs


def watermark(runs: list[tuple[int, int]], since_ms: int | None = None) -> int | None:
    """The end of the contiguous run of delivered windows that covers ``since_ms`` (the feed's
    first run when ``since_ms`` is None or before it): the first missing window stops it, however
    many later windows were delivered. Below ``since_ms`` itself when the window at ``since_ms``
    is missing. None before the feed's first window."""
    if not runs:
        return None
    if since_ms is None or since_ms < runs[0][0]:
        return runs[0][1]
    return [end for start, end in runs if start <= since_ms][-1]


def responses_ingested_through(hook: Any, since_ms: int | None = None, table: str = RESPONSE_FEED) -> int | None:
    """The response feed's watermark (epoch ms): every response received from ``since_ms`` (or
    the feed's first window) up to it is in ``customer_responses`` (:func:`watermark`)."""
    return watermark(feed_runs(hook, table), since_ms)


def read_cohorts(hook: Any, window: MonitoringWindow, *, predictions: str = PREDICTION_LOG,
                 responses: str = CUSTOMER_RESPONSES) -> CohortData:
    """The predictions of :meth:`MonitoringWindow.cohorts` and their attached responses before
    ``end`` (only the needed columns and rows, range-filtered in the warehouse); labels as of
    the response feed's watermark when it is earlier than ``end`` (no feed: no label matured)."""
    return read_decisions(hook, window.cohorts()[0][0], window, predictions=predictions, responses=responses)


def read_decisions(hook: Any, since_ms: int, window: MonitoringWindow, *, predictions: str = PREDICTION_LOG,
                   responses: str = CUSTOMER_RESPONSES) -> CohortData:
    """The predictions decided from ``since_ms`` to the window's end, labelled as of its end (as
    :func:`read_cohorts`, from any start: an A/B test reads every decision since it began)."""
    dialect = dialect_for(hook)
    low, high = int(since_ms), window.end_ms
    if not dialect.table_exists(hook, predictions):
        log.warning("%s does not exist (yet): nothing to monitor", predictions)
        return cohort_frame([], [], window)
    through = responses_ingested_through(hook, low)
    labels_as_of = high if through is not None and through >= high else (low if through is None else through)
    if labels_as_of < high:
        log.warning("the response feed has delivered the responses through %s only, not through %s: labels are "
                    "taken as of %s (immature), missing conversions are not read as non-conversions",
                    iso(through) if through is not None else "nothing yet", iso(high), iso(labels_as_of))
    prediction_rows = dialect.select_between(hook, predictions, PREDICTION_COLUMNS, "decided_at_ms", low, high)
    response_rows: list[tuple] = []
    if prediction_rows and dialect.table_exists(hook, responses):
        response_rows = dialect.select_between(hook, responses, ("prediction_uuid", "responded_at_ms"),
                                               "responded_at_ms", low, high, where={"status": "attached"})
    log.info("read %d predictions decided in %s .. %s and %d attached responses",
             len(prediction_rows), iso(low), iso(high), len(response_rows))
    return cohort_frame(prediction_rows, response_rows, window, labels_as_of)
