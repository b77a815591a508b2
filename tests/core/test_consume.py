"""`consume_ready` hands a trickle over as it comes, where `Consumer.consume(n, timeout)` waits out its timeout."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from kanal.core.embedded import EmbeddedBroker
from kanal.core.kafka import consume_ready


def test_fewer_messages_than_asked_for_come_at_once_not_after_the_timeout() -> None:
    with EmbeddedBroker() as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        for value in (b"a", b"b", b"c"):
            producer.produce("trickle", value, partition=0)
        producer.flush(10)
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "trickle", "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition("trickle", 0, OFFSET_BEGINNING)])
            started = time.monotonic()
            got = consume_ready(consumer, 1000, timeout=10)
            while len(got) < 3 and time.monotonic() - started < 10:  # the first fetch may bring only part of them
                got += consume_ready(consumer, 1000, timeout=10)
            elapsed = time.monotonic() - started
        finally:
            consumer.close()
    assert [m.value() for m in got] == [b"a", b"b", b"c"]
    assert elapsed < 5  # Consumer.consume(1000, timeout=10) returns these three after 10 s
