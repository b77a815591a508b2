"""A store that is offline, killed and restarted: every journaled movement reaches the topic once, in order,
and the central ledger ends where a store that never went offline would have brought it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import httpx
import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from kanal.core import wire
from kanal.core.embedded import EmbeddedBroker, free_port
from kanal.core.inventory import Ledger
from kanal.core.kafka import KafkaConnection, KafkaSettings
from kanal.core.model import STOCK_MOVEMENT
from kanal.jobs.load import load_job
from tests.conftest import KANAL
from tests.edge.conftest import TOKEN, write_job
from tests.waiting import wait_for

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
SKUS = [f"SKU-{i}" for i in range(8)]


def movements() -> list[dict[str, object]]:
    """A store's day: receipts, sales, a count in the middle (with sales recorded before it), returns."""
    day: list[dict[str, object]] = []
    for minute in range(120):
        sku = SKUS[minute % len(SKUS)]
        at = (T0 + dt.timedelta(minutes=minute)).isoformat()
        if minute < len(SKUS):
            day.append({"event_id": f"rcv-{sku}", "sku": sku, "delta": 30, "reason": "receipt", "occurred_at": at})
        elif minute == 60:
            day.append({"event_id": "count-SKU-4", "sku": "SKU-4", "delta": 20, "reason": "count", "occurred_at": at})
        elif minute % 7 == 0:
            day.append({"event_id": f"ret-{minute}", "sku": sku, "delta": 1, "reason": "return", "occurred_at": at})
        else:
            day.append({"event_id": f"sale-{minute}", "sku": sku, "delta": -1, "reason": "sale", "occurred_at": at})
    return [{**m, "location": "S1"} for m in day]


def read_topic(bootstrap: str, topic: str) -> list[tuple[int, dict[str, object], dict[str, str]]]:
    """Every message of the topic: (partition, record, headers), in partition order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    try:
        size = KafkaConnection(KafkaSettings(bootstrap_servers=bootstrap)).size(topic)
        partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        read: list[tuple[int, dict[str, object], dict[str, str]]] = []
        while len(read) < size:
            for msg in consumer.consume(500, timeout=1):
                if msg.error() is None:
                    read.append((msg.partition(), json.loads(msg.value()), wire.headers_of(msg.headers())))
        return read
    finally:
        consumer.close()


class Store:
    """`kanal edge` as a subprocess, and a client of its API."""

    def __init__(self, job: Path, journal: Path) -> None:
        self.port = free_port()
        self.args = [*KANAL, "-v", "edge", str(job), "--store", "S1", "--journal", str(journal), "--port", str(self.port)]
        self.log = journal.parent / "edge.log"  # a file: a pipe nobody reads could fill up and stall the agent
        self.env = {**os.environ, "KANAL_EDGE_TOKENS": f"old-token-0123456789,{TOKEN}"}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {TOKEN}"},
                                 timeout=10)  # fmt: skip
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Store:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log, text=True)
        wait_for(lambda: self.http.get("/status").status_code == 200, 30, "the agent to serve")
        return self

    def post(self, records: list[dict[str, object]]) -> dict[str, int]:
        answer = self.http.post("/movements", json=records)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def status(self) -> dict[str, object]:
        return self.http.get("/status").json()


def test_offline_store_killed_and_restarted_forwards_every_movement_once_in_order(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    job = write_job(tmp_path, bootstrap)
    topic = load_job(job).job.kafka.topic(STOCK_MOVEMENT.name)
    day = movements()
    store = Store(job, tmp_path / "journal").start()  # the broker is not there: the store is offline
    broker = EmbeddedBroker(port=int(bootstrap.rsplit(":", 1)[1]))
    try:
        assert store.post(day[:50])["new"] == 50
        assert store.post(day[30:70]) == {"records": 40, "new": 20, "duplicate": 20, "backlog": 70}
        assert store.status()["broker"]["connected"] is False

        assert store.proc is not None
        store.proc.send_signal(signal.SIGKILL)
        store.proc.wait(timeout=10)
        store.start()  # the same journal: nothing taken was lost
        assert store.status()["backlog"] == 70
        assert store.post(day[70:])["new"] == len(day) - 70

        reference = Ledger(tmp_path / "never-offline.sqlite")  # the central ledger of a store that was always online
        reference.apply_frame(pl.DataFrame(day, schema={k: pl.String for k in day[0]}))
        for sku in SKUS:
            local = store.http.get(f"/availability/{sku}").json()
            assert local["on_hand"] == reference.level(sku, "S1").on_hand, sku

        broker.start()  # back online
        wait_for(lambda: store.status()["backlog"] == 0, 60, "the backlog to be forwarded")
        assert store.status()["broker"]["forwarded"] == len(day)

        read = read_topic(bootstrap, topic)
        ids = [record["event_id"] for _, record, _ in read]
        assert sorted(ids) == sorted(m["event_id"] for m in day)  # every one, exactly once
        posted = {m["event_id"]: i for i, m in enumerate(day)}
        by_key: dict[str, list[int]] = defaultdict(list)
        for partition, record, headers in read:
            assert partition == wire.partition_of(pl.Series([record["sku"]]), 3)[0]  # partitioned by sku
            assert (headers[wire.H_ENTITY], headers[wire.H_FORMAT], headers[wire.H_SOURCE]) == ("stock_movements", "json", "edge:S1")
            by_key[str(record["sku"])].append(posted[str(record["event_id"])])
        assert all(order == sorted(order) for order in by_key.values())  # in journal order per (sku, location)

        central = Ledger(tmp_path / "central.sqlite")
        central.apply_frame(wire.messages_frame([(json.dumps(r).encode(), h) for _, r, h in read], STOCK_MOVEMENT.schema))
        assert central.levels().drop("version", "updated_at").equals(reference.levels().drop("version", "updated_at"))

        # a transfer booked centrally (warehouse -> store) reaches the store's own figure
        transfer = {"event_id": "wh-transfer-1", "sku": "SKU-1", "location": "S1", "delta": "6", "reason": "transfer_in",
                    "occurred_at": "2026-03-01T12:00:00+00:00", "source": "erp", "_kanal_key": "wh-transfer-1"}  # fmt: skip
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, json.dumps(transfer).encode(), key=b"wh-transfer-1",
                         partition=wire.partition_of(pl.Series(["SKU-1"]), 3)[0], headers=[(wire.H_FORMAT, b"json")])  # fmt: skip
        producer.flush(10)
        expected = reference.level("SKU-1", "S1").on_hand + 6
        wait_for(lambda: store.http.get("/availability/SKU-1").json()["on_hand"] == expected, 30, "the central transfer")
        assert store.status()["backlog"] == 0  # what came from the centre is not sent back

        store.proc.send_signal(signal.SIGTERM)
        assert store.proc.wait(timeout=20) == 0
        logged = store.log.read_text()
        assert "POST /movements" in logged and "serves http://127.0.0.1" in logged  # debug logs were on
        assert TOKEN not in logged and "old-token" not in logged
    finally:
        if store.proc is not None and store.proc.poll() is None:
            store.proc.kill()
        broker.stop()
