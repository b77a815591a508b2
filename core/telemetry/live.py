"""The runs of this process and what they did, for `/metrics` and `/readyz`.

A runner `track`s each phase of a job (a migration, a stream) with the
`Metrics` its progress view and report already use, and a callable saying
how much work it is waiting on; the service reads those live objects when it
is scraped, so the bulk path pays nothing for being observed. What the
counters do not hold is recorded here once per event, never per record: a
batch write's duration (`wrote`) and a retry (`retried`).

Counters outlive the phase that counted them (an ended phase is folded into
its job's totals), so they only grow, as Prometheus expects of counters: a
`kanal run` migrating and then streaming shows one series per entity.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kanal.core import logs

if TYPE_CHECKING:
    from kanal.core.kafka import KafkaConnection
    from kanal.core.progress import Metrics

WRITE_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds of the batch write time histogram: a COPY takes milliseconds, a batch through a rate-limited API minutes."""
SINK_COUNTERS = ("written", "skipped", "unchanged", "failed")
ENTITY_COUNTERS = ("read", "dead")

Counts = dict[tuple[str, str, str], int]
"""(counter, entity, sink) -> count; sink is "" for counters of the entity (read, dead)."""


@dataclass
class WriteTimes:
    """Batch write durations: counts per `WRITE_SECONDS_BUCKETS` bound and above the last (not cumulative), sum, count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(WRITE_SECONDS_BUCKETS) + 1))
    total_s: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(WRITE_SECONDS_BUCKETS, seconds)] += 1
        self.total_s += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, writes at or under it) in Prometheus' form, ending with +Inf."""
        bounds = [*(f"{b:g}" for b in WRITE_SECONDS_BUCKETS), "+Inf"]
        running, buckets = 0, []
        for bound, n in zip(bounds, self.counts, strict=True):
            running += n
            buckets.append((bound, running))
        return buckets


@dataclass
class LiveRun:
    """One phase of a job running now."""

    job: str
    phase: str
    """migrate or stream."""
    metrics: Metrics
    pending: Callable[[], int]
    """Work the run has started and waits to see delivered (reads not confirmed, chunks not checkpointed)."""
    kafka: KafkaConnection | None = None
    started: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Observed:
    """What the service's monitor last found out by asking the systems (see `jobs.service.Monitor`)."""

    lag: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """(job, entity, sink) -> messages the sink's consumer group has not committed."""
    source: dict[tuple[str, str], float] = field(default_factory=dict)
    """(job, figure) -> a source's own number, `DeltaReader.gauges` (a CDC slot's retained WAL bytes)."""
    problems: dict[str, list[str]] = field(default_factory=dict)
    """job -> why it is not ready (empty: ready)."""
    at: float = 0.0


def counts_of(metrics: Metrics) -> Counts:
    """A copy of a run's counters, taken under their lock (runners update them from many threads)."""
    counts: Counts = {}
    with metrics._lock:  # noqa: SLF001 - the counters' own lock, held only for the copy
        for entity, c in metrics.entities.items():
            for name in ENTITY_COUNTERS:
                counts[(name, entity, "")] = getattr(c, name)
            for name in SINK_COUNTERS:
                for sink, n in getattr(c, name).items():
                    counts[(name, entity, sink)] = n
    return counts


def chunks_pending(metrics: Metrics) -> int:
    """A migration's pending work: planned snapshot chunks not yet checkpointed."""
    with metrics._lock:  # noqa: SLF001 - see counts_of
        return sum(max(0, c.chunks - c.chunks_done) for c in metrics.entities.values())


class Telemetry:
    """The process-wide registry (`TELEMETRY`); every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, LiveRun] = {}
        self._ended: dict[str, Counts] = defaultdict(dict)
        self._writes: dict[tuple[str, str, str], WriteTimes] = {}
        self._last_write: dict[tuple[str, str, str], float] = {}
        self._retries: dict[tuple[str, str], int] = defaultdict(int)
        self._listeners: set[threading.Event] = set()

    def listen(self, event: threading.Event) -> None:
        """Set `event` whenever a run starts or ends (a monitor looks at once instead of at its next round)."""
        with self._lock:
            self._listeners.add(event)

    def unlisten(self, event: threading.Event) -> None:
        with self._lock:
            self._listeners.discard(event)

    def _changed(self) -> None:
        """Caller holds the lock."""
        for event in self._listeners:
            event.set()

    @contextmanager
    def track(
        self, job: str, phase: str, metrics: Metrics, pending: Callable[[], int], kafka: KafkaConnection | None = None
    ) -> Iterator[LiveRun]:
        """Show a phase of `job` as running for the duration of the block; its counts stay when it ends."""
        run = LiveRun(job, phase, metrics, pending, kafka)
        with self._lock:
            self._live[job] = run
            self._changed()
        try:
            yield run
        finally:
            counts = counts_of(metrics)
            with self._lock:
                if self._live.get(job) is run:
                    del self._live[job]
                self._changed()
                ended = self._ended[job]
                for key, n in counts.items():
                    ended[key] = ended.get(key, 0) + n

    def live(self, job: str) -> LiveRun | None:
        with self._lock:
            return self._live.get(job)

    def running(self) -> list[LiveRun]:
        with self._lock:
            return list(self._live.values())

    def counts(self) -> dict[str, Counts]:
        """job -> counters of its ended phases plus its running one."""
        with self._lock:
            totals = {job: dict(c) for job, c in self._ended.items()}
            live = list(self._live.values())
        for run in live:
            total = totals.setdefault(run.job, {})
            for key, n in counts_of(run.metrics).items():
                total[key] = total.get(key, 0) + n
        return totals

    def wrote(self, job: str, entity: str, sink: str, seconds: float) -> None:
        """A sink wrote a batch (once per batch): its duration and the time of the last successful write."""
        key = (job, entity, sink)
        with self._lock:
            self._writes.setdefault(key, WriteTimes()).observe(seconds)
            self._last_write[key] = time.time()

    def writes(self) -> dict[tuple[str, str, str], tuple[WriteTimes, float]]:
        """(job, entity, sink) -> its write times (a copy) and the unix time of its last write."""
        with self._lock:
            return {
                k: (WriteTimes(list(w.counts), w.total_s, w.count), self._last_write[k]) for k, w in self._writes.items()
            }

    def last_progress(self, job: str) -> float:
        """Unix time of the job's last successful batch write (0: none yet)."""
        with self._lock:
            return max((t for (j, _, _), t in self._last_write.items() if j == job), default=0.0)

    def retried(self, system: str) -> None:
        """A call to `system` failed transiently and is retried (the job is the current thread's, see `core.logs`)."""
        with self._lock:
            self._retries[(logs.current("job") or "", system)] += 1

    def retries(self) -> dict[tuple[str, str], int]:
        """(job, system) -> retries so far."""
        with self._lock:
            return dict(self._retries)


TELEMETRY = Telemetry()
