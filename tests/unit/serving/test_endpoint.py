"""Serving the next best offer: request validation, scoring, loading once, the entry point file."""

from __future__ import annotations

import builtins
import importlib.util
import io
import itertools
import json
import re
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

from factory_tasks.core.names import MODEL_ENTRY_POINT, MODEL_FUNCTION
from factory_tasks.core.schema import CUSTOMER_COLUMNS, DEFAULT_ECONOMICS, OFFERS
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.serving import requests as serving_requests
from factory_tasks.serving.compiled import ONNX_FILENAME, save_compiled
from factory_tasks.serving.endpoint import ServingEntryPoint, load_model_service, resolve_cml
from factory_tasks.serving.loading import ServingConfig, ServingConfigError, economics_from_metadata
from factory_tasks.serving.requests import EXAMPLE_REQUEST, MAX_CUSTOMERS, RequestError, parse_request
from factory_tasks.serving.scoring import NextBestOfferModel, PipelineScorer
from factory_tasks.training import artifacts
from factory_tasks.training.artifacts import save_model
from factory_tasks.training.features import build_pipeline, counterfactual_proba, feature_frame

REPO = Path(__file__).resolve().parents[3]
VERSION = "0123456789abcdef-feedf00d-c0dec0de"
ECONOMICS = {"conversion_value": 100.0, "offer_costs": {"Buy One Get One": 4.0, "Discount": 8.0, "No Offer": 0.0}}


def customer(**changes):
    base = {"customer_id": "c-1", "recency": 6, "history": 250.0, "used_discount": 1, "used_bogo": 0,
            "zip_code": "Urban", "is_referral": 0, "channel": "Web"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


@pytest.fixture(scope="module")
def data():
    return simulate_interactions(1500, seed=11)


@pytest.fixture(scope="module")
def pipeline(data):
    return build_pipeline("LogisticRegression", {"C": 1.0, "max_iter": 1000}, random_state=0).fit(
        feature_frame(data), data["conversion"])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, pipeline, data):
    """The same model saved twice: skops only, and skops + model.onnx."""
    root = tmp_path_factory.mktemp("models")
    plain, with_onnx = root / "plain", root / "onnx"
    for directory in (plain, with_onnx):
        save_model(pipeline, directory, {"economics": ECONOMICS, "model_version": VERSION, "estimator": "LogisticRegression"})
    path, reason = save_compiled(pipeline, with_onnx, data.head(300))
    assert path is not None, reason
    return {"skops": plain, "onnx": with_onnx}


def load(directory, **env):
    environ = {"MF_MODEL_ARTIFACT": str(directory / artifacts.MODEL_FILENAME), **env}
    return load_model_service(ServingConfig.from_environ(environ))


# --------------------------------------------------------------------------------------------
# Request validation

BAD_REQUESTS = [
    ("missing field", customer(history=_DROP), "history", "is required"),
    ("missing field in a batch row", {"customers": [customer(), customer(), customer(), customer(channel=_DROP)]},
     "customers[3].channel", "is required"),
    ("wrong type: string for a number", {"customers": [customer(), customer(history="250")]},
     "customers[1].history", "must be a number"),
    ("wrong type: float for an int", customer(recency=6.5), "recency", "whole number of months"),
    ("bool where int", customer(recency=True), "recency", "got a boolean (true)"),
    ("bool where a 0/1 flag", customer(used_bogo=False), "used_bogo", "must be 0 or 1, got a boolean"),
    ("flag out of range", customer(is_referral=2), "is_referral", "must be 0 or 1"),
    ("recency out of range", customer(recency=13), "recency", "between 1 and 12"),
    ("recency zero", customer(recency=0), "recency", "between 1 and 12"),
    ("unknown channel", customer(channel="web"), "channel", "unknown channel 'web'; valid: 'Web', 'Phone', 'Multichannel'. Did you mean 'Web'?"),
    ("unknown zip code (the usual spelling)", customer(zip_code="Suburban"), "zip_code", "Did you mean 'Surburban'?"),
    ("zip code not a string", customer(zip_code=12345), "zip_code", "must be one of"),
    ("negative spend", {"customers": [customer(), customer(), customer(), customer(history=-1.0)]},
     "customers[3].history", "must be >= 0"),
    ("NaN", customer(history=float("nan")), "history", "must be a finite number, got NaN"),
    ("infinity", customer(history=float("inf")), "history", "finite"),
    ("absurd spend", customer(history=10**400), "history", "must be <="),
    ("an int too long to print", customer(history=10**5000), "history", "too large to show"),
    ("null", customer(used_discount=None), "used_discount", "got null"),
    ("empty batch", {"customers": []}, "customers", "at least 1 customer"),
    ("oversized batch", {"customers": [customer()] * (MAX_CUSTOMERS + 1)}, "customers",
     f"holds {MAX_CUSTOMERS + 1} customers; at most {MAX_CUSTOMERS}"),
    ("customers not a list", {"customers": customer()}, "customers", "must be a list"),
    ("request not an object", [customer()], "request", "must be a JSON object"),
    ("request a string", json.dumps(customer()), "request", "must be a JSON object"),
    ("batch row not an object", {"customers": [customer(), "c-2"]}, "customers[1]", "must be an object"),
    ("unknown field", customer(offer="Discount"), "offer", "unknown field"),
    ("unknown field, a typo", {"customers": [customer(histroy=5.0)]}, "customers[0].histroy", "Did you mean 'history'?"),
    ("unknown field beside customers", {"customers": [customer()], "model": "x"}, "model", "only \"customers\""),
    ("single customer sent under the wrong key", {"customer": customer()}, "customer", "A request is one customer object"),
    ("customer_id not a string", customer(customer_id=17), "customer_id", "must be a string"),
    ("customer_id empty", customer(customer_id=""), "customer_id", "1 to 256 characters"),
]


@pytest.mark.parametrize(("request_", "field", "message"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_is_a_structured_error_naming_the_field(request_, field, message, model_dirs):
    model = load(model_dirs["skops"])

    response = model.predict(request_)

    assert set(response) == {"error"}
    assert response["error"]["field"] == field
    assert message in response["error"]["message"]
    assert "Traceback" not in response["error"]["message"]
    json.dumps(response, allow_nan=False)


def test_validation_covers_every_customer_column():
    assert {name for name, _ in serving_requests._CHECKS} == set(CUSTOMER_COLUMNS)


def test_a_valid_batch_parses_into_columns():
    batch = parse_request({"customers": [customer(customer_id="a"), customer(customer_id=_DROP, history=30, zip_code="Rural")]})

    assert batch.customer_ids == ["a", None]
    assert batch.columns["history"].dtype == np.float64 and batch.columns["history"].tolist() == [250.0, 30.0]
    assert batch.columns["recency"].dtype == np.int64
    assert batch.columns["zip_code"].tolist() == ["Urban", "Rural"]


def test_the_largest_batch_is_accepted():
    assert parse_request({"customers": [customer()] * MAX_CUSTOMERS}).n == MAX_CUSTOMERS


def test_the_first_problem_is_reported_in_field_order():
    with pytest.raises(RequestError) as caught:
        parse_request({"customers": [customer(recency=True, history=_DROP)]})
    assert caught.value.field == "customers[0].recency"


# --------------------------------------------------------------------------------------------
# Scoring every offer


class FixedScorer:
    name = "fixed"

    def __init__(self, proba):
        self.proba = np.asarray(proba, dtype=np.float64)
        self.calls = []

    def offer_proba_columns(self, columns, n):
        self.calls.append(n)
        return self.proba[:n]


def test_expected_values_and_the_next_best_offer_by_hand():
    # OFFERS order: Buy One Get One, Discount, No Offer; value 100, costs 4 / 8 / 0
    proba = [[0.20, 0.25, 0.10],   # EV 16, 17, 10       -> Discount
             [0.15, 0.18, 0.13],   # EV 11, 10, 13       -> No Offer
             [0.12, 0.16, 0.08]]   # EV 8, 8, 8 (a tie)  -> Buy One Get One, the first in OFFERS order
    scorer = FixedScorer(proba)
    model = NextBestOfferModel(scorer, economics_from_metadata(ECONOMICS, "test"), "v-test")

    response = model.predict({"customers": [customer(customer_id="a"), customer(customer_id="b"), customer(customer_id="c")]})

    assert scorer.calls == [3]  # one model call for the batch
    assert response["model_version"] == "v-test"
    first, second, third = response["predictions"]
    assert first["customer_id"] == "a"
    assert first["offers"] == {
        "Buy One Get One": {"conversion_probability": 0.20, "expected_value": pytest.approx(16.0)},
        "Discount": {"conversion_probability": 0.25, "expected_value": pytest.approx(17.0)},
        "No Offer": {"conversion_probability": 0.10, "expected_value": pytest.approx(10.0)},
    }
    assert (first["next_best_offer"], first["expected_value"]) == ("Discount", pytest.approx(17.0))
    assert (second["next_best_offer"], second["expected_value"]) == ("No Offer", pytest.approx(13.0))
    assert [third["offers"][o]["expected_value"] for o in OFFERS] == pytest.approx([8.0, 8.0, 8.0])
    assert third["next_best_offer"] == "Buy One Get One"


def test_other_economics_change_the_decision():
    scorer = FixedScorer([[0.20, 0.25, 0.10]])
    cheap_discount = {"conversion_value": 50.0, "offer_costs": {"Buy One Get One": 0.0, "Discount": 0.5, "No Offer": 0.0}}
    model = NextBestOfferModel(scorer, economics_from_metadata(cheap_discount, "test"), "v")

    (prediction,) = model.predict(customer())["predictions"]

    assert prediction["next_best_offer"] == "Discount"
    assert prediction["expected_value"] == pytest.approx(0.25 * 50 - 0.5)
    assert prediction["offers"]["Buy One Get One"]["expected_value"] == pytest.approx(10.0)


def test_the_skops_scorer_equals_counterfactual_proba(pipeline, data):
    customers = data.head(25)
    batch = parse_request({"customers": [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in customers[list(CUSTOMER_COLUMNS)].to_dict("records")
    ]})

    proba = PipelineScorer(pipeline).offer_proba_columns(batch.columns, batch.n)

    np.testing.assert_allclose(proba, counterfactual_proba(pipeline, customers), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scorer", ["skops", "onnx"])
def test_single_and_batch_answer_the_same(scorer, model_dirs):
    model = load(model_dirs[scorer])
    assert model.scorer_name == scorer
    others = [customer(customer_id=f"c-{i}", recency=1 + i % 12, channel=("Web", "Phone", "Multichannel")[i % 3])
              for i in range(2, 7)]

    single = model.predict(customer())
    batch = model.predict({"customers": [customer(), *others]})

    assert single["model_version"] == batch["model_version"] == VERSION
    assert len(single["predictions"]) == 1 and len(batch["predictions"]) == 6
    first, alone = batch["predictions"][0], single["predictions"][0]
    assert (first["customer_id"], first["next_best_offer"]) == (alone["customer_id"], alone["next_best_offer"])
    for offer in OFFERS:
        assert first["offers"][offer] == pytest.approx(alone["offers"][offer], rel=1e-9, abs=1e-12)
    for prediction in batch["predictions"]:
        assert set(prediction) == {"customer_id", "offers", "next_best_offer", "expected_value",  # as before
                                   "arm", "model_version", "offer", "explored", "propensity", "offer_propensities"}
        # the default policy (no challenger, epsilon 0) makes the champion's next best offer
        assert (prediction["arm"], prediction["model_version"], prediction["explored"]) == ("champion", VERSION, False)
        assert prediction["offer"] == prediction["next_best_offer"] and prediction["propensity"] == 1.0
        assert list(prediction["offers"]) == list(OFFERS)
        evs = {o: v["expected_value"] for o, v in prediction["offers"].items()}
        assert prediction["expected_value"] == max(evs.values()) == evs[prediction["next_best_offer"]]
        for offer, values in prediction["offers"].items():
            assert 0.0 < values["conversion_probability"] < 1.0
            expected = values["conversion_probability"] * 100.0 - ECONOMICS["offer_costs"][offer]
            assert values["expected_value"] == pytest.approx(expected)
    json.dumps(batch, allow_nan=False)


def test_the_compiled_and_skops_paths_agree(model_dirs):
    request = {"customers": [customer(customer_id=f"c-{i}", history=30.0 + 97.3 * i, used_bogo=i % 2,
                                      zip_code=("Surburban", "Urban", "Rural")[i % 3]) for i in range(40)]}
    via_skops = load(model_dirs["skops"]).predict(request)["predictions"]
    via_onnx = load(model_dirs["onnx"]).predict(request)["predictions"]
    for a, b in zip(via_skops, via_onnx):
        for offer in OFFERS:
            assert a["offers"][offer]["conversion_probability"] == pytest.approx(
                b["offers"][offer]["conversion_probability"], abs=1e-5)


def test_predictions_are_tracked(model_dirs):
    tracked = []
    model = load_model_service(
        ServingConfig.from_environ({"MF_MODEL_ARTIFACT": str(model_dirs["skops"] / "model.skops")}),
        track_metric=lambda key, value: tracked.append((key, value)))

    response = model.predict({"customers": [customer(customer_id="a"), customer(customer_id="b", used_bogo=1)]})
    metrics = dict(tracked)

    assert metrics["model_version"] == VERSION and metrics["n_customers"] == 2
    assert metrics["customer_ids"] == ["a", "b"]
    assert metrics["next_best_offers"] == [p["next_best_offer"] for p in response["predictions"]]
    assert metrics["conversion_probabilities"] == [
        p["offers"][p["next_best_offer"]]["conversion_probability"] for p in response["predictions"]]
    assert metrics["expected_values"] == [p["expected_value"] for p in response["predictions"]]
    json.dumps(metrics, allow_nan=False)

    tracked.clear()
    model.predict(customer(history=-1))
    assert tracked == [("error_field", "history")]


def test_a_failing_metrics_call_does_not_fail_the_prediction(model_dirs):
    def broken(key, value):
        raise ConnectionError("metrics store down")

    model = load(model_dirs["skops"])
    model._track = broken
    assert "predictions" in model.predict(customer())


def test_a_failure_inside_is_an_error_without_a_traceback(caplog):
    class Exploding:
        name = "exploding"

        def offer_proba_columns(self, columns, n):
            raise KeyError("secret internals")

    model = NextBestOfferModel(Exploding(), economics_from_metadata(ECONOMICS, "t"), "v")

    response = model.predict(customer())

    assert response == {"error": {"field": None,
                                  "message": "internal error while scoring (KeyError); see the model's log"}}
    assert "secret internals" in caplog.text  # the traceback is in the log


def test_a_request_no_rule_foresaw_is_still_an_answer(model_dirs):
    class Hostile(dict):
        def __getitem__(self, key):
            raise RuntimeError("boom")

    response = load(model_dirs["skops"]).predict(Hostile(customer()))

    assert response == {"error": {"field": "request", "message": "could not be read (RuntimeError)"}}


def test_non_finite_probabilities_are_never_returned():
    model = NextBestOfferModel(FixedScorer([[np.nan, 0.1, 0.1]]), economics_from_metadata(ECONOMICS, "t"), "v")
    response = model.predict(customer())
    assert response["error"]["field"] is None


@pytest.mark.parametrize("scorer", ["skops", "onnx"])
def test_the_hot_path_imports_nothing_and_reads_no_file(scorer, model_dirs, monkeypatch):
    model = load(model_dirs[scorer])
    model.predict(customer())  # warm up
    before = set(sys.modules)

    def no_files(*args, **kwargs):
        raise AssertionError(f"the hot path opened {args[:1]}")

    monkeypatch.setattr(builtins, "open", no_files)
    monkeypatch.setattr(io, "open", no_files)
    response = model.predict({"customers": [customer(), customer(customer_id="x", history=1234.5)]})
    monkeypatch.undo()

    assert "predictions" in response, response
    assert set(sys.modules) == before


# --------------------------------------------------------------------------------------------
# Loading: once, from the deployment's environment, with the right scorer


def test_the_compiled_model_is_used_when_it_agrees(model_dirs, caplog):
    caplog.set_level("INFO", logger="factory_tasks.serving.endpoint")
    assert load(model_dirs["onnx"]).scorer_name == "onnx"
    assert "scoring with onnx (model.onnx agrees with model.skops" in caplog.text
    assert load(model_dirs["skops"]).scorer_name == "skops"


def test_a_stale_or_broken_onnx_file_falls_back_to_skops(model_dirs, data, tmp_path, caplog):
    other = build_pipeline("RandomForestClassifier", {"n_estimators": 5}, random_state=0).fit(
        feature_frame(data), data["conversion"])
    stale = tmp_path / "stale"
    save_model(other, stale, {"economics": ECONOMICS, "model_version": VERSION})
    (stale / ONNX_FILENAME).write_bytes((model_dirs["onnx"] / ONNX_FILENAME).read_bytes())  # the LR's

    model = load(stale)

    assert model.scorer_name == "skops"
    assert "differs from model.skops" in model.scorer_reason

    (stale / ONNX_FILENAME).write_bytes(b"not onnx")
    assert load(stale).scorer_name == "skops"


def test_the_artifact_is_loaded_once(model_dirs, monkeypatch):
    loads = []
    real = artifacts.load_model
    monkeypatch.setattr(artifacts, "load_model", lambda path: loads.append(path) or real(path))
    entry = ServingEntryPoint(environ={"MF_MODEL_ARTIFACT": str(model_dirs["onnx"] / "model.skops")})
    assert loads == []  # nothing at construction (a CML build imports without the files)

    entry.build_check()
    for _ in range(5):
        assert "predictions" in entry.predict(customer())
    entry.predict({"customers": []})

    assert loads == [model_dirs["onnx"] / "model.skops"]


def test_config_paths_relative_absolute_and_file_urls(tmp_path):
    project = tmp_path / "project"
    relative = ServingConfig.from_environ({"MF_MODEL_ARTIFACT": "models/v1/model.skops"}, cwd=project)
    assert relative.artifact == project / "models/v1/model.skops"
    assert relative.model_dir == project / "models/v1"
    assert relative.remote_artifact is None

    # as the deploy DAG's object store writes them: "file://" + the path, not percent-encoded
    url = ServingConfig.from_environ({"MF_MODEL_ARTIFACT": f"file://{project}/models/v 1%/model.skops",
                                      "MF_MODEL_DIR": "models/v 1%", "MF_MODEL_VERSION": " v1 "}, cwd=project)
    assert url.artifact == project / "models/v 1%/model.skops"
    assert url.model_dir == project / "models/v 1%"
    assert url.model_version == "v1"
    assert url.remote_artifact is None


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "MF_MODEL_ARTIFACT is not set"),
    ({"MF_MODEL_ARTIFACT": "  "}, "MF_MODEL_ARTIFACT is not set"),
    ({"MF_MODEL_ARTIFACT": "nosuchprotocol://bucket/model.skops"}, "cannot be read: Protocol not known"),
    ({"MF_MODEL_ARTIFACT": "file://otherhost/m/model.skops"}, "needs an absolute path"),
    ({"MF_MODEL_ARTIFACT": "a/model.skops", "MF_MODEL_DIR": "b"}, "is not the folder of MF_MODEL_ARTIFACT"),
    ({"MF_MODEL_ARTIFACT": "memory://m/a/model.skops", "MF_MODEL_DIR": "memory://m/b"}, "is not the folder of"),
    ({"MF_MODEL_ARTIFACT": "memory://m/a/model.skops", "MF_MODEL_DIR": "a"}, "is not the folder of"),
])
def test_bad_deployment_environments_are_named(environ, message, tmp_path):
    with pytest.raises(ServingConfigError, match=message):
        ServingConfig.from_environ(environ, cwd=tmp_path)


@pytest.mark.parametrize("scorer", ["skops", "onnx"])
def test_a_model_in_remote_object_storage_is_fetched_once_at_load(scorer, model_dirs, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the local cache folder

    memory = fsspec.filesystem("memory")
    remote = f"/bucket-{scorer}/models/{VERSION}"
    for f in model_dirs[scorer].iterdir():
        memory.pipe_file(f"{remote}/{f.name}", f.read_bytes())
    environ = {"MF_MODEL_ARTIFACT": f"memory://{remote}/model.skops", "MF_MODEL_DIR": f"memory://{remote}",
               "MF_MODEL_VERSION": VERSION}
    config = ServingConfig.from_environ(environ)
    assert config.remote_artifact == environ["MF_MODEL_ARTIFACT"]
    assert config.model_dir.is_relative_to(tmp_path / "mf-model-cache")
    (config.model_dir).mkdir(parents=True, exist_ok=True)
    (config.model_dir / ONNX_FILENAME).write_bytes(b"stale")  # left from an earlier replica
    loads = []
    real = artifacts.load_model
    monkeypatch.setattr(artifacts, "load_model", lambda path: loads.append(path) or real(path))

    entry = ServingEntryPoint(environ=environ)
    check = entry.build_check()
    entry.predict(customer())

    assert check["scorer"] == scorer and check["model_version"] == VERSION
    assert loads == [config.artifact]
    assert (config.model_dir / ONNX_FILENAME).exists() == (scorer == "onnx")
    memory.rm(f"/bucket-{scorer}", recursive=True)


def test_a_remote_model_without_metadata_is_named(model_dirs, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    memory = fsspec.filesystem("memory")
    memory.pipe_file("/bucket-bare/m/model.skops", (model_dirs["skops"] / "model.skops").read_bytes())
    entry = ServingEntryPoint(environ={"MF_MODEL_ARTIFACT": "memory://bucket-bare/m/model.skops"})

    with pytest.raises(FileNotFoundError, match="no model file at memory://bucket-bare/m/model.metadata.json"):
        entry.build_check()
    memory.rm("/bucket-bare", recursive=True)


def test_the_model_version_comes_from_the_environment_or_the_metadata(pipeline, model_dirs, tmp_path):
    assert load(model_dirs["skops"]).model_version == VERSION
    assert load(model_dirs["skops"], MF_MODEL_VERSION=VERSION).model_version == VERSION
    with pytest.raises(ServingConfigError, match="points at another model's files"):
        load(model_dirs["skops"], MF_MODEL_VERSION="something-else")

    unversioned = tmp_path / "unversioned"
    save_model(pipeline, unversioned, {"economics": ECONOMICS})
    assert load(unversioned, MF_MODEL_VERSION="v9").model_version == "v9"
    with pytest.raises(ServingConfigError, match="no model version"):
        load(unversioned)


@pytest.mark.parametrize(("economics", "message"), [
    (None, "has no economics"),
    ({"conversion_value": 100.0, "offer_costs": {"Discount": 8.0}}, "invalid economics"),
    ({"conversion_value": -1.0, "offer_costs": ECONOMICS["offer_costs"]}, "invalid economics"),
])
def test_the_economics_must_be_in_the_metadata(economics, message, pipeline, tmp_path):
    save_model(pipeline, tmp_path, {"model_version": "v", **({"economics": economics} if economics else {})})
    with pytest.raises(ServingConfigError, match=message):
        load(tmp_path)


def test_default_economics_are_what_the_grid_would_give():
    economics = economics_from_metadata(DEFAULT_ECONOMICS, "t")
    assert economics.conversion_value == 100.0
    assert economics.offer_costs.tolist() == [4.0, 8.0, 0.0]


def test_a_missing_artifact_is_an_error_answer_and_a_failed_build_check(tmp_path):
    entry = ServingEntryPoint(environ={"MF_MODEL_ARTIFACT": str(tmp_path / "nope/model.skops")})

    response = entry.predict(customer())

    assert response["error"]["field"] is None
    assert "the model is not loaded: FileNotFoundError" in response["error"]["message"]
    with pytest.raises(FileNotFoundError):
        entry.build_check()


def test_a_truncated_or_corrupt_skops_file_is_named(model_dirs, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "cache"))
    whole = (model_dirs["skops"] / artifacts.MODEL_FILENAME).read_bytes()
    local = tmp_path / "local"
    local.mkdir()
    (local / artifacts.METADATA_FILENAME).write_bytes((model_dirs["skops"] / artifacts.METADATA_FILENAME).read_bytes())
    for broken in (whole[: len(whole) // 2], whole[:200] + bytes(b ^ 0xFF for b in whole[200:400]) + whole[400:]):
        (local / artifacts.MODEL_FILENAME).write_bytes(broken)
        with pytest.raises(ServingConfigError, match="^" + re.escape(f"{local / 'model.skops'} is not a valid skops file (truncated or corrupt")):
            load(local)

    memory = fsspec.filesystem("memory")
    memory.pipe_file("/bucket-cut/m/model.skops", whole[:1000])
    memory.pipe_file("/bucket-cut/m/model.metadata.json", (local / artifacts.METADATA_FILENAME).read_bytes())
    entry = ServingEntryPoint(environ={"MF_MODEL_ARTIFACT": "memory://bucket-cut/m/model.skops"})
    with pytest.raises(ServingConfigError, match=r"^memory://bucket-cut/m/model.skops .*is not a valid skops file"):
        entry.build_check()
    assert "not a valid skops file" in entry.predict(customer())["error"]["message"]
    memory.rm("/bucket-cut", recursive=True)


# --------------------------------------------------------------------------------------------
# The entry point file, as a CML build and a replica use it


def import_entry_point(name):
    spec = importlib.util.spec_from_file_location(name, REPO / MODEL_ENTRY_POINT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_counter = itertools.count()


def test_the_entry_point_imports_without_model_files(monkeypatch):
    monkeypatch.delenv("MF_MODEL_ARTIFACT", raising=False)
    module = import_entry_point(f"serve_build_{next(_counter)}")
    assert callable(getattr(module, MODEL_FUNCTION)) and callable(module.build_check)


@pytest.mark.parametrize("scorer", ["skops", "onnx"])
def test_predict_through_the_entry_point_file(scorer, model_dirs, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "models" / VERSION).mkdir(parents=True)
    for f in model_dirs[scorer].iterdir():
        (project / "models" / VERSION / f.name).write_bytes(f.read_bytes())
    monkeypatch.chdir(project)
    monkeypatch.setenv("MF_MODEL_ARTIFACT", f"models/{VERSION}/model.skops")  # project-relative
    monkeypatch.setenv("MF_MODEL_DIR", f"models/{VERSION}")
    monkeypatch.setenv("MF_MODEL_VERSION", VERSION)
    loads = []
    real = artifacts.load_model
    monkeypatch.setattr(artifacts, "load_model", lambda path: loads.append(path) or real(path))

    module = import_entry_point(f"serve_{scorer}_{next(_counter)}")
    check = module.build_check()
    single = module.predict(EXAMPLE_REQUEST["customers"][0])
    batch = module.predict({"customers": [customer(customer_id=f"c-{i}") for i in range(3)]})
    bad = module.predict({"customers": [customer(), customer(), customer(), customer(history="lots")]})

    assert check["scorer"] == scorer and check["model_version"] == VERSION
    assert check["response"]["predictions"][0]["customer_id"] == "build-check"
    assert single["predictions"][0]["customer_id"] == "build-check"
    assert single["predictions"][0]["offers"] == check["response"]["predictions"][0]["offers"]
    assert [p["customer_id"] for p in batch["predictions"]] == ["c-0", "c-1", "c-2"]
    assert bad == {"error": {"field": "customers[3].history",
                             "message": 'must be a number (past spend), got a string ("lots")'}}
    assert len(loads) == 1


def test_the_entry_point_uses_the_cml_modules_when_present(model_dirs, monkeypatch):
    tracked, decorated = [], []

    def cml_model(metrics=False):
        def wrap(func):
            decorated.append(metrics)
            return lambda args: {"prediction": func(args), "uuid": "u-1"}
        return wrap

    cml = types.ModuleType("cml")
    models = types.ModuleType("cml.models_v1")
    models.cml_model = cml_model
    metrics = types.ModuleType("cml.metrics_v1")
    metrics.track_metric = lambda key, value: tracked.append(key)
    cml.models_v1, cml.metrics_v1 = models, metrics
    monkeypatch.setitem(sys.modules, "cml", cml)
    monkeypatch.setitem(sys.modules, "cml.models_v1", models)
    monkeypatch.setitem(sys.modules, "cml.metrics_v1", metrics)
    monkeypatch.setenv("MF_MODEL_ARTIFACT", str(model_dirs["skops"] / "model.skops"))

    module = import_entry_point(f"serve_cml_{next(_counter)}")
    response = module.predict(customer())

    assert decorated == [True]
    assert response["uuid"] == "u-1" and response["prediction"]["model_version"] == VERSION
    assert "next_best_offers" in tracked
    assert resolve_cml().source == "cml.models_v1"


def test_without_cml_modules_the_decorator_is_a_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "cml", None)  # import cml -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "cdsw", None)
    modules = resolve_cml()

    def f(args):
        return args

    assert modules.cml_model(metrics=True)(f) is f
    assert modules.track_metric("k", 1) is None
    assert modules.source.startswith("none")


def test_a_cml_module_that_fails_to_import_is_not_hidden(monkeypatch):
    broken = types.ModuleType("cml")
    broken.__path__ = []  # a package without the submodules
    monkeypatch.setitem(sys.modules, "cml", broken)
    monkeypatch.setitem(sys.modules, "cml.models_v1", None)
    monkeypatch.setitem(sys.modules, "cml.metrics_v1", None)
    monkeypatch.setitem(sys.modules, "cdsw", None)
    assert resolve_cml().source.startswith("none")  # absent submodules: fall through

    def failing_import(name, *args, **kwargs):
        if name == "cml.metrics_v1":
            raise ModuleNotFoundError("No module named 'httpx_missing'", name="httpx_missing")
        return real_import(name, *args, **kwargs)

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(ModuleNotFoundError, match="httpx_missing"):
        resolve_cml()
