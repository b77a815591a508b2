"""Systems that are down: the broker at start (clear error), the sink mid-run (wait, then finish)."""

from __future__ import annotations

import os
import subprocess

import pytest

from kanal.core.embedded import free_port
from tests import erp
from tests.conftest import Cli
from tests.pg import Server, query
from tests.waiting import wait_for


def test_unreachable_broker_fails_clearly_after_bounded_retries(cli, dbs) -> None:
    erp.seed(dbs.erp_sql, products=10)
    text = erp.job().replace("bootstrap_servers: embedded", f"bootstrap_servers: 127.0.0.1:{free_port()}\n  connect_timeout_s: 2")
    proc = cli.run("migrate", str(cli.write_job(text)), timeout=60)
    assert proc.returncode == 1
    assert "not reachable after 2s" in proc.stderr and "bootstrap_servers" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sink_database_down_for_a_while_then_run_completes(tmp_path, dbs) -> None:
    shop_server = Server.start(tmp_path / "shop-pg")
    try:
        shop = shop_server.create_database("shop")
        erp.seed(dbs.erp_sql, products=8_000)  # 176k prices
        cli = Cli(tmp_path, {**os.environ, "ERP_DSN": dbs.erp, "SHOP_DSN": shop})
        proc = cli.start("migrate", str(cli.write_job(erp.job(chunk_rows=5_000))), "--quiet")

        # cut the shop as soon as the run has prepared it: every write must then wait for it
        wait_for(lambda: query(shop, "select to_regclass('shop_prices')")[0][0], 120, "the run to prepare the shop")
        shop_server.kill()
        wait_for(lambda: proc.poll() is None and not os.path.exists(shop_server.socket_dir + "/.s.PGSQL.5432"), 10, "shop down")
        outage_s = 3.0  # the scenario: the shop database is away this long
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=outage_s)  # kanal must keep waiting, not give up

        shop_server.restart()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert query(shop, erp.PRICE_SUM.format(t="shop_prices", where="")) == dbs.erp_sql(
            erp.PRICE_SUM.format(t="erp_prices", where=erp.VALID_PRICES)
        )
    finally:
        shop_server.stop()
