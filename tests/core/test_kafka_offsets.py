"""How much a topic holds and a group has left, counted right on the embedded broker (Tansu).

Tansu lists a partition's end as the offset after the first record of its
last batch; a migration shared by several workers took its chunks as all done
while the tail of a batch of them was still unread.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import Producer, TopicPartition

from kanal.core.embedded import EmbeddedBroker
from kanal.core.kafka import KafkaConnection, KafkaSettings


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaConnection]:
    with EmbeddedBroker() as b:
        yield KafkaConnection(KafkaSettings(bootstrap_servers=b.bootstrap)).open()


def produce_batched(kafka: KafkaConnection, topic: str, count: int) -> None:
    """`count` records, round robin over the partitions, sent in as few batches as the producer can."""
    producer = Producer(kafka.config(**{"linger.ms": 200}))
    for i in range(count):
        producer.produce(topic, b"chunk %d" % i, partition=i % kafka.settings.partitions)
    assert producer.flush(30) == 0


def test_a_topic_written_in_batches_holds_every_record(kafka: KafkaConnection) -> None:
    kafka.ensure_topics(["sized"], compact=False)
    produce_batched(kafka, "sized", 46)
    assert kafka.size("sized") == 46
    assert [end for _, end in kafka.ends("sized")] == [12, 12, 11, 11]


def test_a_group_that_committed_part_of_a_batch_still_has_the_rest_to_read(kafka: KafkaConnection) -> None:
    kafka.ensure_topics(["work"], compact=False)
    produce_batched(kafka, "work", 182)
    assert kafka.lag("members", "work") == 182
    consumer = kafka.consumer("members")
    try:  # the first record of each partition's batch is handled and committed, as a worker does
        consumer.commit(offsets=[TopicPartition("work", p, 1) for p in range(4)], asynchronous=False)
    finally:
        consumer.close()
    assert kafka.lag("members", "work") == 178


def test_an_empty_topic_is_empty(kafka: KafkaConnection) -> None:
    kafka.ensure_topics(["nothing"], compact=False)
    assert kafka.size("nothing") == 0
    assert kafka.lag("anyone", "nothing") == 0
