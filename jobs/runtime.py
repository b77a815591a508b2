"""Building blocks shared by the runners: connectors, transforms, state folders."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


from kanal.core.changes import identity
from kanal.core.channels import ChannelPublisher
from kanal.core.connector import Sink, Source, Transform
from kanal.core.deliver import SinkDelivery, SinkFlow
from kanal.core.dlq import DeadLetterStore
from kanal.core.kafka import BoundedProducer, KafkaConnection
from kanal.core.inventory import ChannelRules
from kanal.core.model import AVAILABILITY
from kanal.core.model import entity as canonical
from kanal.core.progress import Metrics
from kanal.core.receipts import Receipts
from kanal.core.sinkmemory import SinkMemory
from kanal.jobs.model import ErrorPolicy
from kanal.jobs.load import EntityPlan, LoadedJob, SinkPlan
from kanal.mappings import load_mapping


def source_transform(plan: EntityPlan) -> Transform:
    """The source mapping of an entity (raw columns -> canonical), or identity."""
    return load_mapping(plan.mapping).apply if plan.mapping else identity


def sink_transform(plan: EntityPlan) -> Transform:
    """The sink mapping (canonical -> target columns), or identity; `keeping_engine_columns` carries the key across it."""
    return load_mapping(plan.mapping).apply if plan.mapping else identity


def make_source(loaded: LoadedJob) -> Source:
    assert loaded.source.source is not None
    return loaded.source.source(loaded.source_config)


def make_sink(loaded: LoadedJob, plan: SinkPlan) -> Sink:
    """A sink instance with the job's memory of that sink attached (`Sink.attach`)."""
    assert plan.connector.sink is not None
    sink = plan.connector.sink(plan.config)
    sink.attach(sink_memory(loaded, plan.name))
    return sink


def sink_memory(loaded: LoadedJob, sink: str) -> SinkMemory:
    """The durable memory of one sink of the job (ids in its system, what it last wrote)."""
    return SinkMemory(loaded.state_dir / "sinks" / f"{sink}.sqlite")


def write_guard(loaded: LoadedJob, plan: SinkPlan) -> SinkMemory | None:
    """The memory the engine checks a sink's writes against, for sinks declaring `skip_unchanged`."""
    return sink_memory(loaded, plan.name) if plan.connector.capabilities.skip_unchanged else None


def channel_outbox(loaded: LoadedJob, plan: SinkPlan) -> ChannelPublisher | None:
    """The outbox `availability` goes through to a sink that meters its calls (`core.channels`), else None.

    Tables and read models (PostgreSQL, Redis) take every change as it
    comes; an API sink (a declared call rate, or a memory of what it sent)
    gets availability coalesced, decreases first, within the channels'
    `max_updates_per_key_per_day`.
    """
    caps = plan.connector.capabilities
    if AVAILABILITY.name not in plan.entities or not (caps.rate_limit_per_s or caps.skip_unchanged):
        return None
    rules = loaded.job.inventory or ChannelRules()
    daily = {n: c.max_updates_per_key_per_day for n, c in rules.channels.items() if c.max_updates_per_key_per_day}
    path = loaded.state_dir / "sinks" / f"{plan.name}.channels.sqlite"
    return ChannelPublisher(path, window_s=rules.publish_window_ms / 1000, daily=daily)


def dead_letter_store(loaded: LoadedJob) -> DeadLetterStore:
    return DeadLetterStore(loaded.state_dir / "dlq")


def report_dir(loaded: LoadedJob) -> Path:
    return loaded.state_dir


def wait_consumed(loaded: LoadedJob, kafka: KafkaConnection, topics: dict[str, str], failed: Callable[[], None]) -> None:
    """Durable broker: wait until every sink's consumer group (in any process) has committed every message.

    Only then may deferred work that assumes all records are written (building
    keys after a bulk load) run. `failed` raises if a local delivery broke.
    """
    if loaded.job.kafka.embedded:
        return
    prefix = loaded.job.kafka.topic_prefix
    while True:
        failed()
        lag = sum(
            kafka.lag(f"{prefix}.{loaded.name}.{plan.name}", topics[e]) for plan in loaded.sinks for e in plan.entities
        )
        if lag == 0:
            return
        time.sleep(0.2)


def build_deliveries(
    loaded: LoadedJob,
    kafka: KafkaConnection,
    sinks: dict[str, list[Sink]],
    *,
    receipts: Receipts,
    dead_letters: DeadLetterStore,
    producer: BoundedProducer,
    topics: dict[str, str],
    partitions: dict[str, int],
    attempt: str,
    metrics: Metrics,
    fresh_topics: bool = False,
) -> list[SinkDelivery]:
    """One delivery (consumer + writers) per sink of the job.

    With the embedded broker no other process can share the work, so
    partitions are assigned directly (no group join); with a real broker the
    consumers join the sink's group and Kafka spreads partitions over every
    process running the job. `fresh_topics`: the embedded broker's topics were
    just created anew (a stream recycling them), so they are read from offset 0.
    """
    job = loaded.job
    deliveries = []
    for plan in loaded.sinks:
        flows = {e: SinkFlow(canonical(e), ep.options, sink_transform(ep)) for e, ep in plan.entities.items()}
        deliveries.append(
            SinkDelivery(
                name=plan.name,
                job=job.name,
                connection=kafka,
                instances=sinks[plan.name],
                flows=flows,
                topics={topics[e]: e for e in flows},
                receipts=receipts,
                dead_letters=dead_letters,
                dlq_producer=producer,
                dlq_topic=job.kafka.dlq_topic(job.name),
                use_dlq=job.errors.policy == ErrorPolicy.DLQ,
                retry=job.errors.retry,
                batch_rows=job.batch.sink_rows,
                capabilities=plan.connector.capabilities,
                attempt=attempt,
                metrics=metrics,
                partitions={topics[e]: partitions[e] for e in flows} if job.kafka.embedded else None,
                from_start=fresh_topics,
                memory=write_guard(loaded, plan),
                channels=channel_outbox(loaded, plan),
            )
        )
    return deliveries
