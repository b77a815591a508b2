"""Snapshot chunks shared by every process of a job, through Kafka.

With a durable broker, several `kanal` processes may run one job. The
snapshot plan then goes to a work topic, `<prefix>.<job>.snapshot`, one
message per chunk; every process consumes it in one consumer group, reads
the chunks it is given, and commits a chunk's message only when the broker
acknowledged every record of it. A process that dies leaves its chunks
uncommitted, and the group hands them to another. The migration is complete
when the group has committed every chunk, and every sink group has consumed
every record (`wait_consumed`); any process may then build the deferred keys.

Who plans: a process that finds chunks still uncommitted joins that
migration; one that finds none starts a new one (an explicit `kanal migrate`),
or (`kanal run`) takes an earlier, completed one as done. Start the first
worker, then the others: two starting at the same instant would both plan,
which doubles the work but not the data.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
from confluent_kafka import Message

from kanal.core import logs
from kanal.core.connector import Chunk
from kanal.core.errors import Unreachable
from kanal.core.kafka import BoundedProducer, KafkaConnection
from kanal.jobs.load import LoadedJob

log = logging.getLogger("kanal.shared")


def work_topic(loaded: LoadedJob) -> str:
    return f"{loaded.job.kafka.topic_prefix}.{loaded.name}.snapshot"


class SharedSnapshot:
    def __init__(self, loaded: LoadedJob, kafka: KafkaConnection) -> None:
        self.loaded, self.kafka = loaded, kafka
        self.topic = self.group = work_topic(loaded)
        kafka.ensure_topics([self.topic], compact=False)

    def pending(self) -> int:
        """Chunks planned and not yet committed by any process."""
        return self.kafka.lag(self.group, self.topic)

    def completed_before(self) -> bool:
        """A migration was planned here earlier and every chunk of it is committed."""
        return self.pending() == 0 and self.kafka.size(self.topic) > 0

    def publish_plan(self, producer: BoundedProducer, plans: dict[str, list[Chunk]]) -> int:
        """Put every chunk on the work topic (spread over its partitions); wait for the broker."""
        partitions = self.kafka.partitions_of(self.topic)
        errors: list[str] = []
        chunks = [(e, c) for e, cs in plans.items() for c in cs]
        for i, (entity, chunk) in enumerate(chunks):
            value = orjson.dumps({"entity": entity, "id": chunk.id, "spec": chunk.spec, "rows": chunk.estimated_rows})

            def acked(err: object, name: str = chunk.id) -> None:
                if err is not None:
                    errors.append(f"{name}: {err}")

            producer.send(self.topic, value, key=chunk.id.encode(), partition=i % partitions, on_ack=acked)
        producer.flush()
        if errors:
            raise Unreachable("kafka", f"snapshot plan not accepted by the broker: {errors[0]}")
        return len(chunks)

    def work(self, handle: Callable[[str, Chunk], None], workers: int, failed: Callable[[], None]) -> None:
        """Run `workers` group members that read chunks until every chunk of the plan is committed.

        `handle` reads, publishes and waits for the broker's acks of one chunk;
        `failed` raises when a delivery broke.
        """
        done = threading.Event()

        def member(index: int) -> None:
            consumer = self.kafka.consumer(self.group, **{"max.poll.interval.ms": 3_600_000})
            consumer.subscribe([self.topic])
            try:
                while not done.is_set():
                    failed()
                    msg: Message | None = consumer.poll(0.5)
                    if msg is None or msg.error() is not None:
                        if index == 0 and self.pending() == 0:
                            done.set()
                        continue
                    item = orjson.loads(msg.value())
                    handle(item["entity"], Chunk(item["id"], item["spec"], item.get("rows")))
                    consumer.commit(message=msg, asynchronous=False)
            finally:
                consumer.close()

        with ThreadPoolExecutor(workers, thread_name_prefix="kanal-snapshot") as pool:
            futures = [pool.submit(logs.in_context(member), i) for i in range(workers)]  # their logs name the job
            try:
                for f in futures:
                    f.result()
            finally:
                done.set()
