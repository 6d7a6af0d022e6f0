"""The entry point a CML model deployment calls: load once, then answer requests.

The CML entry point ``jobs/serve_next_best_offer.py`` is a thin shell over
:class:`ServingEntryPoint`; the request and response are the contract of ``docs/deploy.md``.

Load once, then a hot path (as MLServer's ``load()`` / ``predict()``):

* :func:`load_model_service` (first call only) loads ``model.skops`` with the safe skops loader,
  reads ``model.metadata.json`` beside it (economics, model version), and picks the scorer
  (:func:`~factory_tasks.serving.loading.choose_scorer`: the compiled model when it agrees with
  skops, else the skops pipeline) — for the champion, and for the challenger when the
  deployment's policy (:class:`~factory_tasks.serving.loading.PolicyConfig`) names one. Which
  scorers serve, and the policy, are logged at load and returned by ``build_check()``.
* :meth:`~factory_tasks.serving.scoring.NextBestOfferModel.predict` answers each request
  (:mod:`factory_tasks.serving.requests` checks it, :mod:`factory_tasks.serving.scoring` scores
  it) with no imports, no file reads and no model conversions, and never raises.

:func:`resolve_cml` finds the CML model-metrics modules the entry point file decorates
``predict`` with and tracks metrics through.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Callable, Mapping

from factory_tasks.core.names import CHALLENGER_ARTIFACT_ENV, CHALLENGER_VERSION_ENV, MODEL_VERSION_ENV
from factory_tasks.serving.loading import (
    PolicyConfig,
    ServingConfig,
    ServingConfigError,
    choose_scorer,
    economics_from_metadata,
    fetch_model_files,
    load_pipeline,
)
from factory_tasks.serving.policy import Policy
from factory_tasks.serving.requests import EXAMPLE_REQUEST, error_response
from factory_tasks.serving.scoring import ArmModel, NextBestOfferModel, TrackMetric, no_metric

log = logging.getLogger(__name__)


def load_arm(config: ServingConfig, *, version_env: str = MODEL_VERSION_ENV) -> ArmModel:
    """Load one model: skops pipeline (safe loader), metadata, and the scorer to use."""
    from factory_tasks.training import artifacts

    started = time.perf_counter()
    fetch_model_files(config)
    pipeline = load_pipeline(config)
    metadata_path = config.model_dir / artifacts.METADATA_FILENAME
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServingConfigError(f"no model metadata at {metadata_path}") from None
    except ValueError as exc:
        raise ServingConfigError(f"{metadata_path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ServingConfigError(f"{metadata_path} is not a JSON object")
    economics = economics_from_metadata(metadata.get("economics"), str(metadata_path))
    recorded = metadata.get("model_version")
    if config.model_version and recorded and config.model_version != recorded:
        raise ServingConfigError(
            f"{version_env}={config.model_version!r} but {metadata_path} is model version {recorded!r}: "
            "the deployment points at another model's files"
        )
    version = config.model_version or recorded
    if not version:
        raise ServingConfigError(f"no model version: set {version_env} or record model_version in {metadata_path}")
    scorer, reason = choose_scorer(pipeline, config.model_dir)
    log.info("loaded model %s from %s in %.2f s; scoring with %s (%s)",
             version, config.artifact, time.perf_counter() - started, scorer.name, reason)
    return ArmModel(scorer, economics, str(version), reason)


def load_model_service(config: ServingConfig, *, track_metric: TrackMetric | None = None,
                       policy: PolicyConfig | None = None) -> NextBestOfferModel:
    """Load the policy once: the champion (``config``), the challenger if ``policy`` names one,
    and the policy's rule (default: the champion alone, no exploration)."""
    policy = policy if policy is not None else PolicyConfig()
    champion = load_arm(config)
    challenger = None
    if policy.challenger is not None:
        challenger = load_arm(policy.challenger, version_env=CHALLENGER_VERSION_ENV)
        if challenger.model_version == champion.model_version:
            raise ServingConfigError(
                f"the challenger ({CHALLENGER_ARTIFACT_ENV}) is model version {challenger.model_version!r}, the "
                "champion's: a challenger is another model")
    test_id = policy.test_id or (f"{champion.model_version}:{challenger.model_version}" if challenger else "")
    rule = Policy(challenger_share=policy.challenger_share, epsilon=policy.epsilon, test_id=test_id, seed=policy.seed)
    log.info("serving policy: champion %s%s, epsilon %g, test id %r", champion.model_version,
             f", challenger {challenger.model_version} on a share {policy.challenger_share:g}" if challenger else "",
             policy.epsilon, test_id or None)
    return NextBestOfferModel(champion.scorer, champion.economics, champion.model_version, track_metric=track_metric,
                              scorer_reason=champion.scorer_reason, challenger=challenger, policy=rule)


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
                    policy = PolicyConfig.from_environ(self.environ)
                    self._model = self.loader(config, track_metric=self.track_metric, policy=policy)
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
                "scorer_reason": model.scorer_reason,
                "arms": {name: {"model_version": arm.model_version, "scorer": arm.scorer.name,
                                "scorer_reason": arm.scorer_reason} for name, arm in model.arms.items()},
                "policy": response["policy"], "response": response}


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
    return CmlModules(_noop_cml_model, no_metric, "none (metrics are not tracked)")
