"""Two kanal processes on one job and a shared (non-embedded) broker share the stream.

The broker is `kanal broker` in its own process, so the job is not `embedded`:
sinks join Kafka consumer groups, and the CDC slot is read by whichever
process holds the job's lock. Stopping one process hands its partitions and
the slot to the other without loss.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import KANAL, Cli, Databases
from tests.streaming import erp
from tests.waiting import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def broker() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([*KANAL, "broker", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), 30, "the broker to listen")
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


class Lines:
    """Collects a process's stderr lines in the background (the pipe must not fill up)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=lambda: self.lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        self._thread.start()

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))


def test_two_workers_share_a_job_and_one_stops_mid_stream(cli: Cli, dbs: Databases, broker: str) -> None:
    erp.seed(dbs.erp, products=3_000)
    cli.write_job(erp.job(bootstrap=f'"{broker}"'))
    writer = erp.Writer(dbs.erp, products=3_000, rate_per_s=400).start()
    first = cli.start("-v", "run", "job.yaml", "--quiet")
    first_log = Lines(first)
    second = None
    try:
        wait_for(lambda: first_log.count("shop: assigned") >= 2, 180, "the first worker to migrate and stream")
        second = cli.start("-v", "sync", "job.yaml", "--quiet")
        second_log = Lines(second)
        # Both share the partitions once the group has rebalanced (the first is revoked and re-assigned).
        wait_for(lambda: second_log.count("shop: assigned") >= 1 and first_log.count("shop: assigned") >= 3, 60,
                 "the group to spread partitions over both workers")
        written = writer.written
        wait_for(lambda: writer.written > written + 1_000, 60, "changes while both run")
        first.send_signal(signal.SIGTERM)  # the slot holder stops: the other takes over slot and partitions
        assert first.wait(timeout=90) == 0, "".join(first_log.lines[-20:])
        written = writer.written
        wait_for(lambda: writer.written > written + 1_000, 60, "changes after the handover")
        writer.finish()
        wait_for(lambda: set(erp.differences(dbs.erp, dbs.shop).values()) == {0}, 120, "the shop to equal the ERP")
    finally:
        writer.stop.set()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    assert second is not None
    assert second.wait(timeout=90) == 0, "".join(second_log.lines[-20:])
    lines = [json.loads(line) for line in cli.run("status", "job.yaml", "--json", check=True).stdout.splitlines()]
    assert [e["lag"] for e in lines] == [{"shop": 0}] * 3  # every change consumed, by one worker or the other
    assert lines[0]["stream"]["slot"] == "kanal_erp_stream"
    cli.run("cleanup", "job.yaml", check=True)


def test_a_second_worker_takes_a_share_of_the_snapshot(cli: Cli, dbs: Databases, broker: str) -> None:
    erp.seed(dbs.erp, products=100_000)
    job = erp.job(bootstrap=f'"{broker}"', extra="batch: {source_workers: 1}")
    cli.write_job(job.replace("table: erp_stock,", "table: erp_stock, chunk_rows: 1000,"))
    first = cli.start("-v", "run", "job.yaml", "--quiet")
    first_log = Lines(first)
    second = None
    try:
        wait_for(lambda: first_log.count("published stock_levels chunk") >= 3, 120, "the first chunks to be read")
        second = cli.start("run", "job.yaml", "--quiet")
        wait_for(lambda: first_log.count("shop: assigned") >= 2 and dbs.shop_sql(
            "select count(*) from pg_indexes where tablename = 'shop_stock'")[0][0] == 1, 180, "the migration to finish")
        wait_for(lambda: set(erp.differences(dbs.erp, dbs.shop).values()) == {0}, 60, "the shop to equal the ERP")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    assert first.wait(timeout=90) == 0, "".join(first_log.lines[-20:])
    assert second is not None
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    assert "records read and delivered" in out  # it read chunks of the shared plan
