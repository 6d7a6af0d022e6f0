"""CmlBuildStatus and CmlDeploymentStatus: terminal/success sets and strict parsing."""

from __future__ import annotations

import pytest
from cml_provider.states import (
    CmlBuildStatus,
    CmlDeploymentStatus,
    UnknownBuildStatusError,
    UnknownCmlStatusError,
    UnknownDeploymentStatusError,
)


@pytest.mark.parametrize("status", list(CmlBuildStatus))
def test_build_terminal_and_success_sets_match_the_api(status):
    assert status.is_successful == (status.value in {"built", "succeeded"})
    assert status.is_failed == (status.value in {"build failed", "timedout"})
    assert status.is_terminal == (status.is_successful or status.is_failed)


def test_build_in_progress_and_unknown_are_not_terminal():
    for value in ("pending", "queued", "pushing", "unknown"):
        assert not CmlBuildStatus.parse(value).is_terminal


@pytest.mark.parametrize(
    "text, expected",
    [
        ("built", CmlBuildStatus.BUILT),
        ("BUILT", CmlBuildStatus.BUILT),
        ("build failed", CmlBuildStatus.BUILD_FAILED),
        ("BUILD_FAILED", CmlBuildStatus.BUILD_FAILED),
        (" Build  Failed ", CmlBuildStatus.BUILD_FAILED),
        ("timedout", CmlBuildStatus.TIMEDOUT),
        ("succeeded", CmlBuildStatus.SUCCEEDED),
        (CmlBuildStatus.QUEUED, CmlBuildStatus.QUEUED),
    ],
)
def test_build_parse_accepts_documented_forms(text, expected):
    assert CmlBuildStatus.parse(text) is expected


@pytest.mark.parametrize("text", ["compiling", "", None, 3, "built!"])
def test_build_parse_rejects_unknown_statuses(text):
    with pytest.raises(UnknownBuildStatusError) as info:
        CmlBuildStatus.parse(text)
    assert "'build failed'" in str(info.value)  # lists the valid ones
    assert isinstance(info.value, UnknownCmlStatusError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("status", list(CmlDeploymentStatus))
def test_deployment_sets_match_the_api(status):
    assert status.is_successful == (status.value == "deployed")
    assert status.is_terminal == (status.value in {"deployed", "stopped", "failed"})
    assert status.is_active == (status.value in {"pending", "deploying", "deployed"})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("deployed", CmlDeploymentStatus.DEPLOYED),
        ("Deployed", CmlDeploymentStatus.DEPLOYED),
        ("DEPLOYING", CmlDeploymentStatus.DEPLOYING),
        (" stopping ", CmlDeploymentStatus.STOPPING),
        ("FAILED", CmlDeploymentStatus.FAILED),
    ],
)
def test_deployment_parse_is_case_insensitive(text, expected):
    assert CmlDeploymentStatus.parse(text) is expected


@pytest.mark.parametrize("text", ["running", "", None, "deployed?"])
def test_deployment_parse_rejects_unknown_statuses(text):
    with pytest.raises(UnknownDeploymentStatusError, match="'deployed'"):
        CmlDeploymentStatus.parse(text)
