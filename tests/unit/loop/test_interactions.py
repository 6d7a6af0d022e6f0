"""customer_interactions' plain parts: traffic, exploration and propensities, delayed responses
(unknown / expired / duplicate, never double counted across windows), maturity, idempotent
reruns — against a real SQLite warehouse and a scripted stand-in of the endpoint."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core import schema
from factory_tasks.loop import interactions as ia
from factory_tasks.loop import responses as resp
from factory_tasks.loop import simulator
from factory_tasks.loop.cohorts import responses_ingested_through
from factory_tasks.loop.config import LoopConfig
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import (
    CUSTOMER_INTERACTIONS,
    CUSTOMER_INTERACTIONS_SCHEMA,
    CUSTOMER_RESPONSES,
    CUSTOMER_RESPONSES_SCHEMA,
    PREDICTION_LOG,
    PREDICTION_LOG_SCHEMA,
    RESPONSE_FEED,
    RESPONSE_FEED_SCHEMA,
)

T0 = datetime(2026, 12, 1, 6, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def config(**traffic) -> LoopConfig:
    return LoopConfig.model_validate({
        "traffic": {"customers_per_window": 400, "request_batch": 150, "exploration_share": 0.2, "seed": 5,
                    **traffic},
        "responses": {"window_minutes": 90, "delay_median_minutes": 35, "delay_sigma": 0.9,
                      "duplicate_share": 0.1, "unknown_share": 0.02},
    })


def window(k: int = 0) -> ia.Window:
    return ia.Window(T0 + k * HOUR, T0 + (k + 1) * HOUR)


class FakeModel:
    """Answers like the deployed entry point (``{"model_version", "predictions"}``) with one uuid
    per request; scores with the simulator's truth. ``fail_on`` = request number that raises."""

    def __init__(self, fail_on: int | None = None):
        self.requests = 0
        self.fail_on = fail_on
        self.ids = (f"{n:08x}-0000-4000-8000-000000000000" for n in itertools.count(1))

    def __call__(self, request):
        self.requests += 1
        if self.requests == self.fail_on:
            raise RuntimeError("HTTP 503 from the model service")
        customers = pd.DataFrame(request["customers"])
        proba = simulator.offer_probabilities(customers)
        ev = schema.expected_values(proba, schema.DEFAULT_ECONOMICS)
        predictions = [{"customer_id": cid,
                        "offers": {o: {"conversion_probability": float(p[k]), "expected_value": float(e[k])}
                                   for k, o in enumerate(schema.OFFERS)},
                        "next_best_offer": schema.OFFERS[int(np.argmax(e))], "expected_value": float(e.max())}
                       for cid, p, e in zip(customers["customer_id"], proba, ev)]
        return SimpleNamespace(prediction={"model_version": "v-test", "predictions": predictions}, uuid=next(self.ids))


def endpoint_of(model: FakeModel):
    return lambda: ia.Endpoint(call=model, name="model next-best-offer (m-1), deployment d-1 at http://ms/model",
                               deployment_crn="crn:d-1", model_version="v-test")


class Metrics:
    def __init__(self):
        self.calls: list[tuple[dict, str]] = []

    def __call__(self, metrics, uuid):
        self.calls.append((dict(metrics), uuid))


def table(hook, name, schema) -> pd.DataFrame:
    """All rows of a table in a stable order (a replaced partition comes back in another one)."""
    frame = dialect_for(hook).read_frame(hook, name, schema)
    keys = [c for c in ("window_start", "prediction_uuid", "responded_at_ms", "status") if c in frame]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------


def test_propensities_sum_to_one_and_match_the_offer_made():
    eps = 0.3
    p = ia.offer_propensities(np.array([0, 1, 2, 1]), eps)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.allclose(p[0], [1 - eps + eps / 3, eps / 3, eps / 3])
    model = np.asarray(schema.OFFERS, dtype=object)[np.arange(30_000) % 3]
    offers, explored, propensity = ia.choose_offers(model, eps, seed=1)
    assert abs(explored.mean() - eps) < 0.01
    same = offers == model
    assert np.allclose(propensity[same], 1 - eps + eps / 3) and np.allclose(propensity[~same], eps / 3)
    assert (explored[~same] == 1).all()  # only exploration changes an offer
    # explored offers are uniform: about a third of the explored keep the model's pick
    assert abs(same[explored == 1].mean() - 1 / 3) < 0.03
    assert ia.choose_offers(model, 0.0, seed=1)[1].sum() == 0


def test_traffic_is_deterministic_per_window_and_spread_over_it():
    cfg = config()
    a, b = ia.simulate_traffic(cfg, window(0)), ia.simulate_traffic(cfg, window(0))
    pd.testing.assert_frame_equal(a, b)
    other = ia.simulate_traffic(cfg, window(1))
    assert not np.array_equal(a["history"].to_numpy(), other["history"].to_numpy())
    w = window(0)
    assert a["decided_at_ms"].between(w.start_ms, w.end_ms - 1).all() and a["decided_at_ms"].is_monotonic_increasing
    assert a["customer_id"].is_unique and len(a) == 400
    assert ia.window_seed(5, window(0)) != ia.window_seed(6, window(0))


def test_window_key_and_earlier_windows():
    w = ia.Window.parse("2026-12-01T06:00:00Z", "2026-12-01T07:00:00+00:00")
    assert w.key == "2026-12-01T06:00:00Z" and w.earlier(2).key == "2026-12-01T04:00:00Z"
    with pytest.raises(ValueError, match="end after"):
        ia.Window(T0, T0)
    assert resp.lookback_windows(config().responses, 3_600_000) == 3  # 2 x 90 min in hours


def test_matching_counts_unknown_expired_duplicate_and_never_attaches_twice():
    cfg = config().responses  # window_minutes 90
    m = resp.MINUTE_MS
    arriving = pd.DataFrame({
        "prediction_uuid": ["a:0", "a:0", "b:1", "nobody:0", "c:2", "d:0"],
        "decided_at_ms": [0, 0, 0, -1, 0, 0],
        "responded_at_ms": [10 * m, 20 * m, 91 * m, 5 * m, 30 * m, 40 * m],
    })
    decided = {"a:0": 0, "b:1": 0, "c:2": 0, "d:0": 0}
    matched = resp.match_responses(arriving, decided, attached_before={"d:0"}, responses=cfg)
    status = dict(zip(zip(matched.rows["prediction_uuid"], matched.rows["responded_at_ms"]), matched.rows["status"]))
    assert status[("a:0", 10 * m)] == "attached" and status[("a:0", 20 * m)] == "duplicate"
    assert status[("b:1", 91 * m)] == "expired" and status[("nobody:0", 5 * m)] == "unknown"
    assert status[("d:0", 40 * m)] == "duplicate"  # attached in an earlier window
    assert matched.attached == {"a:0", "c:2"}
    assert matched.counts() == {"attached": 2, "duplicate": 2, "unknown": 1, "expired": 1}


def test_maturity_labels_decisions_whose_window_closed():
    cfg = config().responses
    m = resp.MINUTE_MS
    decisions = pd.DataFrame({"prediction_uuid": ["x:0", "y:0", "z:0"], "customer_id": ["1", "2", "3"],
                              "decided_at_ms": [0, 30 * m, 61 * m]})
    done = resp.matured(decisions, 90 * m, 150 * m, attached={"y:0"}, responses=cfg)
    assert list(done["prediction_uuid"]) == ["x:0", "y:0"] and list(done["conversion"]) == [0, 1]


def test_deliveries_are_reproducible_and_only_from_converters():
    cfg = config()
    w = window(0)
    model = FakeModel()
    decisions = ia.decide(cfg, w, endpoint_of(model)())
    seed = ia.window_seed(cfg.traffic.seed, w)
    one = resp.draw_deliveries(decisions, seed, cfg.responses)
    shuffled = resp.draw_deliveries(decisions.sample(frac=1, random_state=3), seed, cfg.responses)
    pd.testing.assert_frame_equal(one, shuffled)
    firsts = one.drop_duplicates("prediction_uuid")
    assert 0.05 < len(firsts) / len(decisions) < 0.35  # conversion rates of the simulator
    assert (one["responded_at_ms"] > one["decided_at_ms"]).all()
    assert len(one) - len(firsts) > 0  # duplicate_share 0.1: some delivered twice


def test_a_window_writes_three_tables_and_a_rerun_leaves_the_same_rows(hook):
    cfg = config()
    model, metrics = FakeModel(), Metrics()
    summary = ia.run_window(hook, cfg, window(0), endpoint_of(model), metrics)
    assert model.requests == 3  # 400 customers in requests of 150
    log = table(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA)
    assert len(log) == 400 and log["prediction_uuid"].is_unique and set(log["window_start"]) == {"2026-12-01T06:00:00Z"}
    assert log["prediction_uuid"].str.match(r"^[0-9a-f-]{36}:\d+$").all()
    assert set(log["prediction_uuid"].str.rsplit(":", n=1).str[1].astype(int)) == set(range(150))
    assert (log["deployment_crn"] == "crn:d-1").all() and (log["model_version"] == "v-test").all()
    assert ((log[["p_bogo", "p_discount", "p_none"]] >= 0) & (log[["p_bogo", "p_discount", "p_none"]] <= 1)).all().all()
    eps = cfg.traffic.exploration_share
    kept = log["offer"] == log["model_offer"]
    assert np.allclose(log.loc[kept, "propensity"], 1 - eps + eps / 3) and np.allclose(log.loc[~kept, "propensity"], eps / 3)
    assert summary.customers == 400 and summary.explored == int(log["explored"].sum())
    assert sum(summary.offers.values()) == 400
    responses = table(hook, CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA)
    assert summary.responses["attached"] == (responses["status"] == "attached").sum() > 0
    assert summary.responses["unknown"] > 0 or cfg.responses.unknown_share == 0
    w = window(0)
    assert responses["responded_at_ms"].between(w.start_ms, w.end_ms - 1).all()
    # the first window matures nothing yet (90-minute response window, one-hour windows)
    assert summary.matured == 0
    # delayed metrics: one call per request uuid, a key per attached customer
    attached = responses.loc[responses["status"] == "attached", "prediction_uuid"]
    sent = {(uuid, key) for metrics_sent, uuid in metrics.calls for key in metrics_sent}
    assert sent == {(u.rsplit(":", 1)[0], f"conversion.{u.rsplit(':', 1)[1]}") for u in attached}
    assert summary.delayed_metrics_calls == len(metrics.calls)
    # the feed's watermark, written last: monitoring may take this window's labels as final
    feed = table(hook, RESPONSE_FEED, RESPONSE_FEED_SCHEMA)
    assert feed[["window_start", "window_end_ms", "responses"]].values.tolist() == [
        ["2026-12-01T06:00:00Z", w.end_ms, len(responses)]]
    assert responses_ingested_through(hook) == w.end_ms

    before = {t: table(hook, t, s) for t, s in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA),
                                               (CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA))}
    again = ia.run_window(hook, cfg, window(0), endpoint_of(model), Metrics())
    assert model.requests == 3 and again.decided is False  # the logged decisions are kept
    for t, s in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA), (CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA)):
        pd.testing.assert_frame_equal(table(hook, t, s), before[t])
    assert {**again.as_dict(), "seconds": 0, "decided": True} == {**summary.as_dict(), "seconds": 0}


def test_windows_in_a_row_attach_each_uuid_once_and_mature_every_decision_once(hook):
    cfg = config()
    model = FakeModel()
    assert responses_ingested_through(hook) is None  # no feed yet
    summaries = [ia.run_window(hook, cfg, window(k), endpoint_of(model), Metrics()) for k in range(5)]
    assert responses_ingested_through(hook) == window(4).end_ms
    assert len(table(hook, RESPONSE_FEED, RESPONSE_FEED_SCHEMA)) == 5
    log = table(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA)
    responses = table(hook, CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA)
    matured = table(hook, CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA)
    attached = responses[responses["status"] == "attached"]
    assert attached["prediction_uuid"].is_unique  # never double counted, across windows too
    assert (responses["status"] == "duplicate").sum() > 0 and (responses["status"] == "expired").sum() > 0
    # duplicates across windows: some duplicate's uuid was attached in an earlier window
    first_attached = attached.set_index("prediction_uuid")["window_start"]
    dup = responses[(responses["status"] == "duplicate") & responses["prediction_uuid"].isin(first_attached.index)]
    assert (dup["window_start"].to_numpy() > first_attached.loc[dup["prediction_uuid"]].to_numpy()).any()
    # unknown uuids are exactly the ones nobody issued
    unknown = responses[responses["status"] == "unknown"]
    assert not unknown["prediction_uuid"].isin(log["prediction_uuid"]).any()
    assert responses.loc[responses["status"] != "unknown", "prediction_uuid"].isin(log["prediction_uuid"]).all()
    # every decision whose 90-minute window closed by the end of window 4 matured exactly once
    closes = log["decided_at_ms"] + 90 * resp.MINUTE_MS
    due = log[closes < window(4).end_ms]
    assert matured["prediction_uuid"].is_unique and set(matured["prediction_uuid"]) == set(due["prediction_uuid"])
    assert set(matured.loc[matured["conversion"] == 1, "prediction_uuid"]) == \
        set(attached["prediction_uuid"]) & set(due["prediction_uuid"])
    # the training schema, with the logged propensity
    joined = matured.merge(log, on="prediction_uuid", suffixes=("", "_log"))
    assert np.allclose(joined["propensity"], joined["propensity_log"]) and (joined["offer"] == joined["offer_log"]).all()
    assert sum(s.matured for s in summaries) == len(matured)

    # rerunning a middle window changes nothing anywhere
    snapshot = {t: table(hook, t, s) for t, s in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA),
                                                 (CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA),
                                                 (CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA))}
    ia.run_window(hook, cfg, window(2), endpoint_of(model), Metrics())
    for t, s in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA), (CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA),
                 (CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA)):
        pd.testing.assert_frame_equal(table(hook, t, s), snapshot[t])
    assert len(table(hook, RESPONSE_FEED, RESPONSE_FEED_SCHEMA)) == 5  # replaced, not added
    assert responses_ingested_through(hook) == window(4).end_ms  # a rerun never moves it back


def test_no_deployment_is_a_clear_error_and_writes_nothing(hook):
    def nothing_serving():
        return ia.serving_deployment(hook)

    with pytest.raises(ia.NoServingModelError, match="deploy_best_model"):
        ia.run_window(hook, config(), window(0), nothing_serving, Metrics())
    assert table(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA).empty


def test_endpoint_failing_mid_window_names_it_and_leaves_nothing(hook):
    model, metrics = FakeModel(fail_on=2), Metrics()
    with pytest.raises(ia.EndpointError, match=r"deployment d-1 at http://ms/model, request 2 of 3.*503"):
        ia.run_window(hook, config(), window(0), endpoint_of(model), metrics)
    for name, table_schema in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA), (CUSTOMER_RESPONSES, CUSTOMER_RESPONSES_SCHEMA),
                         (CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA), (RESPONSE_FEED, RESPONSE_FEED_SCHEMA)):
        assert table(hook, name, table_schema).empty
    assert metrics.calls == []


def test_a_workspace_down_while_sending_delayed_metrics_names_it_and_leaves_nothing(hook):
    import socket

    import tenacity
    from cml_provider.hooks.model_metrics import CmlModelMetricsHook

    with socket.socket() as sock:  # a port nothing listens on: the workspace went down
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    metrics = CmlModelMetricsHook.from_url(down, "key", local_workspace=True,
                                           retry_args={"wait": tenacity.wait_none()})
    with pytest.raises(ia.WorkspaceError) as info:
        ia.run_window(hook, config(), window(0), endpoint_of(FakeModel()), metrics.track_delayed_metrics)
    message = str(info.value)
    assert message.startswith("could not send the ground truth of window 2026-12-01T06:00:00Z's attached responses "
                              "to CML's model metrics (track_delayed_metrics for request ")
    assert ", 0 of " in message and f"{down}/ could not be reached" in message and "Connection refused" in message
    assert "Nothing of window 2026-12-01T06:00:00Z was written" in message
    for name, table_schema in ((PREDICTION_LOG, PREDICTION_LOG_SCHEMA), (RESPONSE_FEED, RESPONSE_FEED_SCHEMA)):
        assert table(hook, name, table_schema).empty


def test_a_refused_request_is_an_endpoint_error(hook):
    def refuse(request):
        return SimpleNamespace(prediction={"error": {"field": "customers[0].history", "message": "bad"}}, uuid="u")

    target = lambda: ia.Endpoint(call=refuse, name="model m", deployment_crn="c", model_version="v")  # noqa: E731
    with pytest.raises(ia.EndpointError, match="refused.*customers\\[0\\].history"):
        ia.run_window(hook, config(), window(0), target, Metrics())


def test_drift_applies_from_its_start_only():
    cfg = LoopConfig.model_validate({"drift": {"enabled": True, "start": "2026-12-01T07:00:00Z"}})
    assert ia.active_drift(cfg, window(0)) is None
    drift = ia.active_drift(cfg, window(1))
    assert drift is not None and drift.offer == "Discount" and drift.log_odds_change == -1.2
    assert ia.active_drift(cfg, window(1), enabled=False) is None
    off = LoopConfig.model_validate({"drift": {"enabled": False, "start": "2026-12-01T07:00:00Z"}})
    assert ia.active_drift(off, window(1)) is None and ia.active_drift(off, window(1), enabled=True) is not None


def test_drift_moves_the_customer_mix_of_the_traffic():
    cfg = LoopConfig.model_validate({
        "traffic": {"customers_per_window": 4000, "seed": 5},
        "drift": {"enabled": True, "start": "2026-12-01T00:00:00Z",
                  "channel_shares": {"Web": 0.7, "Phone": 0.22, "Multichannel": 0.08}}})
    drifted = ia.simulate_traffic(cfg, window(0), ia.active_drift(cfg, window(0)))
    base = ia.simulate_traffic(cfg, window(0))
    assert abs((drifted["channel"] == "Web").mean() - 0.70) < 0.03
    assert abs((base["channel"] == "Web").mean() - 0.44) < 0.03


def test_the_shipped_settings_look_back_six_hourly_windows():
    from factory_tasks.loop.config import load_loop_config

    cfg = load_loop_config()
    assert resp.lookback_windows(cfg.responses, 3_600_000) == 6  # 2 x 180 minutes
