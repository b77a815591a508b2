"""Files sink: layout, idempotent re-delivery, formats, and round trips through the source."""

from __future__ import annotations

import errno
from pathlib import Path

import polars as pl
import pytest

from kanal.connectors.files import (
    CONNECTOR,
    FilesConfig,
    FilesSink,
    FilesSinkOptions,
    FilesSource,
    FilesSourceOptions,
)
from kanal.connectors.files.formats import disk_error
from kanal.connectors.files.sink import file_stem
from kanal.core.connector import DeltaKind
from kanal.core.errors import BatchRejected, ConnectorError, Unreachable
from kanal.core.model import CUSTOMER, ENTITIES, PRICE, Entity
from kanal.core.registry import installed
from kanal.core.validate import conform

FORMATS = ["csv", "jsonl", "parquet"]


def _without_empty_structs(value):
    """conform spells a missing address as a struct of NULLs; compare both spellings as None."""
    if isinstance(value, dict):
        inner = {k: _without_empty_structs(v) for k, v in value.items()}
        return None if all(v is None for v in inner.values()) else inner
    return value


def _rows(frame: pl.DataFrame) -> list[dict]:
    return [{k: _without_empty_structs(v) for k, v in row.items()} for row in frame.to_dicts()]


def _read_back(base: Path, entity: Entity, fmt: str | None = None) -> pl.DataFrame:
    """Everything the source yields for `entity`, conformed and checked valid."""
    source = FilesSource(FilesConfig(path=str(base)))
    options = FilesSourceOptions(format=fmt)
    frames = [
        conform(frame, entity)
        for chunk in source.plan(entity.name, options)
        for frame in source.snapshot(entity.name, options, chunk)
    ]
    checked = pl.concat(frames)
    assert checked["_kanal_reason"].null_count() == checked.height, checked["_kanal_reason"].to_list()
    return checked.drop("_kanal_reason")


@pytest.mark.parametrize("fmt", FORMATS)
def test_prices_round_trip_keeps_decimal_text_nulls_and_datetimes(tmp_path, prices, fmt):
    sink = FilesSink(FilesConfig(path=str(tmp_path), format=fmt))
    options = FilesSinkOptions()
    sink.check()
    sink.prepare("prices", options)

    result = sink.write("prices", options, prices, "prices-0-42")

    assert result.written == 3
    back = _read_back(tmp_path, PRICE)
    assert back.schema == prices.schema
    assert back.to_dicts() == prices.to_dicts()
    assert back["amount"].to_list() == ["12.50", "9.90", "1000"]
    assert back["min_qty"].to_list() == [None, "10", "1.000"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_customers_round_trip_keeps_nested_addresses(tmp_path, customers, fmt):
    sink = FilesSink(FilesConfig(path=str(tmp_path)))
    options = FilesSinkOptions(format=fmt)

    sink.write("customers", options, customers, "customers-1-7")

    back = _read_back(tmp_path, CUSTOMER)
    assert back.schema == customers.schema
    assert _rows(back) == _rows(customers)
    assert back["addresses"][0]["shipping"]["city"] == "Zürich"
    assert back["company"][0] == 'Müller "&" Söhne GmbH'


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_lands_in_entity_folder_without_internal_columns(tmp_path, prices, fmt):
    FilesSink(FilesConfig(path=str(tmp_path), format=fmt)).write("prices", FilesSinkOptions(), prices, "b-1")

    files = list((tmp_path / "prices").iterdir())
    assert [f.name for f in files] == [f"b-1.{fmt}"]
    source = FilesSource(FilesConfig(path=str(tmp_path)))
    chunk = source.plan("prices", FilesSourceOptions())[0]
    raw = pl.concat(source.snapshot("prices", FilesSourceOptions(), chunk))
    assert "_kanal_key" not in raw.columns
    assert raw.columns == list(PRICE.field_names)


def test_rewriting_same_batch_id_overwrites(tmp_path, prices):
    sink = FilesSink(FilesConfig(path=str(tmp_path), format="csv"))
    options = FilesSinkOptions()
    sink.write("prices", options, prices, "prices-3-100")
    sink.write("prices", options, prices.head(1), "prices-3-101")

    sink.write("prices", options, prices, "prices-3-100")  # re-delivery
    sink.write("prices", options, prices.head(2), "prices-3-101")  # re-delivery, changed content

    names = sorted(p.name for p in (tmp_path / "prices").iterdir())
    assert names == ["prices-3-100.csv", "prices-3-101.csv"]  # no temporary files left either
    assert pl.read_csv(tmp_path / "prices" / "prices-3-101.csv", infer_schema=False).height == 2
    assert _read_back(tmp_path, PRICE).height == 5


def test_folder_and_format_options(tmp_path, prices):
    config = FilesConfig(path=str(tmp_path), format="csv")
    sink = FilesSink(config)
    options = FilesSinkOptions(folder="out/erp_prices", format="jsonl")

    sink.prepare("prices", options)
    assert (tmp_path / "out" / "erp_prices").is_dir()
    sink.write("prices", options, prices, "x")

    assert [p.name for p in (tmp_path / "out" / "erp_prices").iterdir()] == ["x.jsonl"]
    assert sink.format(FilesSinkOptions()) == "csv"
    assert FilesSink(FilesConfig(path=str(tmp_path))).format(FilesSinkOptions()) == "parquet"


def test_csv_holds_iso_utc_datetimes_and_json_structs(tmp_path, customers):
    FilesSink(FilesConfig(path=str(tmp_path), format="csv")).write("customers", FilesSinkOptions(), customers, "c")

    text = (tmp_path / "customers" / "c.csv").read_text(encoding="utf-8")
    raw = pl.read_csv(tmp_path / "customers" / "c.csv", infer_schema=False)
    assert raw["updated_at"].to_list() == ["2024-02-29T23:59:59.000001Z", None, None]
    assert raw["addresses"][1] == (
        '{"billing":{"street":"Bahnhofstr. 2, 3. OG","zip":"8001","city":"Zürich","country":"CH"},"shipping":null}'
    )
    assert raw["addresses"][2] is None
    assert "_kanal_key" not in text


def test_csv_delimiter_and_legacy_encoding_round_trip(tmp_path, customers):
    config = FilesConfig(path=str(tmp_path), format="csv", delimiter=";", encoding="cp1252")
    FilesSink(config).write("customers", FilesSinkOptions(), customers, "legacy")

    data = (tmp_path / "customers" / "legacy.csv").read_bytes()
    assert "Müller".encode("cp1252") in data
    assert "Müller".encode("utf-8") not in data
    assert data.startswith(b"customer_no;type;")
    source = FilesSource(config)
    chunk = source.plan("customers", FilesSourceOptions())[0]
    back = conform(pl.concat(source.snapshot("customers", FilesSourceOptions(), chunk)), CUSTOMER)
    assert _rows(back.drop("_kanal_reason")) == _rows(customers)


def test_value_the_encoding_cannot_hold_rejects_the_batch(tmp_path, prices):
    sink = FilesSink(FilesConfig(path=str(tmp_path), format="csv", encoding="latin-1"))
    bad = prices.with_columns(pl.lit("Preis €").alias("price_list"))

    with pytest.raises(BatchRejected, match="cannot be written as iso8859-1") as caught:
        sink.write("prices", FilesSinkOptions(), bad, "b")

    assert "b.csv" in str(caught.value)
    assert list((tmp_path / "prices").iterdir()) == []


def test_awkward_batch_ids_stay_inside_the_folder_and_distinct(tmp_path, prices):
    sink = FilesSink(FilesConfig(path=str(tmp_path)))
    ids = ["../escape", "a/b", "a_b", "a%2Fb", ".hidden", "x" * 300, "x" * 299 + "y"]
    for batch_id in ids:
        sink.write("prices", FilesSinkOptions(), prices, batch_id)

    names = [p.name for p in (tmp_path / "prices").iterdir()]
    assert len(names) == len(ids)
    assert all(not n.startswith(".") and len(n) < 255 for n in names)
    assert [p for p in tmp_path.iterdir()] == [tmp_path / "prices"]
    assert len({file_stem(i) for i in ids}) == len(ids)


def test_empty_frame_writes_no_file(tmp_path, prices):
    result = FilesSink(FilesConfig(path=str(tmp_path))).write("prices", FilesSinkOptions(), prices.clear(), "e")

    assert result.written == 0
    assert not (tmp_path / "prices" / "e.parquet").exists()


def test_check_names_a_base_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    sink = FilesSink(FilesConfig(path=str(blocker / "out")))

    with pytest.raises(ConnectorError, match="blocker/out") as caught:
        sink.check()

    assert not isinstance(caught.value, Unreachable)


def test_write_names_the_file_it_could_not_write(tmp_path, prices):
    (tmp_path / "prices").write_text("a file where the entity folder should be")
    sink = FilesSink(FilesConfig(path=str(tmp_path)))

    with pytest.raises(ConnectorError, match=r"prices") as caught:
        sink.write("prices", FilesSinkOptions(), prices, "b-9")

    assert "b-9.parquet" in str(caught.value)
    with pytest.raises(ConnectorError, match="create folder"):
        sink.prepare("prices", FilesSinkOptions())


def test_disk_full_is_worth_a_retry_but_permission_is_not(tmp_path):
    target = tmp_path / "x.csv"

    full = disk_error("write", target, OSError(errno.ENOSPC, "No space left on device"))
    denied = disk_error("write", target, PermissionError(errno.EACCES, "Permission denied"))
    polars_style = disk_error("write", target, OSError("No space left on device (os error 28): /x"))

    assert isinstance(full, Unreachable) and str(target) in str(full)
    assert isinstance(denied, ConnectorError) and not isinstance(denied, Unreachable)
    assert "Permission denied" in str(denied)
    assert isinstance(polars_style, Unreachable)


def test_connector_spec_declares_what_the_engine_relies_on():
    caps = CONNECTOR.capabilities

    assert caps.stable_batches is True
    assert caps.parallel_snapshot is True
    assert caps.delta == (DeltaKind.NONE, DeltaKind.FILES)
    assert set(caps.entities) == set(ENTITIES)
    assert CONNECTOR.source is FilesSource and CONNECTOR.sink is FilesSink
    assert FilesSink.entity_options is FilesSinkOptions
    assert installed()["files"] is CONNECTOR


def test_every_config_field_is_described():
    for model in (FilesConfig, FilesSourceOptions, FilesSinkOptions):
        own = {name: f for name, f in model.model_fields.items() if name != "mapping"}
        assert own and all(f.description for f in own.values()), model.__name__
