"""A local, CML-compatible workspace: a small HTTP server speaking the subset of Cloudera
Machine Learning REST API v2 the model factory uses (projects, jobs, job runs, project files).

Start it with ``python -m cml_workspace serve --root DIR --port P`` or, from Python/tests,
with :func:`cml_workspace.server_process.running_workspace`.

This module stays import-light (stdlib only): ``run_wrapper`` and ``server_process`` must not pull
in FastAPI.
"""

__version__ = "0.1.0"
