"""Several delta readers behind one (`core.delta`): positions per part, calls to the owner of an entity."""

from __future__ import annotations

import json

from kanal.core.connector import DeltaContext, EntityOptions
from kanal.core.delta import CompositeReader, combined, split_context
from tests.core.api import ApiReader, micros

_CLOCK = "2024-05-01T12:00:00Z"


def _parts() -> tuple[dict, list[dict[str, str]], list[dict[str, str]]]:
    products: list[dict[str, str]] = []
    prices: list[dict[str, str]] = []
    parts = {
        "catalog": (ApiReader(products, _CLOCK, entity="products"), DeltaContext("job", {"products": EntityOptions()})),
        "pricing": (ApiReader(prices, _CLOCK, overlap_s=1, entity="prices"), DeltaContext("job", {"prices": EntityOptions()})),
    }
    return parts, products, prices


def test_split_context_groups_entities_by_kind() -> None:
    context = DeltaContext("job", {"a": EntityOptions(delta="cdc"), "b": EntityOptions(), "c": EntityOptions(delta="cdc")})
    groups = split_context(context, lambda entity, options: str(options.delta))
    assert {k: sorted(g.entities) for k, g in groups.items()} == {"cdc": ["a", "c"], "None": ["b"]}
    assert {g.job for g in groups.values()} == {"job"}


def test_one_part_is_the_part_itself_so_stored_positions_keep_their_format() -> None:
    parts, _, _ = _parts()
    reader, _ = parts["catalog"]
    assert combined({"catalog": parts["catalog"]}) is reader


def test_each_part_reads_from_its_own_position_and_the_owner_answers_for_an_entity() -> None:
    parts, products, prices = _parts()
    reader = combined(parts)
    assert isinstance(reader, CompositeReader)
    position = reader.start()
    assert set(position) == {"catalog", "pricing"}
    assert reader.snapshot_version("prices", position) is not None
    products.append({"id": "p1", "name": "Shoe", "updated_at": "2024-05-01T12:00:01Z"})
    prices.append({"id": "x1", "name": "9.99", "updated_at": "2024-05-01T12:00:02Z"})
    parts["catalog"][0].clock = parts["pricing"][0].clock = "2024-05-01T12:00:05Z"
    changes = reader.read(position)
    assert {e: f.get_column("id").to_list() for e, f in changes.frames.items()} == {"products": ["p1"], "prices": ["x1"]}
    position = json.loads(json.dumps(changes.position))
    assert position["pricing"]["cursors"]["prices"] == micros("2024-05-01T12:00:02+00:00")
    assert reader.read(position).frames == {}
    assert reader.describe(position) == "products 2024-05-01T12:00:01.000Z; prices 2024-05-01T12:00:02.000Z"


def test_a_position_without_every_part_cannot_be_resumed() -> None:
    parts, _, _ = _parts()
    reader = combined(parts)
    single = parts["catalog"][0].start()  # stored while the job streamed one way only
    assert not reader.resumable(single)
    assert "pricing: no position" in reader.describe(single)
    assert reader.resumable(reader.start())
