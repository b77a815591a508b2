"""Which source position may be confirmed: the end of the longest delivered prefix of reads.

Reads of changes are numbered in the order they were taken. A read is
delivered when every entity in it is (see `core.receipts`, or the broker's
acks with a durable broker). Reads complete out of order (entities go to
different sinks and partitions), but a position may only be confirmed when
every read before it is delivered too, or a crash would skip the gap.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class Confirmations:
    def __init__(self) -> None:
        self._reads: OrderedDict[int, tuple[dict[str, Any], set[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def expect(self, seq: int, position: dict[str, Any], entities: set[str]) -> None:
        """Announce read `seq` (before its messages are sent) with the entities still to deliver."""
        with self._lock:
            self._reads[seq] = (position, set(entities))

    def delivered(self, seq: int, entity: str) -> None:
        with self._lock:
            read = self._reads.get(seq)
            if read is not None:
                read[1].discard(entity)

    def confirmable(self) -> dict[str, Any] | None:
        """Pop the delivered prefix; the position at its end, or None when nothing new."""
        position = None
        with self._lock:
            while self._reads:
                seq, (pos, left) = next(iter(self._reads.items()))
                if left:
                    break
                del self._reads[seq]
                position = pos
        return position

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._reads)
