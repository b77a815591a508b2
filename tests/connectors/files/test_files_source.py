"""Files source: planning chunks, bounded reads, raw text for conform, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from kanal.connectors.files import FilesConfig, FilesSource, FilesSourceOptions
from kanal.connectors.files.formats import BATCH_ROWS, read
from kanal.core.errors import ConfigError, ConnectorError
from kanal.core.model import STOCK_LEVEL
from kanal.core.validate import conform


def _source(base: Path, **config) -> FilesSource:
    return FilesSource(FilesConfig(path=str(base), **config))


def _read_all(source: FilesSource, entity: str, options: FilesSourceOptions) -> list[pl.DataFrame]:
    return [frame for chunk in source.plan(entity, options) for frame in source.snapshot(entity, options, chunk)]


def _stock_csv(path: Path, rows: int, start: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sku,location,on_hand"] + [f"S{i:06d},WH1,{i % 50}" for i in range(start, start + rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_folder_of_files_gives_one_chunk_per_file_with_stable_ids(tmp_path):
    drop = tmp_path / "exports" / "wms"
    _stock_csv(drop / "stock_b.csv", 2)
    _stock_csv(drop / "stock_a.csv", 3)
    _stock_csv(drop / "stock_c.csv", 1)
    (drop / ".stock_d.csv.1a2b.tmp").write_text("partial")  # a writer's temporary file
    (drop / "stock_e.csv.part").write_text("partial")
    options = FilesSourceOptions(pattern="exports/wms/stock_*.csv")

    chunks = _source(tmp_path).plan("stock_levels", options)
    again = _source(tmp_path).plan("stock_levels", options)

    assert [c.id for c in chunks] == ["exports/wms/stock_a.csv", "exports/wms/stock_b.csv", "exports/wms/stock_c.csv"]
    assert chunks == again
    assert chunks[0].spec["path"] == "exports/wms/stock_a.csv"
    assert chunks[0].spec["format"] == "csv"
    assert chunks[0].spec["size"] == (drop / "stock_a.csv").stat().st_size
    assert chunks[0].spec["mtime_ns"] == (drop / "stock_a.csv").stat().st_mtime_ns
    assert chunks[0].estimated_rows is None
    heights = [sum(f.height for f in _source(tmp_path).snapshot("stock_levels", options, c)) for c in chunks]
    assert heights == [3, 2, 1]


def test_pattern_naming_a_folder_reads_its_known_files(tmp_path):
    drop = tmp_path / "drop"
    _stock_csv(drop / "one.csv", 2)
    pl.DataFrame({"sku": ["X"], "location": ["WH2"]}).write_parquet(drop / "two.parquet")
    (drop / "README.txt").write_text("not data")
    (drop / "nested").mkdir()
    _stock_csv(drop / "nested" / "deeper.csv", 1)

    chunks = _source(tmp_path).plan("stock_levels", FilesSourceOptions(pattern="drop"))

    assert [c.id for c in chunks] == ["drop/one.csv", "drop/two.parquet"]
    assert chunks[1].estimated_rows == 1


def test_recursive_glob(tmp_path):
    _stock_csv(tmp_path / "2024" / "01" / "a.csv", 1)
    _stock_csv(tmp_path / "2024" / "02" / "b.csv", 1)
    _stock_csv(tmp_path / ".cache" / "c.csv", 1)

    chunks = _source(tmp_path).plan("stock_levels", FilesSourceOptions(pattern="**/*.csv"))

    assert [c.id for c in chunks] == ["2024/01/a.csv", "2024/02/b.csv"]


def test_large_csv_is_read_in_bounded_frames(tmp_path):
    _stock_csv(tmp_path / "stock_levels.csv", 250_000)
    source = _source(tmp_path)

    frames = _read_all(source, "stock_levels", FilesSourceOptions())

    assert len(frames) >= 3
    assert all(0 < f.height <= BATCH_ROWS for f in frames)
    assert sum(f.height for f in frames) == 250_000
    whole = pl.concat(frames)
    assert whole["sku"].n_unique() == 250_000
    assert whole["sku"][-1] == "S249999"


def test_large_jsonl_is_read_in_bounded_frames_across_blocks(tmp_path):
    path = tmp_path / "stock_levels.jsonl"
    lines = (json.dumps({"sku": f"S{i}", "location": "WH1", "on_hand": str(i)}) for i in range(250_000))
    path.write_text("\n".join(lines) + "\n")

    frames = list(read(path, "jsonl", block_bytes=1 << 20))

    assert len(frames) > 3
    assert all(0 < f.height <= BATCH_ROWS for f in frames)
    whole = pl.concat(frames)
    assert whole.height == 250_000
    assert whole["sku"].to_list() == [f"S{i}" for i in range(250_000)]


def test_csv_columns_stay_text_for_conform(tmp_path):
    (tmp_path / "stock_levels.csv").write_text(
        "sku,location,on_hand,updated_at\n00123,WH1,12.50,2024-01-02T03:04:05Z\n00124,WH1,twelve,yesterday\n"
    )

    frame = pl.concat(_read_all(_source(tmp_path), "stock_levels", FilesSourceOptions()))

    assert all(dtype == pl.String for dtype in frame.dtypes)
    assert frame["sku"].to_list() == ["00123", "00124"]
    checked = conform(frame, STOCK_LEVEL)
    assert checked["on_hand"][0] == "12.50"
    assert checked["_kanal_reason"][0] is None
    assert "twelve" in checked["_kanal_reason"][1]


def test_csv_delimiter_and_bom(tmp_path):
    (tmp_path / "stock_levels.csv").write_bytes(b"\xef\xbb\xbfsku;location;on_hand\nA;WH1;1,5\n")

    frame = pl.concat(_read_all(_source(tmp_path, delimiter=";"), "stock_levels", FilesSourceOptions()))

    assert frame.columns == ["sku", "location", "on_hand"]
    assert frame.row(0) == ("A", "WH1", "1,5")


def test_jsonl_keeps_nested_objects_and_late_fields(tmp_path):
    rows = [{"customer_no": f"K{i}", "updated_at": "2024-01-02T03:04:05Z"} for i in range(500)]
    rows.append({"customer_no": "K500", "addresses": {"billing": {"city": "Berlin", "country": "DE"}}})
    (tmp_path / "customers.ndjson").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    frame = pl.concat(_read_all(_source(tmp_path), "customers", FilesSourceOptions()))

    assert frame.height == 501
    assert frame.schema["updated_at"] == pl.String  # dates stay text; conform parses them
    assert isinstance(frame.schema["addresses"], pl.Struct)
    assert frame["addresses"][500]["billing"]["city"] == "Berlin"


def test_empty_and_header_only_files_yield_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("")
    (tmp_path / "data" / "b.csv").write_text("sku,location\n")
    (tmp_path / "data" / "c.jsonl").write_text("\n\n")

    source = _source(tmp_path)
    options = FilesSourceOptions(pattern="data/*")

    assert len(source.plan("stock_levels", options)) == 3
    assert _read_all(source, "stock_levels", options) == []


def test_discover_offers_entities_found_by_name(tmp_path):
    (tmp_path / "prices").mkdir()
    pl.DataFrame({"sku": ["A"]}).write_parquet(tmp_path / "prices" / "p1.parquet")
    (tmp_path / "customers.csv").write_text("customer_no\nK1\n")
    (tmp_path / "products.txt").write_text("not a known format")
    (tmp_path / "stock_levels").mkdir()  # empty folder: nothing to read
    (tmp_path / "orders.csv").write_text("no canonical entity\n")

    found = {info.entity: info for info in _source(tmp_path).discover()}

    assert set(found) == {"customers", "prices"}
    assert found["prices"].key == ("sku", "price_list", "customer_no", "currency", "min_qty")
    chunks = _source(tmp_path).plan("prices", FilesSourceOptions())
    assert [c.id for c in chunks] == ["prices/p1.parquet"]
    assert chunks[0].estimated_rows == 1


def test_format_override_reads_files_without_known_extension(tmp_path):
    (tmp_path / "stock.txt").write_text("sku|location\nA|WH1\n")
    source = _source(tmp_path, delimiter="|")

    with pytest.raises(ConfigError, match="stock.txt"):
        source.plan("stock_levels", FilesSourceOptions(pattern="*.txt"))
    frames = _read_all(source, "stock_levels", FilesSourceOptions(pattern="*.txt", format="csv"))

    assert frames[0].row(0) == ("A", "WH1")


def test_ragged_csv_names_file_and_line(tmp_path):
    (tmp_path / "bad.csv").write_text("sku,location\nA,WH1\nB,WH1,extra\nC,WH1\n")

    with pytest.raises(ConnectorError, match=r"bad\.csv: malformed CSV at line 3: 3 fields, but the header has 2"):
        _read_all(_source(tmp_path), "stock_levels", FilesSourceOptions(pattern="bad.csv"))


def test_unclosed_quote_in_csv_names_file(tmp_path):
    (tmp_path / "bad.csv").write_text('sku,location\nA,"WH1\nB,WH2\n')

    with pytest.raises(ConnectorError, match=r"bad\.csv: malformed CSV at line \d+: .*never closed"):
        _read_all(_source(tmp_path), "stock_levels", FilesSourceOptions(pattern="bad.csv"))


def test_invalid_utf8_csv_names_file_and_line(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"sku,location\nA,WH1\nB,M\xfcnchen\n")

    with pytest.raises(ConnectorError, match=r"bad\.csv: malformed CSV at line 3: not valid utf8"):
        _read_all(_source(tmp_path), "stock_levels", FilesSourceOptions(pattern="bad.csv"))
    frames = _read_all(_source(tmp_path, encoding="latin-1"), "stock_levels", FilesSourceOptions(pattern="bad.csv"))
    assert frames[0]["location"].to_list() == ["WH1", "München"]


def test_malformed_jsonl_names_file_and_line_across_blocks(tmp_path):
    good = "".join(json.dumps({"sku": f"S{i}", "location": "WH1"}) + "\n" for i in range(1000))
    (tmp_path / "bad.jsonl").write_text(good + '{"sku": "X", "location": }\n' + good)

    expected = r"bad\.jsonl: malformed JSON Lines at line 1001, column 26: Expecting value"
    with pytest.raises(ConnectorError, match=expected):
        list(read(tmp_path / "bad.jsonl", "jsonl", block_bytes=4096))


def test_jsonl_line_that_is_not_an_object_is_named(tmp_path):
    (tmp_path / "stock_levels.json").write_text('{"sku": "A", "location": "WH1"}\n[1, 2]\n')

    with pytest.raises(ConnectorError, match=r"stock_levels\.json: malformed JSON Lines at line 2: not a JSON object"):
        _read_all(_source(tmp_path), "stock_levels", FilesSourceOptions())


def test_corrupt_parquet_names_file(tmp_path):
    (tmp_path / "stock_levels.parquet").write_bytes(b"PAR1 this is not really parquet")

    with pytest.raises(ConnectorError, match=r"stock_levels\.parquet"):
        _read_all(_source(tmp_path), "stock_levels", FilesSourceOptions())


def test_missing_folder_is_named(tmp_path):
    source = _source(tmp_path / "nowhere")

    with pytest.raises(ConnectorError, match=r"folder .*nowhere does not exist"):
        source.check()
    with pytest.raises(ConnectorError, match="nowhere"):
        source.plan("prices", FilesSourceOptions(pattern="*.csv"))


def test_base_path_that_is_a_file_is_named(tmp_path):
    (tmp_path / "plain").write_text("x")

    with pytest.raises(ConnectorError, match=r"plain is not a folder"):
        _source(tmp_path / "plain").check()


def test_no_matching_files_names_pattern_and_folder(tmp_path):
    _stock_csv(tmp_path / "stock_1.csv", 1)

    with pytest.raises(ConfigError, match=r"'exports/stock_\*\.csv'") as caught:
        _source(tmp_path).plan("stock_levels", FilesSourceOptions(pattern="exports/stock_*.csv"))

    assert str(tmp_path) in str(caught.value)
    with pytest.raises(ConfigError, match="no files match"):
        _source(tmp_path).plan("prices", FilesSourceOptions())


def test_file_removed_after_planning_is_named(tmp_path):
    _stock_csv(tmp_path / "stock_levels.csv", 1)
    source = _source(tmp_path)
    chunk = source.plan("stock_levels", FilesSourceOptions())[0]
    os.remove(tmp_path / "stock_levels.csv")

    with pytest.raises(ConnectorError, match=r"cannot read .*stock_levels\.csv"):
        list(source.snapshot("stock_levels", FilesSourceOptions(), chunk))


@pytest.mark.parametrize("pattern", ["/etc/*.csv", "../other/*.csv", "a/../../b.csv", ""])
def test_pattern_must_stay_inside_the_base_folder(pattern):
    with pytest.raises(ValidationError, match="pattern"):
        FilesSourceOptions(pattern=pattern)


def test_config_rejects_bad_csv_settings(tmp_path):
    with pytest.raises(ValidationError, match="delimiter"):
        FilesConfig(path=str(tmp_path), delimiter=";;")
    with pytest.raises(ValidationError, match="unknown encoding"):
        FilesConfig(path=str(tmp_path), encoding="klingon")
    with pytest.raises(ValidationError, match="extra"):
        FilesConfig(path=str(tmp_path), separator=";")
    assert FilesConfig(path=str(tmp_path), encoding="UTF-8").encoding == "utf8"
    assert FilesConfig(path=str(tmp_path), encoding="Latin1").encoding == "iso8859-1"


def test_text_the_legacy_encoding_cannot_decode_names_file_and_line(tmp_path):
    (tmp_path / "stock_levels.csv").write_bytes(b"sku,location\nA,WH1\nB,WH\x81\n")

    with pytest.raises(ConnectorError, match=r"stock_levels\.csv: malformed CSV at line 3: not valid cp1252 text"):
        _read_all(_source(tmp_path, encoding="cp1252"), "stock_levels", FilesSourceOptions())


def test_csv_read_with_the_wrong_delimiter_fails_naming_file_columns_and_delimiter(tmp_path):
    """Without the check every row became a dead letter "sku: required field is empty" and the run exited 0."""
    (tmp_path / "products.csv").write_text("sku;name;weight\nA1;Widget;1.5\n")
    for options in (FilesSourceOptions(), FilesSourceOptions(mapping="products.yaml")):
        with pytest.raises(ConfigError) as caught:
            _read_all(_source(tmp_path), "products", options)
        message = caught.value.message
        assert f"{tmp_path / 'products.csv'}: " in message and "'sku;name;weight'" in message
        assert "set `delimiter: ';'` in the files connector's config" in message
    assert _read_all(_source(tmp_path, delimiter=";"), "products", FilesSourceOptions())[0].columns == ["sku", "name", "weight"]


def test_file_without_any_field_of_the_entity_fails_listing_columns_found_and_expected(tmp_path):
    (tmp_path / "products.jsonl").write_text('{"artnr": "A1", "bez": "Widget"}\n')
    with pytest.raises(ConfigError) as caught:
        _read_all(_source(tmp_path), "products", FilesSourceOptions())
    message = caught.value.message
    assert "none of its columns is a field of products: found 'artnr', 'bez'; products has sku, gtin, name" in message
    assert "(key: sku)" in message and "source entities.products.mapping" in message
    # A mapping says itself which columns it lacks; the file is read for it as it is.
    assert _read_all(_source(tmp_path), "products", FilesSourceOptions(mapping="m.yaml"))[0].columns == ["artnr", "bez"]
    # One field of the entity is enough: the rest is validation's job, record by record.
    (tmp_path / "products.jsonl").write_text('{"sku": "A1", "bez": "Widget"}\n')
    assert _read_all(_source(tmp_path), "products", FilesSourceOptions())[0].columns == ["sku", "bez"]
