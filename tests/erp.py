"""A small ERP database for end-to-end tests: products and prices with NULL key
parts (list prices without a customer) and a known set of invalid rows."""

from __future__ import annotations

from collections.abc import Callable

JOB = """
name: erp-to-shop
kafka:
  bootstrap_servers: embedded
source:
  connector: postgres
  config: {{dsn: "${{ERP_DSN}}"}}
  entities:
    products: {{table: erp_products}}
    prices: {{table: erp_prices{chunk}}}
sinks:
  - name: shop
    connector: postgres
    config: {{dsn: "${{SHOP_DSN}}"}}
    entities:
      products: {{table: shop_products}}
      prices: {{table: shop_prices}}
errors:
  policy: {policy}
"""

INVALID_PRICES = {
    "BAD-CUR|base||EURO|1.000": "currency: 'EURO' is not an ISO 4217 currency code",
    "|base||EUR|1.000": "sku: required field is empty",
    "BAD-AMT|base||EUR|1.000": "amount: required field is empty",
}

PRODUCT_SUM = "select md5(string_agg(t::text, ',' order by sku)) from (select sku, name, gtin, active, attributes::text, updated_at from {t}) t"
PRICE_SUM = (
    "select count(*), sum(amount), md5(string_agg(concat_ws('|', sku, price_list, customer_no, currency, min_qty, amount, "
    "updated_at), ',' order by sku, price_list, customer_no nulls first, currency, min_qty)) from {t} {where}"
)
VALID_PRICES = "where currency = 'EUR' and sku <> '' and amount is not null"


def job(policy: str = "dlq", chunk_rows: int | None = None) -> str:
    return JOB.format(policy=policy, chunk=f", chunk_rows: {chunk_rows}" if chunk_rows else "")


def seed(sql: Callable[[str], object], products: int = 2_000, customers: int = 20) -> None:
    """`products` products; per product one list price, one tier price and `customers` customer prices."""
    sql(
        """create table erp_products (sku text primary key, name text, gtin text, active boolean, attributes jsonb,
           updated_at timestamptz not null)"""
    )
    sql(
        f"""insert into erp_products select 'P' || g, 'Product ' || g, lpad(g::text, 13, '0'), g % 7 <> 0,
            jsonb_build_object('color', (array['red','blue','green'])[g % 3 + 1]),
            timestamptz '2024-01-01' + g * interval '1 minute' from generate_series(1, {products}) g"""
    )
    sql(
        """create table erp_prices (sku text, price_list text not null, customer_no text, currency text,
           min_qty numeric(12,3), amount numeric(12,2), valid_from timestamptz, valid_to timestamptz,
           updated_at timestamptz not null)"""
    )
    sql(
        f"""insert into erp_prices
            select 'P' || p, 'base', case when c = 0 or c = 1 then null else 'C' || c end, 'EUR',
                   case when c = 1 then 10 else 1 end, (p * 7 + c) % 1000 / 4.0,
                   timestamptz '2024-01-01', null, timestamptz '2024-02-01' + p * interval '1 second'
            from generate_series(1, {products}) p, generate_series(0, {customers + 1}) c"""
    )
    sql(
        """insert into erp_prices values
           ('BAD-CUR', 'base', null, 'EURO', 1, 1, null, null, now()),
           ('', 'base', null, 'EUR', 1, 1, null, null, now()),
           ('BAD-AMT', 'base', null, 'EUR', 1, null, null, null, now())"""
    )


def price_rows(products: int = 2_000, customers: int = 20) -> int:
    return products * (customers + 2)
