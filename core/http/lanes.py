"""Two lanes of traffic, and who goes next when requests have to wait.

A long migration sends thousands of backfill requests; a live stock update
must not queue behind them. Wherever requests wait (for rate-limit budget,
for a connection slot to the host) they queue in two lanes: a waiting delta
request is always served before any waiting backfill request, and within a
lane first come, first served.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum


class Lane(str, Enum):
    DELTA = "delta"
    """Live changes (delta readers, streaming sinks): served first."""
    BACKFILL = "backfill"
    """Snapshots and migrations: served when no delta request waits."""


class Turns:
    """The queue order of waiting threads; the owner guards it with its own lock."""

    def __init__(self) -> None:
        self._queues: dict[Lane, deque[object]] = {lane: deque() for lane in Lane}

    def join(self, lane: Lane) -> object:
        """Queue up in `lane`; the ticket returned identifies this waiter."""
        ticket = object()
        self._queues[lane].append(ticket)
        return ticket

    def leave(self, lane: Lane, ticket: object) -> None:
        self._queues[lane].remove(ticket)

    def is_next(self, lane: Lane, ticket: object) -> bool:
        """True when `ticket` heads its lane and no delta request waits ahead of a backfill one."""
        queue = self._queues[lane]
        return queue[0] is ticket and (lane is Lane.DELTA or not self._queues[Lane.DELTA])

    def waiting(self) -> dict[str, int]:
        return {lane.value: len(queue) for lane, queue in self._queues.items()}


class Slots:
    """At most `limit` requests in flight to one host, handed out in lane order.

    Kept separate from httpx's connection pool limit, which raises after its
    pool timeout instead of queueing fairly.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._busy = 0
        self._cond = threading.Condition()
        self._turns = Turns()

    @contextmanager
    def hold(self, lane: Lane) -> Iterator[None]:
        with self._cond:
            ticket = self._turns.join(lane)
            try:
                while not (self._turns.is_next(lane, ticket) and self._busy < self.limit):
                    self._cond.wait()
                self._busy += 1
            finally:
                self._turns.leave(lane, ticket)
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def waiting(self) -> dict[str, int]:
        """Requests queued for a slot, per lane."""
        with self._cond:
            return self._turns.waiting()
