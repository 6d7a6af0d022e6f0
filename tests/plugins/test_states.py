"""JobRunStatus: terminal/success sets and strict parsing."""

from __future__ import annotations

import pytest
from cml_provider.states import JobRunStatus, UnknownJobRunStatusError

TERMINAL = {"ENGINE_SUCCEEDED", "ENGINE_FAILED", "ENGINE_TIMEDOUT", "ENGINE_STOPPED", "ENGINE_SKIPPED"}


@pytest.mark.parametrize("status", list(JobRunStatus))
def test_terminal_and_success_sets_match_the_api(status):
    assert status.is_terminal == (status.value in TERMINAL)
    assert status.is_successful == (status.value == "ENGINE_SUCCEEDED")
    assert status.is_active != status.is_terminal


def test_stopping_and_unknown_are_not_terminal():
    assert not JobRunStatus.STOPPING.is_terminal
    assert not JobRunStatus.UNKNOWN.is_terminal


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ENGINE_SUCCEEDED", JobRunStatus.SUCCEEDED),
        ("engine_failed", JobRunStatus.FAILED),
        ("succeeded", JobRunStatus.SUCCEEDED),
        (" ENGINE_RUNNING ", JobRunStatus.RUNNING),
        ("ENGINE_UNKNOWN", JobRunStatus.UNKNOWN),
        (JobRunStatus.SKIPPED, JobRunStatus.SKIPPED),
    ],
)
def test_parse_accepts_documented_forms(text, expected):
    assert JobRunStatus.parse(text) is expected


@pytest.mark.parametrize("text", ["ENGINE_DANCING", "", None, 3, "running?"])
def test_parse_rejects_unknown_statuses(text):
    with pytest.raises(UnknownJobRunStatusError) as info:
        JobRunStatus.parse(text)
    assert "ENGINE_SUCCEEDED" in str(info.value)  # lists the valid ones
