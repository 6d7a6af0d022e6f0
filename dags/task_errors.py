"""Deterministic errors fail a task at once: retrying an invalid grid or a bad training table
three times only delays the message the user needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_retry_on_bad_input() -> Iterator[None]:
    """Turn the factory's bad-input errors into ``AirflowFailException`` (no retries)."""
    from airflow.sdk.exceptions import AirflowFailException

    from factory_tasks.stages.errors import BAD_INPUT_ERRORS

    try:
        yield
    except BAD_INPUT_ERRORS as exc:
        raise AirflowFailException(str(exc)) from exc
