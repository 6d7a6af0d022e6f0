"""The closed loop's traffic: one window of simulated customers asking the deployed model for
their next best offer, their delayed responses, and the matured interactions the factory trains on.

The stand-in for the original system's NiFi flow (see ``dags/customer_interactions.py``). Per
window ``[start, end)`` (the DAG run's data interval; never "now"), :func:`run_window`:

1. **Traffic** (:func:`simulate_traffic`): ``traffic.customers_per_window`` customers drawn
   from ``traffic.seed`` and the window start (a rerun draws the same ones; with drift enabled
   and the window at/after ``drift.start`` the simulator's drift applies), decision times
   spread uniformly over the window. They ask the deployed endpoint in batches of
   ``traffic.request_batch`` (:func:`ask_endpoint`), and each decision is logged **as the
   endpoint answered it**: the offer made, the arm that decided (champion or challenger) and
   its model version, whether it explored, the propensity of the offer made and the deciding
   model's greedy pick and probabilities. The caller draws nothing: exploration and the arms
   are the deployment's policy (``MF_EXPLORATION_EPSILON``, set by ``deploy_best_model``'s
   param ``exploration_epsilon``; see ``docs/deploy.md``, *The policy*), as they would be for
   a NiFi flow or any other caller.
2. **Responses** (:mod:`factory_tasks.loop.responses`): conversions, delays, duplicates and unknown
   uuids arriving in this window, matched against the warehouse; each attached one is sent to
   the model's metrics (``track_delayed_metrics``).
3. **Matured** decisions (their response window closed in this window) with their label.

**Prediction ids.** The model service gives one uuid per *request* (one request carries up to
``request_batch`` customers); a decision's ``prediction_uuid`` is ``<request uuid>:<index of
the customer in that request>``. Its ground truth goes to CML as
``track_delayed_metrics({"conversion.<index>": 1}, <request uuid>)``: one call per request uuid
per window, keys per customer, so a repeated call merges the same keys (idempotent). A model
without metrics answers without a uuid: then the id is ``<window>/<request number>:<index>``
and no delayed metrics are sent.

**Idempotency.** Every table is replaced per partition ``window_start`` (this window), all
three at the end, after every endpoint call succeeded: a failing endpoint leaves nothing of
the window. Decisions are facts: when the window's ``prediction_log`` partition is already
complete, a rerun keeps it (same uuids, no endpoint call) and recomputes the responses and the
matured rows from it, so a rerun leaves the same rows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import ARMS, CUSTOMER_COLUMNS, OFFERS
from factory_tasks.loop import responses as resp
from factory_tasks.loop import simulator
from factory_tasks.loop.config import LoopConfig
from factory_tasks.warehouse.dialects import add_missing_columns, dialect_for
from factory_tasks.warehouse.loop_tables import (
    CUSTOMER_INTERACTIONS,
    CUSTOMER_INTERACTIONS_SCHEMA,
    CUSTOMER_RESPONSES,
    CUSTOMER_RESPONSES_SCHEMA,
    OFFER_PROBA_COLUMNS,
    PREDICTION_LOG,
    PREDICTION_LOG_ADDED,
    PREDICTION_LOG_SCHEMA,
    RESPONSE_FEED,
    RESPONSE_FEED_SCHEMA,
    RESPONSE_STATUSES,
)

log = logging.getLogger(__name__)

PARTITION = "window_start"
DEPLOY_HINT = "deploy a model first with the deploy_best_model DAG (or `make run`)"


class NoServingModelError(RuntimeError):
    """No deployment is serving (``model_deployments`` is empty): nothing to ask."""


class EndpointError(RuntimeError):
    """The deployed endpoint failed or answered something unusable; names the endpoint."""


class WorkspaceError(RuntimeError):
    """A call to the CML workspace failed (looking up the serving model, sending delayed
    metrics): says what the window was doing; the cause, chained and quoted, names the workspace."""


# --------------------------------------------------------------------------------------------
# Windows and seeds


def window_key(moment: datetime) -> str:
    """``2026-12-01T06:00:00Z``: the partition value of a window starting at ``moment``."""
    if moment.tzinfo is None:
        raise ValueError(f"a window time needs a time zone (got {moment!r})")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch_ms(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000))


@dataclass(frozen=True)
class Window:
    """A DAG run's data interval ``[start, end)``, UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window times need a time zone")
        if self.end <= self.start:
            raise ValueError(f"the window must end after it starts: [{self.start}, {self.end})")

    @classmethod
    def parse(cls, start: str | datetime, end: str | datetime) -> "Window":
        def moment(value: str | datetime) -> datetime:
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))

        return cls(moment(start), moment(end))

    @property
    def key(self) -> str:
        return window_key(self.start)

    @property
    def start_ms(self) -> int:
        return _epoch_ms(self.start)

    @property
    def end_ms(self) -> int:
        return _epoch_ms(self.end)

    @property
    def length_ms(self) -> int:
        return self.end_ms - self.start_ms

    def earlier(self, k: int) -> "Window":
        """The window ``k`` lengths before this one (same length)."""
        shift = timedelta(milliseconds=k * self.length_ms)
        return Window(self.start - shift, self.end - shift)


def window_seed(base_seed: int, window: Window) -> int:
    """The seed of everything drawn for ``window``: from ``traffic.seed`` and the window start."""
    state = np.random.SeedSequence([int(base_seed), window.start_ms // resp.MINUTE_MS]).generate_state(1)
    return int(state[0])


def active_drift(config: LoopConfig, window: Window, enabled: bool | None = None) -> Any:
    """The simulator's ``Drift`` in force for decisions of ``window``, or None.

    ``enabled`` overrides ``drift.enabled`` (None: the file's setting).
    """
    d = config.drift
    on = d.enabled if enabled is None else bool(enabled)
    if not on or window.start < datetime.fromisoformat(d.start.replace("Z", "+00:00")):
        return None
    return simulator.Drift(segment=dict(d.segment), offer=d.offer, log_odds_change=d.log_odds_change,
                           channel_shares=dict(d.channel_shares) if d.channel_shares else None)


# --------------------------------------------------------------------------------------------
# Traffic and decisions


def simulate_traffic(config: LoopConfig, window: Window, drift: Any = None) -> pd.DataFrame:
    """The window's customers (:data:`CUSTOMER_COLUMNS`), ``customer_id`` and ``decided_at_ms``
    (uniform over the window, ascending). The same window always gives the same frame."""
    seed = window_seed(config.traffic.seed, window)
    n = config.traffic.customers_per_window
    customers = simulator.simulate_customers(n, seed, **resp._drift_kwargs(drift))
    offsets = np.sort(resp.stream(seed, resp.STREAM_TIMES).integers(0, window.length_ms, size=n, dtype=np.int64))
    tag = window.start.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    customers.insert(0, "customer_id", pd.array([f"{tag}-{i:06d}" for i in range(n)], dtype="str"))
    customers["decided_at_ms"] = window.start_ms + offsets
    return customers


@dataclass(frozen=True)
class Endpoint:
    """How to ask the deployed model. ``call(request)`` returns an object with ``prediction``
    (what ``predict`` returned) and ``uuid`` (the prediction id, or None), e.g.
    ``functools.partial(CmlHook.call_model, model)``; ``name`` identifies it in errors."""

    call: Callable[[Mapping[str, Any]], Any]
    name: str
    deployment_crn: str
    model_version: str


def _request_customers(batch: pd.DataFrame) -> list[dict[str, Any]]:
    rows = batch[["customer_id", *CUSTOMER_COLUMNS]].to_dict("records")
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in rows]


#: what the caller logs of each customer's answer, beside the per-offer probabilities
ANSWER_COLUMNS: tuple[str, ...] = ("prediction_uuid", "model_version", "arm", "model_offer", "offer", "explored",
                                   "propensity")


def _answer_row(p: Mapping[str, Any]) -> tuple[list[float], str, str, str, str, int, float]:
    """One customer's answer: (probabilities in OFFERS order, model_version, arm, greedy pick,
    offer made, explored 0/1, propensity); a :class:`ValueError` names the field that is
    missing or wrong."""
    def field_(name: str) -> Any:
        if name not in p:
            raise ValueError(f"{name!r} is missing")
        return p[name]

    try:
        probs = [float(p["offers"][o]["conversion_probability"]) for o in OFFERS]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"'offers' lacks a conversion probability ({type(exc).__name__}: {exc})") from None
    picks = {name: field_(name) for name in ("next_best_offer", "offer")}
    for name, value in picks.items():
        if value not in OFFERS:
            raise ValueError(f"{name!r} is {value!r}, not one of {list(OFFERS)}")
    arm = field_("arm")
    if arm not in ARMS:
        raise ValueError(f"'arm' is {arm!r}, not one of {list(ARMS)}")
    version = field_("model_version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"'model_version' is {version!r}, not a version")
    explored = field_("explored")
    if not isinstance(explored, bool):
        raise ValueError(f"'explored' is {explored!r}, not true or false")
    propensity = field_("propensity")
    if isinstance(propensity, bool) or not isinstance(propensity, (int, float)) or not 0.0 < propensity <= 1.0:
        raise ValueError(f"'propensity' is {propensity!r}, not a probability in (0, 1]")
    if not explored and picks["offer"] != picks["next_best_offer"]:
        raise ValueError(f"'offer' {picks['offer']!r} is not the greedy pick {picks['next_best_offer']!r} "
                         "although 'explored' is false")
    return probs, version, arm, picks["next_best_offer"], picks["offer"], int(explored), float(propensity)


def ask_endpoint(endpoint: Endpoint, traffic: pd.DataFrame, batch_size: int, window: Window) -> pd.DataFrame:
    """The endpoint's answer for every customer, in the rows' order: :data:`ANSWER_COLUMNS`
    (``model_version`` and ``arm`` of the model that decided, ``model_offer`` its greedy pick,
    ``offer`` the offer made, ``explored`` 0/1, ``propensity`` of the offer made) and
    :data:`OFFER_PROBA_COLUMNS`. Logged as answered: nothing here draws or recomputes.

    Any failure (HTTP error after the hook's retries, a refused request, a malformed answer)
    raises :class:`EndpointError` naming the endpoint, the batch and, for a malformed answer,
    the customer and the field.
    """
    n_batches = max(1, -(-len(traffic) // batch_size))
    rows: list[tuple[str, str, str, str, str, int, float]] = []
    proba: list[list[float]] = []
    for b in range(n_batches):
        batch = traffic.iloc[b * batch_size:(b + 1) * batch_size]
        where = f"{endpoint.name}, request {b + 1} of {n_batches} ({len(batch)} customers)"
        try:
            answer = endpoint.call({"customers": _request_customers(batch)})
        except Exception as exc:
            raise EndpointError(f"the model endpoint failed: {where}: {type(exc).__name__}: {exc}. "
                                f"Nothing of window {window.key} was written.") from exc
        prediction = getattr(answer, "prediction", None)
        if not isinstance(prediction, Mapping) or "error" in prediction:
            detail = prediction.get("error") if isinstance(prediction, Mapping) else prediction
            raise EndpointError(f"the model endpoint refused the request: {where}: {detail!r:.500}")
        predictions = prediction.get("predictions")
        ids = batch["customer_id"].tolist()
        if not isinstance(predictions, list) or [p.get("customer_id") for p in predictions] != ids:
            raise EndpointError(f"the model endpoint's answer does not list the {len(ids)} customers asked "
                                f"about, in order: {where}")
        request_uuid = getattr(answer, "uuid", None)
        prefix = str(request_uuid) if request_uuid else f"{window.key}/{b + 1}"
        for i, p in enumerate(predictions):
            try:
                probs, *logged = _answer_row(p)
            except ValueError as exc:
                raise EndpointError(
                    f"the model endpoint's answer for customer {ids[i]} is not a policy's decision: {exc}: "
                    f"{where}. The endpoint must serve the policy (a model deployed by deploy_best_model; "
                    f"docs/deploy.md, The policy)") from None
            rows.append((f"{prefix}:{i}", *logged))
            proba.append(probs)
    out = pd.DataFrame.from_records(rows, columns=list(ANSWER_COLUMNS), index=traffic.index)
    for column in ("prediction_uuid", "model_version", "arm", "model_offer", "offer"):
        out[column] = out[column].astype("str")
    out["explored"] = out["explored"].astype("int64")
    out["propensity"] = out["propensity"].astype("float64")
    matrix = np.asarray(proba, dtype=np.float64).reshape(len(traffic), len(OFFERS))
    for k, column in enumerate(OFFER_PROBA_COLUMNS):
        out[column] = matrix[:, k]
    return out


def decide(config: LoopConfig, window: Window, endpoint: Endpoint, drift: Any = None) -> pd.DataFrame:
    """The window's decisions: ``prediction_log`` rows (without the partition column), each as
    the endpoint answered it."""
    traffic = simulate_traffic(config, window, drift)
    answers = ask_endpoint(endpoint, traffic, config.traffic.request_batch, window)
    frame = pd.concat([traffic, answers], axis=1)
    frame["deployment_crn"] = endpoint.deployment_crn
    return frame


# --------------------------------------------------------------------------------------------
# The warehouse


class OldTableError(RuntimeError):
    """A loop table written by an older version lacks a column that cannot be added."""


def ensure_tables(hook: Any) -> None:
    """Create the loop's tables (partitioned by ``window_start``) if they are missing. A
    ``prediction_log`` created by an older version gains the columns added since
    (:data:`PREDICTION_LOG_ADDED`; its old rows read NULL there); nothing is ever dropped."""
    dialect = dialect_for(hook)
    for table, schema in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA), (CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA),
                          (CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA), (RESPONSE_FEED, RESPONSE_FEED_SCHEMA)):
        dialect.create_table(hook, table, schema, partition_by=PARTITION)
    _, unaddable = add_missing_columns(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA, PREDICTION_LOG_ADDED)
    if unaddable:
        raise OldTableError(f"table {PREDICTION_LOG} was created by an older Model Factory without the column(s) "
                            f"{', '.join(unaddable)}, which cannot be added; on the embedded default `make clean` "
                            "starts afresh")


def read_partition(hook: Any, table: str, schema, key: str) -> pd.DataFrame:
    """One window's rows of a closed-loop table (partition equality on ``window_start``)."""
    return dialect_for(hook).read_frame(hook, table, schema, where={PARTITION: key})


def _records(frame: pd.DataFrame, schema, key: str) -> list[dict[str, Any]]:
    names = [c.name for c in schema]
    rows = frame.assign(**{PARTITION: key}).reindex(columns=names)
    return rows.to_dict("records")


# --------------------------------------------------------------------------------------------
# One window


@dataclass(frozen=True)
class WindowSummary:
    """What one window did (the task's return value; counts only)."""

    window_start: str
    window_end: str
    decided: bool  # False when the window's logged decisions were kept (a rerun)
    model_version: str
    deployment_crn: str
    customers: int
    explored: int
    offers: dict[str, int] = field(default_factory=dict)  # offers made
    model_offers: dict[str, int] = field(default_factory=dict)  # the deciding models' picks
    arms: dict[str, int] = field(default_factory=dict)  # decisions per arm (champion, challenger)
    responses: dict[str, int] = field(default_factory=dict)  # per status
    delayed_metrics_calls: int = 0
    matured: int = 0
    matured_conversions: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        offers = ", ".join(f"{o} {self.offers.get(o, 0)}" for o in OFFERS)
        picks = ", ".join(f"{o} {self.model_offers.get(o, 0)}" for o in OFFERS)
        arms = ", ".join(f"{a} {n}" for a, n in sorted(self.arms.items())) or "none logged"
        statuses = ", ".join(f"{s} {self.responses.get(s, 0)}" for s in RESPONSE_STATUSES)
        how = "decided now" if self.decided else "decisions kept from the earlier run"
        return (f"window {self.window_start} .. {self.window_end} ({how}; model {self.model_version}, "
                f"deployment {self.deployment_crn}):\n"
                f"  customers {self.customers}, explored by the endpoint {self.explored} "
                f"({self.explored / self.customers if self.customers else 0:.1%}); arms: {arms}\n"
                f"  offers made: {offers}\n  models' picks: {picks}\n"
                f"  responses arrived: {statuses}; delayed-metrics calls {self.delayed_metrics_calls}\n"
                f"  matured interactions: {self.matured} ({self.matured_conversions} converted)\n"
                f"  {self.seconds:.1f}s")


def run_window(
    hook: Any,
    config: LoopConfig,
    window: Window,
    endpoint: Callable[[], Endpoint],
    track_delayed_metrics: Callable[[dict[str, Any], str], Any],
    *,
    drift_enabled: bool | None = None,
) -> WindowSummary:
    """Decide, deliver and mature one window; replace its three partitions. See the module doc.

    ``endpoint`` is called only when the window has to be decided (not on a rerun that keeps
    the logged decisions); it raises :class:`NoServingModelError` when nothing is deployed.
    ``track_delayed_metrics(metrics, request_uuid)`` is CML's call of that name.
    """
    started = time.monotonic()
    ensure_tables(hook)
    drift = active_drift(config, window, drift_enabled)
    n = config.traffic.customers_per_window

    decisions = read_partition(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA, window.key)
    decided_now = len(decisions) != n
    if decided_now:
        if len(decisions):
            log.warning("window %s has %d logged decisions, the config asks for %d: deciding again",
                        window.key, len(decisions), n)
        target = endpoint()
        log.info("window %s: %d customers ask %s in requests of %d (drift %s); its answers are logged as given",
                 window.key, n, target.name, config.traffic.request_batch, "on" if drift is not None else "off")
        decisions = decide(config, window, target, drift)
    else:
        log.info("window %s was decided before (%d decisions): kept; responses and matured rows recomputed",
                 window.key, len(decisions))

    # Earlier windows: their logged decisions (to recompute what they still deliver) and the
    # responses already attached to them. Read back from the warehouse, one partition each.
    k_back = resp.lookback_windows(config.responses, window.length_ms)
    history: list[tuple[Window, pd.DataFrame]] = [(window, decisions)]
    attached_before: set[str] = set()
    for k in range(1, k_back + 1):
        earlier = window.earlier(k)
        history.append((earlier, read_partition(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA, earlier.key)))
        earlier_responses = read_partition(hook, CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA, earlier.key)
        attached_before |= set(earlier_responses.loc[earlier_responses["status"] == "attached", "prediction_uuid"])

    deliveries = []
    for w, logged in history:
        if len(logged):
            drawn = resp.draw_deliveries(logged, window_seed(config.traffic.seed, w), config.responses,
                                         active_drift(config, w, drift_enabled))
            deliveries.append(drawn[(drawn["responded_at_ms"] >= window.start_ms)
                                    & (drawn["responded_at_ms"] < window.end_ms)])
    deliveries.append(resp.draw_unknown(window_seed(config.traffic.seed, window), window.start_ms, window.end_ms,
                                        n, config.responses))
    arriving = pd.concat(deliveries, ignore_index=True)
    every_decision = pd.concat([d for _, d in history if len(d)], ignore_index=True)
    decided_at = dict(zip(every_decision["prediction_uuid"].tolist(),
                          every_decision["decided_at_ms"].astype("int64").tolist()))
    matched = resp.match_responses(arriving, decided_at, attached_before, config.responses)
    labelled = resp.matured(every_decision, window.start_ms, window.end_ms, attached_before | matched.attached,
                            config.responses)
    counts = matched.counts()
    for status in ("duplicate", "unknown", "expired"):
        if counts[status]:
            log.info("window %s: %d %s response(s) recorded and not attached", window.key, counts[status], status)

    # CML first (idempotent merges), then the warehouse: rows claim "attached" only once CML has it.
    calls = _send_delayed_metrics(sorted(matched.attached), track_delayed_metrics, window)

    dialect = dialect_for(hook)
    dialect.replace_partition(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA, PARTITION, window.key,
                              _records(decisions, PREDICTION_LOG_SCHEMA, window.key))
    dialect.replace_partition(hook, CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA, PARTITION, window.key,
                              _records(matched.rows, CUSTOMER_RESPONSES_SCHEMA, window.key))
    dialect.replace_partition(hook, CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA, PARTITION, window.key,
                              _records(labelled, CUSTOMER_INTERACTIONS_SCHEMA, window.key))
    # last: the window's responses are all in, monitoring may treat its labels as final
    dialect.replace_partition(hook, RESPONSE_FEED, RESPONSE_FEED_SCHEMA, PARTITION, window.key, [{
        PARTITION: window.key, "window_end_ms": window.end_ms, "responses": len(matched.rows),
        "recorded_at_ms": int(time.time() * 1000)}])

    versions = Counter(decisions["model_version"].tolist())
    crns = Counter(decisions["deployment_crn"].tolist())
    return WindowSummary(
        window_start=window.key, window_end=window_key(window.end), decided=decided_now,
        model_version=versions.most_common(1)[0][0] if versions else "",
        deployment_crn=crns.most_common(1)[0][0] if crns else "",
        customers=len(decisions), explored=int(decisions["explored"].sum()),
        offers={o: int(c) for o, c in Counter(decisions["offer"].tolist()).items()},
        model_offers={o: int(c) for o, c in Counter(decisions["model_offer"].tolist()).items()},
        arms={str(a): int(c) for a, c in Counter(decisions["arm"].dropna().tolist()).items()},
        responses=counts, delayed_metrics_calls=calls, matured=len(labelled),
        matured_conversions=int(labelled["conversion"].sum()) if len(labelled) else 0,
        seconds=round(time.monotonic() - started, 2),
    )


def _send_delayed_metrics(uuids: list[str], track: Callable[[dict[str, Any], str], Any], window: Window) -> int:
    """One ``track_delayed_metrics`` per request uuid: ``{"conversion.<index>": 1, ...}``.
    Local ids (``<window>/<n>:<i>``, a model without metrics) are not sent. A failure is a
    :class:`WorkspaceError` (the warehouse is not written yet; a retry sends the merges again)."""
    per_request: dict[str, dict[str, int]] = defaultdict(dict)
    for uuid in uuids:
        request, _, index = uuid.rpartition(":")
        if request and "/" not in request:
            per_request[request][f"conversion.{index}"] = 1
    for done, (request, metrics) in enumerate(sorted(per_request.items())):
        try:
            track(metrics, request)
        except Exception as exc:
            raise WorkspaceError(
                f"could not send the ground truth of window {window.key}'s attached responses to CML's model "
                f"metrics (track_delayed_metrics for request {request}, {done} of {len(per_request)} requests "
                f"sent): {type(exc).__name__}: {exc}. Nothing of window {window.key} was written; a retry "
                f"sends them again (the calls merge).") from exc
    return len(per_request)


def serving_deployment(hook: Any):
    """The deployment now serving (``model_deployments``' latest record), or a clear error."""
    from factory_tasks.warehouse.deployments import serving

    record = serving(hook)
    if record is None:
        raise NoServingModelError(
            f"no model is serving: the warehouse table model_deployments is empty, so there is no endpoint "
            f"to ask for next best offers; {DEPLOY_HINT}. Nothing was written.")
    return record


def endpoint_for(record: Any, call: Callable[[Mapping[str, Any]], Any], service_url: str) -> Endpoint:
    """The :class:`Endpoint` of a ``DeploymentRecord`` reached through ``call``."""
    name = (f"model {record.model_name} ({record.model_id}) version {record.model_version}, deployment "
            f"{record.deployment_id} at {service_url.rstrip('/')}/model")
    return Endpoint(call=call, name=name, deployment_crn=record.deployment_crn or record.deployment_id,
                    model_version=record.model_version)
