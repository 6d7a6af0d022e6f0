"""A simulated closed-loop window for monitoring tests and the benchmark: where the truth is known.

Customers from the simulator, a model that knows the true response model (optionally with
noise on its scores), ε-greedy decisions logged with their propensity, conversions drawn from
the truth, log-normal response delays (late ones ``expired``), some duplicate deliveries.
Rows follow ``loop_tables.PREDICTION_LOG_SCHEMA`` / ``CUSTOMER_RESPONSES_SCHEMA``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from factory_tasks.core.schema import DEFAULT_ECONOMICS, OFFERS, expected_values
from factory_tasks.loop.simulator import (
    Drift,
    offer_probabilities,
    simulate_customers,
    simulate_responses,
    true_policy_value,
)
from factory_tasks.loop.windows import iso
from factory_tasks.warehouse.loop_tables import (
    CUSTOMER_RESPONSES,
    CUSTOMER_RESPONSES_SCHEMA,
    PREDICTION_LOG,
    PREDICTION_LOG_SCHEMA,
    RESPONSE_FEED,
    RESPONSE_FEED_SCHEMA,
)
from factory_tasks.warehouse.sqlite import SqliteDialect

HOUR_MS = 3_600_000
T0_MS = 1_796_083_200_000  # 2026-12-01T00:00:00Z


@dataclass
class Window:
    predictions: pd.DataFrame
    responses: pd.DataFrame
    customers: pd.DataFrame
    true_policy_value: float  # of the model's decisions, per customer


def simulate_window(start_ms: int, n: int, seed: int, *, model_version: str = "v1", exploration: float = 0.10,
                    length_ms: int = HOUR_MS, window_minutes: float = 180.0, delay_median_minutes: float = 35.0,
                    delay_sigma: float = 0.9, duplicate_share: float = 0.02, channel_shares=None,
                    score_noise: float = 0.0, score_scale: float = 1.0, economics=DEFAULT_ECONOMICS) -> Window:
    rng = np.random.default_rng(seed)
    # covariate drift: the simulator's own, a new channel mix (no change in the response model)
    drift = Drift(segment={}, offer=OFFERS[0], log_odds_change=0.0, channel_shares=channel_shares) \
        if channel_shares is not None else None
    customers = simulate_customers(n, seed, drift=drift)
    truth = offer_probabilities(customers)
    logit = np.log(truth / (1 - truth)) * score_scale + rng.normal(0, score_noise, truth.shape) if score_noise \
        or score_scale != 1.0 else None
    proba = truth if logit is None else 1 / (1 + np.exp(-logit))
    model_idx = np.argmax(expected_values(proba, economics), axis=1)
    explored = rng.random(n) < exploration
    offer_idx = np.where(explored, rng.integers(0, len(OFFERS), n), model_idx)
    propensity = np.where(offer_idx == model_idx, 1 - exploration + exploration / 3, exploration / 3)
    offers = np.asarray(OFFERS, dtype=object)
    conversion = simulate_responses(customers, offers[offer_idx], rng)
    decided = start_ms + np.sort(rng.integers(0, length_ms, n))
    uuids = np.array([f"{seed:x}-{i:08x}" for i in range(n)], dtype=object)
    predictions = pd.DataFrame({
        "window_start": iso(start_ms), "prediction_uuid": uuids, "decided_at_ms": decided,
        "deployment_crn": "crn:cml:deployment/local", "model_version": model_version,
        "customer_id": uuids, **{c: customers[c].to_numpy() for c in customers.columns},
        "model_offer": offers[model_idx], "offer": offers[offer_idx], "propensity": propensity,
        "explored": explored.astype(np.int64), "p_bogo": proba[:, 0], "p_discount": proba[:, 1], "p_none": proba[:, 2],
        "arm": "champion",
    })[[c.name for c in PREDICTION_LOG_SCHEMA]]
    converted = np.flatnonzero(conversion == 1)
    delay_ms = (np.exp(np.log(delay_median_minutes) + delay_sigma * rng.standard_normal(len(converted)))
                * 60_000).astype(np.int64)
    responded = decided[converted] + delay_ms
    status = np.where(delay_ms <= window_minutes * 60_000, "attached", "expired").astype(object)
    dup = converted[rng.random(len(converted)) < duplicate_share]
    dup_at = responded[np.searchsorted(converted, dup)] + 1
    resp_uuid = np.concatenate([uuids[converted], uuids[dup]])
    resp_at = np.concatenate([responded, dup_at])
    responses = pd.DataFrame({
        "window_start": [iso(start_ms + (t - start_ms) // length_ms * length_ms) for t in resp_at],
        "prediction_uuid": resp_uuid, "responded_at_ms": resp_at, "conversion": 1,
        "status": np.concatenate([status, np.full(len(dup), "duplicate", dtype=object)]),
    })[[c.name for c in CUSTOMER_RESPONSES_SCHEMA]]
    return Window(predictions, responses, customers, true_policy_value(customers, offers[model_idx], economics))


class SqliteHook:
    """The smallest DB-API hook the dialects accept."""

    conn_type = "sqlite"

    def __init__(self, path: Path):
        self.path = str(path)

    def get_conn(self):
        return sqlite3.connect(self.path)


def write_window(hook: SqliteHook, window: Window) -> None:
    """Append a window's predictions and responses to the loop tables (created if absent)."""
    dialect = SqliteDialect()
    for table, schema, frame in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA, window.predictions),
                                 (CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA, window.responses)):
        dialect.create_table(hook, table, schema, partition_by="window_start")
        conn = hook.get_conn()
        try:
            with conn:
                conn.executemany(
                    f"INSERT INTO {table} VALUES ({', '.join('?' for _ in schema)})",
                    frame.astype(object).itertuples(index=False, name=None))
        finally:
            conn.close()


def record_feed(hook: SqliteHook, through_ms: int) -> None:
    """The response feed's watermark: every response before ``through_ms`` is delivered."""
    dialect = SqliteDialect()
    dialect.create_table(hook, RESPONSE_FEED, RESPONSE_FEED_SCHEMA, partition_by="window_start")
    dialect.replace_partition(hook, RESPONSE_FEED, RESPONSE_FEED_SCHEMA, "window_start", iso(through_ms - HOUR_MS),
                              [{"window_start": iso(through_ms - HOUR_MS), "window_end_ms": through_ms,
                                "responses": 0, "recorded_at_ms": through_ms}])


def deployment_record(model_version: str = "v1", snapshot_hash: str = "feedc0ffee00beef" * 4, **over):
    """A ``model_deployments`` record of the model serving the simulated windows."""
    from factory_tasks.core.contracts import DeploymentRecord

    fields = dict(
        model_version=model_version, model_name="next-best-offer", model_id="m1", model_crn="crn:cml:model/m1",
        build_id="b1", deployment_id="d1", deployment_crn="crn:cml:deployment/d1",
        access_key_ref="cml-model-access-key", artifact_path=f"models/{model_version}/model.skops",
        metadata_path=f"models/{model_version}/metadata.json", experiment_id="0123456789abcdef",
        factory_run_id="manual__1", grid_hash="g" * 8, data_snapshot_hash=snapshot_hash, code_version="0.1+abc",
        chosen_by="automatic", choice_reason="best", gate_reason="first deployment", gate_override=False,
        deployed_at="2026-11-30T00:00:00+00:00",
    )
    fields.update(over)
    return DeploymentRecord(**fields)
