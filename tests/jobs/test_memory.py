"""Memory stays flat: peak RSS of `kanal migrate` for 1M price rows is within the bound seen for 200k.

Small chunks make both runs fill every bounded queue, so the comparison measures
the bounds, not how far a short run got before it ended.
"""

from __future__ import annotations

import time

import psutil

from tests import erp

BOUND_MB = 600  # fixed bound, independent of volume (measured peaks: ~250-380 MB)


def _peak_rss_mb(cli, job) -> int:
    proc = cli.start("migrate", str(job), "--quiet")
    me = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:  # sampling, not waiting for a condition
        try:
            peak = max(peak, me.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return peak >> 20


def test_peak_memory_does_not_grow_with_row_count(cli, dbs) -> None:
    dbs.erp_sql(
        """create table erp_prices as select 'P' || (g % 100000) as sku, 'base' as price_list,
           case when g >= 100000 then 'C' || (g / 100000) end as customer_no, 'EUR' as currency, 1::numeric as min_qty,
           (g % 997) / 7.0 as amount, now() as updated_at from generate_series(0, 999999) g"""
    )
    dbs.erp_sql("create table erp_prices_small as select * from erp_prices limit 200000")
    peaks = {}
    for table, rows in (("erp_prices_small", 200_000), ("erp_prices", 1_000_000)):
        text = erp.job(chunk_rows=20_000).replace("erp_prices,", f"{table},").replace(
            "    products: {table: erp_products}\n", "").replace("      products: {table: shop_products}\n", "")
        text = text.replace("shop_prices", f"shop_{table}")
        peaks[rows] = _peak_rss_mb(cli, cli.write_job(text, f"{table}.yaml"))
        assert dbs.shop_sql(f"select count(*) from shop_{table}") == [(rows,)]
    print(f"peak RSS MB: {peaks}")
    assert peaks[1_000_000] < BOUND_MB
    assert peaks[1_000_000] < peaks[200_000] * 1.5, peaks
