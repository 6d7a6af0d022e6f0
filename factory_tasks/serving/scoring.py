"""Scoring a validated batch: every customer with every offer, the expected values and the
next best offer (the hot path of a deployed model).

:meth:`NextBestOfferModel.predict` validates the request
(:func:`~factory_tasks.serving.requests.parse_request`), scores all customers x all three
offers in one model call, computes expected values and the next best offer, tracks metrics,
and returns the response. It does no imports, no file reads and no model conversions. It never
raises: a bad request is ``{"error": {"field", "message"}}`` naming the field and row, a
failure inside is an error with ``field: null`` and the traceback goes to the log only.

The scorer is :class:`PipelineScorer` (the skops-loaded pipeline) or the compiled
:class:`~factory_tasks.serving.compiled.CompiledScorer`; both answer
``offer_proba_columns(columns, n)``.

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

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import CUSTOMER_COLUMNS, FEATURE_COLUMNS, OFFERS
from factory_tasks.serving.requests import CustomerBatch, RequestError, error_response, parse_request

log = logging.getLogger(__name__)

#: tracks one metric of a prediction (the signature of ``cml.metrics_v1.track_metric``)
TrackMetric = Callable[[str, Any], Any]


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
    """The value of a conversion and each offer's cost (OFFERS order), as the model's metadata
    records them (read by :func:`~factory_tasks.serving.loading.economics_from_metadata`)."""

    conversion_value: float
    offer_costs: np.ndarray

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
        self._track = track_metric if track_metric is not None else no_metric

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


def no_metric(key: str, value: Any) -> None:
    """The metrics tracker where none is given: tracks nothing."""
    return None

