"""The customer_interactions DAG's stage: one window of simulated traffic against the deployed
model (see :mod:`factory_tasks.loop.interactions` for what a window does).

The warehouse hook, the CML client and CML's ``track_delayed_metrics`` are passed in, so this
module never imports Airflow or ``cml_provider``.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any, Callable

from factory_tasks.loop.config import LoopConfig, LoopConfigError, load_loop_config
from factory_tasks.loop.interactions import (
    Endpoint,
    NoServingModelError,
    Window,
    WindowSummary,
    WorkspaceError,
    endpoint_for,
    run_window,
    serving_deployment,
)
from factory_tasks.stages.cml_client import CmlClient
from factory_tasks.stages.paths import ConfigPathError, config_path

#: a settings file that does not validate, or no model serving: retrying the window changes neither
LOOP_INPUT_ERRORS: tuple[type[Exception], ...] = (LoopConfigError, ConfigPathError, NoServingModelError)


def load_loop_settings(path: str) -> LoopConfig:
    """The closed-loop settings file (relative paths from the repository root, inside the config
    folders); :class:`LoopConfigError` names every problem."""
    return load_loop_config(config_path(path, "loop_config_path"))


def deployed_endpoint(warehouse: Any, cml: CmlClient) -> Endpoint:
    """The model service of the deployment now serving; :class:`NoServingModelError` when none is,
    :class:`WorkspaceError` naming the model when the CML workspace does not answer."""
    record = serving_deployment(warehouse)
    try:
        model = cml.get_model(record.model_id)
    except Exception as exc:
        raise WorkspaceError(
            f"could not look up the serving model {record.model_name} ({record.model_id}) version "
            f"{record.model_version} in the CML workspace, to ask it for next best offers: "
            f"{type(exc).__name__}: {exc}. Nothing of the window was written.") from exc
    return endpoint_for(record, partial(cml.call_model, model), cml.model_service_url())


def simulate_window(
    warehouse: Any,
    cml: CmlClient,
    config: LoopConfig,
    start: datetime,
    end: datetime,
    track_delayed_metrics: Callable[[dict[str, Any], str], Any],
    *,
    drift_enabled: bool | None = None,
) -> WindowSummary:
    """Decide, deliver and mature the window ``[start, end)``; replace its partitions of the
    loop tables. The deployed model is looked up only when the window has to be decided."""
    return run_window(warehouse, config, Window(start, end), partial(deployed_endpoint, warehouse, cml),
                      track_delayed_metrics, drift_enabled=drift_enabled)
