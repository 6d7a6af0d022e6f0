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

The policy (:mod:`factory_tasks.serving.policy`) decides per customer which model scores it
(its arm: the champion, or the challenger on a sticky share of customers) and the offer made
(the arm's next best offer, or with probability epsilon a uniform one) with its exact
propensity. With no challenger and epsilon 0 the offer made is the champion's next best offer
with propensity 1.

Metrics tracked per prediction (``cml.metrics_v1.track_metric``), lists in request order:
``model_version`` (the champion's), ``n_customers``, ``customer_ids``, ``next_best_offers``,
``conversion_probabilities`` (of the next best offer) and ``expected_values`` (its), then the
policy's: ``test_id``, ``arms``, ``model_versions`` (of the deciding model), ``offers`` (made),
``explored`` and ``propensities`` (of the offer made). A bad request tracks ``error_field`` only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import CUSTOMER_COLUMNS, FEATURE_COLUMNS, OFFERS
from factory_tasks.serving.policy import ARMS, CHALLENGER, CHAMPION, Policy, PolicyDraws
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


@dataclass(frozen=True)
class ArmModel:
    """One loaded model of the policy: its scorer, economics and version."""

    scorer: Any
    economics: OfferEconomics
    model_version: str
    scorer_reason: str = ""

    def score_columns(self, columns: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, 3), expected values (n, 3)) in OFFERS order."""
        proba = self.scorer.offer_proba_columns(columns, n)
        return proba, self.economics.expected_values(proba)


class NextBestOfferModel:
    """A loaded policy: ``predict(request) -> response`` (the hot path; never raises).

    The champion is ``scorer`` / ``economics`` / ``model_version``; ``challenger`` (an
    :class:`ArmModel`) decides for the share ``policy.challenger_share`` of customers; ``policy``
    defaults to the champion alone without exploration (today's answers).
    """

    def __init__(self, scorer: Any, economics: OfferEconomics, model_version: str,
                 *, track_metric: TrackMetric | None = None, scorer_reason: str = "",
                 challenger: ArmModel | None = None, policy: Policy | None = None):
        self.scorer = scorer
        self.economics = economics
        self.model_version = model_version
        self.scorer_reason = scorer_reason
        self.challenger = challenger
        self.policy = policy if policy is not None else Policy()
        if self.policy.challenger_share > 0 and challenger is None:
            raise ValueError(f"a challenger share of {self.policy.challenger_share} needs a challenger model")
        self._champion = ArmModel(scorer, economics, model_version, scorer_reason)
        self._track = track_metric if track_metric is not None else no_metric
        self._policy_summary = {
            **self.policy.describe(), "champion": model_version,
            "challenger": challenger.model_version if challenger is not None else None,
        }

    @property
    def scorer_name(self) -> str:
        return self.scorer.name

    @property
    def arms(self) -> dict[str, ArmModel]:
        """The loaded models by arm name (the challenger only when there is one)."""
        return {CHAMPION: self._champion, **({CHALLENGER: self.challenger} if self.challenger else {})}

    def score(self, batch: CustomerBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The champion's (probabilities (n, 3), expected values (n, 3), index of the next best
        offer (n,))."""
        proba, ev = self._champion.score_columns(batch.columns, batch.n)
        return proba, ev, np.argmax(ev, axis=1)  # ties: the first offer in OFFERS order

    def score_arms(self, batch: CustomerBatch, challenger: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each customer scored by its arm's model (one model call per arm present):
        (probabilities (n, 3), expected values (n, 3))."""
        n_challenger = int(challenger.sum())
        if n_challenger == 0:
            return self._champion.score_columns(batch.columns, batch.n)
        if n_challenger == batch.n:
            return self.challenger.score_columns(batch.columns, batch.n)
        proba, ev = np.empty((batch.n, len(OFFERS))), np.empty((batch.n, len(OFFERS)))
        for arm, rows in ((self._champion, ~challenger), (self.challenger, challenger)):
            p, e = arm.score_columns({k: v[rows] for k, v in batch.columns.items()}, int(rows.sum()))
            proba[rows], ev[rows] = p, e
        return proba, ev

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
            draws = self.policy.draw(batch.customer_ids)
            proba, ev = self.score_arms(batch, draws.challenger)
            if not (np.isfinite(proba).all() and np.isfinite(ev).all()):
                raise FloatingPointError("the model produced non-finite probabilities")
            best = np.argmax(ev, axis=1)  # ties: the first offer in OFFERS order
            response = self._response(batch, proba, ev, best, draws)
        except Exception as exc:  # the caller gets a structured error; the log gets the traceback
            log.exception("scoring failed for a request of %d customer(s)", batch.n)
            return error_response(None, f"internal error while scoring ({type(exc).__name__}); see the model's log")
        if track:
            self._track_prediction(batch, response)
        return response

    def _response(self, batch: CustomerBatch, proba: np.ndarray, ev: np.ndarray,
                  best: np.ndarray, draws: PolicyDraws) -> dict[str, Any]:
        made, propensity, every = self.policy.decide(best, draws)
        versions = (self.model_version, self.challenger.model_version if self.challenger else None)
        rows = zip(batch.customer_ids, proba.tolist(), ev.tolist(), best.tolist(), draws.challenger.tolist(),
                   made.tolist(), draws.explored.tolist(), propensity.tolist(), every.tolist())
        predictions = []
        for customer_id, p, e, b, arm, m, explored, prop, props in rows:
            predictions.append({
                "customer_id": customer_id,
                "offers": {
                    offer: {"conversion_probability": p[k], "expected_value": e[k]}
                    for k, offer in enumerate(OFFERS)
                },
                "next_best_offer": OFFERS[b],
                "expected_value": e[b],
                "arm": ARMS[arm],
                "model_version": versions[arm],
                "offer": OFFERS[m],
                "explored": explored,
                "propensity": prop,
                "offer_propensities": dict(zip(OFFERS, props)),
            })
        return {"model_version": self.model_version, "policy": dict(self._policy_summary), "predictions": predictions}

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
        self._track_safely("test_id", self._policy_summary["test_id"])
        for key, field in (("arms", "arm"), ("model_versions", "model_version"), ("offers", "offer"),
                           ("explored", "explored"), ("propensities", "propensity")):
            self._track_safely(key, [p[field] for p in predictions])

    def _track_safely(self, key: str, value: Any) -> None:
        try:
            self._track(key, value)
        except Exception:  # a metrics outage must not fail the prediction; it is logged
            log.warning("track_metric(%r) failed", key, exc_info=True)


def no_metric(key: str, value: Any) -> None:
    """The metrics tracker where none is given: tracks nothing."""
    return None

