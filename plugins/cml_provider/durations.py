"""Durations given either as seconds or as a ``timedelta``.

Operators accept both (Airflow's own arguments, such as ``retry_delay``, are timedeltas),
while hooks and trigger kwargs keep plain seconds: triggers are serialised and take only
primitives.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = ["seconds"]


def seconds(value: float | timedelta) -> float:
    """``value`` in seconds, as a float."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
