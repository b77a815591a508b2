"""Retries end at their budget, or at once when a stop is requested."""

from __future__ import annotations

import threading
import time

import pytest

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
