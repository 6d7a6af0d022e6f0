"""The experiments_summary DAG's stage: the outcome table rewritten as the summary object the
experiments dashboard reads. The warehouse hook is passed in (no Airflow here)."""

from __future__ import annotations

from typing import Any

from factory_tasks.core.settings import summary_location
from factory_tasks.warehouse.summary import refresh_summary


def refresh_experiments_summary(warehouse: Any) -> dict[str, Any]:
    """Rewrite the summary at :func:`~factory_tasks.core.settings.summary_location` from every
    outcome row behind ``warehouse``: ``{"location": <URL>, "rows": <count>}``."""
    location = summary_location()
    return {"location": str(location), "rows": refresh_summary(warehouse, location)}
