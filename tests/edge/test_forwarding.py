"""Forwarding through a broker outage in the middle of a stream, and what counts as forwarded."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl

from kanal.core.embedded import EmbeddedBroker, free_port
from kanal.core.journal import Entry
from kanal.core.model import STOCK_MOVEMENT
from kanal.jobs.edge import EdgeOptions
from kanal.jobs.edge_agent import Agent
from kanal.jobs.edge_kafka import Batch
from kanal.jobs.load import load_job
from tests.edge.conftest import write_job
from tests.edge.test_offline import read_topic
from tests.waiting import wait_for


def sales(first: int, count: int) -> pl.DataFrame:
    ids = [f"sale-{i}" for i in range(first, first + count)]
    return pl.DataFrame({"event_id": ids, "sku": [f"SKU-{i % 5}" for i in range(first, first + count)],
                         "delta": ["-1"] * count, "reason": ["sale"] * count})  # fmt: skip


def test_only_what_the_broker_acknowledged_before_a_gap_in_its_partition_counts_as_forwarded() -> None:
    entries = [Entry(seq, f"k{seq}", b"") for seq in range(1, 7)]
    partitions = [0, 1, 0, 1, 0, 2]
    batch = Batch(6)
    for index in (0, 1, 3, 4, 5):  # the third message (partition 0) was never acknowledged
        batch.ack(index, None)
    # partition 0: the 5th waits for the 3rd, so it goes again after it; partitions 1 and 2 are complete
    assert batch.forwarded(entries, partitions) == [1, 2, 4, 6]


def test_forwarding_resumes_after_the_broker_restarts_without_its_data(tmp_path: Path) -> None:
    port = free_port()
    loaded = load_job(write_job(tmp_path, f"127.0.0.1:{port}"))
    topic = loaded.job.kafka.topic(STOCK_MOVEMENT.name)
    stop = threading.Event()
    agent = Agent(loaded, EdgeOptions("S1", tmp_path / "journal"), stop, stall_s=1.0, retry_s=0.2)
    broker = EmbeddedBroker(port=port).start()
    try:
        agent.start()
        agent.edge.take(sales(0, 40))
        wait_for(lambda: agent.edge.journal.stats().backlog == 0, 30, "the first movements to be forwarded")
        broker.stop()  # the broker goes away with everything it held (it keeps data in memory)
        agent.edge.take(sales(40, 60))
        assert agent.status()["backlog"] == 60
        broker.start()
        wait_for(lambda: agent.edge.journal.stats().backlog == 0, 30, "the movements taken during the outage")
        ids = [str(record["event_id"]) for _, record, _ in read_topic(broker.bootstrap, topic)]
        assert set(ids) == {f"sale-{i}" for i in range(40, 100)}  # none lost (a duplicate would be harmless)
        first_seen = list(dict.fromkeys(ids))
        for sku in range(5):  # in the order they were taken, per sku
            numbers = [int(i.split("-")[1]) for i in first_seen if int(i.split("-")[1]) % 5 == sku]
            assert numbers == sorted(numbers)
    finally:
        agent.close()
        broker.stop()
