"""Kanal's figures as Prometheus metrics, read when scraped (a `prometheus_client` custom collector).

Nothing is counted twice: records come from the runs' own counters
(`live.TELEMETRY`), rate-limit waits from the HTTP kit's budgets
(`core.http.budget.budgets`), lag, source figures and readiness from what
the service's monitor last observed. A scrape only copies numbers; anything
that asks a system (lag, retained WAL) happens in the monitor's thread, so a
slow system never slows a scrape. The list with types, labels and meanings
is in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kanal.core.http.budget import budgets
from kanal.core.telemetry.live import Observed, Telemetry

_RECORDS = {
    "read": ("kanal_records_read", "Records read from the source (snapshot rows and changes)."),
    "written": ("kanal_records_written", "Records a sink wrote."),
    "dead": ("kanal_records_dead_lettered", "Records set aside in the dead-letter queue (sink \"\": failed validation; "
             "else refused by that sink)."),
}
_SKIPPED = {"skipped": "older", "unchanged": "unchanged"}


class KanalCollector(Collector):
    """Yields every Kanal metric from `telemetry` and the latest `observed()` at each scrape."""

    def __init__(self, telemetry: Telemetry, observed: Callable[[], Observed]) -> None:
        self.telemetry, self.observed = telemetry, observed

    def collect(self) -> Iterator[Metric]:
        yield from self._records()
        yield from self._writes()
        yield from self._observed()
        yield from self._runs()
        retries = CounterMetricFamily("kanal_retries", "Calls retried because a system was unreachable (connection, "
                                      "timeout, 5xx, 429, broker down).", labels=["job", "system"])
        for (job, system), n in sorted(self.telemetry.retries().items()):
            retries.add_metric([job, system], n)
        yield retries
        yield from self._budgets()

    def _records(self) -> Iterator[Metric]:
        read = CounterMetricFamily(*_RECORDS["read"], labels=["job", "entity"])
        written = CounterMetricFamily(*_RECORDS["written"], labels=["job", "entity", "sink"])
        dead = CounterMetricFamily(*_RECORDS["dead"], labels=["job", "entity", "sink"])
        skipped = CounterMetricFamily(
            "kanal_records_skipped", "Records a sink did not write: older than what the target holds, or unchanged "
            "(the system already has them).", labels=["job", "entity", "sink", "reason"],
        )  # fmt: skip
        for job, counts in sorted(self.telemetry.counts().items()):
            for (counter, entity, sink), n in sorted(counts.items()):
                if counter == "read":
                    read.add_metric([job, entity], n)
                elif counter == "written":
                    written.add_metric([job, entity, sink], n)
                elif counter in ("dead", "failed"):
                    dead.add_metric([job, entity, sink], n)
                elif counter in _SKIPPED:
                    skipped.add_metric([job, entity, sink, _SKIPPED[counter]], n)
        yield from (read, written, skipped, dead)

    def _writes(self) -> Iterator[Metric]:
        labels = ["job", "entity", "sink"]
        seconds = HistogramMetricFamily("kanal_batch_write_seconds", "Time a sink took to write one batch "
                                        "(retries included).", labels=labels)
        last = GaugeMetricFamily("kanal_last_write_timestamp_seconds", "Unix time of the sink's last successful "
                                 "batch write.", labels=labels)
        for key, (times, at) in sorted(self.telemetry.writes().items()):
            seconds.add_metric(list(key), times.cumulative(), times.total_s)
            last.add_metric(list(key), at)
        yield seconds
        yield last

    def _observed(self) -> Iterator[Metric]:
        seen = self.observed()
        lag = GaugeMetricFamily("kanal_consumer_lag", "Messages of the entity's topic the sink's consumer group has "
                                "not committed yet.", labels=["job", "entity", "sink"])
        for key, n in sorted(seen.lag.items()):
            lag.add_metric(list(key), n)
        yield lag
        figures: dict[str, GaugeMetricFamily] = {}
        for (job, name), value in sorted(seen.source.items()):
            if name not in figures:
                figures[name] = GaugeMetricFamily(f"kanal_{name}", f"Source figure {name} (DeltaReader.gauges).", labels=["job"])
            figures[name].add_metric([job], value)
        yield from figures.values()
        ready = GaugeMetricFamily("kanal_job_ready", "1 when the job is connected to the broker, its source and "
                                  "sinks and is not stalled (as /readyz), else 0.", labels=["job"])
        for job, problems in sorted(seen.problems.items()):
            ready.add_metric([job], 0 if problems else 1)
        yield ready

    def _runs(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("kanal_job_running", "1 while a phase of the job runs in this process.",
                                    labels=["job", "phase"])
        pending = GaugeMetricFamily("kanal_pending_work", "Work the job has started and waits to see delivered "
                                    "(reads not yet confirmed, snapshot chunks not yet checkpointed).", labels=["job"])
        for run in sorted(self.telemetry.running(), key=lambda r: r.job):
            running.add_metric([run.job, run.phase], 1)
            pending.add_metric([run.job], run.pending())
        yield running
        yield pending

    def _budgets(self) -> Iterator[Metric]:
        labels = ["budget"]
        requests = CounterMetricFamily("kanal_rate_limit_requests", "Requests that took from an API rate-limit budget.", labels=labels)
        waits = CounterMetricFamily("kanal_rate_limit_waits", "Requests that had to wait for the budget.", labels=labels)
        waited = CounterMetricFamily("kanal_rate_limit_wait_seconds", "Seconds requests waited for the budget.", labels=labels)
        throttled = CounterMetricFamily("kanal_rate_limit_throttled", "Answers that said not now (429, THROTTLED, "
                                        "503 with Retry-After).", labels=labels)
        for status in sorted((b.status() for b in budgets()), key=lambda s: s.label):
            requests.add_metric([status.label], status.requests)
            waits.add_metric([status.label], status.waits)
            waited.add_metric([status.label], status.waited_s)
            throttled.add_metric([status.label], status.throttled)
        yield from (requests, waits, waited, throttled)
