"""`kanal worker DIR`: every job of a folder in one process, each on its own schedule."""

from __future__ import annotations

import re
import signal

from tests.conftest import Cli, Databases
from tests.streaming import erp
from tests.waiting import wait_for


def test_worker_runs_every_job_of_a_folder(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=300)
    jobs = cli.folder / "jobs"
    jobs.mkdir()
    (jobs / "cdc.yaml").write_text(erp.job(name="stream-cdc"))
    cursor = erp.job(name="stream-cursor", delta=erp.CURSOR, extra='schedule: "every 1s"').replace("shop_", "copy_")
    (jobs / "cursor.yaml").write_text(cursor)
    proc = cli.start("worker", "jobs")
    try:
        wait_for(lambda: dbs.shop_sql("select count(*) from copy_stock")[0][0] == 600, 120, "the cursor job to migrate")
        wait_for(lambda: dbs.shop_sql("select count(*) from shop_stock")[0][0] == 600, 120, "the cdc job to migrate")
        dbs.erp_sql("update erp_stock set on_hand = 4242, updated_at = clock_timestamp() where sku = 'P5'")
        wait_for(lambda: dbs.shop_sql("select count(*) from shop_stock where on_hand = 4242") == [(2,)], 60, "cdc delta")
        wait_for(lambda: dbs.shop_sql("select count(*) from copy_stock where on_hand = 4242") == [(2,)], 60, "cursor delta")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "job stream-cdc started (continuous)" in err
    assert "job stream-cursor started (every 1s)" in err
    # one line per cycle of the timed job; the continuous job's polls summed (here: when it stopped)
    assert re.search(r"job stream-cursor: [1-9][\d,]* changes in \d+\.\ds", err), err
    assert re.search(r"job stream-cdc: [1-9][\d,]* changes in \d+\.\ds", err), err
    cli.run("cleanup", "jobs/cdc.yaml", check=True)


def test_worker_reports_every_bad_job_file(cli: Cli) -> None:
    jobs = cli.folder / "jobs"
    jobs.mkdir()
    (jobs / "a.yaml").write_text(erp.job(name="a").replace("delta: cdc", "delta: sometimes", 1))
    (jobs / "b.yaml").write_text(erp.job(name="b", extra='schedule: "every 5x"'))
    proc = cli.run("worker", "jobs")
    assert proc.returncode == 2
    assert "a.yaml" in proc.stderr and "b.yaml" in proc.stderr
    assert "5x" in proc.stderr


def test_sync_refuses_bad_schedules(cli: Cli) -> None:
    cli.write_job(erp.job())
    assert "is not a duration" in cli.run("sync", "job.yaml", "--every", "soon").stderr
    assert "minute" in cli.run("sync", "job.yaml", "--cron", "61 * * * *").stderr
    both = cli.run("sync", "job.yaml", "--once", "--every", "5m")
    assert both.returncode == 2 and "one of --once, --every, --cron" in both.stderr
