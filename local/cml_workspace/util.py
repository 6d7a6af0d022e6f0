"""Small helpers shared by the workspace modules: ids and timestamps."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id() -> str:
    """A CML-style identifier: four groups of four lowercase alphanumerics (``ab12-cd34-...``)."""
    return "-".join("".join(secrets.choice(_ID_ALPHABET) for _ in range(4)) for _ in range(4))


def format_ts(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z`` (``2026-11-27T10:00:00.000Z``)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_ts() -> str:
    return format_ts(datetime.now(UTC))


def parse_ts(value: str) -> datetime:
    """Inverse of :func:`format_ts` (accepts any ISO 8601 form ``fromisoformat`` takes)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
