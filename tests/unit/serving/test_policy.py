"""The serving policy: champion / sticky challenger arms, epsilon-exploration on top, exact
propensities; its configuration from the deployment's environment; the request fields it owns."""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factory_tasks.core.schema import OFFERS
from factory_tasks.loop.shadow import logging_propensities
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.serving.compiled import save_compiled
from factory_tasks.serving.endpoint import ServingEntryPoint
from factory_tasks.serving.loading import PolicyConfig, ServingConfig, ServingConfigError, economics_from_metadata
from factory_tasks.serving.policy import CHALLENGER, CHAMPION, Policy, arm_hash
from factory_tasks.serving.scoring import ArmModel, NextBestOfferModel
from factory_tasks.training.artifacts import save_model
from factory_tasks.training.features import build_pipeline, feature_frame

REPO = Path(__file__).resolve().parents[3]
ECONOMICS = {"conversion_value": 100.0, "offer_costs": {"Buy One Get One": 4.0, "Discount": 8.0, "No Offer": 0.0}}
CHAMPION_VERSION, CHALLENGER_VERSION = "champ-00000000-11111111", "chall-22222222-33333333"


def customer(i=None, **changes):
    base = {"recency": 1 + (i or 0) % 12, "history": 250.0, "used_discount": 1, "used_bogo": 0,
            "zip_code": "Urban", "is_referral": 0, "channel": "Web"}
    if i is not None:
        base["customer_id"] = f"c-{i}"
    base.update(changes)
    return base


def anonymous(i):
    """Customer ``i`` without an id: its arm is drawn per request."""
    return {k: v for k, v in customer(i).items() if k != "customer_id"}


class TableScorer:
    """P(conversion | customer, offer) from a table indexed by ``recency % 3``: a scorer whose
    answer depends on the customer only, so subsets of a batch score as the whole does."""

    def __init__(self, name, table):
        self.name = name
        self.table = np.asarray(table, dtype=np.float64)
        self.calls = []

    def offer_proba_columns(self, columns, n):
        self.calls.append(n)
        return self.table[np.asarray(columns["recency"]) % 3]


# EVs (value 100, costs 4 / 8 / 0): champion picks BOGO, Discount, No Offer by recency % 3;
# the challenger picks Discount, No Offer, BOGO — so the arms disagree on every customer
CHAMPION_TABLE = [[0.20, 0.10, 0.05], [0.10, 0.30, 0.05], [0.05, 0.05, 0.20]]
CHALLENGER_TABLE = [[0.10, 0.30, 0.05], [0.05, 0.05, 0.20], [0.20, 0.10, 0.05]]


def policy_model(share=0.0, epsilon=0.0, seed=7, test_id="test-1", challenger=True):
    economics = economics_from_metadata(ECONOMICS, "test")
    return NextBestOfferModel(
        TableScorer("champ", CHAMPION_TABLE), economics, CHAMPION_VERSION,
        challenger=(ArmModel(TableScorer("chall", CHALLENGER_TABLE), economics, CHALLENGER_VERSION)
                    if challenger else None),
        policy=Policy(challenger_share=share, epsilon=epsilon, test_id=test_id, seed=seed))


def ask(model, customers, batch=1000):
    out = []
    for start in range(0, len(customers), batch):
        response = model.predict({"customers": customers[start:start + batch]})
        assert "predictions" in response, response
        out.extend(response["predictions"])
    return out


# --------------------------------------------------------------------------------------------
# The rule


def test_the_closed_loop_recovers_every_offers_propensity_from_a_logged_answer():
    # the closed loop logs (greedy pick, offer made, its propensity) as answered; the shadow
    # evaluation rebuilds all three propensities from them: they must be the policy's own
    rng = np.random.default_rng(0)
    greedy = rng.integers(0, 3, 500)
    for epsilon in (0.0, 0.1, 0.5, 0.99):
        policy = Policy(epsilon=epsilon, seed=1)
        made, propensity, every = policy.decide(greedy, policy.draw([f"c{i}" for i in range(500)]))
        np.testing.assert_allclose(logging_propensities(greedy, made, propensity), every, atol=1e-12)


def test_the_hash_is_uniform_in_0_1_and_depends_on_the_test_id():
    values = np.array([arm_hash("t", f"c-{i}") for i in range(20_000)])
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 4 * (1 / 12 / len(values)) ** 0.5
    counts, _ = np.histogram(values, bins=10, range=(0, 1))
    assert ((counts - 2000) ** 2 / 2000).sum() < 27.9  # chi-square, 9 dof, p = 0.001
    other = np.array([arm_hash("t2", f"c-{i}") for i in range(20_000)])
    # another test is another split: the two assignments at share 0.3 are independent
    both = ((values < 0.3) & (other < 0.3)).mean()
    assert abs(both - 0.09) < 4 * (0.09 * 0.91 / 20_000) ** 0.5


@pytest.mark.parametrize(("share", "epsilon"), [(0.3, 0.2), (0.5, 0.05), (0.0, 0.3)])
def test_chosen_offer_frequencies_match_the_returned_propensities(share, epsilon):
    model = policy_model(share, epsilon, seed=20_261_206)
    predictions = ask(model, [customer(i) for i in range(20_000)])

    arms = np.array([p["arm"] for p in predictions])
    n_challenger = (arms == CHALLENGER).sum()
    se = (share * (1 - share) / len(arms)) ** 0.5
    assert abs(n_challenger / len(arms) - share) <= max(4.5 * se, 1e-12)  # the hash's split
    for p in predictions:
        props = p["offer_propensities"]
        assert list(props) == list(OFFERS)
        assert sum(props.values()) == pytest.approx(1.0, abs=1e-12)
        assert p["propensity"] == props[p["offer"]]
        greedy = p["next_best_offer"]
        # exact: (1 - epsilon) on the arm's greedy pick plus epsilon / 3 on each offer
        assert props == {o: (1 - epsilon) * (o == greedy) + epsilon / 3 for o in OFFERS}
        if not p["explored"]:
            assert p["offer"] == greedy
    # per arm and greedy pick, each offer's frequency equals its (constant) propensity
    checked = 0
    for arm in (CHAMPION, CHALLENGER):
        for greedy in OFFERS:
            rows = [p for p in predictions if p["arm"] == arm and p["next_best_offer"] == greedy]
            if not rows:
                continue
            counts = np.array([sum(p["offer"] == o for p in rows) for o in OFFERS], dtype=float)
            expected = np.array([rows[0]["offer_propensities"][o] for o in OFFERS]) * len(rows)
            chi2 = ((counts - expected) ** 2 / expected).sum()
            assert chi2 < 13.8, (arm, greedy, counts, expected)  # 2 dof, p = 0.001
            checked += 1
    assert checked == (6 if share else 3)
    explored = np.mean([p["explored"] for p in predictions])
    assert abs(explored - epsilon) <= 4.5 * (epsilon * (1 - epsilon) / len(predictions)) ** 0.5


def test_the_deciding_model_scores_its_arm():
    model = policy_model(0.5, 0.0)
    predictions = ask(model, [customer(i) for i in range(300)], batch=100)

    by_arm = {CHAMPION: (CHAMPION_TABLE, CHAMPION_VERSION), CHALLENGER: (CHALLENGER_TABLE, CHALLENGER_VERSION)}
    for i, p in enumerate(predictions):
        table, version = by_arm[p["arm"]]
        assert p["model_version"] == version
        assert [p["offers"][o]["conversion_probability"] for o in OFFERS] == table[(1 + i % 12) % 3]
        assert (p["offer"], p["propensity"], p["explored"]) == (p["next_best_offer"], 1.0, False)
    assert {p["arm"] for p in predictions} == {CHAMPION, CHALLENGER}
    # one model call per arm present in a batch
    assert len(model.scorer.calls) == len(model.challenger.scorer.calls) == 3
    assert sum(model.scorer.calls) + sum(model.challenger.scorer.calls) == 300


def test_without_challenger_and_exploration_nothing_is_drawn():
    model = policy_model(0.0, 0.0, challenger=False)
    state = model.policy._rng.bit_generator.state

    response = model.predict({"customers": [customer(1), anonymous(2), customer(3)]})

    assert model.policy._rng.bit_generator.state == state
    assert response["policy"] == {"test_id": "test-1", "challenger_share": 0.0, "epsilon": 0.0,
                                  "champion": CHAMPION_VERSION, "challenger": None}
    for p in response["predictions"]:
        assert (p["arm"], p["offer"], p["propensity"]) == (CHAMPION, p["next_best_offer"], 1.0)
        assert p["offer_propensities"][p["next_best_offer"]] == 1.0


# --------------------------------------------------------------------------------------------
# Stickiness


def test_a_customer_keeps_its_arm_across_requests_batches_and_seeds():
    ids = list(range(400))
    first = {p["customer_id"]: p["arm"] for p in ask(policy_model(0.4, 0.3, seed=1), [customer(i) for i in ids])}
    again = policy_model(0.4, 0.3, seed=2)  # another replica: another generator
    for order in (ids[::-1], ids[::7], [5] * 20):
        for p in ask(again, [customer(i) for i in order], batch=37):
            assert p["arm"] == first[p["customer_id"]]
        for i in order[:10]:  # and one customer per request
            (p,) = again.predict(customer(i))["predictions"]
            assert p["arm"] == first[p["customer_id"]]
    assert 0.3 < sum(a == CHALLENGER for a in first.values()) / len(first) < 0.5


def test_the_arm_is_the_same_in_another_process():
    ids = [f"c-{i}" for i in range(50)] + ["ü-ñ", "x" * 256]
    here = [arm_hash("exp-7", cid) for cid in ids]
    code = ("import json, sys; from factory_tasks.serving.policy import arm_hash; "
            "print(json.dumps([arm_hash('exp-7', c) for c in json.load(sys.stdin)]))")
    for hash_seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True)
        assert json.loads(out.stdout) == here


def test_customers_without_an_id_are_assigned_per_request():
    model = policy_model(0.3, 0.0, seed=3)
    arms = [model.predict(customer())["predictions"][0]["arm"] for _ in range(4000)]
    share = np.mean([a == CHALLENGER for a in arms])
    assert abs(share - 0.3) < 4.5 * (0.3 * 0.7 / 4000) ** 0.5


def test_a_seed_reproduces_the_draws():
    customers = [anonymous(i) if i % 2 else customer(i) for i in range(500)]
    first, second = (ask(policy_model(0.5, 0.5, seed=11), customers) for _ in range(2))
    assert first == second
    assert first != ask(policy_model(0.5, 0.5, seed=12), customers)


def test_the_policy_refuses_bad_values():
    for kwargs, message in (({"challenger_share": 1.0}, "0 <= challenger_share < 1"),
                            ({"epsilon": -0.1}, "0 <= epsilon < 1"), ({"epsilon": float("nan")}, "epsilon"),
                            ({"challenger_share": 0.2}, "needs a test id")):
        with pytest.raises(ValueError, match=message):
            Policy(**kwargs)
    with pytest.raises(ValueError, match="needs a challenger model"):
        policy_model(0.2, challenger=False)


# --------------------------------------------------------------------------------------------
# The request: the policy's fields are never sent

BAD_REQUESTS = [
    ("the arm, forced", customer(1, arm="challenger"), "arm", "the arm is decided by the endpoint's policy"),
    ("the arm in a batch row", {"customers": [customer(1), customer(2), customer(3, arm="champion")]},
     "customers[2].arm", "a hash of customer_id"),
    ("the offer made", customer(1, offer="Discount"), "offer", "the offer made is decided"),
    ("explored", {"customers": [customer(1, explored=False)]}, "customers[0].explored", "exploration is decided"),
    ("a propensity", customer(1, propensity=1.0), "propensity", "the propensity is decided"),
    ("the propensities", customer(1, offer_propensities={"Discount": 1.0}), "offer_propensities",
     "the propensities are decided"),
    ("a model version, to pick the model", customer(1, model_version=CHALLENGER_VERSION), "model_version",
     "the deciding model is the endpoint's answer"),
    ("the next best offer", customer(1, next_best_offer="Discount"), "next_best_offer", "the endpoint's answer"),
    ("epsilon per customer", customer(1, epsilon=0.0), "epsilon", "set by the deployment (MF_EXPLORATION_EPSILON)"),
    ("epsilon beside the batch", {"customers": [customer(1)], "epsilon": 0.0}, "epsilon",
     'only "customers" (exploration is set by the deployment (MF_EXPLORATION_EPSILON)'),
    ("a share beside the batch", {"customers": [customer(1)], "challenger_share": 0.0}, "challenger_share",
     "MF_CHALLENGER_SHARE"),
    ("a test id", {"customers": [customer(1)], "test_id": "t"}, "test_id", "MF_POLICY_TEST_ID"),
    ("a seed", customer(1, seed=3), "seed", "MF_POLICY_SEED"),
    ("a padded customer id", customer(1, customer_id=" c-1"), "customer_id", "must not start or end with whitespace"),
    ("a padded id in a batch", {"customers": [customer(1), customer(2, customer_id="c-2\n")]},
     "customers[1].customer_id", "a hash of the exact id"),
    ("a null customer id (omit it instead)", customer(1, customer_id=None), "customer_id", "must be a string"),
    ("a numeric customer id", customer(1, customer_id=42), "customer_id", "must be a string"),
    ("an over-long customer id", customer(1, customer_id="x" * 257), "customer_id", "1 to 256 characters"),
]


@pytest.mark.parametrize(("request_", "field", "message"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_touching_the_policy_is_an_error_naming_the_field(request_, field, message):
    tracked = []
    model = policy_model(0.3, 0.1)
    model._track = lambda key, value: tracked.append((key, value))

    response = model.predict(request_)

    assert set(response) == {"error"}
    assert response["error"]["field"] == field
    assert message in response["error"]["message"]
    assert tracked == [("error_field", field)]
    json.dumps(response, allow_nan=False)


# --------------------------------------------------------------------------------------------
# The configuration, from the deployment's environment

BAD_CONFIGS = [
    ({"MF_CHALLENGER_SHARE": "a third"}, "MF_CHALLENGER_SHARE='a third' is not a number"),
    ({"MF_CHALLENGER_SHARE": "1"}, "MF_CHALLENGER_SHARE='1' is out of range"),
    ({"MF_CHALLENGER_SHARE": "-0.1"}, "MF_CHALLENGER_SHARE='-0.1' is out of range"),
    ({"MF_CHALLENGER_SHARE": "nan"}, "MF_CHALLENGER_SHARE='nan' is out of range"),
    ({"MF_CHALLENGER_SHARE": "0.2"}, "MF_CHALLENGER_SHARE=0.2 but MF_CHALLENGER_ARTIFACT is not set"),
    ({"MF_CHALLENGER_ARTIFACT": "b/model.skops"}, "MF_CHALLENGER_SHARE is not set"),
    ({"MF_CHALLENGER_ARTIFACT": "b/model.skops", "MF_CHALLENGER_SHARE": "0.2", "MF_CHALLENGER_DIR": "c"},
     "MF_CHALLENGER_DIR='c' is not the folder of MF_CHALLENGER_ARTIFACT"),
    ({"MF_CHALLENGER_ARTIFACT": "a/model.skops", "MF_CHALLENGER_SHARE": "0.2"},
     "MF_CHALLENGER_ARTIFACT names the champion's own file"),
    ({"MF_CHALLENGER_VERSION": "v2"}, "MF_CHALLENGER_VERSION is set but MF_CHALLENGER_ARTIFACT is not"),
    ({"MF_CHALLENGER_DIR": "b"}, "MF_CHALLENGER_DIR is set but MF_CHALLENGER_ARTIFACT is not"),
    ({"MF_EXPLORATION_EPSILON": "10%"}, "MF_EXPLORATION_EPSILON='10%' is not a number"),
    ({"MF_EXPLORATION_EPSILON": "1.0"}, "MF_EXPLORATION_EPSILON='1.0' is out of range"),
    ({"MF_EXPLORATION_EPSILON": "inf"}, "MF_EXPLORATION_EPSILON='inf' is out of range"),
    ({"MF_POLICY_SEED": "abc"}, "MF_POLICY_SEED='abc' is not a whole number"),
    ({"MF_POLICY_SEED": "-1"}, "MF_POLICY_SEED='-1' is not a whole number >= 0"),
    ({"MF_POLICY_TEST_ID": "t" * 129}, "MF_POLICY_TEST_ID is 129 characters long"),
    ({"MF_CHALLENGER_ARTIFACT": "nosuch://b/model.skops", "MF_CHALLENGER_SHARE": "0.1"},
     "MF_CHALLENGER_ARTIFACT='nosuch://b/model.skops' cannot be read"),
]


@pytest.mark.parametrize(("environ", "message"), BAD_CONFIGS)
def test_a_bad_policy_configuration_names_the_variable(environ, message, tmp_path):
    with pytest.raises(ServingConfigError) as caught:
        PolicyConfig.from_environ({"MF_MODEL_ARTIFACT": "a/model.skops", **environ}, cwd=tmp_path)
    assert str(caught.value).startswith(message)  # the variable first, then what is wrong


def test_the_default_policy_is_todays_endpoint(tmp_path):
    assert PolicyConfig.from_environ({"MF_MODEL_ARTIFACT": "a/model.skops"}, cwd=tmp_path) == PolicyConfig()
    config = PolicyConfig.from_environ({
        "MF_CHALLENGER_ARTIFACT": "b/model.skops", "MF_CHALLENGER_SHARE": " 0.25 ", "MF_CHALLENGER_VERSION": "v2",
        "MF_EXPLORATION_EPSILON": "0.1", "MF_POLICY_TEST_ID": "ab-1", "MF_POLICY_SEED": "42"}, cwd=tmp_path)
    assert config == PolicyConfig(challenger=ServingConfig(tmp_path / "b/model.skops", tmp_path / "b", "v2"),
                                  challenger_share=0.25, epsilon=0.1, test_id="ab-1", seed=42)
    assert PolicyConfig.from_environ({"MF_CHALLENGER_SHARE": "0"}).challenger_share == 0.0  # 0 without one: fine


# --------------------------------------------------------------------------------------------
# Two real models, loaded once from the deployment's environment


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    data = simulate_interactions(1500, seed=21)
    root = tmp_path_factory.mktemp("policy-models")
    dirs = {}
    for name, version, params, compile_it in (
            ("champion", CHAMPION_VERSION, {"C": 1.0, "max_iter": 1000}, False),
            ("challenger", CHALLENGER_VERSION, {"C": 0.01, "max_iter": 1000}, True)):
        pipeline = build_pipeline("LogisticRegression", params, random_state=0).fit(
            feature_frame(data), data["conversion"])
        save_model(pipeline, root / name, {"economics": ECONOMICS, "model_version": version})
        if compile_it:
            path, reason = save_compiled(pipeline, root / name, data.head(300))
            assert path is not None, reason
        dirs[name] = root / name
    return dirs


def two_model_environ(dirs, **extra):
    return {"MF_MODEL_ARTIFACT": str(dirs["champion"] / "model.skops"), "MF_MODEL_VERSION": CHAMPION_VERSION,
            "MF_CHALLENGER_ARTIFACT": str(dirs["challenger"] / "model.skops"),
            "MF_CHALLENGER_DIR": str(dirs["challenger"]), "MF_CHALLENGER_VERSION": CHALLENGER_VERSION,
            "MF_CHALLENGER_SHARE": "0.5", "MF_EXPLORATION_EPSILON": "0.1", "MF_POLICY_SEED": "5", **extra}


def test_an_entry_point_serves_two_models(two_models, monkeypatch):
    tracked = []
    entry = ServingEntryPoint(environ=two_model_environ(two_models), track_metric=lambda k, v: tracked.append((k, v)))

    check = entry.build_check()
    assert check["arms"][CHAMPION] == {"model_version": CHAMPION_VERSION, "scorer": "skops",
                                       "scorer_reason": "no model.onnx beside the model"}
    assert check["arms"][CHALLENGER]["model_version"] == CHALLENGER_VERSION
    assert check["arms"][CHALLENGER]["scorer"] == "onnx"  # each arm its own scorer
    assert set(check["arms"]) == {CHAMPION, CHALLENGER}
    assert check["policy"] == {"test_id": f"{CHAMPION_VERSION}:{CHALLENGER_VERSION}", "challenger_share": 0.5,
                               "epsilon": 0.1, "champion": CHAMPION_VERSION, "challenger": CHALLENGER_VERSION}
    entry.predict(customer(1))  # warm up both arms
    entry.predict(customer(4))
    before = set(sys.modules)

    def no_files(*args, **kwargs):
        raise AssertionError(f"the hot path opened {args[:1]}")

    monkeypatch.setattr(builtins, "open", no_files)
    monkeypatch.setattr(io, "open", no_files)
    response = entry.predict({"customers": [customer(i) for i in range(200)] + [customer()]})
    monkeypatch.undo()
    assert set(sys.modules) == before

    predictions = response["predictions"]
    assert response["model_version"] == CHAMPION_VERSION
    assert {p["arm"] for p in predictions} == {CHAMPION, CHALLENGER}
    for p in predictions:
        assert p["model_version"] == {CHAMPION: CHAMPION_VERSION, CHALLENGER: CHALLENGER_VERSION}[p["arm"]]
        assert sum(p["offer_propensities"].values()) == pytest.approx(1.0, abs=1e-12)
    json.dumps(response, allow_nan=False)
    metrics = dict(tracked)
    assert metrics["arms"] == [p["arm"] for p in predictions]
    assert metrics["offers"] == [p["offer"] for p in predictions]
    assert metrics["propensities"] == [p["propensity"] for p in predictions]
    assert metrics["explored"] == [p["explored"] for p in predictions]
    assert metrics["model_versions"] == [p["model_version"] for p in predictions]
    assert metrics["test_id"] == f"{CHAMPION_VERSION}:{CHALLENGER_VERSION}"

    other = ServingEntryPoint(environ=two_model_environ(two_models, MF_POLICY_SEED="6"))
    assert [p["arm"] for p in other.predict({"customers": [customer(i) for i in range(200)]})["predictions"]] == [
        p["arm"] for p in predictions[:200]]


def test_a_challenger_that_is_the_champion_is_refused(two_models):
    environ = two_model_environ(two_models, MF_CHALLENGER_VERSION=CHAMPION_VERSION)
    with pytest.raises(ServingConfigError, match="MF_CHALLENGER_VERSION='champ-.*' but .* is model version 'chall-"):
        ServingEntryPoint(environ=environ).build_check()

    twin = two_models["challenger"].parent / "twin"
    twin.mkdir(exist_ok=True)
    (twin / "model.skops").write_bytes((two_models["champion"] / "model.skops").read_bytes())
    (twin / "model.metadata.json").write_bytes((two_models["champion"] / "model.metadata.json").read_bytes())
    environ = two_model_environ(two_models, MF_CHALLENGER_ARTIFACT=str(twin / "model.skops"), MF_CHALLENGER_DIR="",
                                MF_CHALLENGER_VERSION="")
    entry = ServingEntryPoint(environ=environ)
    with pytest.raises(ServingConfigError, match=r"the challenger \(MF_CHALLENGER_ARTIFACT\) is model version"):
        entry.build_check()
    assert "the model is not loaded: ServingConfigError" in entry.predict(customer(1))["error"]["message"]


def test_a_bad_policy_fails_the_build_check_naming_the_variable(two_models):
    entry = ServingEntryPoint(environ=two_model_environ(two_models, MF_EXPLORATION_EPSILON="0.5.1"))
    with pytest.raises(ServingConfigError, match="^MF_EXPLORATION_EPSILON='0.5.1' is not a number"):
        entry.build_check()
    response = entry.predict(customer(1))
    assert response["error"]["field"] is None and "MF_EXPLORATION_EPSILON" in response["error"]["message"]
