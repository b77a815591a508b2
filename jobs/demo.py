"""`kanal demo`: a complete migration on one machine with nothing installed.

Starts two throwaway PostgreSQL servers (pgserver): an "ERP" seeded with a
wholesaler's data (at scale 1: 100k articles, 50k customers with billing and
shipping addresses, 1.2M prices of which 900k are customer-specific and 200k
tier prices, stock for three locations) and an empty "shop". Then it runs
`examples/demo.yaml` through the embedded broker into the shop database and
into Parquet files, with the live progress display and the final report.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import psycopg
from rich.console import Console

from kanal.core.errors import KanalError
from kanal.jobs.load import load_job
from kanal.jobs.migrate import MigrationReport, migrate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOCATIONS = ("WH-BERLIN", "WH-HAMBURG", "STORE-MUNICH")


def _server(folder: Path):  # type: ignore[no-untyped-def]
    # pgserver asks platformdirs for a runtime folder it does not need here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        raise KanalError("the demo needs pgserver: pip install 'kanal[embedded]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)  # pgserver runs PostgreSQL as its own user when started by root
    return pgserver.get_server(folder, cleanup_mode="stop")


def seed_sql(scale: float) -> str:
    products = max(100, int(100_000 * scale))
    customers = max(20, int(50_000 * scale))
    locations = ", ".join(f"'{loc}'" for loc in LOCATIONS)
    return (EXAMPLES / "demo_erp.sql").read_text().format(products=products, customers=customers, locations=locations)


def _fresh_database(server, name: str) -> str:  # type: ignore[no-untyped-def]
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return str(server.get_uri(name))


def run(
    folder: str,
    scale: float,
    *,
    console: Console,
    out: Console,
    present: Callable[[MigrationReport, str], None],
) -> MigrationReport:
    root = Path(folder).resolve()
    erp_server, shop_server = _server(root / "erp-pg"), _server(root / "shop-pg")
    try:
        erp, shop = _fresh_database(erp_server, "erp"), _fresh_database(shop_server, "shop")
        started = time.monotonic()
        console.print(f"seeding the demo ERP (scale {scale}) ...")
        with psycopg.connect(erp, autocommit=True) as conn:
            conn.execute(seed_sql(scale))
            counts = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]  # type: ignore[index]
                      for t in ("erp_items", "erp_customers", "erp_prices", "erp_stock")}
        console.print(
            "ERP ready in {:.1f}s: {:,} articles, {:,} customers, {:,} prices, {:,} stock levels".format(
                time.monotonic() - started, *counts.values()
            )
        )
        job = root / "demo.yaml"
        shutil.copy(EXAMPLES / "demo.yaml", job)
        shutil.copytree(EXAMPLES / "mappings", root / "mappings", dirs_exist_ok=True)
        shutil.rmtree(root / ".kanal", ignore_errors=True)
        shutil.rmtree(root / "parquet", ignore_errors=True)
        os.environ.update(ERP_DSN=erp, SHOP_DSN=shop, OUTPUT_DIR=str(root / "parquet"))
        report = migrate(load_job(job), console=console)
        present(report, str(job))
        out.print(f"\nshop database: psql '{shop}'\nParquet files: {root / 'parquet'}")
        out.print(f"job file: {job} (it reads ERP_DSN, SHOP_DSN and OUTPUT_DIR from the environment)")
        return report
    finally:
        erp_server.cleanup()
        shop_server.cleanup()
