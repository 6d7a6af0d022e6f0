"""Stand-in for the ``cml`` package of CML ML Runtimes, provided by the local workspace
(``cml_workspace``) to its model replicas: ``cml.models_v1`` and ``cml.metrics_v1``.

Not the PyPI package called ``cml`` (an unrelated project).
"""

LOCAL_WORKSPACE = True
