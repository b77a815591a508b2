"""`kanal demo` at a small scale: seeds, migrates into PostgreSQL and Parquet, reports, and its closing hints work."""

from __future__ import annotations

import subprocess
import sys

import polars as pl


def test_demo_runs_to_its_report_and_its_commands_work(tmp_path) -> None:
    """With --keep the databases stay up and the printed commands run as printed; --stop stops them."""
    folder = tmp_path / "demo"
    kanal = [sys.executable, "-m", "kanal", "demo", "--folder", str(folder)]
    try:
        proc = subprocess.run([*kanal, "--scale", "0.01", "--keep"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "migration demo-erp-to-shop: done" in proc.stdout
        assert "3 record(s) in the dead-letter queue" in proc.stdout
        assert "ERP changes by CDC into both sinks" in proc.stdout  # then the stream
        changes = pl.read_parquet(folder / "parquet" / "prices" / "changes" / "*.parquet")
        assert set(changes["_kanal_op"]) == {"upsert", "delete"}
        prices = pl.read_parquet(folder / "parquet" / "prices" / "*.parquet")
        assert prices.height == 1_000 * 3 + 1_000 * 9  # list and tier prices + nine customer prices per article
        assert prices.filter(pl.col("customer_no").is_null()).height == 3_000
        customers = pl.read_parquet(folder / "parquet" / "customers" / "*.parquet")
        assert customers.height == 500 - 2  # two customers with a country that is not ISO 3166
        assert customers.filter(pl.col("addresses").struct.field("shipping").struct.field("city").is_null()).is_empty()

        commands = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  ")]
        assert commands[0].startswith("export ERP_DSN=") and "SHOP_DSN=" in commands[0]
        cleanup = f"{sys.executable} -m kanal cleanup {folder / 'demo.yaml'}"
        shell = subprocess.run(["bash", "-ec", "\n".join([*commands, cleanup])], capture_output=True, text=True, timeout=120)
        assert shell.returncode == 0, shell.stderr
        assert "demo-erp-to-shop: migration done" in shell.stdout  # kanal status
        assert "0 changes in 1 reads" in shell.stdout  # kanal sync --once goes on from the demo's position
        assert "\n  1005\n" in shell.stdout  # psql: the shop's products, the five new ones included
        assert "dropped replication slot kanal_demo_erp_to_shop" in shell.stdout
    finally:
        stopped = subprocess.run([*kanal, "--stop"], capture_output=True, text=True, timeout=120)
    assert stopped.stdout.count("stopped the demo database") == 2, stopped.stderr
