"""`kanal demo` at a small scale: seeds, migrates into PostgreSQL and Parquet, reports."""

from __future__ import annotations

import subprocess
import sys

import polars as pl


def test_demo_runs_to_its_report(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kanal", "demo", "--folder", str(tmp_path / "demo"), "--scale", "0.01"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "migration demo-erp-to-shop: done" in proc.stdout
    assert "3 record(s) in the dead-letter queue" in proc.stdout
    assert "ERP changes by CDC into both sinks" in proc.stdout  # then the stream
    assert "dropped replication slot kanal_demo_erp_to_shop" in proc.stderr
    changes = pl.read_parquet(tmp_path / "demo" / "parquet" / "prices" / "changes" / "*.parquet")
    assert set(changes["_kanal_op"]) == {"upsert", "delete"}
    prices = pl.read_parquet(tmp_path / "demo" / "parquet" / "prices" / "*.parquet")
    assert prices.height == 1_000 * 3 + 1_000 * 9  # list and tier prices + nine customer prices per article
    assert prices.filter(pl.col("customer_no").is_null()).height == 3_000
    customers = pl.read_parquet(tmp_path / "demo" / "parquet" / "customers" / "*.parquet")
    assert customers.height == 500 - 2  # two customers with a country that is not ISO 3166
    assert customers.filter(pl.col("addresses").struct.field("shipping").struct.field("city").is_null()).is_empty()
