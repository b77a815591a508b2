"""The delta position is fixed before every snapshot, whichever command takes it.

`kanal migrate` then `kanal sync` (the order the README recommends) must
lose nothing written in between, for CDC and cursor entities alike; a stream
that cannot know where the migration started refuses instead of starting from
"now"; a job whose sinks take different entities still confirms its reads.
"""

from __future__ import annotations

import pytest

from tests.conftest import Cli, Databases
from tests.streaming import erp

FILES_PRODUCTS_ONLY = """
  - name: archive
    connector: files
    config: {{path: {path}, format: jsonl}}
    entities:
      products: {{}}
"""


@pytest.mark.parametrize("delta", [erp.CDC, erp.CURSOR], ids=["cdc", "cursor"])
def test_changes_between_migrate_and_sync_arrive(cli: Cli, dbs: Databases, delta: str) -> None:
    erp.seed(dbs.erp, products=50)
    cli.write_job(erp.job(delta=delta))
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    dbs.erp_sql(
        "update erp_products set name = 'Between', updated_at = now() where sku = 'P7';"
        "update erp_stock set on_hand = 4321, updated_at = now() where sku = 'P8' and location = 'A'"
    )
    proc = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select name from shop_products where sku = 'P7'") == [("Between",)], proc.stdout
    assert dbs.shop_sql("select on_hand::int from shop_stock where sku = 'P8' and location = 'A'") == [(4321,)]
    assert erp.differences(dbs.erp, dbs.shop) == {"products": 0, "prices": 0, "stock": 0}
    cli.run("cleanup", "job.yaml", check=True)


def test_sync_after_a_migration_without_position_refuses_and_names_the_fix(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=20)
    cli.write_job(erp.job().replace("delta: cdc", "chunk_rows: 1000"))
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    cli.write_job(erp.job())  # streaming is switched on later
    dbs.erp_sql("update erp_products set name = 'Lost?' where sku = 'P3'")
    proc = cli.run("sync", "job.yaml", "--once")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "migrated without a stream position" in proc.stderr and "kanal migrate job.yaml" in proc.stderr
    cli.run("migrate", "job.yaml", "--quiet", check=True)  # the named fix
    dbs.erp_sql("update erp_products set name = 'Found' where sku = 'P4'")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select sku, name from shop_products where sku in ('P3', 'P4') order by 1") == [
        ("P3", "Lost?"), ("P4", "Found")
    ]
    cli.run("cleanup", "job.yaml", check=True)


def test_sync_refuses_while_a_migration_is_unfinished(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=20)
    cli.write_job(erp.job())
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    state = cli.folder / ".kanal" / "erp-stream" / "state.json"
    state.write_text(state.read_text().replace('"status": "done"', '"status": "running"'))
    proc = cli.run("sync", "job.yaml", "--once")
    assert proc.returncode == 2 and "migration of this job is unfinished" in proc.stderr
    cli.run("cleanup", "job.yaml", check=True)


def test_sinks_taking_different_entities_confirm_every_read(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=30)
    cli.write_job(erp.job(extra=FILES_PRODUCTS_ONLY.format(path=cli.folder / "out")))
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    dbs.erp_sql("update erp_prices set amount = 77 where sku = 'P5'; update erp_products set name = 'X' where sku = 'P6'")
    first = cli.run("sync", "job.yaml", "--once", "--quiet", timeout=120, check=True)
    assert dbs.shop_sql("select amount::int from shop_prices where sku = 'P5'") == [(77,)], first.stdout
    second = cli.run("sync", "job.yaml", "--once", "--quiet", timeout=120, check=True)
    assert "0 changes" in second.stdout  # the read with prices (which the archive does not take) was confirmed
    cli.run("cleanup", "job.yaml", check=True)
