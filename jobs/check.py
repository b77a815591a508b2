"""`kanal check`: reach every system of a job and say, per system, what fails."""

from __future__ import annotations

from dataclasses import dataclass

from kanal.core.errors import KanalError
from kanal.core.kafka import KafkaConnection, quiet_rdkafka
from kanal.jobs.load import LoadedJob
from kanal.jobs.runtime import make_sink, make_source


@dataclass(frozen=True)
class CheckResult:
    system: str
    ok: bool
    detail: str


def check(loaded: LoadedJob, verbose: bool = False) -> list[CheckResult]:
    results = []
    try:
        with quiet_rdkafka(verbose), KafkaConnection(loaded.job.kafka) as kafka:
            results.append(CheckResult("kafka", True, f"reachable at {kafka.bootstrap}"))
    except KanalError as exc:
        results.append(CheckResult("kafka", False, exc.message))
    source = make_source(loaded)
    try:
        source.check()
        results.append(CheckResult(f"source ({loaded.job.source.connector})", True, "reachable"))
    except KanalError as exc:
        results.append(CheckResult(f"source ({loaded.job.source.connector})", False, exc.message))
    finally:
        source.close()
    for plan in loaded.sinks:
        sink = make_sink(plan)
        try:
            sink.check()
            results.append(CheckResult(f"sink {plan.name} ({plan.connector.name})", True, "reachable"))
        except KanalError as exc:
            results.append(CheckResult(f"sink {plan.name} ({plan.connector.name})", False, exc.message))
        finally:
            sink.close()
    return results
