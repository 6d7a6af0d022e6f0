"""The one clock of the factory's documents: every ``started_at``/``finished_at`` it writes is
UTC ISO 8601 to the second, so documents from the workers, the jobs and the orchestrator
compare as strings."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """Now, as UTC ISO 8601 to the second (``2026-12-01T07:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
