"""API budget benchmark: Kanal's Shopify sink against the Shopify simulator at a fixed cost budget.

What an API connector is limited by is the budget the API grants, not the
CPU. Three figures, each against a fresh simulated shop whose cost bucket is
fixed (`--bucket` points, `--restore` points per second; default: Shopify's
Standard plan, 2,000 and 100):

1. **Budget use.** Two sink instances (two writer threads, one credential)
   write `--mutation-products` products one mutation per product (bulk
   disabled). Utilisation = points the shop charged / points it granted
   (a full bucket at the start plus `restore` x elapsed); "failed calls" are
   requests that reached the shop and were refused for throttling or ended
   in an error the sink did not retry (expected: none).
2. **Bulk import vs one mutation per product.** The same sink writes
   `--bulk-products` products in one write (a bulk operation: staged upload,
   `bulkOperationRunMutation`, results per line). The mutation figure for as
   many products is projected from the rate measured in 1 (measuring 20,000
   mutations at 10 points each would take 2,000 s of a Standard bucket). The
   simulator runs bulk lines as fast as it can; Shopify's own bulk speed is
   not documented, so the ratio holds for the budget, not for wall time on
   a real shop.
3. **Unchanged re-run.** `kanal migrate` of an ERP (PostgreSQL, `--rerun-products`
   products with prices and stock at two locations) into the shop through
   Kafka, twice; the second run's write calls against the first's.

Run: `.venv/bin/python bench/api.py` (about 50 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' ERP helpers

from bench.common import Servers, log  # noqa: E402
from kanal.connectors.shopify import ShopifyConfig, ShopifyOptions, ShopifySink  # noqa: E402
from kanal.connectors.shopify.simulator import Simulator  # noqa: E402
from kanal.core.model import PRODUCT  # noqa: E402
from kanal.core.sinkmemory import SinkMemory  # noqa: E402
from tests.connectors.shopify import shop as erp  # noqa: E402

TOKEN = "shpat_bench"
WRITES = ("productSet", "productVariantsBulkUpdate", "inventorySetQuantities", "bulkOperationRunMutation", "productDelete")


def products(first: int, count: int) -> pl.DataFrame:
    skus = [f"B{n}" for n in range(first, first + count)]
    return pl.DataFrame({"sku": skus, "name": [f"Bench {s}" for s in skus], "brand": ["Kanal"] * count}).with_columns(
        PRODUCT.key_expr()
    )


def sink(sim: Simulator, folder: Path, **settings: object) -> ShopifySink:
    instance = ShopifySink(ShopifyConfig(shop_url=sim.url, access_token=TOKEN, **settings))  # type: ignore[arg-type]
    instance.attach(SinkMemory(folder / "memory.sqlite"))
    instance.check()
    return instance


def budget_use(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Figure 1: two writers, one mutation per product, against the fixed bucket."""
    with Simulator(token=TOKEN, bucket=args.bucket, restore=args.restore) as sim:
        writers = [sink(sim, folder / "mutations", bulk_threshold=10**9, mutations_per_request=1) for _ in range(2)]
        half = args.mutation_products // 2
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                writers[n].write("products", ShopifyOptions(), products(n * half, half), f"bench-{n}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        for w in writers:
            w.close()
        granted = args.bucket + args.restore * elapsed
        return {
            "products": 2 * half,
            "seconds": elapsed,
            "points": sim.points,
            "granted": granted,
            "utilisation": sim.points / granted,
            "throttled": sim.requests["throttled"],
            "failed": len(errors) + sim.requests["internal error"],
            "rate": 2 * half / elapsed,
            "written": len(sim.products),
        }


def bulk_import(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Figure 2: one write of many products, which the sink runs as one bulk operation."""
    with Simulator(token=TOKEN, bucket=args.bucket, restore=args.restore) as sim:
        writer = sink(sim, folder / "bulk")
        frame = products(0, args.bulk_products)
        started = time.monotonic()
        result = writer.write("products", ShopifyOptions(), frame, "bench-bulk")
        elapsed = time.monotonic() - started
        writer.close()
        return {
            "products": args.bulk_products,
            "seconds": elapsed,
            "points": sim.points,
            "written": len(sim.products),
            "failed": result.failed_count,
        }


def rerun(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Figure 3: a migration through Kafka, then the same migration of unchanged data."""
    with Servers() as servers, Simulator(token=TOKEN, bucket=args.bucket, restore=args.restore) as sim:
        erp.seed(servers.erp_dsn, products=args.rerun_products, families=args.rerun_products // 100)
        job = folder / "rerun" / "job.yaml"
        job.parent.mkdir(parents=True)
        job.write_text(erp.job(sim.url, name="bench-api"))
        env = {**os.environ, "ERP_DSN": servers.erp_dsn, "SHOPIFY_TOKEN": TOKEN}
        figures: dict[str, float] = {}
        for run in ("first", "second"):
            before = sum(sim.calls[w] for w in WRITES)
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "kanal", "migrate", str(job), "--quiet"], cwd=job.parent, env=env, check=True
            )
            figures[f"{run} seconds"] = time.monotonic() - started
            figures[f"{run} writes"] = sum(sim.calls[w] for w in WRITES) - before
        figures["records"] = sum(v for v in (len(sim.variants), len(sim.stock()), len(sim.products)))
        return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bucket", type=float, default=2000.0, help="cost points the bucket holds")
    ap.add_argument("--restore", type=float, default=100.0, help="cost points restored per second")
    ap.add_argument("--mutation-products", type=int, default=400)
    ap.add_argument("--bulk-products", type=int, default=20_000)
    ap.add_argument("--rerun-products", type=int, default=10_000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kanal-bench-api-") as tmp:
        folder = Path(tmp)
        log(f"budget: bucket {args.bucket:g} points, restore {args.restore:g}/s")
        use = budget_use(args, folder)
        bulk = bulk_import(args, folder)
        again = rerun(args, folder)
    projected = bulk["products"] / use["rate"]
    rows = [
        ("budget used by mutations", f"{use['utilisation']:.1%}", f"{use['points']:.0f} of {use['granted']:.0f} points granted in {use['seconds']:.1f}s, {use['products']} products"),
        ("throttled answers / failed calls", f"{use['throttled']:.0f} / {use['failed']:.0f}", "the budget waits for the bucket instead"),
        ("one mutation per product", f"{use['rate']:.1f}/s", f"{bulk['products']:,} products projected: {projected:.0f}s"),
        ("bulk import", f"{bulk['products'] / bulk['seconds']:.0f}/s", f"{bulk['products']:,} products in {bulk['seconds']:.1f}s, {bulk['points']:.0f} points, {bulk['failed']} refused"),
        ("bulk vs mutations", f"{projected / bulk['seconds']:.0f}x faster", "same budget"),
        ("unchanged re-run write calls", f"{again['second writes']:.0f} of {again['first writes']:.0f}", f"{again['second writes'] / max(again['first writes'], 1):.1%} (first run {again['first seconds']:.1f}s, second {again['second seconds']:.1f}s)"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, figure, note in rows:
        print(f"{name:<{width}}  {figure:>16}  {note}")
    ok = (
        use["utilisation"] >= 0.9 and use["failed"] == 0 and projected / bulk["seconds"] >= 10
        and again["second writes"] <= again["first writes"] / 100
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
