"""CML model entry point: the next best offer for one customer or a batch.

A CML model build points here (``file_path``) with ``function_name = "predict"``. The request
and response are described in ``docs/deploy.md``; the work is done in
:mod:`factory_tasks.serving.endpoint`. The model files are named by the deployment's environment
(``MF_MODEL_ARTIFACT``, ``MF_MODEL_DIR``, ``MF_MODEL_VERSION``) and loaded at the first call,
not at import: a build imports this file without them. The same environment may name a
challenger and set the serving policy (``MF_CHALLENGER_*``, ``MF_EXPLORATION_EPSILON``,
``MF_POLICY_TEST_ID``, ``MF_POLICY_SEED``; ``docs/deploy.md``, *The policy*): then each answer
also says which arm decided, the offer to make and its propensity.
"""

from factory_tasks.serving.endpoint import ServingEntryPoint, resolve_cml

_cml = resolve_cml()
_entry = ServingEntryPoint(track_metric=_cml.track_metric)


@_cml.cml_model(metrics=True)
def predict(args):
    """The next best offer for ``args`` (one customer, or ``{"customers": [...]}``)."""
    return _entry.predict(args)


def build_check():
    """Load the model and answer one example request (a replica is ready only after this)."""
    return _entry.build_check()
