"""Remote state of a CML job run as a small value type.

CML API v2 reports a job run's ``status`` as one of the ``ENGINE_*`` strings below
(see ``shared/CML_API.md``). Code compares :class:`JobRunStatus` members, never raw strings,
and a status this module does not know is an error (:class:`UnknownJobRunStatusError`), not a
silent "still running": a poller that mistakes an unknown final state for "running" would wait
until its deadline for nothing.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobRunStatus", "UnknownJobRunStatusError"]


class UnknownJobRunStatusError(ValueError):
    """The workspace answered with a job run status this provider does not know."""

    def __init__(self, value: object) -> None:
        self.value = value
        valid = ", ".join(s.value for s in JobRunStatus)
        super().__init__(f"{value!r} is not a known CML job run status. Valid statuses are: {valid}")


class JobRunStatus(StrEnum):
    """Status of a CML job run (``JobRun.status``)."""

    SCHEDULING = "ENGINE_SCHEDULING"
    STARTING = "ENGINE_STARTING"
    RUNNING = "ENGINE_RUNNING"
    STOPPING = "ENGINE_STOPPING"
    STOPPED = "ENGINE_STOPPED"
    UNKNOWN = "ENGINE_UNKNOWN"
    SUCCEEDED = "ENGINE_SUCCEEDED"
    FAILED = "ENGINE_FAILED"
    TIMEDOUT = "ENGINE_TIMEDOUT"
    SKIPPED = "ENGINE_SKIPPED"

    @property
    def is_terminal(self) -> bool:
        """The run will not change any more (it succeeded, failed, timed out, was stopped or skipped).

        ``ENGINE_STOPPING`` and ``ENGINE_UNKNOWN`` are *not* terminal: the engine may still
        report a final state.
        """
        return self in _TERMINAL

    @property
    def is_successful(self) -> bool:
        """Only ``ENGINE_SUCCEEDED`` is a success."""
        return self is JobRunStatus.SUCCEEDED

    @property
    def is_active(self) -> bool:
        """The run holds (or is waiting for) workspace resources: the opposite of terminal."""
        return not self.is_terminal

    @classmethod
    def parse(cls, value: object) -> JobRunStatus:
        """Parse a status string from the API.

        Accepts the documented ``ENGINE_*`` form and, tolerantly, the same names in another
        case or without the ``ENGINE_`` prefix (``"succeeded"``). Anything else raises
        :class:`UnknownJobRunStatusError`.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, str) or not value.strip():
            raise UnknownJobRunStatusError(value)
        key = value.strip().upper()
        if not key.startswith("ENGINE_"):
            key = f"ENGINE_{key}"
        try:
            return cls(key)
        except ValueError:
            raise UnknownJobRunStatusError(value) from None


_TERMINAL = frozenset(
    {
        JobRunStatus.SUCCEEDED,
        JobRunStatus.FAILED,
        JobRunStatus.TIMEDOUT,
        JobRunStatus.STOPPED,
        JobRunStatus.SKIPPED,
    }
)
