"""Delayed responses of the closed loop: who converts, when the response arrives, what it attaches to.

Pure functions (numpy / pandas), used by :mod:`factory_tasks.loop.interactions`:

* :func:`draw_deliveries` -- for one decision window's logged decisions, the simulator's
  ground truth (drift included) says who converts; converters respond after a log-normal
  delay (``responses.delay_median_minutes``, ``delay_sigma``), a share of them twice
  (``duplicate_share``: at-least-once delivery). Non-converters never respond.
* :func:`draw_unknown` -- ``unknown_share`` extra responses per window for uuids nobody issued.
* :func:`match_responses` -- the status of each response arriving in a window: ``attached``,
  ``duplicate`` (its uuid was attached before: in an earlier window, read from the warehouse,
  or earlier in this one), ``unknown`` (no such prediction logged) or ``expired`` (later than
  ``window_minutes`` after the decision).
* :func:`matured` -- decisions whose response window closed in this window, labelled.

**How pending responses are reproduced (no pending table).** Every draw of a decision window
comes from its own seed (``traffic.seed`` and the window start) applied to that window's logged
decisions (``prediction_log``, read back from the warehouse by partition), in customer order.
So the responses still "in flight" from earlier windows are recomputed, identically, by every
later window that needs them: a window looks back :func:`lookback_windows` windows
(``2 x window_minutes``). A response delayed beyond that lookback is never delivered (lost in
transit, like a real feed's give-up); between ``window_minutes`` and the lookback it arrives
and is recorded as ``expired``. Nothing lives in a worker's memory or disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from factory_tasks.loop import simulator
from factory_tasks.loop.config import ResponsesConfig
from factory_tasks.warehouse.loop_tables import RESPONSE_STATUSES

MINUTE_MS = 60_000
#: how far past ``window_minutes`` a response may still arrive (then as ``expired``), as a
#: multiple of ``window_minutes``: the lookback is ``(1 + LOOKBACK_MARGIN) x window_minutes``
LOOKBACK_MARGIN = 1.0
#: a duplicate arrives this many minutes (uniform) after the first delivery
DUPLICATE_LAG_MINUTES = (1.0, 60.0)

# Independent random streams of one window (np.random.default_rng([window_seed, stream])).
STREAM_TIMES = 1
# 2 and 3 were the caller's own exploration (whether, and which random offer), retired: the
# endpoint explores now. Not reused, so every other stream draws what it drew before.
STREAM_CONVERSION, STREAM_DELAY, STREAM_DUPLICATE, STREAM_UNKNOWN = 4, 5, 6, 7

DELIVERY_COLUMNS = ("prediction_uuid", "decided_at_ms", "responded_at_ms")


def stream(window_seed: int, which: int) -> np.random.Generator:
    """One of a window's independent random streams."""
    return np.random.default_rng([int(window_seed), int(which)])


def lookback_ms(responses: ResponsesConfig) -> int:
    """How long after a decision its responses can still arrive (later ones are lost)."""
    return int(round((1.0 + LOOKBACK_MARGIN) * responses.window_minutes * MINUTE_MS))


def lookback_windows(responses: ResponsesConfig, window_length_ms: int) -> int:
    """How many earlier windows can still deliver a response into the current one."""
    if window_length_ms <= 0:
        raise ValueError(f"a window must have a positive length (got {window_length_ms} ms)")
    return max(1, math.ceil(lookback_ms(responses) / window_length_ms))


def _drift_kwargs(drift: Any) -> dict[str, Any]:
    return {} if drift is None else {"drift": drift}


def draw_deliveries(decisions: pd.DataFrame, window_seed: int, responses: ResponsesConfig,
                    drift: Any = None) -> pd.DataFrame:
    """Every response the decisions of one window will ever deliver (duplicates included).

    ``decisions`` are that window's ``prediction_log`` rows (features, ``offer``,
    ``prediction_uuid``, ``decided_at_ms``, ``customer_id``); they are put in customer order
    first, so the draws do not depend on the order rows were read in. ``drift`` is the drift in
    force when the decisions were made (None: the base world). Deliveries later than
    :func:`lookback_ms` are dropped. Columns :data:`DELIVERY_COLUMNS`.
    """
    n = len(decisions)
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c != "prediction_uuid" else "str")
                             for c in DELIVERY_COLUMNS})
    ordered = decisions.sort_values("customer_id", kind="stable").reset_index(drop=True)
    offers = ordered["offer"].to_numpy(dtype=object)
    converted = simulator.simulate_responses(ordered, offers, stream(window_seed, STREAM_CONVERSION),
                                             **_drift_kwargs(drift)).astype(bool)
    delays = simulator.response_delays_minutes(n, stream(window_seed, STREAM_DELAY),
                                               median_minutes=responses.delay_median_minutes,
                                               sigma=responses.delay_sigma)
    dup_rng = stream(window_seed, STREAM_DUPLICATE)
    duplicated = dup_rng.random(n) < responses.duplicate_share
    lag = dup_rng.uniform(*DUPLICATE_LAG_MINUTES, size=n)
    decided = ordered["decided_at_ms"].to_numpy(dtype=np.int64)
    first = decided + np.round(np.asarray(delays, dtype=np.float64) * MINUTE_MS).astype(np.int64)
    second = first + np.round(lag * MINUTE_MS).astype(np.int64)
    uuids = ordered["prediction_uuid"].to_numpy(dtype=object)
    parts = [(uuids[converted], decided[converted], first[converted]),
             (uuids[converted & duplicated], decided[converted & duplicated], second[converted & duplicated])]
    frame = pd.DataFrame({
        "prediction_uuid": pd.array(np.concatenate([p[0] for p in parts]), dtype="str"),
        "decided_at_ms": np.concatenate([p[1] for p in parts]).astype(np.int64),
        "responded_at_ms": np.concatenate([p[2] for p in parts]).astype(np.int64),
    })
    return frame[frame["responded_at_ms"] - frame["decided_at_ms"] <= lookback_ms(responses)].reset_index(drop=True)


def draw_unknown(window_seed: int, start_ms: int, end_ms: int, customers: int,
                 responses: ResponsesConfig) -> pd.DataFrame:
    """Responses arriving in ``[start_ms, end_ms)`` for uuids nobody issued (``unknown-...``)."""
    rng = stream(window_seed, STREAM_UNKNOWN)
    n = int(rng.binomial(customers, responses.unknown_share)) if responses.unknown_share > 0 else 0
    ids = [f"unknown-{rng.integers(0, 2**63):016x}:{k}" for k in range(n)]
    times = rng.integers(start_ms, end_ms, size=n, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    return pd.DataFrame({"prediction_uuid": pd.array(ids, dtype="str"),
                         "decided_at_ms": np.full(n, -1, dtype=np.int64), "responded_at_ms": times})


@dataclass(frozen=True)
class Matched:
    """The responses of one window with their status (``customer_responses`` rows, no window)."""

    rows: pd.DataFrame  # prediction_uuid, responded_at_ms, conversion, status
    attached: frozenset[str]  # uuids attached in this window

    def counts(self) -> dict[str, int]:
        found = self.rows["status"].value_counts().to_dict() if len(self.rows) else {}
        return {s: int(found.get(s, 0)) for s in RESPONSE_STATUSES}


def match_responses(arriving: pd.DataFrame, decided_at: dict[str, int], attached_before: Iterable[str],
                    responses: ResponsesConfig) -> Matched:
    """The status of each response arriving in a window, in arrival order.

    ``decided_at``: every logged prediction that could still get a response (uuid -> decision
    time, from ``prediction_log``); ``attached_before``: uuids already attached in earlier
    windows (from ``customer_responses``). A uuid is attached at most once, ever: a second
    response for it, in this window or a later one, is a ``duplicate``. Checks in order:
    unknown, duplicate, expired, attached.
    """
    window_ms = int(round(responses.window_minutes * MINUTE_MS))
    ordered = arriving.sort_values(["responded_at_ms", "prediction_uuid"], kind="stable").reset_index(drop=True)
    seen = set(attached_before)
    now: set[str] = set()
    statuses: list[str] = []
    for uuid, responded in zip(ordered["prediction_uuid"].tolist(), ordered["responded_at_ms"].tolist()):
        decided = decided_at.get(uuid)
        if decided is None:
            statuses.append("unknown")
        elif uuid in seen:
            statuses.append("duplicate")
        elif responded - decided > window_ms:
            statuses.append("expired")
        else:
            statuses.append("attached")
            seen.add(uuid)
            now.add(uuid)
    rows = pd.DataFrame({
        "prediction_uuid": ordered["prediction_uuid"].astype("str"),
        "responded_at_ms": ordered["responded_at_ms"].astype("int64"),
        "conversion": np.ones(len(ordered), dtype=np.int64),
        "status": pd.array(statuses, dtype="str"),
    })
    return Matched(rows=rows, attached=frozenset(now))


def matured(decisions: pd.DataFrame, start_ms: int, end_ms: int, attached: Iterable[str],
            responses: ResponsesConfig) -> pd.DataFrame:
    """Decisions whose response window (``window_minutes`` after the decision) closed in
    ``[start_ms, end_ms)``, with ``conversion`` 1 if a response was attached to them, else 0."""
    window_ms = int(round(responses.window_minutes * MINUTE_MS))
    closes = decisions["decided_at_ms"].to_numpy(dtype=np.int64) + window_ms
    done = decisions[(closes >= start_ms) & (closes < end_ms)].copy()
    done["conversion"] = done["prediction_uuid"].isin(set(attached)).astype(np.int64)
    return done.sort_values(["decided_at_ms", "customer_id"], kind="stable").reset_index(drop=True)
