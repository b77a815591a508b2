"""Retries with a budget: transient errors back off, others do not.

Only `Unreachable` (connection refused, timeouts, 5xx, 429, broker down) is
retried, with exponential backoff and jitter, honouring a server's
Retry-After. The budget is time, not attempts: a sink database in
maintenance for two minutes is waited for; one down for an hour fails the run
with the last error, and the re-run resumes.

Within a `core.deadline.deadline` block (first contact with a system when a
command starts) retries also end at the deadline, and no wait outlasts it,
unless the system answered (`Unreachable.answered`: a 503 burst or a
throttle at start is an outage to wait for, not a wrong address).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from kanal.core.deadline import remaining
from kanal.core.errors import Unreachable
from kanal.core.telemetry.live import TELEMETRY

T = TypeVar("T")


def duration(seconds: float) -> str:
    """A short human duration: 12s, 4m40s, 2h05m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Wait:
    """A retry about to wait for an unreachable system."""

    error: Unreachable
    retry: int
    """The number of the retry that follows the wait (1 after the first failure)."""
    next_try_s: float
    gives_up_in_s: float
    """Time left in the policy's budget: the first failure after it ends the retries."""

    def describe(self, who: str) -> str:
        reason = self.error.message.removeprefix(f"{self.error.system}: ")
        return f"waiting for {who}: {reason}, retry {self.retry}, gives up in {duration(self.gives_up_in_s)}"


WaitObserver = Callable[[Wait | None], None]
"""Hears each `Wait` of a call, then None once the call stopped waiting (it succeeded or gave up)."""


class RetryPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_elapsed_s: float = Field(300.0, gt=0, description="give up on a system after this long")
    initial_s: float = Field(0.2, gt=0, description="first wait")
    max_wait_s: float = Field(10.0, gt=0, description="longest single wait")


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(initial=policy.initial_s, max=policy.max_wait_s, jitter=policy.initial_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Unreachable) and exc.retry_after is not None:
            wait_s = min(exc.retry_after, policy.max_wait_s * 6)
        else:
            wait_s = float(backoff(state))
        left = None if _answered(state) else remaining()
        return wait_s if left is None else max(0.0, min(wait_s, left))

    return wait


def _answered(state: RetryCallState) -> bool:
    """The last attempt reached the system, which answered that it cannot serve now."""
    exc = state.outcome.exception() if state.outcome else None
    return isinstance(exc, Unreachable) and exc.answered


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    on_retry: Callable[[Unreachable, int], None] | None = None,
    cancel: threading.Event | None = None,
    on_wait: WaitObserver | None = None,
) -> T:
    """Run `fn`, retrying `Unreachable` within the policy's time budget.

    `cancel` (a stop request, SIGTERM) ends the waiting at once: the last
    error is raised instead of retrying for minutes. `on_retry` counts
    retries; `on_wait` shows them (see `WaitObserver`).
    """
    waited = False

    def before_sleep(state: RetryCallState) -> None:
        nonlocal waited
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, Unreachable):
            return
        TELEMETRY.retried(exc.system)
        if on_retry:
            on_retry(exc, state.attempt_number)
        if on_wait:
            waited = True
            left = policy.max_elapsed_s - (state.seconds_since_start or 0.0)
            on_wait(Wait(exc, state.attempt_number, state.upcoming_sleep, max(0.0, left)))

    stop = stop_after_delay(policy.max_elapsed_s) | (lambda state: remaining() == 0.0 and not _answered(state))
    if cancel is not None:
        stop = stop | (lambda _state: cancel.is_set())
    retrying = Retrying(
        retry=retry_if_exception_type(Unreachable),
        stop=stop,
        wait=_wait(policy),
        sleep=cancel.wait if cancel is not None else time.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    finally:
        if waited and on_wait:
            on_wait(None)

