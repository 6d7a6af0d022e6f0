"""Hook for Cloudera Machine Learning (CML) REST API v2: one thin method per endpoint.

:class:`CmlHook` and the classes it is made of are the only code in the project that speaks
HTTP to a CML workspace or its model service. Every call goes through one choke point,
:meth:`~cml_provider.hooks.cml_base.BaseCmlHook._do_api_call` (and its async twin used by
triggers), with an endpoint constant of :mod:`cml_provider.hooks.endpoints` such as
:data:`~cml_provider.hooks.endpoints.CREATE_JOB_RUN`. Retries are configured once there:
connection errors, timeouts, HTTP 429 and 5xx are retried, any other 4xx fails fast as a named
error of :mod:`cml_provider.errors`.

The hook is assembled from one class per concern:

* :mod:`cml_provider.hooks.connection` — which workspace, key and project (the Airflow
  connection or ``CmlHook.from_url(...)``);
* :mod:`cml_provider.hooks.cml_base` — the HTTP choke point, retries, pagination, the project
  lookup;
* :mod:`cml_provider.hooks.jobs` — jobs and job runs;
* :mod:`cml_provider.hooks.files` — project files;
* :mod:`cml_provider.hooks.model_builds` — models and model builds;
* :mod:`cml_provider.hooks.deployments` — model deployments and the model service.

What the methods return is in :mod:`cml_provider.models`, statuses in
:mod:`cml_provider.states`, errors in :mod:`cml_provider.errors`.

Field facts follow ``shared/CML_API.md``: int64 fields arrive as JSON strings, ``environment``
is a map on requests but a JSON-encoded string on responses, lists paginate with
``next_page_token`` (default page size 10), file uploads never overwrite, a create call that
answered 5xx may have created its object (so the ``get_or_create_*`` / ``ensure_*`` methods
list before creating again).
"""

from __future__ import annotations

from cml_provider.hooks.deployments import CmlDeploymentsMixin
from cml_provider.hooks.files import CmlFilesMixin
from cml_provider.hooks.jobs import CmlJobsMixin

__all__ = ["CmlHook"]


class CmlHook(CmlJobsMixin, CmlFilesMixin, CmlDeploymentsMixin):
    """Talk to a CML workspace through API v2: jobs, runs, files, models, builds, deployments,
    and the model service.

    Configuration, retries and pagination come from
    :class:`~cml_provider.hooks.cml_base.BaseCmlHook` (see its parameters and those of
    :class:`~cml_provider.hooks.connection.CmlConnectionHook`).
    """
