"""A live A/B test of a gated challenger against the champion, started by ``deploy_best_model``.

With param ``challenger_share`` above 0 and a champion serving, a challenger the gate lets
through (or a reviewer's override) is not deployed alone: one deployment serves both, the
champion's files as its model and the challenger's as ``MF_CHALLENGER_*``, and the endpoint
assigns each customer an arm (a hash of the test id and the customer id, so a customer sees
one arm for the test's life). The deployment's environment is the test's definition; its
``model_deployments`` record (``action`` ``ab_start``) keeps the challenger as ``model_version``
(with its lineage and the gate's evidence), the champion as ``champion_version``, the split and
the test id. ``model_monitoring`` concludes the test (see docs/ab-test.md).
"""

from __future__ import annotations

import logging
from typing import Any

from factory_tasks.core.limits import MAX_CHALLENGER_SHARE
from factory_tasks.core.names import (
    CHALLENGER_ARTIFACT_ENV,
    CHALLENGER_DIR_ENV,
    CHALLENGER_SHARE_ENV,
    CHALLENGER_VERSION_ENV,
    MODEL_ARTIFACT_ENV,
    MODEL_DIR_ENV,
    MODEL_VERSION_ENV,
    POLICY_TEST_ID_ENV,
)
from factory_tasks.stages.cml_client import CmlClient
from factory_tasks.stages.deploy import published_environment
from factory_tasks.stages.errors import in_range
from factory_tasks.warehouse.deployments import champion

log = logging.getLogger(__name__)


def ab_plan(warehouse: Any, challenger_version: str, challenger_share: float) -> dict[str, Any] | None:
    """The A/B test a deploy of ``challenger_version`` starts: ``{"champion_version", "challenger_share",
    "test_id"}``; None (deployed alone) when the share is 0, no champion serves (a first
    deployment), or the champion is this version."""
    in_range("challenger_share", challenger_share, 0, MAX_CHALLENGER_SHARE)
    if not challenger_share:
        return None
    current = champion(warehouse)
    if current is None or current.model_version == challenger_version:
        log.info("challenger_share %g: %s, so %s is deployed alone", challenger_share,
                 "no champion serves" if current is None else "it is the champion already", challenger_version)
        return None
    plan = {"champion_version": current.model_version, "challenger_share": float(challenger_share),
            "test_id": f"{current.model_version}:{challenger_version}"}
    log.info("A/B test %s: the challenger %s decides for %.0f%% of the customers, the champion %s for the rest",
             plan["test_id"], challenger_version, 100 * challenger_share, current.model_version)
    return plan


def ab_environment(cml: CmlClient, object_store: Any, plan: dict[str, Any],
                     challenger: dict[str, str]) -> dict[str, str]:
    """The deployment's environment of the test: the champion's files (reused from object
    storage) as the model, ``challenger`` (the challenger's published environment) as
    ``MF_CHALLENGER_*``, the split and the test id."""
    environment = published_environment(cml, plan["champion_version"], object_store)
    return {**environment,
            CHALLENGER_ARTIFACT_ENV: challenger[MODEL_ARTIFACT_ENV], CHALLENGER_DIR_ENV: challenger[MODEL_DIR_ENV],
            CHALLENGER_VERSION_ENV: challenger[MODEL_VERSION_ENV],
            CHALLENGER_SHARE_ENV: repr(plan["challenger_share"]), POLICY_TEST_ID_ENV: plan["test_id"]}
