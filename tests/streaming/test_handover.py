"""`kanal run`: migrate, then stream, while the ERP keeps changing (the handover from snapshot to stream leaves no gap)."""

from __future__ import annotations

import signal

from tests.conftest import Cli, Databases
from tests.streaming import erp
from tests.waiting import wait_for


def test_writes_during_snapshot_and_after_all_arrive(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=20_000)
    cli.write_job(erp.job())
    writer = erp.Writer(dbs.erp, products=20_000, rate_per_s=500).start()
    proc = cli.start("run", "job.yaml", "--quiet")
    try:
        wait_for(lambda: dbs.shop_sql("select count(*) from shop_stock")[0][0] > 0, 120, "the migration to write")
        wait_for(lambda: writer.written > 3_000, 60, "the writer to make changes during the stream")
        changes = writer.finish()
        assert changes > 3_000
        wait_for(lambda: set(erp.differences(dbs.erp, dbs.shop).values()) == {0}, 60, "the shop to equal the ERP")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "changes in" in out
    cleaned = cli.run("cleanup", "job.yaml", check=True)
    assert "dropped replication slot kanal_erp_stream" in cleaned.stdout
    assert dbs.erp_sql("select count(*) from pg_replication_slots where slot_name = 'kanal_erp_stream'") == [(0,)]
