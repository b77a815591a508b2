"""Retries end at their budget, or at once when a stop is requested."""

from __future__ import annotations

import threading
import time

import pytest

from kanal.core.deadline import deadline
from kanal.core.errors import Unreachable
from kanal.core.retry import RetryPolicy, call_with_retry


def test_a_stop_request_ends_the_retries_at_once() -> None:
    cancel = threading.Event()
    calls = []

    def down() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            cancel.set()  # SIGTERM arrives while the system is down
        raise Unreachable("erp", "connection refused")

    started = time.monotonic()
    with pytest.raises(Unreachable):
        call_with_retry(down, RetryPolicy(max_elapsed_s=300, initial_s=0.05, max_wait_s=0.1), cancel=cancel)
    assert len(calls) == 2
    assert time.monotonic() - started < 5


def test_transient_errors_are_retried_until_success() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Unreachable("erp", "restarting")
        return "ok"

    assert call_with_retry(flaky, RetryPolicy(initial_s=0.01, max_wait_s=0.02)) == "ok"
    assert len(calls) == 3


def test_the_first_contact_deadline_cuts_short_silence_but_not_a_system_that_answers() -> None:
    """A wrong address fails at the deadline; a shop answering 503 at start is an outage to wait out."""
    policy = RetryPolicy(max_elapsed_s=30, initial_s=0.05, max_wait_s=0.05)

    def failing(answered: bool, until: float) -> object:
        def call() -> str:
            if time.monotonic() < until:
                raise Unreachable("shop", "answered 503" if answered else "connection refused", answered=answered)
            return "served"
        return call

    started = time.monotonic()
    with deadline(0.3), pytest.raises(Unreachable, match="connection refused"):
        call_with_retry(failing(False, started + 5), policy)
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with deadline(0.3):
        assert call_with_retry(failing(True, started + 1.0), policy) == "served"
