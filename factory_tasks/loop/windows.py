"""Time in the closed loop: epoch milliseconds and the tables' ISO-8601 text, a monitoring run's
data interval and the cohorts it reads, and when a prediction's label is matured."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

MINUTE_MS = 60_000
def iso(ms: int) -> str:
    """Epoch milliseconds as the tables' ISO-8601 UTC text (``2026-12-01T06:00:00Z``)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def epoch_ms(moment: datetime | str) -> int:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone")
    return int(round(moment.timestamp() * 1000))


@dataclass(frozen=True)
class MonitoringWindow:
    """A monitoring run's data interval ``[start_ms, end_ms)`` and the response window W."""

    start_ms: int
    end_ms: int
    response_window_ms: int

    @classmethod
    def from_interval(cls, start: datetime | str, end: datetime | str, response_window_minutes: float):
        window = cls(epoch_ms(start), epoch_ms(end), int(round(response_window_minutes * MINUTE_MS)))
        if window.end_ms <= window.start_ms:
            raise ValueError(f"the data interval must not be empty: {iso(window.start_ms)} .. {iso(window.end_ms)}")
        return window

    @property
    def length_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def as_of_window(self) -> str:
        return iso(self.start_ms)

    def cohorts(self) -> list[tuple[int, int]]:
        """The cohorts that can still change, oldest first: ``[start - kL, start - (k-1)L)`` for
        ``k = ceil(W / L) .. 1`` (``cohort_end + W > start``) and ``[start, end)`` itself."""
        back = math.ceil(self.response_window_ms / self.length_ms)
        return [(self.start_ms - k * self.length_ms, self.start_ms - (k - 1) * self.length_ms)
                for k in range(back, -1, -1)]

    def judged_cohorts(self) -> list[tuple[int, int]]:
        """The cohorts whose last response window closes in this run (``cohort_end + W`` in
        ``(start, end]``): their labels became final here, so they are judged here, once."""
        return [(s, e) for s, e in self.cohorts() if self.start_ms < e + self.response_window_ms <= self.end_ms]


def label_state(decided_ms: np.ndarray, responded_ms: np.ndarray, end_ms: int,
                window_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """``(matured, conversion)`` per prediction as of ``end_ms``.

    ``responded_ms`` is the first attached response's time, NaN when none arrived before ``end``.
    Matured: the response window has closed (``decided + W <= end``). Conversion: a response
    within the window (it is only a label on matured rows).
    """
    decided = np.asarray(decided_ms, dtype=np.int64)
    responded = np.asarray(responded_ms, dtype=np.float64)
    matured = decided + window_ms <= end_ms
    with np.errstate(invalid="ignore"):
        converted = (responded < end_ms) & (responded <= decided + window_ms) & (responded >= decided)
    return matured, converted.astype(np.int64)
