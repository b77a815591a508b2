"""`delta: files`: new and changed export files in a folder stream into the shop."""

from __future__ import annotations

import os
import time

from tests.conftest import Cli, Databases

HEADER = "sku,location,on_hand,updated_at\n"


def _export(path, rows: str, age_s: float = 60) -> None:
    """Write an export file whose modification time is `age_s` in the past (settled, not being written)."""
    path.write_text(HEADER + rows)
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_new_and_changed_files_are_picked_up(cli: Cli, dbs: Databases) -> None:
    drop = cli.folder / "wms" / "stock"
    drop.mkdir(parents=True)
    _export(drop / "001.csv", "A,WH1,10,2025-01-01\nB,WH1,5,2025-01-01\n", age_s=600)
    job = cli.write_job(
        f"""
        name: wms-stream
        source:
          connector: files
          config: {{path: "{cli.folder / 'wms'}"}}
          entities:
            stock_levels: {{pattern: "stock/*.csv", delta: files}}
        sinks:
          - name: shop
            connector: postgres
            config: {{dsn: "${{SHOP_DSN}}"}}
            entities:
              stock_levels: {{table: shop_stock}}
        """
    )
    cli.run("sync", str(job), "--once", "--quiet", check=True)  # fixes the position: 001.csv is known
    cli.run("migrate", str(job), "--quiet", check=True)
    _export(drop / "002.csv", "C,WH1,7,2025-02-01\n", age_s=300)
    _export(drop / "001.csv", "A,WH1,11,2025-03-01\nB,WH1,5,2025-01-01\n", age_s=200)  # re-exported, changed
    _export(drop / "003.csv", "D,WH1,1,2025-03-01\n", age_s=-60)  # modified just now: still being written
    synced = cli.run("sync", str(job), "--once", "--quiet", check=True)
    assert "3 changes" in synced.stdout
    assert dbs.shop_sql("select sku, on_hand::int from shop_stock order by sku") == [("A", 11), ("B", 5), ("C", 7)]
    old = time.time() - 30
    os.utime(drop / "003.csv", (old, old))
    cli.run("sync", str(job), "--once", "--quiet", check=True)
    assert dbs.shop_sql("select sku from shop_stock where sku = 'D'") == [("D",)]
    assert "0 changes" in cli.run("sync", str(job), "--once", "--quiet", check=True).stdout
