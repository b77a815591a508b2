"""A sink mapping (canonical -> target columns) on the delivery path: the engine carries the key across it."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tests.conftest import Cli

JOB = """
name: mapped
source: {{connector: files, config: {{path: "{root}/in"}}, entities: {{products: {{}}}}}}
sinks:
  - name: out
    connector: files
    config: {{path: "{root}/out", format: jsonl}}
    entities: {{products: {{mapping: shop_products.yaml}}}}
"""


def test_a_sink_mapping_renames_the_columns_a_sink_writes(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "products.csv").write_text("sku,name\nA,Anvil\nB,Bucket\n")
    (cli.folder / "shop_products.yaml").write_text("direction: sink\nfields:\n  article: sku\n  title: name\n")
    cli.write_job(JOB.format(root=tmp_path))
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    written = pl.concat([pl.read_ndjson(p) for p in (tmp_path / "out" / "products").glob("*.jsonl")])
    assert sorted(written.rows()) == [("A", "Anvil"), ("B", "Bucket")] and written.columns == ["article", "title"]
