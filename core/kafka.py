"""Kafka transport: typed settings, broker reachability, topics, producer, consumer.

All librdkafka access goes through here, so connectors never see Kafka and the
job runners never see librdkafka's dictionaries. `bootstrap_servers:
embedded` starts the embedded broker for the life of the command.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kanal.core.embedded import EmbeddedBroker
from kanal.core.errors import BrokerUnavailable, InvalidKey, register_secret
from kanal.core.places import did_you_mean

log = logging.getLogger("kanal.kafka")
# librdkafka reports every refused connection while it retries; keep that out
# of the user's terminal unless asked for (-v).
rdkafka_log = logging.getLogger("kanal.librdkafka")

_SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret")


class KafkaSettings(BaseModel):
    """The `kafka:` block of a job. Keys with a dot are librdkafka settings, passed through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    bootstrap_servers: str = Field("embedded", description="'embedded' or host:port[,host:port]")
    topic_prefix: str = Field("kanal", pattern=r"^[A-Za-z0-9._-]+$", description="topics are <prefix>.<entity>")
    partitions: int = Field(4, ge=1, le=1024, description="partitions of topics Kanal creates")
    replication_factor: int = Field(1, ge=1, description="replication of topics Kanal creates")
    connect_timeout_s: float = Field(20.0, gt=0, description="how long to retry reaching the broker at start")
    session_timeout_ms: int | None = Field(
        None, ge=1000, description="consumer session timeout; joins take half of it (default 1500 embedded, 6000 otherwise)"
    )

    @model_validator(mode="after")
    def _check_passthrough(self) -> KafkaSettings:
        for key, value in (self.model_extra or {}).items():
            if "." not in key:
                known = [f.alias or name for name, f in type(self).model_fields.items()]
                raise InvalidKey(key, f"unknown setting {key!r} (known: {', '.join(known)}; librdkafka settings "
                                      f"contain a dot, e.g. security.protocol){did_you_mean(key, known)}")
            if not isinstance(value, str | int | float | bool):
                raise InvalidKey(key, "must be a string, number or boolean")
            if key in _SECRET_KEYS:
                register_secret(str(value))
        return self

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers == "embedded"

    @property
    def session_timeout(self) -> int:
        """Real brokers refuse sessions under 6 s by default; the embedded one takes short ones."""
        return self.session_timeout_ms or (1500 if self.embedded else 6000)

    def client_config(self, bootstrap: str) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": rdkafka_log}
        conf.update(self.model_extra or {})
        return conf

    def topic(self, entity: str) -> str:
        return f"{self.topic_prefix}.{entity}"

    def dlq_topic(self, job: str) -> str:
        return f"{self.topic_prefix}.dlq.{job}"


class KafkaConnection:
    """A reachable broker: the embedded one started here, or a configured cluster."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._broker: EmbeddedBroker | None = None
        self.bootstrap = settings.bootstrap_servers

    def open(self) -> KafkaConnection:
        if self.settings.embedded:
            self._broker = EmbeddedBroker().start()
            self.bootstrap = self._broker.bootstrap
        self.wait_until_reachable()
        return self

    def close(self) -> None:
        if self._broker:
            self._broker.stop()
            self._broker = None

    def __enter__(self) -> KafkaConnection:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def config(self, **overrides: Any) -> dict[str, Any]:
        conf = self.settings.client_config(self.bootstrap)
        conf.update(overrides)
        return conf

    def wait_until_reachable(self) -> None:
        """Retry metadata requests for `connect_timeout_s`, then fail clearly."""
        admin = AdminClient(self.config())
        deadline = time.monotonic() + self.settings.connect_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except KafkaException as exc:
                last = exc
        raise BrokerUnavailable(
            f"kafka {self.bootstrap}",
            f"not reachable after {self.settings.connect_timeout_s:.0f}s ({_describe(last)}); "
            "check kafka.bootstrap_servers and that the broker is running",
        )

    def ensure_topics(self, names: list[str], compact: bool) -> None:
        """Create missing topics; entity-state topics are compacted."""
        admin = AdminClient(self.config())
        existing = set(admin.list_topics(timeout=10).topics)
        config = {"cleanup.policy": "compact"} if compact else {}
        new = [
            NewTopic(n, self.settings.partitions, self.settings.replication_factor, config=config)
            for n in names
            if n not in existing
        ]
        if not new:
            return
        for name, future in admin.create_topics(new, operation_timeout=10).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerUnavailable(f"kafka {self.bootstrap}", f"cannot create topic {name}: {_describe(exc)}") from None

    def delete_topics(self, names: list[str], timeout_s: float = 30.0) -> None:
        """Delete topics (missing ones are fine) and return once the broker no longer lists them.

        Waiting for the metadata matters: a topic still listed would not be
        created again by `ensure_topics`, and would then vanish under it.
        """
        admin = AdminClient(self.config())
        for name, future in admin.delete_topics(names, operation_timeout=timeout_s).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise BrokerUnavailable(f"kafka {self.bootstrap}", f"cannot delete topic {name}: {_describe(exc)}") from None
        deadline = time.monotonic() + timeout_s
        while set(names) & set(admin.list_topics(timeout=10).topics):
            if time.monotonic() > deadline:
                listed = ", ".join(names)
                raise BrokerUnavailable(f"kafka {self.bootstrap}", f"topics {listed} still listed {timeout_s:.0f}s after deletion")
            time.sleep(0.05)

    def partitions_of(self, topic: str) -> int:
        md = AdminClient(self.config()).list_topics(topic, timeout=10)
        return len(md.topics[topic].partitions)

    def ends(self, topic: str) -> list[tuple[int, int]]:
        """(first offset held, offset after the last message) of every partition of `topic`.

        The broker's answer to "list offsets" is not enough: Tansu (`kanal
        broker`, the embedded broker) answers the offset after the *first*
        record of a partition's last batch, so a batch of 46 records reads as
        one. A fetch's end of partition is right on every broker, so each
        partition that holds anything is read from its last listed offset to
        its end: one batch at most.
        """
        settings = {"enable.partition.eof": True, "fetch.wait.max.ms": 10}
        consumer = self.consumer(f"{self.settings.topic_prefix}.ends", **settings)
        try:
            parts = range(self.partitions_of(topic))
            listed = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts]
            ends = [high for _, high in listed]
            probing = {p for p, (low, high) in enumerate(listed) if high > low}
            consumer.assign([TopicPartition(topic, p, listed[p][1] - 1) for p in probing])
            deadline = time.monotonic() + 10
            while probing:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"kafka {self.bootstrap}", f"no end of topic {topic} reached within 10s")
                for msg in consume_ready(consumer, 1000, 0.1):
                    if msg.error() is None:
                        ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)
                    elif msg.error().code() == KafkaError._PARTITION_EOF:
                        ends[msg.partition()] = max(ends[msg.partition()], msg.offset())
                        probing.discard(msg.partition())
            return [(low, end) for (low, _), end in zip(listed, ends, strict=True)]
        finally:
            consumer.close()

    def size(self, topic: str) -> int:
        """Messages `topic` holds now (all partitions)."""
        return sum(end - low for low, end in self.ends(topic))

    def lag(self, group: str, topic: str) -> int:
        """Messages of `topic` the consumer group has not committed yet (all partitions)."""
        ends = self.ends(topic)
        consumer = self.consumer(group)
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in range(len(ends))], timeout=10)
            at = [tp.offset if tp.offset >= 0 else low for tp, (low, _) in zip(committed, ends, strict=True)]
            return sum(max(0, end - offset) for offset, (_, end) in zip(at, ends, strict=True))
        finally:
            consumer.close()

    def consumer(self, group: str, **overrides: Any) -> Consumer:
        conf = self.config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self.settings.session_timeout,
                "heartbeat.interval.ms": max(300, self.settings.session_timeout // 5),
                "fetch.max.bytes": 16 * 1024 * 1024,
                "queued.max.messages.kbytes": 4 * 1024,
            }
        )
        conf.update(overrides)
        return Consumer(conf)


def consume_ready(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to `max_messages`, waiting at most `timeout` for the first one only.

    `Consumer.consume(n, timeout)` returns early only once it holds `n`
    messages: with fewer arriving, as in a trickle of live changes, it waits
    out its whole timeout, and a loop around it adds that wait to every
    message's latency. This returns as soon as there is something, with
    whatever else is already fetched.
    """
    first = consumer.consume(num_messages=1, timeout=timeout)
    if not first or max_messages <= 1:
        return first
    return first + consumer.consume(num_messages=max_messages - 1, timeout=0)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return str(exc) if exc else "no answer"


AckCallback = Callable[[KafkaError | None], None]


class BoundedProducer:
    """An idempotent producer whose unacknowledged messages are bounded.

    `send` takes a slot before producing and the delivery report frees it, so
    a slow broker slows the sources down (backpressure falls out of acks). A
    background thread serves delivery reports.
    """

    def __init__(self, connection: KafkaConnection, max_in_flight: int = 32, **overrides: Any) -> None:
        conf = connection.config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.max.bytes": 16 * 1024 * 1024,
                "queue.buffering.max.kbytes": 256 * 1024,
            }
        )
        conf.update(overrides)
        self._producer = Producer(conf)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kanal-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.05)

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_ack: AckCallback,
    ) -> None:
        self._slots.acquire()

        def delivered(err: KafkaError | None, _msg: object) -> None:
            self._slots.release()
            on_ack(err)

        kwargs: dict[str, Any] = {"value": value, "key": key, "headers": headers, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                time.sleep(0.005)  # the local queue is full: the poller drains it

    def send_records(
        self, topic: str, records: Iterable[tuple[bytes, bytes | None, int, list[tuple[str, bytes]]]], on_ack: AckCallback
    ) -> None:
        """Send many keyed (key, value, partition, headers) messages sharing one delivery callback.

        The per-record path of deltas: one callback object for the lot instead
        of one closure per message keeps the Python cost per record low.
        """
        slots, produce = self._slots, self._producer.produce

        def delivered(err: KafkaError | None, _msg: object) -> None:
            slots.release()
            on_ack(err)

        for key, value, partition, headers in records:
            slots.acquire()
            while True:
                try:
                    produce(topic, value=value, key=key, partition=partition, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    time.sleep(0.005)  # the local queue is full: the poller drains it

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._closing.set()
        self._poller.join(timeout=2)

    def abandon(self) -> None:
        """Drop what is not acknowledged yet and stop, without waiting for a broker that may be gone.

        For callers that keep what they sent until it is acknowledged (a
        journal): they send it again with a new producer. The dropped
        messages' delivery reports carry a purge error.
        """
        self._producer.purge()
        self._producer.flush(0)
        self._closing.set()
        self._poller.join(timeout=2)


@contextlib.contextmanager
def quiet_rdkafka(verbose: bool) -> Iterator[None]:
    """Show librdkafka's own log lines only in verbose mode."""
    previous = rdkafka_log.level
    rdkafka_log.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    try:
        yield
    finally:
        rdkafka_log.setLevel(previous)
