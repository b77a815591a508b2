"""End-to-end receipts: when a snapshot chunk counts as delivered.

Nothing is delivered until the stage after it acknowledged it. A broker ack is not enough with the embedded broker, which keeps data in
memory and loses it with the process. So a chunk is *done* only when every
sink that takes its entity has written (and committed the offsets of) every
message of it; only
then is it checkpointed in the state store. A re-run re-reads every chunk that
is not done; sinks are idempotent, so the overlap costs time, never
correctness.

Receipts count only messages of this attempt (header `kanal.attempt`):
messages left in a persistent broker by an earlier attempt may still be
written (harmlessly), but they do not stand in for this attempt's messages.

With a real (durable, replicated) broker the one party that must confirm is
the broker itself (`BROKER`): its acks are durable, and the sinks that
write the messages may be running in other processes of the same job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class _Pending:
    parts: int
    rows: int
    dead: int
    written: dict[str, set[int]] = field(default_factory=dict)


BROKER = "broker"
"""The party that confirms for a durable broker: the producer's acks."""


class Receipts:
    """Track which parts of which chunk each party (sinks, or the broker) has durably taken.

    `parties` names, per entity, who must take it: a sink that does not list
    an entity never writes it, so waiting for that sink would never end (and
    an entity no sink takes is done as soon as it is published).
    """

    def __init__(self, parties: Mapping[str, Sequence[str]], on_done: Callable[[str, str, int, int], None]) -> None:
        self._parties = {entity: tuple(names) for entity, names in parties.items()}
        self._on_done = on_done
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._early: dict[tuple[str, str], dict[str, set[int]]] = {}
        self._lock = threading.Lock()

    def expect(self, entity: str, chunk: str, parts: int, rows: int, dead: int) -> None:
        """Announce a chunk before its messages are sent."""
        key = (entity, chunk)
        with self._lock:
            pending = _Pending(parts, rows, dead, self._early.pop(key, {}))
            self._pending[key] = pending
            done = self._complete(entity, pending)
            if done:
                del self._pending[key]
        if done:
            self._on_done(entity, chunk, rows, dead)

    def record(self, sink: str, entity: str, chunk: str, part: int) -> None:
        """A party took one part durably: a sink wrote it and committed its offset, or the broker acked it."""
        if sink not in self._parties.get(entity, ()):
            return
        key = (entity, chunk)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                self._early.setdefault(key, {}).setdefault(sink, set()).add(part)
                return
            pending.written.setdefault(sink, set()).add(part)
            done = self._complete(entity, pending)
            if done:
                del self._pending[key]
        if done:
            self._on_done(entity, chunk, pending.rows, pending.dead)

    def record_all(self, party: str, entity: str, chunk: str) -> None:
        """A party took every part of an announced chunk (the broker acked all of a read)."""
        if party not in self._parties.get(entity, ()):
            return
        key = (entity, chunk)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                return
            pending.written[party] = set(range(pending.parts))
            done = self._complete(entity, pending)
            if done:
                del self._pending[key]
        if done:
            self._on_done(entity, chunk, pending.rows, pending.dead)

    def _complete(self, entity: str, pending: _Pending) -> bool:
        return all(len(pending.written.get(s, ())) >= pending.parts for s in self._parties.get(entity, ()))

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending)
