"""A WMS export drop (a folder of CSV files) migrated into PostgreSQL and back out to JSON Lines."""

from __future__ import annotations

import json

import polars as pl


def test_folder_of_csv_files_to_postgres_and_jsonl(cli, dbs) -> None:
    drop = cli.folder / "wms" / "stock"
    drop.mkdir(parents=True)
    (drop / "stock_001.csv").write_text(
        "sku,location,on_hand,reserved,available,updated_at\n"
        "A-1,WH1,10,2,8,2025-01-01T10:00:00Z\n"
        "A-2,WH1,5.500,0,5.500,2025-01-01 10:00:00\n"
    )
    (drop / "stock_002.csv").write_text(
        "sku,location,on_hand,reserved,available,updated_at\n"
        "A-1,WH2,1,0,1,2025-01-02\n"
        ",WH2,1,0,1,2025-01-02\n"           # no sku: dead letter
        "A-3,WH2,lots,0,1,2025-01-02\n"     # not a number: dead letter
    )
    job = cli.write_job(
        f"""
        name: wms-stock
        source:
          connector: files
          config: {{path: "{cli.folder / 'wms'}"}}
          entities:
            stock_levels: {{pattern: "stock/*.csv"}}
        sinks:
          - name: shop
            connector: postgres
            config: {{dsn: "${{SHOP_DSN}}"}}
            entities:
              stock_levels: {{table: shop_stock}}
          - name: archive
            connector: files
            config: {{path: "{cli.folder / 'out'}", format: jsonl}}
            entities:
              stock_levels: {{}}
        """
    )
    cli.run("migrate", str(job), check=True)
    assert dbs.shop_sql("select sku, location, on_hand::text, updated_at::text from shop_stock order by sku, location") == [
        ("A-1", "WH1", "10", "2025-01-01 10:00:00+00"),
        ("A-1", "WH2", "1", "2025-01-02 00:00:00+00"),
        ("A-2", "WH1", "5.500", "2025-01-01 10:00:00+00"),
    ]
    archived = pl.concat([pl.read_ndjson(p) for p in (cli.folder / "out" / "stock_levels").glob("*.jsonl")])
    assert sorted(archived["sku"].to_list()) == ["A-1", "A-1", "A-2"]
    letters = [json.loads(x) for x in cli.run("dlq", str(job), "show", "--json", check=True).stdout.splitlines()]
    assert sorted(d["reason"] for d in letters) == ["on_hand: 'lots' is not a decimal number", "sku: required field is empty"]
