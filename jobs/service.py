"""`--http-port`: /metrics, /healthz and /readyz for `kanal sync`, `kanal run` and `kanal worker`.

* `/metrics`: Prometheus text format (`core.telemetry.collector`).
* `/healthz`: 200 while the process answers (a liveness probe).
* `/readyz`: 200 when every job of the process runs, reaches its broker,
  source and sinks, and is not stalled; otherwise 503 with the reasons as
  JSON. Stalled: work is waiting (reads not confirmed, chunks not
  checkpointed, messages not consumed) and no batch was written for
  `stall_s`.

Asking systems takes time and may hang (a host that drops packets), so it
never happens in a request: a `Monitor` thread asks every `every_s` (and at
once when a run starts or ends) with connections of its own, opened for the
question and closed after it (never the run's, which belong to the run's
threads), and requests read what it found. A probe that itself hangs makes
the job not ready. The server and the monitor are daemon threads that catch
their own errors: observing a run never blocks or ends it.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka.admin import AdminClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from kanal.core.errors import ConfigError, KanalError, redact
from kanal.core.kafka import KafkaConnection
from kanal.core.telemetry.collector import KanalCollector
from kanal.core.telemetry.live import TELEMETRY, LiveRun, Observed, Telemetry
from kanal.jobs.load import LoadedJob, SinkPlan
from kanal.jobs.pipeline import delta_context
from kanal.jobs.runtime import make_source

READY_STALL_S = 180.0
"""Default `--ready-stall-s`: longer than a batch through a rate-limited API takes, short enough to page someone."""
PROBE_S = 5.0
"""How often the monitor asks the broker, the source and the sinks: one light call each (`select 1`, a
metadata request, an API's cheapest query) on a new connection, so a readiness probe (every 10 s in
deploy/kubernetes) sees an outage at its next look."""
LAG_EVERY_S = 10.0
"""How often the monitor reads the consumer groups' lag: each read opens a consumer per sink and entity."""
_PROBE_TIMEOUT_S = 5.0
log = logging.getLogger("kanal.service")


def reach_broker(kafka: KafkaConnection) -> None:
    """A metadata request to the job's broker."""
    try:
        AdminClient(kafka.config()).list_topics(timeout=_PROBE_TIMEOUT_S)
    except Exception as exc:
        raise KanalError(f"kafka {kafka.bootstrap}: not reachable ({exc})") from None


def reach_source(loaded: LoadedJob) -> dict[str, float]:
    """Reach the source with a connection of its own; its figures (`DeltaReader.gauges`) when the job streams.

    A new instance every time, closed at once: a probe must reach the system
    now, and some connectors' `check` answers from what it learnt the first
    time (a shop's currency).
    """
    source = make_source(loaded)
    try:
        source.check()
        context = delta_context(loaded)
        if context is None:
            return {}
        reader = source.delta(context)
        try:
            return reader.gauges()
        finally:
            reader.close()
    finally:
        source.close()


def reach_sink(plan: SinkPlan) -> None:
    """Reach a sink's system with a new instance (see `reach_source`); nothing is prepared or written."""
    assert plan.connector.sink is not None
    sink = plan.connector.sink(plan.config)
    try:
        sink.check()
    finally:
        sink.close()


def _reason(what: str, exc: BaseException) -> str:
    text = exc.message if isinstance(exc, KanalError) else f"{type(exc).__name__}: {exc}"
    return redact(f"{what}: {text}")


class Monitor:
    """Asks each job's systems every `every_s` in a daemon thread; `observed` and `readiness` read the findings."""

    def __init__(
        self, jobs: list[LoadedJob], stall_s: float = READY_STALL_S, every_s: float = PROBE_S, telemetry: Telemetry = TELEMETRY
    ) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.stall_s, self.every_s, self.telemetry = stall_s, every_s, telemetry
        self._observed = Observed(problems={name: ["not checked yet"] for name in self.jobs})
        self._lag: dict[tuple[str, str, str], int] = {}
        self._lag_at = 0.0
        self._asking: tuple[str, str, float] | None = None  # (job, what, since): the probe under way
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set when a run starts or ends (`Telemetry.listen`), so a new run is looked at at once."""
        self._thread = threading.Thread(target=self._loop, name="kanal-monitor", daemon=True)

    def start(self) -> Monitor:
        self.telemetry.listen(self._wake)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.telemetry.unlisten(self._wake)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2 * _PROBE_TIMEOUT_S)

    def observed(self) -> Observed:
        return self._observed

    def readiness(self) -> dict[str, list[str]]:
        """job -> why it is not ready now (empty lists: ready); stalls and hung probes are judged at the moment asked."""
        now = time.time()
        seen = self._observed
        problems = {job: list(found) for job, found in seen.problems.items()}
        asking = self._asking
        if asking is not None and now - asking[2] > self.every_s + 2 * _PROBE_TIMEOUT_S:
            problems[asking[0]].append(f"{asking[1]}: no answer for {now - asking[2]:.0f}s")
        for job in self.jobs:
            run = self.telemetry.live(job)
            if run is not None and (stalled := self._stalled(run, seen, now)):
                problems[job].append(stalled)
        return problems

    def _stalled(self, run: LiveRun, seen: Observed, now: float) -> str | None:
        waiting = run.pending() + sum(n for (job, _, _), n in seen.lag.items() if job == run.job)
        since = max(run.started, self.telemetry.last_progress(run.job))
        if waiting and now - since > self.stall_s:
            return (f"stalled: no batch written for {now - since:.0f}s (--ready-stall-s {self.stall_s:g}) while "
                    f"{waiting:,} reads, chunks or messages wait")
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.observe()
            except Exception:  # noqa: BLE001 - observing must never end; the next round tries again
                log.exception("monitor round failed")
            self._wake.wait(self.every_s)

    def observe(self) -> Observed:
        """One round: ask every job's systems; the findings replace the previous round's at once."""
        source: dict[tuple[str, str], float] = {}
        problems: dict[str, list[str]] = {}
        read_lag = time.monotonic() - self._lag_at >= LAG_EVERY_S
        lag = {} if read_lag else dict(self._lag)
        for name, loaded in self.jobs.items():
            run = self.telemetry.live(name)
            if run is None:
                problems[name] = [f"job {name} is not running (starting, finished, or failed: see the log)"]
                continue
            problems[name] = self._ask(run, loaded, source)
            if read_lag and run.kafka is not None and not problems[name]:
                lag.update(self._lags(run.kafka, loaded))
        if read_lag:
            self._lag, self._lag_at = lag, time.monotonic()
        self._observed = Observed(lag, source, problems, time.time())
        return self._observed

    def _ask(self, run: LiveRun, loaded: LoadedJob, source: dict[tuple[str, str], float]) -> list[str]:
        found: list[str] = []
        checks: list[tuple[str, Callable[[], object]]] = []
        if run.kafka is not None:
            checks.append(("broker", lambda k=run.kafka: reach_broker(k)))
        checks.append(("source", lambda: source.update({(run.job, k): v for k, v in reach_source(loaded).items()})))
        checks.extend((f"sink {p.name}", lambda p=p: reach_sink(p)) for p in loaded.sinks)
        for what, check in checks:
            self._asking = (run.job, what, time.time())
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - a probe failing is the finding
                found.append(_reason(what, exc))
            finally:
                self._asking = None
        return found

    @staticmethod
    def _lags(kafka: KafkaConnection, loaded: LoadedJob) -> dict[tuple[str, str, str], int]:
        """Per entity and sink, what its consumer group has not committed; topics being recreated are left out."""
        lags = {}
        settings = kafka.settings
        for plan in loaded.sinks:
            group = f"{settings.topic_prefix}.{loaded.name}.{plan.name}"
            for entity in plan.entities:
                try:
                    lags[(loaded.name, entity, plan.name)] = kafka.lag(group, settings.topic(entity))
                except Exception:  # noqa: BLE001 - a stream recycling its topics; the next round reads it
                    log.debug("lag of %s for %s not read", entity, plan.name, exc_info=True)
        return lags


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            status, content_type, body = self.server.answer(self.path.split("?", 1)[0])
        except Exception:  # noqa: BLE001 - a failed answer must not end the server
            log.exception("answering %s failed", self.path)
            status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error; see the log\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], monitor: Monitor, registry: CollectorRegistry) -> None:
        self.monitor, self.registry = monitor, registry
        super().__init__(address, _Handler)

    def answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            problems = self.monitor.readiness()
            ready = not any(problems.values())
            doc = {"ready": ready, "jobs": {job: {"ready": not found, "reasons": found} for job, found in problems.items()}}
            return (200 if ready else 503), "application/json", json.dumps(doc).encode() + b"\n"
        return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n"


def registry_for(monitor: Monitor) -> CollectorRegistry:
    """Kanal's metrics plus the process' own (CPU, memory, open files, garbage collection)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KanalCollector(monitor.telemetry, monitor.observed))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@contextmanager
def serving(
    jobs: list[LoadedJob], port: int | None, host: str = "127.0.0.1", stall_s: float = READY_STALL_S,
    every_s: float = PROBE_S,
) -> Iterator[str | None]:
    """Serve /metrics, /healthz and /readyz on host:port for the block (nothing when `port` is None); yields the URL.

    The port is taken before the jobs start, so one already in use is a
    `ConfigError` (exit 2) rather than a run without its probes.
    """
    if port is None:
        yield None
        return
    monitor = Monitor(jobs, stall_s, every_s)
    try:
        server = _Server((host, port), monitor, registry_for(monitor))
    except OSError as exc:
        hint = "another process listens there: choose another --http-port" if exc.errno == errno.EADDRINUSE else (
            "check --http-host")
        raise ConfigError(f"--http-port {port}: cannot listen on {host}:{port} ({exc.strerror}); {hint}") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="kanal-http", daemon=True)
    monitor.start()
    thread.start()
    url = f"http://{host}:{server.server_address[1]}"
    log.info("serving /metrics, /healthz and /readyz on %s", url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        monitor.stop()
