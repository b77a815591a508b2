"""kill -9 while streaming: the restarted job resumes from the slot, loses nothing, repeats nothing."""

from __future__ import annotations

import signal

from tests.conftest import Cli, Databases
from tests.streaming import erp
from tests.waiting import wait_for

SLOT = "select confirmed_flush_lsn from pg_replication_slots where slot_name = 'kanal_erp_stream'"


def test_kill_during_streaming_then_resume(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=5_000)
    cli.write_job(erp.job())
    writer = erp.Writer(dbs.erp, products=5_000, rate_per_s=600).start()
    first = cli.start("run", "job.yaml", "--quiet")
    try:
        wait_for(lambda: dbs.shop_sql("select count(*) from shop_stock")[0][0] > 0, 120, "the migration")
        before = dbs.erp_sql(SLOT)[0][0]
        wait_for(lambda: dbs.erp_sql(SLOT)[0][0] != before, 30, "the slot to advance while streaming")
        wait_for(lambda: writer.written > 1_500, 60, "changes while streaming")
    finally:
        first.kill()  # SIGKILL: no chance to finish anything
        first.communicate(timeout=30)
    at_kill = dbs.erp_sql(SLOT)[0][0]
    wait_for(lambda: writer.written > 2_500, 60, "changes while kanal is down")
    second = cli.start("sync", "job.yaml", "--quiet")
    try:
        writer.finish()
        wait_for(lambda: set(erp.differences(dbs.erp, dbs.shop).values()) == {0}, 90, "the shop to equal the ERP")
        wait_for(lambda: dbs.erp_sql(SLOT)[0][0] != at_kill, 30, "the slot to advance after the restart")
    finally:
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    cli.run("cleanup", "job.yaml", check=True)
