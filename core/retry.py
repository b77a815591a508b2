"""Retries with a budget: transient errors back off, others do not.

Only `Unreachable` (connection refused, timeouts, 5xx, 429, broker down) is
retried, with exponential backoff and jitter, honouring a server's
Retry-After. The budget is time, not attempts: a sink database in
maintenance for two minutes is waited for; one down for an hour fails the run
with the last error, and the re-run resumes.

Within a `core.deadline.deadline` block (first contact with a system when a
command starts) retries also end at the deadline, and no wait outlasts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from kanal.core.deadline import remaining
from kanal.core.errors import Unreachable

T = TypeVar("T")


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
        left = remaining()
        return wait_s if left is None else max(0.0, min(wait_s, left))

    return wait


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    on_retry: Callable[[Unreachable, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> T:
    """Run `fn`, retrying `Unreachable` within the policy's time budget.

    `cancel` (a stop request, SIGTERM) ends the waiting at once: the last
    error is raised instead of retrying for minutes.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_retry and isinstance(exc, Unreachable):
            on_retry(exc, state.attempt_number)

    stop = stop_after_delay(policy.max_elapsed_s) | (lambda _state: remaining() == 0.0)
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
    return retrying(fn)
