"""Long streams on the embedded broker recycle its topics to free memory, and lose nothing doing it.

The embedded broker keeps every message in memory; the stream deletes and
recreates the job's topics once every read is confirmed (`jobs.stream.RECYCLE_BYTES`,
lowered here so that a few thousand changes recycle many times).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kanal.core.state import StateStore
from kanal.jobs.load import load_job
from kanal.jobs.pipeline import MIGRATION
from kanal.jobs.stream import StreamReport, sync
from tests.conftest import Cli, Databases
from tests.streaming import erp
from tests.streaming.test_scale_out import Lines
from tests.waiting import wait_for

RECYCLING = Path(__file__).with_name("recycling.py")
EQUAL = {"products": 0, "prices": 0, "stock": 0}


def migrated(path: Path) -> bool:
    return (StateStore(load_job(path).state_dir).get(MIGRATION) or {}).get("status") == "done"


def test_a_long_stream_recycles_the_topics_and_the_shop_equals_the_erp(
    cli: Cli, dbs: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    erp.seed(dbs.erp, products=2_000)
    path = cli.write_job(erp.job())
    monkeypatch.setenv("ERP_DSN", dbs.erp)
    monkeypatch.setenv("SHOP_DSN", dbs.shop)
    stop = threading.Event()
    outcome: list[StreamReport | BaseException] = []

    def run() -> None:
        try:
            outcome.append(sync(load_job(path), migrate_first=True, stop=stop, quiet=True, recycle_after=50_000))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    runner = threading.Thread(target=run)
    writer = erp.Writer(dbs.erp, products=2_000, rate_per_s=800).start()  # also while the migration runs
    runner.start()
    try:
        wait_for(lambda: migrated(path) or outcome, 120, "the migration")
        streamed_from = writer.written
        wait_for(lambda: writer.written > streamed_from + 6_000 or outcome, 120, "changes while streaming")
        writer.finish()
        wait_for(lambda: erp.differences(dbs.erp, dbs.shop) == EQUAL or outcome, 120, "the shop to equal the ERP")
    finally:
        stop.set()
        runner.join(120)
    report = outcome[0]
    assert isinstance(report, StreamReport), report
    assert erp.differences(dbs.erp, dbs.shop) == EQUAL
    assert report.recycles >= 3, f"{report.changes} changes in {report.reads} reads, {report.recycles} recycles"
    again = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert "0 changes" in again.stdout  # every read up to the stop was confirmed, through all recycles
    cli.run("cleanup", "job.yaml", check=True)


@pytest.mark.parametrize("crash", ["mid-recycle", "after-recycles"])
def test_a_crash_around_a_recycle_ends_exact_on_rerun(cli: Cli, dbs: Databases, crash: str) -> None:
    """kill -9 with the topics deleted and not yet recreated, or just after recycles: a re-run catches up exactly."""
    erp.seed(dbs.erp, products=3_000)
    cli.write_job(erp.job())
    writer = erp.Writer(dbs.erp, products=3_000, rate_per_s=600).start()
    die_at = 2 if crash == "mid-recycle" else 0
    first = subprocess.Popen(
        [sys.executable, str(RECYCLING), "job.yaml", "30000", str(die_at)],
        cwd=cli.folder, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = Lines(first)
    try:
        if crash == "mid-recycle":
            first.wait(timeout=180)  # it kills itself right after its second topic deletion
        else:
            wait_for(lambda: log.count("recycled the embedded broker's topics") >= 3, 180, "three recycles")
            first.kill()
            first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "".join(log.lines[-20:])
    assert log.count("recycled the embedded broker's topics") >= (1 if crash == "mid-recycle" else 3)
    written = writer.written
    wait_for(lambda: writer.written > written + 300, 60, "changes while kanal is down")
    second = cli.start("sync", "job.yaml", "--quiet")
    try:
        writer.finish()
        wait_for(lambda: erp.differences(dbs.erp, dbs.shop) == EQUAL, 120, "the shop to equal the ERP")
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    cli.run("cleanup", "job.yaml", check=True)
