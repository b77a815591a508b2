"""kill -9 at a random moment, then the same command: the target ends exact."""

from __future__ import annotations

import json
import random
import signal

import psutil
import pytest

from tests import erp
from tests.waiting import wait_for


def _done_chunks(state_file) -> int:
    doc = json.loads(state_file.read_text())
    return sum(len(e["done"]) for e in doc["migration"]["entities"].values())


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_then_rerun_ends_exact_and_broker_dies_with_the_process(cli, dbs, seed) -> None:
    rng = random.Random(seed)
    erp.seed(dbs.erp_sql, products=6_000)  # 132k prices
    job = cli.write_job(erp.job(chunk_rows=5_000))
    state_file = cli.folder / ".kanal" / "erp-to-shop" / "state.json"

    proc = cli.start("migrate", str(job), "--quiet")
    me = psutil.Process(proc.pid)
    broker = wait_for(lambda: [c for c in me.children(recursive=True) if "tansu" in c.name()], 30, "embedded broker")[0]
    target = rng.randint(0, 12)
    wait_for(lambda: state_file.exists() and _done_chunks(state_file) >= target, 120, f"{target} chunks delivered")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not broker.is_running() or broker.status() == psutil.STATUS_ZOMBIE, 10, "broker to die with kanal")

    second = cli.run("migrate", str(job), "--quiet", check=True)
    if target:
        assert "resumed:" in second.stdout
    shop = dbs.shop_sql(erp.PRICE_SUM.format(t="shop_prices", where=""))
    assert shop == dbs.erp_sql(erp.PRICE_SUM.format(t="erp_prices", where=erp.VALID_PRICES))
    assert shop[0][0] == erp.price_rows(6_000)
    assert dbs.shop_sql(erp.PRODUCT_SUM.format(t="shop_products")) == dbs.erp_sql(erp.PRODUCT_SUM.format(t="erp_products"))
    dead = cli.run("dlq", str(job), "show", "--json", check=True).stdout.splitlines()
    assert len(dead) == len(erp.INVALID_PRICES)  # dead letters are not repeated by the re-run
