"""What each sink holds, in one canonical form, so "the sink equals the source" is a multiset compare.

PostgreSQL sinks are read as tables. A files sink is read as a consumer of
its output would: snapshot files (one per migrated chunk part) and the
change log under `<entity>/changes/` (records with `_kanal_op` and
`_kanal_version`), applied in the order they were written; per key a change
applies unless it is older than what the key holds, a delete removes the
key, a `truncate` at version V removes every key older than V and keeps
older records out afterwards.

Values are normalised (decimals without trailing zeros, timestamps in UTC),
so `12.50` as text in a Parquet file equals `12.5` in a numeric column.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import psycopg

from tests.torture.erp import DECIMALS, FIELDS, KEYS, NARROW, table_of
from tests.torture.scenario import Scenario

OP, VERSION = "_kanal_op", "_kanal_version"
TABLE_NAMES = {"products": "products", "prices": "prices", "stock_levels": "stock"}
PREFIXES = {"shop": "shop_", "market": "mkt_"}

Row = tuple[Any, ...]


def target_table(sink: str, entity: str) -> str:
    return PREFIXES[sink] + TABLE_NAMES[entity]


def normalise(field: str, value: Any) -> Any:
    if value is None:
        return None
    if field in DECIMALS:
        return format(Decimal(str(value)).normalize(), "f")
    if field == "updated_at" and isinstance(value, str):  # JSON (dead letters, JSON Lines): ISO 8601
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return value


def canonical(entity: str, row: Sequence[Any]) -> Row:
    return tuple(normalise(f, v) for f, v in zip(FIELDS[entity], row, strict=True))


def key_of(entity: str, row: Row) -> Row:
    fields = FIELDS[entity]
    return tuple(row[fields.index(k)] for k in KEYS[entity])


def multiset(entity: str, rows: Iterable[Sequence[Any]]) -> Counter[Row]:
    return Counter(canonical(entity, r) for r in rows)


# PostgreSQL targets --------------------------------------------------------------------------------


def read_table(conn: psycopg.Connection, table: str, entity: str) -> tuple[Counter[Row], frozenset[str]]:
    """The rows of a target table (none while it does not exist), and the compared fields it lacks."""
    exists = conn.execute("select to_regclass(%s)", (table,)).fetchone()
    if not exists or exists[0] is None:
        return Counter(), frozenset()
    columns = {r[0] for r in conn.execute(
        "select column_name from information_schema.columns where table_name = %s", (table,)
    ).fetchall()}
    fields = [f if f in columns else "null" for f in FIELDS[entity]]
    absent = frozenset(f for f in FIELDS[entity] if f not in columns)
    return multiset(entity, conn.execute(f"select {', '.join(fields)} from {table}").fetchall()), absent


def without(entity: str, rows: Counter[Row], absent: frozenset[str]) -> Counter[Row]:
    """`rows` with the fields a target does not have set to NULL, to compare with that target."""
    if not absent:
        return rows
    drop = [i for i, f in enumerate(FIELDS[entity]) if f in absent]
    projected: Counter[Row] = Counter()
    for row, n in rows.items():
        projected[tuple(None if i in drop else v for i, v in enumerate(row))] += n
    return projected


def without_keys(rows: Counter[Row], skus: set[str]) -> Counter[Row]:
    """`rows` without those whose first key part (sku) is in `skus`."""
    return Counter({row: n for row, n in rows.items() if row[0] not in skus})


def create_existing(s: Scenario, erp: str, shop: str) -> None:
    """Shop tables made by someone else: own key, `updated_at`, extra columns, stale copies of some rows.

    The stale copies carry an older `updated_at` than the ERP's, as a shop
    that was filled by an earlier integration would; the migration must
    overwrite them.
    """
    name_type = f"varchar({NARROW})" if s.narrow_names else "text"  # (a CHECK on a created table otherwise)
    version = "" if s.unversioned else ", updated_at timestamptz"
    ddl = {
        "products": f"""create table shop_products (sku text primary key, name {name_type}, gtin text, active boolean,
            brand text{version}, synced_at timestamptz default now())""",
        "prices": """create table shop_prices (sku text not null, price_list text, customer_no text, currency text not null,
            min_qty numeric, amount numeric(12,2), updated_at timestamptz, note text,
            unique nulls not distinct (sku, price_list, customer_no, currency, min_qty))""",
        "stock_levels": """create table shop_stock (sku text, location text, on_hand numeric(12,3),
            updated_at timestamptz, bin text default 'main', primary key (sku, location))""",
    }
    with psycopg.connect(erp) as source, psycopg.connect(shop, autocommit=True) as target:
        for entity in sorted(s.existing):
            target.execute(ddl[entity])
            fields = tuple(f for f in FIELDS[entity] if not (s.unversioned and entity == "products" and f == "updated_at"))
            table = table_of(s, entity)
            selected = ", ".join(f if f != "brand" else "null::text" for f in fields)
            rows = source.execute(
                f"select {selected} from {table} where hashtext(sku) % 10 = 0 and sku not like 'BAD%%'"
            ).fetchall()
            stale = [
                tuple(dt.datetime(2020, 1, 1, tzinfo=dt.UTC) if f == "updated_at" else ("stale" if f == "name" else v)
                      for f, v in zip(fields, row, strict=True))
                for row in rows
            ]
            marks = ", ".join(["%s"] * len(fields))
            with target.cursor() as cur:
                cur.executemany(f"insert into {target_table('shop', entity)} ({', '.join(fields)}) values ({marks})", stale)


# files sink ----------------------------------------------------------------------------------------


def read_files(folder: Path, entity: str) -> Counter[Row]:
    """Rebuild an entity's state from a files sink's snapshot files and change log (module docstring)."""
    if not folder.exists():
        return Counter()
    files = [p for p in folder.glob("*.parquet")] + [p for p in (folder / "changes").glob("*.parquet")]
    state: dict[Row, tuple[Row | None, int]] = {}
    floor = -1
    for path in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name)):
        frame = pl.read_parquet(path)
        fields = [pl.col(f) if f in frame.columns else pl.lit(None).alias(f) for f in FIELDS[entity]]
        rows = frame.select(fields).rows()
        if OP not in frame.columns:
            for raw in rows:
                row = canonical(entity, raw)
                state[key_of(entity, row)] = (row, state.get(key_of(entity, row), (None, -1))[1])
            continue
        for raw, op, version in zip(rows, frame.get_column(OP), frame.get_column(VERSION), strict=True):
            if op == "truncate":
                floor = max(floor, version)
                state = {k: v for k, v in state.items() if v[1] >= version}
                continue
            row = canonical(entity, raw)
            key = key_of(entity, row)
            if version < floor or version < state.get(key, (None, -1))[1]:
                continue
            state[key] = (None if op == "delete" else row, version)
    return Counter(row for row, _ in state.values() if row is not None)
