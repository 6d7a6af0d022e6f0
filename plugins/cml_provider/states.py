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

__all__ = [
    "CmlBuildStatus",
    "CmlDeploymentStatus",
    "JobRunStatus",
    "UnknownBuildStatusError",
    "UnknownCmlStatusError",
    "UnknownDeploymentStatusError",
    "UnknownJobRunStatusError",
]


class UnknownCmlStatusError(ValueError):
    """The workspace answered with a status string this provider does not know."""


class UnknownJobRunStatusError(UnknownCmlStatusError):
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


# --- Model builds and deployments ------------------------------------------------------------
class UnknownBuildStatusError(UnknownCmlStatusError):
    """The workspace answered with a model build status this provider does not know."""

    def __init__(self, value: object) -> None:
        self.value = value
        valid = ", ".join(repr(s.value) for s in CmlBuildStatus)
        super().__init__(f"{value!r} is not a known CML model build status. Valid statuses are: {valid}")


class CmlBuildStatus(StrEnum):
    """Status of a CML model build (``ModelBuild.status``)."""

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
    def parse(cls, value: object) -> CmlBuildStatus:
        """Parse ``ModelBuild.status``, case-insensitively, ``_`` read as a space (``BUILD_FAILED``).

        Anything else raises :class:`UnknownBuildStatusError`.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, str) or not value.strip():
            raise UnknownBuildStatusError(value)
        key = " ".join(value.strip().lower().replace("_", " ").split())
        try:
            return cls(key)
        except ValueError:
            raise UnknownBuildStatusError(value) from None


class UnknownDeploymentStatusError(UnknownCmlStatusError):
    """The workspace answered with a model deployment status this provider does not know."""

    def __init__(self, value: object) -> None:
        self.value = value
        valid = ", ".join(repr(s.value) for s in CmlDeploymentStatus)
        super().__init__(
            f"{value!r} is not a known CML model deployment status. Valid statuses are: {valid}"
        )


class CmlDeploymentStatus(StrEnum):
    """Status of a CML model deployment (``ModelDeployment.status``)."""

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
    def parse(cls, value: object) -> CmlDeploymentStatus:
        """Parse ``ModelDeployment.status`` case-insensitively; anything else raises
        :class:`UnknownDeploymentStatusError`."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, str) or not value.strip():
            raise UnknownDeploymentStatusError(value)
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise UnknownDeploymentStatusError(value) from None


_DEPLOYMENT_TERMINAL = frozenset(
    {CmlDeploymentStatus.DEPLOYED, CmlDeploymentStatus.STOPPED, CmlDeploymentStatus.FAILED}
)
_DEPLOYMENT_ACTIVE = frozenset(
    {CmlDeploymentStatus.PENDING, CmlDeploymentStatus.DEPLOYING, CmlDeploymentStatus.DEPLOYED}
)
