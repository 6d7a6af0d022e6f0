"""Remote state of CML job runs, model builds and model deployments as small value types.

CML API v2 reports a job run's ``status`` as one of the ``ENGINE_*`` strings, a model build's
as ``pending`` ... ``built`` / ``build failed``, a deployment's as ``pending`` ... ``deployed``
(see ``shared/CML_API.md``). Code compares the enum members below, never raw strings, and a
status this module does not know is an error (:class:`UnknownCmlStatusError` and its
subclasses), not a silent "still running": a poller that mistakes an unknown final state for
"running" would wait until its deadline for nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Self

__all__ = [
    "CmlBuildStatus",
    "CmlDeploymentStatus",
    "JobRunStatus",
    "UnknownBuildStatusError",
    "UnknownCmlStatusError",
    "UnknownDeploymentStatusError",
    "UnknownJobRunStatusError",
]


class _CmlStatus(StrEnum):
    """A status enum with one strict parser; each enum says only how it reads a raw string
    (:meth:`_key`)."""

    @classmethod
    def _key(cls, text: str) -> str:
        """The member value that ``text`` (stripped, not empty) stands for."""
        return text

    @classmethod
    def parse(cls, value: object) -> Self:
        """A member, or a status string from the API read by :meth:`_key`; anything else raises
        the enum's subclass of :class:`UnknownCmlStatusError`."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value.strip():
            try:
                return cls(cls._key(value.strip()))
            except ValueError:
                pass
        raise _UNKNOWN_STATUS_ERRORS[cls](value)


class JobRunStatus(_CmlStatus):
    """Status of a CML job run (``JobRun.status``).

    :meth:`parse` accepts the documented ``ENGINE_*`` form and, tolerantly, the same names in
    another case or without the ``ENGINE_`` prefix (``"succeeded"``).
    """

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
    def _key(cls, text: str) -> str:
        key = text.upper()
        return key if key.startswith("ENGINE_") else f"ENGINE_{key}"


_TERMINAL = frozenset(
    {
        JobRunStatus.SUCCEEDED,
        JobRunStatus.FAILED,
        JobRunStatus.TIMEDOUT,
        JobRunStatus.STOPPED,
        JobRunStatus.SKIPPED,
    }
)


# --- Model builds and deployments ------------------------------------------------------------
class CmlBuildStatus(_CmlStatus):
    """Status of a CML model build (``ModelBuild.status``).

    :meth:`parse` reads it case-insensitively, ``_`` as a space (``BUILD_FAILED``).
    """

    PENDING = "pending"
    QUEUED = "queued"
    PUSHING = "pushing"
    BUILT = "built"
    BUILD_FAILED = "build failed"
    TIMEDOUT = "timedout"
    SUCCEEDED = "succeeded"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """Built (or succeeded), failed or timed out; ``unknown`` is not terminal."""
        return self.is_successful or self.is_failed

    @property
    def is_successful(self) -> bool:
        """``built``, or ``succeeded`` (some workspaces report that once the image is pushed)."""
        return self in (CmlBuildStatus.BUILT, CmlBuildStatus.SUCCEEDED)

    @property
    def is_failed(self) -> bool:
        return self in (CmlBuildStatus.BUILD_FAILED, CmlBuildStatus.TIMEDOUT)

    @classmethod
    def _key(cls, text: str) -> str:
        return " ".join(text.lower().replace("_", " ").split())


class CmlDeploymentStatus(_CmlStatus):
    """Status of a CML model deployment (``ModelDeployment.status``); :meth:`parse` reads it
    case-insensitively."""

    PENDING = "pending"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """A wait for the deployment can end here: deployed, stopped or failed.

        ``deployed`` is a steady state (the deployment serves until stopped), so it ends a wait.
        """
        return self in _DEPLOYMENT_TERMINAL

    @property
    def is_successful(self) -> bool:
        """Only ``deployed``."""
        return self is CmlDeploymentStatus.DEPLOYED

    @property
    def is_active(self) -> bool:
        """It serves or is coming up (pending, deploying, deployed): stopping it frees resources."""
        return self in _DEPLOYMENT_ACTIVE

    @classmethod
    def _key(cls, text: str) -> str:
        return text.lower()


_DEPLOYMENT_TERMINAL = frozenset(
    {CmlDeploymentStatus.DEPLOYED, CmlDeploymentStatus.STOPPED, CmlDeploymentStatus.FAILED}
)
_DEPLOYMENT_ACTIVE = frozenset(
    {CmlDeploymentStatus.PENDING, CmlDeploymentStatus.DEPLOYING, CmlDeploymentStatus.DEPLOYED}
)


# --- Unknown statuses ------------------------------------------------------------------------
class UnknownCmlStatusError(ValueError):
    """The workspace answered with a status string this provider does not know (raised as the
    subclass of the status's enum; the message lists the known statuses)."""

    #: what the message says the status belongs to ("job run")
    subject: ClassVar[str]
    #: the enum of the known statuses
    statuses: ClassVar[type[_CmlStatus]]
    #: list the known statuses as ``'pending'`` rather than ``pending`` (values with spaces)
    quoted: ClassVar[bool] = True

    def __init__(self, value: object) -> None:
        self.value = value
        valid = ", ".join(repr(s.value) if self.quoted else s.value for s in self.statuses)
        super().__init__(f"{value!r} is not a known CML {self.subject} status. Valid statuses are: {valid}")


class UnknownJobRunStatusError(UnknownCmlStatusError):
    """The workspace answered with a job run status this provider does not know."""

    subject = "job run"
    statuses = JobRunStatus
    quoted = False


class UnknownBuildStatusError(UnknownCmlStatusError):
    """The workspace answered with a model build status this provider does not know."""

    subject = "model build"
    statuses = CmlBuildStatus


class UnknownDeploymentStatusError(UnknownCmlStatusError):
    """The workspace answered with a model deployment status this provider does not know."""

    subject = "model deployment"
    statuses = CmlDeploymentStatus


_UNKNOWN_STATUS_ERRORS: dict[type[_CmlStatus], type[UnknownCmlStatusError]] = {
    error.statuses: error
    for error in (UnknownJobRunStatusError, UnknownBuildStatusError, UnknownDeploymentStatusError)
}
