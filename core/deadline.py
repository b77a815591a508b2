"""A deadline for reaching a system when a command starts.

A wrong host or a port nobody answers is a mistake in the job file more
often than an outage, and must not cost the whole retry budget. The runners
reach each system within the job's `connect_timeout_s` by opening a
`deadline`; inside it, on that thread, every retry loop ends at the deadline
(`core.retry.call_with_retry`, and so the HTTP kit's per-request retries) and
connectors cut a single connection attempt to what is left
(`attempt_timeout`). Outside a deadline nothing changes: an outage during a
run is waited for within the retry budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("kanal_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Within the block, on this thread, retries and connection attempts end `seconds` from now."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current `deadline` (never below 0), or None outside one."""
    end = _deadline.get()
    return None if end is None else max(0.0, end - time.monotonic())


def attempt_timeout(configured: float) -> float:
    """A single connection attempt's timeout: the configured one, cut to what the `deadline` leaves (at least 1 s)."""
    left = remaining()
    return configured if left is None else max(1.0, min(configured, math.ceil(left)))
