"""An ERP for the Shopify tests (products with variants, list and customer prices, stock at two locations) and its job file.

`expected_catalog` and `expected_stock` read the ERP in the shape the
simulator's store has (`Simulator.catalog`, `Simulator.stock`), so "the shop
equals the ERP" is one assertion.
"""

from __future__ import annotations

from decimal import Decimal

from tests import pg

LOCATIONS = {"WH1": "gid://shopify/Location/1", "WH2": "gid://shopify/Location/2"}

SCHEMA = """
create table erp_products (sku text primary key, name text, brand text, category text, gtin text, parent_sku text,
                           active boolean, updated_at timestamptz not null default now());
create table erp_prices (sku text not null, price_list text not null, customer_no text, currency text not null,
                         min_qty numeric(12,3), amount numeric(12,2), updated_at timestamptz not null default now());
alter table erp_prices replica identity full;
create table erp_stock (sku text, location text, on_hand numeric(12,3), updated_at timestamptz not null default now(),
                        primary key (sku, location));
"""


def seed(dsn: str, products: int, families: int = 0, customer_prices: int = 0) -> None:
    """`products` products with one variant, `families` parents with three variants each; prices and stock for every variant."""
    pg.query(dsn, SCHEMA)
    pg.query(
        dsn,
        f"insert into erp_products select 'P' || g, 'Product ' || g, 'Brand ' || (g % 7), 'Cat ' || (g % 5), "
        f"lpad(g::text, 13, '0'), null, g % 10 <> 0 from generate_series(1, {products}) g",
    )
    pg.query(
        dsn,
        f"insert into erp_products select 'F' || g, 'Family ' || g, 'Brand F', 'Cat F', null, null, true "
        f"from generate_series(1, {families}) g",
    )
    pg.query(
        dsn,
        f"insert into erp_products select 'F' || g || '-' || v, 'Family ' || g || ' ' || v, null, null, "
        f"'9' || lpad(g::text, 8, '0') || v, 'F' || g, true from generate_series(1, {families}) g, unnest(array['S', 'M', 'L']) v",
    )
    pg.query(
        dsn,
        "insert into erp_prices select sku, 'retail', null, 'EUR', 1, (length(sku) * 3 + 0.99)::numeric(12,2) "
        "from erp_products where sku not in (select parent_sku from erp_products where parent_sku is not null)",
    )
    pg.query(
        dsn,
        f"insert into erp_prices select 'P' || g, 'retail', 'C' || g, 'EUR', 1, 1.00 from generate_series(1, {customer_prices}) g",
    )
    pg.query(
        dsn,
        "insert into erp_stock select p.sku, l, (abs(hashtext(p.sku || l)) % 100)::numeric, now() from erp_products p, "
        "unnest(array['WH1', 'WH2']) l where p.sku not in (select parent_sku from erp_products where parent_sku is not null)",
    )


def expected_catalog(dsn: str) -> dict[str, dict[str, object]]:
    """Per variant SKU what the shop should hold: its product, title, vendor, type, status, barcode, price."""
    rows = pg.query(
        dsn,
        """
        select v.sku, coalesce(v.parent_sku, v.sku), p.name, coalesce(p.brand, ''), coalesce(p.category, ''),
               case when p.active then 'ACTIVE' else 'DRAFT' end, v.gtin, pr.amount
        from erp_products v
        join erp_products p on p.sku = coalesce(v.parent_sku, v.sku)
        left join erp_prices pr on pr.sku = v.sku and pr.price_list = 'retail' and pr.customer_no is null
        where v.sku not in (select parent_sku from erp_products where parent_sku is not null)
        """,
    )
    return {
        sku: {
            "product": product, "title": title, "vendor": vendor, "type": kind, "status": status, "barcode": gtin,
            "price": f"{Decimal(price):.2f}" if price is not None else "0.00",
        }
        for sku, product, title, vendor, kind, status, gtin, price in rows
    }


def expected_stock(dsn: str) -> dict[tuple[str, str], int]:
    rows = pg.query(dsn, "select sku, location, on_hand from erp_stock")
    return {(sku, LOCATIONS[location]): int(on_hand) for sku, location, on_hand in rows}


JOB = """
name: {name}
source:
  connector: postgres
  config: {{dsn: "${{ERP_DSN}}"}}
  entities:
    products: {{table: erp_products{delta}}}
    prices: {{table: erp_prices{delta}}}
    stock_levels: {{table: erp_stock{delta}}}
sinks:
  - name: shop
    connector: shopify
    config:
      shop_url: "{url}"
      access_token: "${{SHOPIFY_TOKEN}}"
      api_version: "2025-01"
{bulk_threshold}      http: {{timeout_s: {timeout_s}}}
    entities:
      products: {{}}
      prices: {{price_list: retail}}
      stock_levels: {{locations: {{WH1: "gid://shopify/Location/1", WH2: "gid://shopify/Location/2"}}}}
errors:
  retry: {{max_elapsed_s: 60, max_wait_s: 2}}
"""


def job(url: str, name: str = "erp-to-shopify", delta: str = "", bulk_threshold: int | None = None, timeout_s: float = 30) -> str:
    threshold = f"      bulk_threshold: {bulk_threshold}\n" if bulk_threshold else ""
    return JOB.format(name=name, url=url, delta=f", delta: {delta}" if delta else "", bulk_threshold=threshold, timeout_s=timeout_s)
