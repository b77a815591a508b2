"""`kanal migrate` end to end: real PostgreSQL on both sides, the embedded broker, the CLI."""

from __future__ import annotations

import json

from tests import erp


def _assert_exact(dbs) -> None:
    assert dbs.shop_sql(erp.PRODUCT_SUM.format(t="shop_products")) == dbs.erp_sql(erp.PRODUCT_SUM.format(t="erp_products"))
    shop = dbs.shop_sql(erp.PRICE_SUM.format(t="shop_prices", where=""))
    source = dbs.erp_sql(erp.PRICE_SUM.format(t="erp_prices", where=erp.VALID_PRICES))
    assert shop == source
    assert shop[0][0] == erp.price_rows()


def test_migrate_moves_every_valid_row_and_dead_letters_the_rest(cli, dbs) -> None:
    erp.seed(dbs.erp_sql)
    job = cli.write_job(erp.job())
    proc = cli.run("migrate", str(job), check=True)
    assert "dead-letter queue" in proc.stdout
    _assert_exact(dbs)
    # list prices (no customer) kept their NULL key part
    assert dbs.shop_sql("select count(*) from shop_prices where customer_no is null") == [(2 * 2_000,)]

    shown = cli.run("dlq", str(job), "show", "--json", check=True)
    letters = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {(d["entity"], d["key"], d["reason"]) for d in letters} == {
        ("prices", key, reason) for key, reason in erp.INVALID_PRICES.items()
    }
    assert all(d["record"]["price_list"] == "base" for d in letters)

    status = cli.run("status", str(job), "--json", check=True)
    by_entity = {json.loads(line)["entity"]: json.loads(line) for line in status.stdout.splitlines()}
    assert by_entity["prices"]["dead_letters"] == 3 and by_entity["prices"]["migration"] == "done"


def test_policy_fail_stops_with_a_clear_message_and_writes_valid_rows(cli, dbs) -> None:
    erp.seed(dbs.erp_sql)
    proc = cli.run("migrate", str(cli.write_job(erp.job(policy="fail"))))
    assert proc.returncode == 1
    assert "3 invalid record(s) under error policy 'fail'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert dbs.shop_sql("select count(*) from shop_prices") == [(erp.price_rows(),)]


def test_dlq_replay_writes_records_once_the_target_accepts_them(cli, dbs) -> None:
    dbs.erp_sql("create table erp_products (sku text, name text, updated_at timestamptz)")
    dbs.erp_sql("insert into erp_products values ('OK1', 'fine', now()), ('LONG-SKU', 'too long for the shop', now())")
    dbs.shop_sql("create table shop_products (sku varchar(4) primary key, name text, updated_at timestamptz)")
    job = cli.write_job(
        """
        name: replay
        source: {connector: postgres, config: {dsn: "${ERP_DSN}"}, entities: {products: {table: erp_products}}}
        sinks:
          - {name: shop, connector: postgres, config: {dsn: "${SHOP_DSN}"}, entities: {products: {table: shop_products}}}
        """
    )
    cli.run("migrate", str(job), check=True)
    letters = [json.loads(line) for line in cli.run("dlq", str(job), "show", "--json", check=True).stdout.splitlines()]
    assert [(d["key"], d["stage"], d["sink"]) for d in letters] == [("LONG-SKU", "sink", "shop")]
    assert "too long" in letters[0]["reason"]
    failing = cli.run("dlq", str(job), "replay")
    assert failing.returncode == 1 and "still failing 1" in failing.stdout
    dbs.shop_sql("alter table shop_products alter column sku type text")
    cli.run("dlq", str(job), "replay", check=True)
    assert dbs.shop_sql("select sku from shop_products order by sku") == [("LONG-SKU",), ("OK1",)]
    assert cli.run("dlq", str(job), "show", "--json", check=True).stdout == ""


def test_rerun_after_completion_changes_nothing(cli, dbs) -> None:
    erp.seed(dbs.erp_sql, products=300)
    job = cli.write_job(erp.job())
    cli.run("migrate", str(job), check=True)
    before = dbs.shop_sql(erp.PRICE_SUM.format(t="shop_prices", where=""))
    cli.run("migrate", str(job), check=True)
    assert dbs.shop_sql(erp.PRICE_SUM.format(t="shop_prices", where="")) == before


def test_policy_fail_rereads_rejected_chunks_after_the_source_is_fixed(cli, dbs) -> None:
    erp.seed(dbs.erp_sql, products=50)
    dbs.erp_sql("delete from erp_prices")
    dbs.erp_sql("insert into erp_prices (sku, price_list, currency, amount, updated_at) "
                "select 'P' || g, 'base', 'EURO', 1, now() from generate_series(1, 5) g")  # a chunk with no valid row
    job = cli.write_job(erp.job(policy="fail"))
    first = cli.run("migrate", str(job))
    assert first.returncode == 1 and "5 invalid record(s)" in first.stderr
    dbs.erp_sql("update erp_prices set currency = 'EUR'")
    cli.run("migrate", str(job), check=True)
    assert dbs.shop_sql("select count(*) from shop_prices") == [(5,)]
    assert dbs.shop_sql("select count(*) from shop_products") == [(50,)]
