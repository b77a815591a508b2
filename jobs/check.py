"""`kanal check`: reach every system of a job and say, per system, what fails."""

from __future__ import annotations

from dataclasses import dataclass

from kanal.core.connector import DeltaReader, Sink, Source
from kanal.core.errors import KanalError
from kanal.core.kafka import KafkaConnection, quiet_rdkafka
from kanal.jobs.load import LoadedJob
from kanal.jobs.pipeline import require_delta
from kanal.jobs.runtime import make_sink, make_source


@dataclass(frozen=True)
class CheckResult:
    system: str
    ok: bool
    detail: str


def _probe(system: str, connector: Source | Sink | DeltaReader, what: str = "reachable") -> CheckResult:
    try:
        connector.check()
        return CheckResult(system, True, what)
    except KanalError as exc:
        return CheckResult(system, False, exc.message)
    finally:
        connector.close()


def _probe_deltas(loaded: LoadedJob) -> CheckResult:
    """Whether the source can stream as configured (e.g. CDC's wal_level and replica identities)."""
    deltas = [p.options.delta for p in loaded.source_entities.values() if p.options.delta is not None]
    system = f"source deltas ({', '.join(sorted({d if isinstance(d, str) else 'cursor' for d in deltas}))})"
    source = make_source(loaded)
    try:
        return _probe(system, source.delta(require_delta(loaded)), "ready")
    except KanalError as exc:
        return CheckResult(system, False, exc.message)
    finally:
        source.close()


def check(loaded: LoadedJob, verbose: bool = False) -> list[CheckResult]:
    results = []
    try:
        with quiet_rdkafka(verbose), KafkaConnection(loaded.job.kafka) as kafka:
            results.append(CheckResult("kafka", True, f"reachable at {kafka.bootstrap}"))
    except KanalError as exc:
        results.append(CheckResult("kafka", False, exc.message))
    results.append(_probe(f"source ({loaded.job.source.connector})", make_source(loaded)))
    if any(p.options.delta is not None for p in loaded.source_entities.values()):
        results.append(_probe_deltas(loaded))
    for plan in loaded.sinks:
        results.append(_probe(f"sink {plan.name} ({plan.connector.name})", make_sink(loaded, plan)))
    return results
