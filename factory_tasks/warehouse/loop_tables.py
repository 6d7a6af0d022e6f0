"""The closed loop's warehouse tables: one schema each, shared by every writer and reader.

| table | written by | read by | partition (idempotent per run window) |
| --- | --- | --- | --- |
| ``prediction_log`` | customer_interactions: each decision, as the endpoint answered it | monitoring, response matching | ``window_start`` |
| ``customer_responses`` | customer_interactions: each response received | monitoring | ``window_start`` |
| ``customer_interactions`` | customer_interactions: matured decisions | the factory (training) | ``window_start`` |
| ``response_feed`` | customer_interactions: one row per window, written last | model_monitoring (waits for it) | ``window_start`` |
| ``model_monitoring`` | model_monitoring | the monitoring dashboard | ``as_of_window`` |

``window_start`` / ``as_of_window`` are the writing DAG run's data interval start (ISO-8601
UTC, ``2026-12-01T06:00:00Z``); a rerun of that window replaces its rows, never adds to them.
Times inside rows are epoch milliseconds (``*_ms``), so windows compare as numbers in both
dialects. Offers follow ``schema.OFFERS``; the model's probability for each offer is kept,
so the off-policy estimators (doubly robust) and the performance estimate need no rescoring.

Alerts are a contract (``contracts.MonitoringAlert``, table ``model_alerts``).
"""

from __future__ import annotations

from factory_tasks.core.schema import CUSTOMER_COLUMNS, INTERACTION_COLUMNS, INTERACTION_DTYPES
from factory_tasks.warehouse.sql import Column

PREDICTION_LOG = "prediction_log"
CUSTOMER_RESPONSES = "customer_responses"
CUSTOMER_INTERACTIONS = "customer_interactions"
RESPONSE_FEED = "response_feed"
MODEL_MONITORING = "model_monitoring"

_SQL = {"int64": "bigint", "float64": "double", "str": "string"}
_CUSTOMER = tuple(Column(c, _SQL[INTERACTION_DTYPES[c]]) for c in CUSTOMER_COLUMNS)
#: the model's P(conversion) for each offer, in OFFERS order (Buy One Get One, Discount, No Offer)
OFFER_PROBA_COLUMNS: tuple[str, ...] = ("p_bogo", "p_discount", "p_none")

PREDICTION_LOG_SCHEMA: tuple[Column, ...] = (
    Column("window_start", "string"),
    Column("prediction_uuid", "string"),
    Column("decided_at_ms", "bigint"),
    Column("deployment_crn", "string"),
    Column("model_version", "string"),
    Column("customer_id", "string"),
    *_CUSTOMER,
    Column("model_offer", "string"),  # the deciding model's next best offer (its greedy pick)
    Column("offer", "string"),  # the offer made (the greedy pick, or a random one when explored)
    Column("propensity", "double"),  # P(this offer was made | customer): 1-e+e/3 or e/3, as the endpoint answered
    Column("explored", "bigint"),  # 1 when the endpoint drew the offer at random
    *(Column(c, "double") for c in OFFER_PROBA_COLUMNS),  # the deciding model's
    # Added after the first release: last, so a table created before gains it at the same
    # position (ALTER TABLE ... ADD COLUMNS), which Hive's positional inserts rely on. NULL in
    # rows logged before it, when every decision was the (one) deployed model's.
    Column("arm", "string"),  # the policy's arm that decided: champion or challenger (schema.ARMS)
)
#: columns of ``prediction_log`` that a table created by an older version may lack (added if missing)
PREDICTION_LOG_ADDED: tuple[str, ...] = ("arm",)

#: what became of a response: matched to its prediction, or counted and dropped
RESPONSE_STATUSES: tuple[str, ...] = ("attached", "duplicate", "unknown", "expired")
CUSTOMER_RESPONSES_SCHEMA: tuple[Column, ...] = (
    Column("window_start", "string"),  # the window in which the response arrived
    Column("prediction_uuid", "string"),
    Column("responded_at_ms", "bigint"),
    Column("conversion", "bigint"),
    Column("status", "string"),
)

#: the training schema (so the factory can snapshot history plus these), then the lineage
CUSTOMER_INTERACTIONS_SCHEMA: tuple[Column, ...] = (
    *(Column(c, _SQL[INTERACTION_DTYPES[c]]) for c in INTERACTION_COLUMNS),
    Column("propensity", "double"),
    Column("prediction_uuid", "string"),
    Column("decided_at_ms", "bigint"),
    Column("window_start", "string"),  # the window in which the response window closed
)

#: the response feed's watermark: every response received before ``window_end_ms`` of a window is
#: in ``customer_responses`` once its row is here. Monitoring treats a label as final only up to
#: the latest watermark, so a late feed (a slow DAG run, a NiFi backlog) cannot pass missing
#: conversions off as non-conversions. A NiFi flow writes the same row when it has delivered a
#: window's responses.
RESPONSE_FEED_SCHEMA: tuple[Column, ...] = (
    Column("window_start", "string"),
    Column("window_end_ms", "bigint"),
    Column("responses", "bigint"),  # rows written to customer_responses for the window, any status
    Column("recorded_at_ms", "bigint"),
)

#: how final a monitoring value is
MATURITIES: tuple[str, ...] = (
    "final",  # every label of the cohort has matured
    "immature",  # some labels are still open: the value will change
    "estimate",  # computed from scores alone (no labels), e.g. the CBPE expected AUC
)
MODEL_MONITORING_SCHEMA: tuple[Column, ...] = (
    Column("as_of_window", "string"),  # the monitoring run's data interval start
    Column("as_of_ms", "bigint"),  # the instant the values hold for (the interval's end)
    Column("cohort_start", "string"),  # predictions decided in [cohort_start, cohort_end)
    Column("cohort_end", "string"),
    Column("model_version", "string"),
    Column("metric", "string"),  # e.g. roc_auc, estimated_roc_auc, psi, policy_value_dr
    Column("dimension", "string"),  # "" or e.g. "offer=Discount", "feature=history", "decile=3"
    Column("value", "double"),
    Column("lower", "double"),  # confidence interval, where the metric has one
    Column("upper", "double"),
    Column("n", "bigint"),  # rows the value is computed on
    Column("maturity", "string"),
)
