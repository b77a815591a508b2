"""A store offline while it sells, a count taken at the centre meanwhile, then reconnected: the aggregator's
levels equal those of a store that was never offline, and the store's own figure equals the centre's."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pytest

from kanal.core.embedded import EmbeddedBroker, free_port
from kanal.core.inventory import Ledger
from kanal.jobs.edge import EdgeOptions
from kanal.jobs.edge_agent import Agent
from kanal.jobs.load import load_job
from tests.edge.conftest import write_job
from tests.waiting import wait_for

inventory = pytest.importorskip("kanal.jobs.inventory")


def frame(*rows: tuple[str, str, str, str, str]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["event_id", "sku", "delta", "reason", "occurred_at"], orient="row")


def test_reconnected_store_converges_with_the_aggregator(tmp_path: Path) -> None:
    port = free_port()
    loaded = load_job(write_job(tmp_path, f"127.0.0.1:{port}"))
    before = frame(("r1", "A", "40", "receipt", "2026-03-01T08:00:00Z"), ("s1", "A", "-3", "sale", "2026-03-01T09:00:00Z"))
    offline = frame(("s2", "A", "-2", "sale", "2026-03-01T13:20:00Z"), ("s3", "B", "-1", "sale", "2026-03-01T13:25:00Z"),
                    ("r2", "B", "9", "receipt", "2026-03-01T12:00:00Z"))  # fmt: skip
    count = frame(("count-A", "A", "30", "count", "2026-03-01T13:30:00Z"))  # counted while the store was offline
    stop = threading.Event()
    agent = Agent(loaded, EdgeOptions("S1", tmp_path / "journal"), stop, retry_s=0.2)
    broker = EmbeddedBroker(port=port)
    try:
        agent.start()
        agent.edge.take(pl.concat([before, offline, count]))  # all taken while the broker is away
        assert agent.status()["backlog"] == 6
        broker.start()
        wait_for(lambda: agent.edge.journal.stats().backlog == 0, 30, "the backlog to be forwarded")
        inventory.run(loaded, once=True)

        never_offline = Ledger(tmp_path / "reference.sqlite", loaded.job.inventory)
        in_order = pl.concat([before, frame(*offline.rows()[:1]), count, frame(*offline.rows()[1:])])
        never_offline.apply_frame(in_order.with_columns(location=pl.lit("S1")))
        ledgers = [Ledger(p, loaded.job.inventory) for p in sorted((loaded.state_dir / "inventory").glob("ledger-p*.sqlite"))]
        central = pl.concat([ledger.levels() for ledger in ledgers]).sort("sku")
        assert central.drop("version", "updated_at").equals(never_offline.levels().sort("sku").drop("version", "updated_at"))
        assert central.filter(pl.col("sku") == "A")["on_hand"].item() == 30  # the 13:20 sale is before the count
        for sku in ("A", "B"):
            local = agent.edge.availability(sku)
            assert local["on_hand"] == never_offline.level(sku, "S1").on_hand
            assert local["channels"]["store"] == next(
                ledger.availability(sku, "store") for ledger in ledgers if ledger.level(sku, "S1").version
            )
    finally:
        agent.close()
        broker.stop()


def test_a_store_agent_with_a_new_journal_takes_its_stores_earlier_movements_from_the_topic(tmp_path: Path) -> None:
    """The store PC is replaced: the new agent's journal is empty, and its figures come back from the topic.

    An agent skips its own movements coming back from the topic when its journal holds them (it applied them
    from there); the earlier journal's are not in the new one, so they must be taken.
    """
    port = free_port()
    loaded = load_job(write_job(tmp_path, f"127.0.0.1:{port}"))
    with EmbeddedBroker(port=port):
        old = Agent(loaded, EdgeOptions("S1", tmp_path / "old-journal"), threading.Event(), retry_s=0.2)
        try:
            old.start()
            old.edge.take(frame(("r1", "A", "40", "receipt", "2026-03-01T08:00:00Z"),
                                ("s1", "A", "-3", "sale", "2026-03-01T09:00:00Z")))  # fmt: skip
            wait_for(lambda: old.edge.journal.stats().backlog == 0, 30, "the old agent to forward its movements")
        finally:
            old.close()
        new = Agent(loaded, EdgeOptions("S1", tmp_path / "new-journal"), threading.Event(), retry_s=0.2)
        try:
            new.start()
            new.edge.take(frame(("s2", "A", "-1", "sale", "2026-03-01T10:00:00Z")))
            wait_for(lambda: new.edge.availability("A")["on_hand"] == 36, 30,
                     "the new agent to take the store's earlier movements")  # fmt: skip
        finally:
            new.close()
