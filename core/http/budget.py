"""The rate-limit budget of one credential on one system, shared by the whole process.

APIs meter a credential, not a connection: two jobs reading and writing the
same shop with the same token draw from one allowance. So there is one
`Budget` per (system origin, credential, budget name) in the process, found
through `budget_for`; the registry is keyed by a hash of the credential,
never the credential itself.

A budget is a token bucket whose figures come from the API as much as from
the connector's declaration (`BudgetSpec`): every response corrects them.

* `Retry-After` (seconds, possibly fractional, or an HTTP date) pauses the
  budget; a floor (`min_retry_after_s`) keeps `Retry-After: 0` from turning
  into a tight loop of refused requests.
* `X-RateLimit-Limit/Remaining/Reset`-style headers set capacity and what is
  left; when nothing is left, requests wait for the reset.
* Shopify REST `X-Shopify-Shop-Api-Call-Limit: 32/40` is "32 of 40 used".
* Shopify GraphQL `extensions.cost` carries the bucket itself
  (`throttleStatus {maximumAvailable, currentlyAvailable, restoreRate}`) and
  the cost of the query (`requestedQueryCost`), remembered per query so the
  next call waits until it can afford it. A `THROTTLED` error arriving with
  HTTP 200 is a throttle, not a failure.

Requests wait in two lanes (`lanes.Lane`): delta before backfill, so a long
migration never starves live updates. The figures (capacity, available, how
often and how long requests waited, throttled answers) are readable through
`status()` for progress displays.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from kanal.core.errors import ConnectorError, Unreachable
from kanal.core.http.lanes import Lane, Turns

_CANCEL_POLL_S = 0.5
"""Longest single wait while a stop request may arrive."""
_EPOCH_RESET = 1e9
"""A reset header above this is an epoch timestamp, below it a number of seconds."""
SHOPIFY_CALL_LIMIT = "X-Shopify-Shop-Api-Call-Limit"


@dataclass(frozen=True)
class RateHeaders:
    """Names of the headers announcing a request window (limit, remaining, seconds or epoch of reset)."""

    limit: str = "X-RateLimit-Limit"
    remaining: str = "X-RateLimit-Remaining"
    reset: str = "X-RateLimit-Reset"


@dataclass(frozen=True)
class BudgetSpec:
    """What a connector declares about an API's allowance before the API tells more.

    `name` separates allowances of one credential that the API meters apart
    (Shopify: the GraphQL cost bucket and the REST request bucket).
    Unknown figures stay None: the budget then only honours what the API
    announces (Retry-After, rate headers, GraphQL cost).
    """

    name: str = "requests"
    capacity: float | None = None
    """Largest burst, in cost units (requests, or GraphQL cost points)."""
    refill_per_s: float | None = None
    """Units restored per second (a leaky bucket's leak rate)."""
    cost: float = 1.0
    """Units one request takes unless the API tells its cost."""
    min_retry_after_s: float = 1.0
    """Shortest pause after a throttle, whatever Retry-After says."""
    headers: RateHeaders = RateHeaders()


@dataclass(frozen=True)
class BudgetStatus:
    """A budget's figures for progress and status displays (None: unknown)."""

    label: str
    capacity: float | None
    available: float | None
    refill_per_s: float | None
    requests: int
    waits: int
    """Requests that had to wait for the budget."""
    waited_s: float
    throttled: int
    """Answers that said "not now" (429, GraphQL THROTTLED, 503 with Retry-After)."""
    paused_s: float
    """Seconds until the budget serves requests again (0: not paused)."""
    waiting: dict[str, int]
    """Requests waiting now, per lane."""


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds a `Retry-After` value asks to wait (`now`: epoch seconds); None if unreadable."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class Budget:
    """A token bucket fed by what the API says; see the module docstring."""

    def __init__(
        self,
        label: str,
        spec: BudgetSpec,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.label = label
        self.spec = spec
        self._clock = clock
        self._wall = wall
        self._capacity = spec.capacity if spec.capacity is not None else math.inf
        self._available = self._capacity
        self._refill = spec.refill_per_s
        self._stamp = clock()
        self._paused_until = -math.inf
        self._window_ends: float | None = None
        self._costs: dict[str, float] = {}
        self._requests = self._waits = self._throttled = 0
        self._waited_s = 0.0
        self._cond = threading.Condition()
        self._turns = Turns()

    # -- taking ---------------------------------------------------------------------------

    def acquire(
        self,
        lane: Lane,
        cost: float | None = None,
        *,
        cancel: threading.Event | None = None,
        give_up_after_s: float = math.inf,
    ) -> float:
        """Wait for this request's turn and budget, take it; return the seconds waited.

        A pause longer than `give_up_after_s` (a daily quota spent) raises a
        `ConnectorError` at once instead of blocking the job for hours; a
        stop request raises `Unreachable`.
        """
        units = self.spec.cost if cost is None else cost
        started, blocked = self._clock(), False
        with self._cond:
            ticket = self._turns.join(lane)
            try:
                while True:
                    delay = self._delay(units) if self._turns.is_next(lane, ticket) else None
                    if delay is not None and delay <= 0:
                        self._take(units)
                        break
                    if delay is not None and delay > give_up_after_s:
                        raise ConnectorError(
                            self.label,
                            f"the API asks to wait {delay:.0f} s, longer than the retry budget "
                            f"({give_up_after_s:.0f} s, errors.retry.max_elapsed_s); run again later",
                        )
                    if cancel is not None and cancel.is_set():
                        raise Unreachable(self.label, "stopped while waiting for the rate limit")
                    blocked = True
                    self._cond.wait(timeout=self._wait_slice(delay, cancel))
            finally:
                self._turns.leave(lane, ticket)
                self._cond.notify_all()
            waited = self._clock() - started if blocked else 0.0
            self._requests += 1
            self._waits += blocked
            self._waited_s += waited
        return waited

    @staticmethod
    def _wait_slice(delay: float | None, cancel: threading.Event | None) -> float | None:
        if cancel is None:
            return delay
        return _CANCEL_POLL_S if delay is None else min(delay, _CANCEL_POLL_S)

    def _delay(self, units: float) -> float:
        """Seconds until `units` can be taken (0: now). Caller holds the lock."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        self._catch_up(now)
        missing = min(units, self._capacity) - self._available
        if missing <= 0:
            return 0.0
        if self._refill:
            return missing / self._refill
        if self._window_ends is not None:
            return self._window_ends - now
        return 0.0  # nothing announced refills the budget: let the API answer

    def _catch_up(self, now: float) -> None:
        if self._window_ends is not None and now >= self._window_ends:
            self._available, self._window_ends = self._capacity, None
        if self._refill and self._available < self._capacity:
            self._available = min(self._capacity, self._available + (now - self._stamp) * self._refill)
        self._stamp = now

    def _take(self, units: float) -> None:
        self._available -= min(units, self._capacity)

    def cost_of(self, key: str) -> float:
        """Units a request known by `key` (a GraphQL query) took last time, else the declared cost."""
        with self._cond:
            return self._costs.get(key, self.spec.cost)

    # -- learning -------------------------------------------------------------------------

    def learn(
        self,
        *,
        capacity: float | None = None,
        available: float | None = None,
        refill_per_s: float | None = None,
        reset_in_s: float | None = None,
    ) -> None:
        """Correct the figures with what the API announced (None: not announced)."""
        with self._cond:
            now = self._clock()
            self._catch_up(now)
            if capacity is not None and capacity > 0:
                self._capacity = capacity
                self._available = min(self._available, capacity)
            if available is not None:
                self._available = min(max(available, 0.0), self._capacity)
            if refill_per_s is not None and refill_per_s > 0:
                self._refill = refill_per_s
            if reset_in_s is not None:
                self._window_ends = now + max(reset_in_s, 0.0)
            self._cond.notify_all()

    def throttle(self, seconds: float | None, *, empty: bool = True) -> float:
        """The API refused a request as too many: pause everyone; return the pause applied.

        The pause is at least `min_retry_after_s`, so `Retry-After: 0` or a
        missing header does not become a loop of refused requests. `empty`
        says the API did not tell what is left, so nothing is assumed left.
        """
        pause = max(seconds or 0.0, self.spec.min_retry_after_s)
        with self._cond:
            now = self._clock()
            self._catch_up(now)
            if empty:
                self._available = min(self._available, 0.0)
            self._paused_until = max(self._paused_until, now + pause)
            self._throttled += 1
            self._cond.notify_all()
        return pause

    def observe(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Learn from one response's status and headers; return the pause to honour, if any."""
        rate = self.spec.headers
        limit, remaining = _number(headers.get(rate.limit)), _number(headers.get(rate.remaining))
        reset = _number(headers.get(rate.reset))
        if reset is not None and reset > _EPOCH_RESET:
            reset -= self._wall()
        if limit is not None or remaining is not None:
            self.learn(capacity=limit, available=remaining, reset_in_s=reset)
        call_limit = headers.get(SHOPIFY_CALL_LIMIT)
        if call_limit:
            used, _, size = call_limit.partition("/")
            used_n, size_n = _number(used), _number(size)
            if used_n is not None and size_n is not None:
                self.learn(capacity=size_n, available=size_n - used_n)
        retry_after = headers.get("Retry-After")
        asked = parse_retry_after(retry_after, self._wall()) if retry_after else None
        if status == 429 or (status == 503 and asked is not None):
            return self.throttle(asked)
        return None

    def observe_graphql(self, body: Any, key: str) -> float | None:
        """Learn from a GraphQL body's `extensions.cost`; return the pause if it was THROTTLED.

        `key` names the query, whose requested cost is remembered so that the
        next call of it waits until the bucket can pay for it.
        """
        if not isinstance(body, dict):
            return None
        cost = (body.get("extensions") or {}).get("cost") or {}
        bucket = cost.get("throttleStatus") or {}
        requested = cost.get("requestedQueryCost")
        if isinstance(requested, int | float):
            with self._cond:
                self._costs[key] = requested
        self.learn(
            capacity=bucket.get("maximumAvailable"),
            available=bucket.get("currentlyAvailable"),
            refill_per_s=bucket.get("restoreRate"),
        )
        if not is_throttled(body):
            return None
        needed = requested if isinstance(requested, int | float) else self.spec.cost
        short = needed - (bucket.get("currentlyAvailable") or 0.0)
        rate = bucket.get("restoreRate") or self._refill
        return self.throttle(short / rate if rate and short > 0 else None, empty="currentlyAvailable" not in bucket)

    # -- reading --------------------------------------------------------------------------

    def status(self) -> BudgetStatus:
        with self._cond:
            now = self._clock()
            self._catch_up(now)
            return BudgetStatus(
                label=self.label,
                capacity=None if math.isinf(self._capacity) else self._capacity,
                available=None if math.isinf(self._available) else round(max(self._available, 0.0), 3),
                refill_per_s=self._refill,
                requests=self._requests,
                waits=self._waits,
                waited_s=round(self._waited_s, 3),
                throttled=self._throttled,
                paused_s=round(max(self._paused_until - now, 0.0), 3),
                waiting=self._turns.waiting(),
            )


def is_throttled(body: Any) -> bool:
    """Whether a GraphQL body carries a THROTTLED error (Shopify sends it with HTTP 200)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    return isinstance(errors, list) and any(
        isinstance(e, dict) and (e.get("extensions") or {}).get("code") == "THROTTLED" for e in errors
    )


def fingerprint(*parts: str) -> str:
    """A short stable hash that reveals nothing of `parts` (credentials, query texts)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


_budgets: dict[tuple[str, str, str], Budget] = {}
_budgets_lock = threading.Lock()


def budget_for(origin: str, credential: str, spec: BudgetSpec) -> Budget:
    """The process-wide budget of `credential` (its `fingerprint`) on `origin`.

    The first declaration of a (origin, credential, name) sets the starting
    figures; later clients share the same budget and the API corrects it.
    """
    key = (origin, credential, spec.name)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = _budgets[key] = Budget(f"{origin} {spec.name}", spec)
        return budget


def budgets() -> list[Budget]:
    """Every budget of the process (for status displays)."""
    with _budgets_lock:
        return list(_budgets.values())
