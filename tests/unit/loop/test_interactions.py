"""customer_interactions' plain parts: traffic, logging the endpoint's decisions as answered (arm,
offer, exploration, propensity; the caller draws nothing), delayed responses (unknown / expired /
duplicate, never double counted across windows), maturity, idempotent reruns, an old
prediction_log gaining the arm column — against a real SQLite warehouse and a scripted
stand-in of the endpoint that serves the real policy (factory_tasks.serving.policy)."""

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
from factory_tasks.loop.config import LoopConfig, LoopConfigError, load_loop_config
from factory_tasks.serving.policy import Policy
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
        "traffic": {"customers_per_window": 400, "request_batch": 150, "seed": 5, **traffic},
        "responses": {"window_minutes": 90, "delay_median_minutes": 35, "delay_sigma": 0.9,
                      "duplicate_share": 0.1, "unknown_share": 0.02},
    })


def window(k: int = 0) -> ia.Window:
    return ia.Window(T0 + k * HOUR, T0 + (k + 1) * HOUR)


EPSILON = 0.2


class FakeModel:
    """Answers like the deployed entry point (``{"model_version", "policy", "predictions"}``) with
    one uuid per request: the champion scores with the simulator's truth, the challenger (share
    ``challenger_share``, sticky by customer id) with a noisy copy, and the real serving
    :class:`Policy` draws the arms and the exploration (``epsilon``). ``answers`` keeps every
    prediction it gave; ``fail_on`` = request number that raises."""

    def __init__(self, fail_on: int | None = None, *, epsilon: float = EPSILON, challenger_share: float = 0.0):
        self.requests = 0
        self.fail_on = fail_on
        self.ids = (f"{n:08x}-0000-4000-8000-000000000000" for n in itertools.count(1))
        self.policy = Policy(epsilon=epsilon, challenger_share=challenger_share,
                             test_id="v-test:v-challenger" if challenger_share else "", seed=17)
        self.answers: list[dict] = []

    def __call__(self, request):
        self.requests += 1
        if self.requests == self.fail_on:
            raise RuntimeError("HTTP 503 from the model service")
        customers = pd.DataFrame(request["customers"])
        draws = self.policy.draw(customers["customer_id"].tolist())
        proba = simulator.offer_probabilities(customers)
        noisy = np.clip(proba * np.exp(np.random.default_rng(self.requests).normal(0, 0.5, proba.shape)), 0, 1)
        proba = np.where(draws.challenger[:, None], noisy, proba)
        ev = schema.expected_values(proba, schema.DEFAULT_ECONOMICS)
        best = np.argmax(ev, axis=1)
        made, propensity, every = self.policy.decide(best, draws)
        predictions = [{"customer_id": cid,
                        "offers": {o: {"conversion_probability": float(p[k]), "expected_value": float(e[k])}
                                   for k, o in enumerate(schema.OFFERS)},
                        "next_best_offer": schema.OFFERS[b], "expected_value": float(e[b]),
                        "arm": schema.ARMS[arm], "model_version": ("v-test", "v-challenger")[arm],
                        "offer": schema.OFFERS[m], "explored": bool(x), "propensity": float(q),
                        "offer_propensities": dict(zip(schema.OFFERS, map(float, qs)))}
                       for cid, p, e, b, arm, m, x, q, qs in zip(
                           customers["customer_id"], proba, ev, best, draws.challenger.astype(int), made,
                           draws.explored, propensity, every)]
        self.answers += predictions
        return SimpleNamespace(prediction={"model_version": "v-test", "policy": self.policy.describe(),
                                           "predictions": predictions}, uuid=next(self.ids))


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


def test_what_the_endpoint_answered_is_what_is_logged():
    model = FakeModel(challenger_share=0.3)
    decisions = ia.decide(config(), window(0), endpoint_of(model)())
    answered = pd.DataFrame(model.answers)
    assert len(decisions) == len(answered) == 400
    assert decisions["customer_id"].tolist() == answered["customer_id"].tolist()
    assert decisions["offer"].tolist() == answered["offer"].tolist()
    assert decisions["model_offer"].tolist() == answered["next_best_offer"].tolist()
    assert decisions["arm"].tolist() == answered["arm"].tolist()
    assert decisions["model_version"].tolist() == answered["model_version"].tolist()  # the deciding model's
    assert decisions["explored"].tolist() == answered["explored"].astype(int).tolist()
    assert decisions["propensity"].tolist() == answered["propensity"].tolist()  # exactly, not recomputed
    for k, o in enumerate(schema.OFFERS):
        column = ("p_bogo", "p_discount", "p_none")[k]
        assert decisions[column].tolist() == [a[o]["conversion_probability"] for a in answered["offers"]]
    # both arms and exploration happened, and the logged propensities follow the policy's rule
    assert set(decisions["arm"]) == {"champion", "challenger"} and 0 < decisions["explored"].sum() < 400
    assert set(decisions.loc[decisions["arm"] == "challenger", "model_version"]) == {"v-challenger"}
    kept = decisions["offer"] == decisions["model_offer"]
    assert np.allclose(decisions.loc[kept, "propensity"], 1 - EPSILON + EPSILON / 3)
    assert np.allclose(decisions.loc[~kept, "propensity"], EPSILON / 3)


def test_the_caller_draws_no_offer_of_its_own():
    # an endpoint that does not explore: every logged offer is its greedy pick, propensity 1
    greedy = ia.decide(config(), window(0), endpoint_of(FakeModel(epsilon=0.0))())
    assert (greedy["offer"] == greedy["model_offer"]).all() and (greedy["explored"] == 0).all()
    assert (greedy["propensity"] == 1.0).all() and set(greedy["arm"]) == {"champion"}
    # the same customers asked again: only the endpoint's draws differ, the caller adds none
    for seed in (1, 2):
        model = FakeModel()
        model.policy = Policy(epsilon=EPSILON, seed=seed)
        logged = ia.decide(config(), window(0), endpoint_of(model)())
        assert logged["offer"].tolist() == [a["offer"] for a in model.answers]


@pytest.mark.parametrize("change, field", [
    ({"arm": "exploration"}, "'arm' is 'exploration'"),
    ({"offer": "Free Lunch"}, "'offer' is 'Free Lunch'"),
    ({"propensity": 0.0}, "'propensity' is 0.0"),
    ({"propensity": "0.5"}, "'propensity' is '0.5'"),
    ({"explored": 1}, "'explored' is 1"),
    ({"model_version": ""}, "'model_version' is ''"),
    ({"explored": False, "offer": "No Offer", "next_best_offer": "Discount"}, "although 'explored' is false"),
    (None, "'offer' is missing"),
])
def test_an_answer_that_is_not_a_policy_decision_is_an_endpoint_error_naming_the_field(change, field):
    def answer(request):
        predictions = []
        for c in request["customers"]:
            p = {"customer_id": c["customer_id"],
                 "offers": {o: {"conversion_probability": 0.1, "expected_value": 1.0} for o in schema.OFFERS},
                 "next_best_offer": "Discount", "expected_value": 1.0, "arm": "champion", "model_version": "v",
                 "offer": "Discount", "explored": False, "propensity": 1.0}
            if change is None:  # a model deployed before the policy: no policy fields
                p = {k: v for k, v in p.items() if k not in ("arm", "offer", "explored", "propensity")}
            else:
                p.update(change)
            predictions.append(p)
        return SimpleNamespace(prediction={"model_version": "v", "predictions": predictions}, uuid="u")

    target = ia.Endpoint(call=answer, name="model m", deployment_crn="c", model_version="v")
    with pytest.raises(ia.EndpointError, match="not a policy's decision") as info:
        ia.decide(config(), window(0), target)
    assert field in str(info.value) and "customer 20261201T060000Z-000000" in str(info.value)


def test_exploration_is_no_longer_a_caller_setting(tmp_path):
    old = tmp_path / "loop.yaml"
    old.write_text("traffic:\n  customers_per_window: 10\n  exploration_share: 0.1\n")
    with pytest.raises(LoopConfigError, match="exploration_share is no longer a caller's setting.*exploration_epsilon"):
        load_loop_config(old)
    assert "exploration_share" not in LoopConfig().traffic.model_dump()


def test_an_old_prediction_log_gains_the_arm_column_and_keeps_its_rows(hook):
    from factory_tasks.warehouse.loop_tables import PREDICTION_LOG_ADDED

    dialect = dialect_for(hook)
    before = tuple(c for c in PREDICTION_LOG_SCHEMA if c.name not in PREDICTION_LOG_ADDED)
    dialect.create_table(hook, PREDICTION_LOG, before, partition_by="window_start")
    cfg = config()
    old = ia.decide(cfg, window(-1), endpoint_of(FakeModel())()).drop(columns=["arm"])
    dialect.replace_partition(hook, PREDICTION_LOG, before, "window_start", window(-1).key,
                              ia._records(old, before, window(-1).key))
    assert "arm" not in dialect.columns(hook, PREDICTION_LOG)

    summary = ia.run_window(hook, cfg, window(0), endpoint_of(FakeModel()), Metrics())
    assert dialect.columns(hook, PREDICTION_LOG)[-1] == "arm"
    log = table(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA)
    old_rows, new_rows = log[log["window_start"] == window(-1).key], log[log["window_start"] == window(0).key]
    assert len(old_rows) == len(new_rows) == 400 and old_rows["arm"].isna().all()
    assert set(new_rows["arm"]) == {"champion"} and summary.arms == {"champion": 400}
    # the old window's responses still arrive and mature from its logged rows
    assert summary.responses["attached"] > 0
    # a rerun of the old window keeps its decisions (arm still NULL) and works on the new table
    again = ia.run_window(hook, cfg, window(-1), endpoint_of(FakeModel()), Metrics())
    assert again.decided is False and again.arms == {}
    assert table(hook, PREDICTION_LOG, PREDICTION_LOG_SCHEMA).query("window_start == @window(-1).key")["arm"].isna().all()


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
    eps = EPSILON  # the endpoint's
    assert (log["arm"] == "champion").all() and summary.arms == {"champion": 400}
    answered = {a["customer_id"]: a for a in model.answers}
    assert log["propensity"].tolist() == [answered[c]["propensity"] for c in log["customer_id"]]
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
