"""Serving the next best offer: request validation, scoring every offer, the deployed model.

The CML entry point ``jobs/serve_next_best_offer.py`` is a thin shell over
:class:`ServingEntryPoint`; the request and response are the contract of ``docs/deploy.md``.

Load once, then a hot path (as MLServer's ``load()`` / ``predict()``):

* :func:`load_model_service` (first call only) loads ``model.skops`` with the safe skops loader,
  reads ``model.metadata.json`` beside it (economics, model version), and, when ``model.onnx``
  is there too and onnxruntime reproduces the skops probabilities on probe customers, scores
  with the compiled model (:mod:`factory_tasks.serving.compiled`); otherwise with the skops pipeline.
  Which one is logged at load and returned by ``build_check()``.
* :meth:`NextBestOfferModel.predict` validates the request (:func:`parse_request`), scores all
  customers x all three offers in one model call, computes expected values and the next best
  offer, tracks metrics, and returns the response. It does no imports, no file reads and no
  model conversions. It never raises: a bad request is ``{"error": {"field", "message"}}``
  naming the field and row, a failure inside is an error with ``field: null`` and the
  traceback goes to the log only.

Decisions: expected value = P(conversion | offer) x conversion_value - cost(offer); the next
best offer is the argmax, ties going to the first offer in ``OFFERS`` order (Buy One Get One,
Discount, No Offer) — the rule the factory's ``policy_value`` metric scored the model with
(``metrics.choose_offers``).

Metrics tracked per prediction (``cml.metrics_v1.track_metric``), lists in request order:
``model_version``, ``n_customers``, ``customer_ids``, ``next_best_offers``,
``conversion_probabilities`` (of the chosen offer) and ``expected_values``. A bad request
tracks ``error_field`` only.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import posixpath
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.names import MODEL_ARTIFACT_ENV, MODEL_DIR_ENV, MODEL_VERSION_ENV
from factory_tasks.core.schema import CHANNELS, CUSTOMER_COLUMNS, FEATURE_COLUMNS, OFFERS, ZIP_CODES

log = logging.getLogger(__name__)

#: customers per request
MAX_CUSTOMERS = 1000
#: recency is whole months since the last purchase, as in the training data (1..12)
RECENCY_MIN, RECENCY_MAX = 1, 12
#: past spend: >= 0; the upper bound only keeps values finite in float32 (the compiled model)
HISTORY_MAX = 1e9
CUSTOMER_ID_MAX_LENGTH = 256
CATEGORIES: dict[str, tuple[str, ...]] = {"zip_code": ZIP_CODES, "channel": CHANNELS}
CUSTOMER_FIELDS: tuple[str, ...] = ("customer_id", *CUSTOMER_COLUMNS)

#: the request ``build_check()`` answers before a replica is ready (the example of docs/deploy.md)
EXAMPLE_REQUEST: dict[str, Any] = {
    "customers": [
        {"customer_id": "build-check", "recency": 6, "history": 250.0, "used_discount": 1,
         "used_bogo": 0, "zip_code": "Urban", "is_referral": 0, "channel": "Web"}
    ]
}

TrackMetric = Callable[[str, Any], Any]


# --------------------------------------------------------------------------------------------
# Request validation


class RequestError(ValueError):
    """A request that does not satisfy the contract: ``field`` (e.g. ``customers[3].history``)
    and what is wrong with it."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


def error_response(field: str | None, message: str) -> dict[str, Any]:
    """The contract's error answer."""
    return {"error": {"field": field, "message": message}}


@dataclass(frozen=True)
class CustomerBatch:
    """Validated customers: one numpy array per customer column, in request order."""

    customer_ids: list[str | None]
    columns: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.customer_ids)


def _show(value: Any) -> str:
    """A value as the client sent it (JSON where possible), shortened."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except ValueError:  # e.g. an int past Python's digit limit for str()
            text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _where(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _recency(value: Any, where: str) -> int:
    if type(value) is not int:  # bool is a subclass of int: refused too
        raise RequestError(
            where, f"must be a whole number of months ({RECENCY_MIN} to {RECENCY_MAX}), got {_kind(value)} ({_show(value)})"
        )
    if not RECENCY_MIN <= value <= RECENCY_MAX:
        raise RequestError(
            where, f"must be between {RECENCY_MIN} and {RECENCY_MAX} (months since the last purchase), got {_show(value)}"
        )
    return value


def _flag(value: Any, where: str) -> int:
    if type(value) is not int or value not in (0, 1):
        raise RequestError(where, f"must be 0 or 1, got {_kind(value)} ({_show(value)})")
    return value


def _history(value: Any, where: str) -> float:
    if type(value) not in (int, float):
        raise RequestError(where, f"must be a number (past spend), got {_kind(value)} ({_show(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(where, f"must be a finite number, got {_show(value)}")
    if value < 0:
        raise RequestError(where, f"must be >= 0 (past spend), got {_show(value)}")
    if value > HISTORY_MAX:
        raise RequestError(where, f"must be <= {HISTORY_MAX:.0f} (past spend), got {_show(value)}")
    return float(value)


def _category(value: Any, where: str, name: str) -> str:
    valid = CATEGORIES[name]
    if not isinstance(value, str):
        raise RequestError(where, f"must be one of {', '.join(map(repr, valid))}, got {_kind(value)} ({_show(value)})")
    if value not in valid:
        close = difflib.get_close_matches(value, valid, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RequestError(where, f"unknown {name} {value[:60]!r}; valid: {', '.join(map(repr, valid))}.{hint}")
    return value


def _customer_id(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(where, f"must be a string (send ids as text), got {_kind(value)} ({_show(value)})")
    if not 1 <= len(value) <= CUSTOMER_ID_MAX_LENGTH:
        raise RequestError(where, f"must be 1 to {CUSTOMER_ID_MAX_LENGTH} characters long, has {len(value)}")
    return value


#: each customer column and its check, in the order problems are reported
_CHECKS: tuple[tuple[str, Callable[[Any, str], Any]], ...] = (
    ("recency", _recency),
    ("history", _history),
    ("used_discount", _flag),
    ("used_bogo", _flag),
    ("zip_code", lambda value, where: _category(value, where, "zip_code")),
    ("is_referral", _flag),
    ("channel", lambda value, where: _category(value, where, "channel")),
)


def _check_customer(customer: Any, prefix: str, single: bool) -> tuple[str | None, tuple]:
    """One customer's id and its values in _CHECKS order, or a RequestError naming the
    first problem: not an object, an unknown field, then each field in order (missing or wrong)."""
    if not isinstance(customer, Mapping):
        raise RequestError(prefix or "request", f"must be an object (one customer), got {_kind(customer)}")
    for name in customer:
        if name not in CUSTOMER_FIELDS:
            close = difflib.get_close_matches(str(name), CUSTOMER_FIELDS, n=1, cutoff=0.6)
            did = f" Did you mean {close[0]!r}?" if close else ""
            hint = " A request is one customer object or {\"customers\": [...]}." if single else ""
            raise RequestError(
                _where(prefix, str(name)),
                f"unknown field.{did} A customer has {', '.join(CUSTOMER_FIELDS)} (customer_id optional).{hint}",
            )
    row = []
    for name, check in _CHECKS:
        where = _where(prefix, name)
        if name not in customer:
            raise RequestError(where, "is required")
        row.append(check(customer[name], where))
    customer_id = customer.get("customer_id")
    if "customer_id" in customer:
        customer_id = _customer_id(customer_id, _where(prefix, "customer_id"))
    return customer_id, tuple(row)


_COLUMN_DTYPES: dict[str, Any] = {
    "recency": np.int64, "history": np.float64, "used_discount": np.int64, "used_bogo": np.int64,
    "zip_code": object, "is_referral": np.int64, "channel": object,
}


def parse_request(request: Any) -> CustomerBatch:
    """Validate a model-service request: one customer object, or ``{"customers": [...]}``.

    Raises :class:`RequestError` for the first problem, naming the field (``history`` for a
    single customer, ``customers[3].history`` in a batch).
    """
    if not isinstance(request, Mapping):
        raise RequestError(
            "request",
            f"must be a JSON object: one customer, or {{\"customers\": [...]}}; got {_kind(request)}",
        )
    if "customers" in request:
        for name in request:
            if name != "customers":
                raise RequestError(str(name), "unknown field: a batch request has only \"customers\"")
        customers = request["customers"]
        if not isinstance(customers, (list, tuple)):
            raise RequestError("customers", f"must be a list of customer objects, got {_kind(customers)}")
        if not customers:
            raise RequestError("customers", "must hold at least 1 customer")
        if len(customers) > MAX_CUSTOMERS:
            raise RequestError(
                "customers",
                f"holds {len(customers)} customers; at most {MAX_CUSTOMERS} per request: split the batch",
            )
        checked = [_check_customer(c, f"customers[{i}]", False) for i, c in enumerate(customers)]
    else:
        checked = [_check_customer(request, "", True)]
    ids = [customer_id for customer_id, _ in checked]
    values = list(zip(*(row for _, row in checked)))
    columns = {
        name: np.array(values[j], dtype=_COLUMN_DTYPES[name]) for j, (name, _) in enumerate(_CHECKS)
    }
    return CustomerBatch(ids, columns)


# --------------------------------------------------------------------------------------------
# Scoring


class PipelineScorer:
    """Scores with the skops-loaded scikit-learn pipeline (one ``predict_proba`` call)."""

    name = "skops"

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        classes = [int(c) for c in pipeline.classes_]
        if 1 not in classes:
            raise ValueError(f"the model was fitted without positive examples (classes {classes})")
        self._positive = classes.index(1)

    def offer_proba_columns(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        from_stack = {name: np.tile(columns[name], len(OFFERS)) for name in CUSTOMER_COLUMNS}
        from_stack["offer"] = np.repeat(_OFFER_ARRAY, n)
        frame = pd.DataFrame(from_stack, columns=list(FEATURE_COLUMNS))
        proba = self.pipeline.predict_proba(frame)[:, self._positive]
        return np.asarray(proba, dtype=np.float64).reshape(len(OFFERS), n).T


_OFFER_ARRAY = np.asarray(OFFERS, dtype=object)


@dataclass(frozen=True)
class OfferEconomics:
    """The value of a conversion and each offer's cost (OFFERS order)."""

    conversion_value: float
    offer_costs: np.ndarray

    @classmethod
    def from_metadata(cls, raw: Any, source: str) -> "OfferEconomics":
        from factory_tasks.core.config_types import Economics as GridEconomics

        if raw is None:
            raise ServingConfigError(f"{source} has no economics: the model cannot price its offers")
        try:
            checked = GridEconomics.model_validate(raw, strict=False)
        except ValueError as exc:
            raise ServingConfigError(f"{source}: invalid economics: {' '.join(str(exc).split())}") from None
        costs = np.array([float(checked.offer_costs[o]) for o in OFFERS], dtype=np.float64)
        return cls(float(checked.conversion_value), costs)

    def expected_values(self, proba: np.ndarray) -> np.ndarray:
        return proba * self.conversion_value - self.offer_costs


class NextBestOfferModel:
    """A loaded model: ``predict(request) -> response`` (the hot path; never raises)."""

    def __init__(self, scorer: Any, economics: OfferEconomics, model_version: str,
                 *, track_metric: TrackMetric | None = None, scorer_reason: str = ""):
        self.scorer = scorer
        self.economics = economics
        self.model_version = model_version
        self.scorer_reason = scorer_reason
        self._track = track_metric if track_metric is not None else _no_metric

    @property
    def scorer_name(self) -> str:
        return self.scorer.name

    def score(self, batch: CustomerBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities (n, 3), expected values (n, 3), index of the next best offer (n,))."""
        proba = self.scorer.offer_proba_columns(batch.columns, batch.n)
        ev = self.economics.expected_values(proba)
        return proba, ev, np.argmax(ev, axis=1)  # ties: the first offer in OFFERS order

    def predict(self, request: Any, *, track: bool = True) -> dict[str, Any]:
        try:
            batch = parse_request(request)
        except RequestError as exc:
            if track:
                self._track_safely("error_field", exc.field)
            return error_response(exc.field, exc.message)
        except Exception as exc:  # a request no rule foresaw: still an answer, never a traceback
            log.exception("could not validate a request")
            return error_response("request", f"could not be read ({type(exc).__name__})")
        try:
            proba, ev, best = self.score(batch)
            if not (np.isfinite(proba).all() and np.isfinite(ev).all()):
                raise FloatingPointError("the model produced non-finite probabilities")
            response = self._response(batch, proba, ev, best)
        except Exception as exc:  # the caller gets a structured error; the log gets the traceback
            log.exception("scoring failed for a request of %d customer(s)", batch.n)
            return error_response(None, f"internal error while scoring ({type(exc).__name__}); see the model's log")
        if track:
            self._track_prediction(batch, response)
        return response

    def _response(self, batch: CustomerBatch, proba: np.ndarray, ev: np.ndarray,
                  best: np.ndarray) -> dict[str, Any]:
        p_rows, ev_rows, best_rows = proba.tolist(), ev.tolist(), best.tolist()
        predictions = []
        for customer_id, p, e, b in zip(batch.customer_ids, p_rows, ev_rows, best_rows):
            predictions.append({
                "customer_id": customer_id,
                "offers": {
                    offer: {"conversion_probability": p[k], "expected_value": e[k]}
                    for k, offer in enumerate(OFFERS)
                },
                "next_best_offer": OFFERS[b],
                "expected_value": e[b],
            })
        return {"model_version": self.model_version, "predictions": predictions}

    def _track_prediction(self, batch: CustomerBatch, response: Mapping[str, Any]) -> None:
        predictions = response["predictions"]
        best = [p["next_best_offer"] for p in predictions]
        self._track_safely("model_version", self.model_version)
        self._track_safely("n_customers", batch.n)
        self._track_safely("customer_ids", list(batch.customer_ids))
        self._track_safely("next_best_offers", best)
        self._track_safely("conversion_probabilities",
                           [p["offers"][o]["conversion_probability"] for p, o in zip(predictions, best)])
        self._track_safely("expected_values", [p["expected_value"] for p in predictions])

    def _track_safely(self, key: str, value: Any) -> None:
        try:
            self._track(key, value)
        except Exception:  # a metrics outage must not fail the prediction; it is logged
            log.warning("track_metric(%r) failed", key, exc_info=True)


def _no_metric(key: str, value: Any) -> None:
    return None


# --------------------------------------------------------------------------------------------
# Loading (once per replica)


class ServingConfigError(RuntimeError):
    """The deployment's environment or model files are not usable."""


def _locate(value: str, name: str, cwd: Path) -> tuple[str, str]:
    """``(protocol, absolute path)`` of a location: a plain path (relative to ``cwd``) is
    ``file``; a URL is read the way fsspec reads it (as the deploy DAG's object store writes
    it: ``file://`` + the path, not percent-encoded)."""
    if "://" not in value:
        path = Path(value)
        return "file", str(path if path.is_absolute() else cwd / path)
    if value.startswith("file://") and not value.startswith("file:///"):
        raise ServingConfigError(f"{name}={value!r}: a file:// URL needs an absolute path (file:///...)")
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(value)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its fsspec driver not installed
        raise ServingConfigError(f"{name}={value!r} cannot be read: {exc}") from None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return ("file" if protocol in ("file", "local") else protocol), path


def _model_cache(remote_dir: str) -> Path:
    import hashlib
    import tempfile

    digest = hashlib.sha256(remote_dir.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "mf-model-cache" / digest


@dataclass(frozen=True)
class ServingConfig:
    """Where the deployment's model is: the skops file, its folder, the version it serves.

    ``artifact`` and ``model_dir`` are local paths. When the environment names a remote
    location (any fsspec URL, e.g. the deploy DAG's object store), ``remote_artifact`` is that
    URL and the local paths are a cache folder that :func:`fetch_model_files` fills at load.
    """

    artifact: Path
    model_dir: Path
    model_version: str | None = None
    remote_artifact: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], cwd: Path | None = None) -> "ServingConfig":
        """From ``MF_MODEL_ARTIFACT`` (project-relative or absolute path, or a URL: ``file://``,
        ``s3://`` ... as fsspec reads them), ``MF_MODEL_DIR`` (default: the artifact's folder;
        it must be that folder) and ``MF_MODEL_VERSION`` (optional)."""
        cwd = Path.cwd() if cwd is None else Path(cwd)
        raw = (environ.get(MODEL_ARTIFACT_ENV) or "").strip()
        if not raw:
            raise ServingConfigError(f"{MODEL_ARTIFACT_ENV} is not set: the deployment needs the location of model.skops")
        protocol, path = _locate(raw, MODEL_ARTIFACT_ENV, cwd)
        folder = posixpath.dirname(path.rstrip("/"))
        raw_dir = (environ.get(MODEL_DIR_ENV) or "").strip()
        if raw_dir:
            dir_protocol, dir_path = _locate(raw_dir, MODEL_DIR_ENV, cwd)
            same = (dir_protocol == protocol and (
                Path(dir_path).resolve() == Path(folder).resolve() if protocol == "file"
                else dir_path.rstrip("/") == folder))
            if not same:
                raise ServingConfigError(
                    f"{MODEL_DIR_ENV}={raw_dir!r} is not the folder of {MODEL_ARTIFACT_ENV}={raw!r}: "
                    "the metadata and model.onnx live beside model.skops"
                )
        version = (environ.get(MODEL_VERSION_ENV) or "").strip() or None
        if protocol == "file":
            return cls(artifact=Path(path), model_dir=Path(folder), model_version=version)
        cache = _model_cache(f"{protocol}://{folder}")
        return cls(artifact=cache / posixpath.basename(path), model_dir=cache, model_version=version,
                   remote_artifact=raw)


def fetch_model_files(config: ServingConfig) -> None:
    """Copy a remote model's files (skops, metadata, ``model.onnx`` if there) into the local
    cache folder of ``config``; nothing to do for a local model."""
    if config.remote_artifact is None:
        return
    from fsspec.core import url_to_fs

    from factory_tasks.core.atomic import write_atomic
    from factory_tasks.serving.compiled import ONNX_FILENAME
    from factory_tasks.training.artifacts import METADATA_FILENAME

    fs, path = url_to_fs(config.remote_artifact)
    folder = posixpath.dirname(path.rstrip("/"))
    for name in (posixpath.basename(path), METADATA_FILENAME, ONNX_FILENAME):
        source, target = f"{folder}/{name}", config.model_dir / name
        if name == ONNX_FILENAME and not fs.exists(source):
            target.unlink(missing_ok=True)  # never serve a stale compiled copy
            continue
        try:
            write_atomic(target, fs.cat_file(source))
        except FileNotFoundError:
            raise FileNotFoundError(f"no model file at {config.remote_artifact.rsplit('/', 1)[0]}/{name}") from None
    log.info("fetched the model files of %s into %s", config.remote_artifact, config.model_dir)


def _probe_customers() -> pd.DataFrame:
    """Customers the compiled model must agree with skops on before it serves: simulated ones
    plus the corners of the valid input space."""
    from factory_tasks.loop.simulator import simulate_customers

    probe = simulate_customers(200, seed=20_240_601)
    corners = pd.DataFrame({
        "recency": [RECENCY_MIN, RECENCY_MAX, RECENCY_MIN, RECENCY_MAX],
        "history": [0.0, 29.99, 3345.93, 250_000.0],
        "used_discount": [0, 1, 1, 0], "used_bogo": [1, 0, 1, 1],
        "zip_code": ["Surburban", "Urban", "Rural", "Urban"], "is_referral": [0, 1, 1, 0],
        "channel": ["Web", "Phone", "Multichannel", "Web"],
    })
    return pd.concat([probe, corners], ignore_index=True)


def _choose_scorer(pipeline: Any, model_dir: Path) -> tuple[Any, str]:
    """The compiled scorer if ``model.onnx`` is there and agrees with skops, else the pipeline."""
    from factory_tasks.serving.compiled import ONNX_FILENAME, TOLERANCE, CompiledScorer, parity_gap

    skops = PipelineScorer(pipeline)
    onnx_path = model_dir / ONNX_FILENAME
    if not onnx_path.is_file():
        return skops, f"no {ONNX_FILENAME} beside the model"
    try:
        compiled = CompiledScorer.from_file(onnx_path)
        gap = parity_gap(compiled, pipeline, _probe_customers())
    except Exception as exc:  # e.g. onnxruntime missing, a corrupt file: serve from skops
        log.warning("not using %s: %s: %s", onnx_path, type(exc).__name__, exc)
        return skops, f"{ONNX_FILENAME} unusable ({type(exc).__name__}: {exc})"
    if not gap <= TOLERANCE:
        log.warning("not using %s: it differs from model.skops by %.3g (> %g)", onnx_path, gap, TOLERANCE)
        return skops, f"{ONNX_FILENAME} differs from model.skops by {gap:.3g}"
    return compiled, f"{ONNX_FILENAME} agrees with model.skops (max |dP| {gap:.3g})"


def load_model_service(config: ServingConfig, *, track_metric: TrackMetric | None = None) -> NextBestOfferModel:
    """Load the model once: skops pipeline (safe loader), metadata, and the scorer to use."""
    from factory_tasks.training import artifacts

    started = time.perf_counter()
    fetch_model_files(config)
    pipeline = artifacts.load_model(config.artifact)
    metadata_path = config.model_dir / artifacts.METADATA_FILENAME
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServingConfigError(f"no model metadata at {metadata_path}") from None
    except ValueError as exc:
        raise ServingConfigError(f"{metadata_path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ServingConfigError(f"{metadata_path} is not a JSON object")
    economics = OfferEconomics.from_metadata(metadata.get("economics"), str(metadata_path))
    recorded = metadata.get("model_version")
    if config.model_version and recorded and config.model_version != recorded:
        raise ServingConfigError(
            f"{MODEL_VERSION_ENV}={config.model_version!r} but {metadata_path} is model version {recorded!r}: "
            "the deployment points at another model's files"
        )
    version = config.model_version or recorded
    if not version:
        raise ServingConfigError(f"no model version: set {MODEL_VERSION_ENV} or record model_version in {metadata_path}")
    scorer, reason = _choose_scorer(pipeline, config.model_dir)
    log.info("loaded model %s from %s in %.2f s; scoring with %s (%s)",
             version, config.artifact, time.perf_counter() - started, scorer.name, reason)
    return NextBestOfferModel(scorer, economics, str(version), track_metric=track_metric, scorer_reason=reason)


@dataclass
class ServingEntryPoint:
    """What the entry point file holds: the environment, and the model once it is loaded.

    The model is loaded at the first ``predict`` or ``build_check`` call, not at import (a CML
    build imports the entry point without the model files). A failed load is retried at the
    next call; a successful one is kept for the life of the process.
    """

    environ: Mapping[str, str] = dataclass_field(default_factory=lambda: os.environ)
    track_metric: TrackMetric | None = None
    loader: Callable[..., NextBestOfferModel] = load_model_service
    _model: NextBestOfferModel | None = dataclass_field(default=None, init=False, repr=False)
    _lock: threading.Lock = dataclass_field(default_factory=threading.Lock, init=False, repr=False)

    def model(self) -> NextBestOfferModel:
        model = self._model
        if model is None:
            with self._lock:
                if self._model is None:
                    config = ServingConfig.from_environ(self.environ)
                    self._model = self.loader(config, track_metric=self.track_metric)
                model = self._model
        return model

    def predict(self, request: Any) -> dict[str, Any]:
        try:
            model = self.model()
        except Exception as exc:
            log.exception("the model could not be loaded")
            return error_response(None, f"the model is not loaded: {type(exc).__name__}: {exc}")
        return model.predict(request)

    def build_check(self) -> dict[str, Any]:
        """Load the model and answer :data:`EXAMPLE_REQUEST` (untracked); raise if either fails."""
        model = self.model()
        response = model.predict(EXAMPLE_REQUEST, track=False)
        if "error" in response:
            raise RuntimeError(f"the example request failed: {response['error']}")
        return {"model_version": model.model_version, "scorer": model.scorer_name,
                "scorer_reason": model.scorer_reason, "response": response}


# --------------------------------------------------------------------------------------------
# The CML model-metrics modules


@dataclass(frozen=True)
class CmlModules:
    """``cml_model`` (decorator factory) and ``track_metric``, and where they came from."""

    cml_model: Callable[..., Callable[[Callable], Callable]]
    track_metric: TrackMetric
    source: str


def _noop_cml_model(**_options: Any) -> Callable[[Callable], Callable]:
    def decorate(func: Callable) -> Callable:
        return func

    return decorate


def resolve_cml() -> CmlModules:
    """``cml.models_v1`` / ``cml.metrics_v1`` (CML runtimes, and the local workspace's stand-in
    on the replicas' PYTHONPATH), else legacy ``cdsw``, else a no-op (unit tests). Only a module
    that is absent falls through; one that fails to import raises."""
    try:
        import cml.metrics_v1 as metrics
        import cml.models_v1 as models

        return CmlModules(models.cml_model, metrics.track_metric, "cml.models_v1")
    except ModuleNotFoundError as exc:
        if exc.name not in ("cml", "cml.models_v1", "cml.metrics_v1"):
            raise
    try:
        import cdsw

        return CmlModules(lambda **options: cdsw.model_metrics, cdsw.track_metric, "cdsw")
    except ModuleNotFoundError as exc:
        if exc.name != "cdsw":
            raise
    return CmlModules(_noop_cml_model, _no_metric, "none (metrics are not tracked)")
