"""The contract every connector meets, as pytest test classes an author inherits.

    from kanal.testing import Harness, SinkContract, SourceContract

    class TestMyConnector(SourceContract, SinkContract):
        @pytest.fixture
        def harness(self, my_system) -> Harness:
            return MyHarness(my_system)

Each test builds connector instances the way the engine does (one per
thread: a fresh instance stands for a fresh process) and drives them through
their lifecycle (see `kanal.core.connector`). Sink writes go through the
engine's write step, `kanal.core.deliver.write_changed`: declared batch limits
bind, a batch the system refuses as a whole (`BatchRejected`) is bisected to
the records at fault; for a sink declaring `skip_unchanged` the engine's
guard applies as in a run (`kanal.core.sinkmemory.sift`: only records whose
content changed and that are not older than what was written are sent).

A test is skipped, with the reason, where the connector declares it does
not do the thing (no deltas, no deletes) or the harness cannot provide it
(no credentials to get wrong, no record the system refuses).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from kanal.core.connector import (
    DELETE, OP, UPSERT, VERSION, Chunk, DeltaContext, DeltaKind, DeltaReader, EntityInfo, Sink, Source, WriteResult,
)
from kanal.core.deliver import SinkLimits, describe_target, write_changed
from kanal.core.errors import AuthError
from kanal.core.model import entity as canonical
from kanal.core.retry import RetryPolicy
from kanal.core.sinkmemory import SinkMemory
from kanal.core.validate import KEY, conform
from kanal.testing.harness import Harness, as_changes, micros, truncate_row

PROMPT_S = 10.0
"""An auth error must come at once: a retried one would take the retry budget (minutes)."""
DELTA_TIMEOUT_S = 60.0
"""How long changes may take to become readable (a files delta waits for files to settle)."""
RETRY = RetryPolicy(max_elapsed_s=30, initial_s=0.05, max_wait_s=1)


def keyed(harness: Harness, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with the canonical key string of each record."""
    return frame.with_columns(canonical(harness.entity).key_expr())


def held(harness: Harness) -> dict[str, str | None]:
    """What the system holds: key -> marker value (as text); a key held twice fails the test."""
    frame = keyed(harness, harness.read())
    doubles = frame.filter(pl.col(KEY).is_duplicated()).get_column(KEY).unique().to_list()
    assert not doubles, f"the system holds these keys more than once: {doubles[:5]}"
    return dict(zip(frame.get_column(KEY).to_list(), frame.get_column(harness.marker).cast(pl.String).to_list(), strict=True))


def expected(frame: pl.DataFrame, marker: str) -> dict[str, str | None]:
    return dict(zip(frame.get_column(KEY).to_list(), frame.get_column(marker).cast(pl.String).to_list(), strict=True))


def assert_auth_error_at_once(action: object) -> None:
    started = time.monotonic()
    with pytest.raises(AuthError):
        action()  # type: ignore[operator]
    assert time.monotonic() - started < PROMPT_S, "refused credentials were retried (AuthError must come at once)"


class SourceContract:
    """Check, discover, plan, snapshot and deltas of a source."""

    @pytest.fixture
    def source(self, harness: Harness) -> Iterator[Source]:
        with _source(harness) as source:
            yield source

    def test_check_reaches_the_system(self, source: Source) -> None:
        source.check()

    def test_refused_credentials_are_an_auth_error_at_once(self, harness: Harness) -> None:
        bad = harness.bad_credentials()
        if bad is None:
            pytest.skip("the harness names no credentials to get wrong")
        assert harness.spec.source is not None
        source = harness.spec.source(bad)
        try:
            assert_auth_error_at_once(source.check)
        finally:
            source.close()

    def test_discover_offers_the_entity_with_its_key(self, harness: Harness, source: Source) -> None:
        harness.seed(harness.records(range(3)))
        offered = source.discover()
        assert all(isinstance(info, EntityInfo) for info in offered)
        infos = {info.entity: info for info in offered}
        assert harness.entity in infos, f"discover() does not offer {harness.entity} (offers {sorted(infos)})"
        assert infos[harness.entity].key == canonical(harness.entity).key
        assert set(infos) <= set(harness.spec.capabilities.entities), "discover() offers entities the spec does not declare"

    def test_plan_is_the_same_in_every_run(self, harness: Harness, source: Source) -> None:
        harness.seed(harness.records(range(25)))
        first = source.plan(harness.entity, harness.source_options())
        with _source(harness) as other:
            second = other.plan(harness.entity, harness.source_options())
        assert first and all(isinstance(c, Chunk) for c in first), "plan() must return at least one Chunk"
        ids = [c.id for c in first]
        assert len(set(ids)) == len(ids), f"chunk ids repeat: {ids}"
        assert ids == [c.id for c in second], "chunk ids differ between runs: a resumed run could not find its chunks"
        for chunk in first:
            assert json.loads(json.dumps(chunk.spec)) == chunk.spec, f"chunk {chunk.id}: its spec must be JSON (it is stored)"

    def test_snapshot_yields_every_record_once_and_a_chunk_reads_the_same_again(self, harness: Harness, source: Source) -> None:
        seeded = harness.records(range(25))
        harness.seed(seeded)
        options = harness.source_options()
        chunks = source.plan(harness.entity, options)
        frames = [f for c in chunks for f in source.snapshot(harness.entity, options, c)]
        assert all(isinstance(f, pl.DataFrame) for f in frames), "snapshot() must yield polars DataFrames"
        read = keyed(harness, harness.to_canonical(pl.concat(frames, how="diagonal_relaxed")))
        assert sorted(read.get_column(KEY).to_list()) == sorted(seeded.get_column(KEY).to_list())
        with _source(harness) as other:  # a resumed run reads a chunk again, in another process
            again = [f for f in other.snapshot(harness.entity, options, chunks[0])]
        first = [f for f in source.snapshot(harness.entity, options, chunks[0])]
        assert _sorted_keys(harness, again) == _sorted_keys(harness, first)

    def test_check_hooks_list_the_columns_and_sample_reads_at_most_n(self, harness: Harness, source: Source) -> None:
        """`kanal check`: `fields` lists every column a snapshot yields (or None); `sample` reads seeded records."""
        seeded = harness.records(range(5))
        harness.seed(seeded)
        options = harness.source_options()
        sample = source.sample(harness.entity, options, 3)
        assert isinstance(sample, pl.DataFrame) and 0 < sample.height <= 3, "sample(..., 3) must return 1 to 3 rows here"
        keys = set(keyed(harness, harness.to_canonical(sample)).get_column(KEY).to_list())
        assert keys <= set(seeded.get_column(KEY).to_list()), f"sample() returned records nobody seeded: {keys}"
        fields = source.fields(harness.entity, options)
        if fields is not None:
            unlisted = [c for c in sample.columns if c not in fields]
            assert not unlisted, f"fields() does not list columns the snapshot yields: {unlisted}"

    def test_deltas_after_a_position_arrive_once_and_are_newer_than_the_snapshot(self, harness: Harness, tmp_path: Path) -> None:
        options = harness.delta_options()
        if options is None or harness.spec.capabilities.delta == (DeltaKind.NONE,):
            pytest.skip("the source reads no deltas")
        harness.seed(harness.records(range(10)))
        context = DeltaContext(f"kit{tmp_path.name[-8:].replace('-', '_').lower()}", {harness.entity: options})
        with _source(harness) as source:
            reader = source.delta(context)
            try:
                position = _stored(reader.start())
                snapshot = _snapshot_versions(harness, source, reader, position, options)
                now = datetime.now(UTC)
                changed = pl.concat([harness.records(range(8, 10), 2, now), harness.records(range(10, 12), 2, now)])
                harness.change(changed)
                position, got = _read_until(harness, reader, position, set(changed.get_column(KEY).to_list()))
                assert sorted(got.get_column(KEY).to_list()) == sorted(changed.get_column(KEY).to_list()), \
                    "changes after the position must arrive, each once, and nothing else"
                assert got.get_column(OP).to_list() == [UPSERT] * got.height
                assert got.schema[VERSION] == pl.Int64 and got.get_column(VERSION).null_count() == 0
                for key, version in zip(got.get_column(KEY), got.get_column(VERSION), strict=True):
                    if key in snapshot:
                        assert version > snapshot[key], f"{key}: a change is not newer than the snapshot row it follows"
                assert _entity_rows(harness, reader.read(position)) == 0, "a read after the last change handed something out"
                with _source(harness) as restarted:  # a new process resumes from the stored position
                    other = restarted.delta(context)
                    try:
                        assert _entity_rows(harness, other.read(position)) == 0, "a restarted reader handed changes out twice"
                    finally:
                        other.close()
            finally:
                reader.close()
                source.cleanup(context)


class SinkContract:
    """Writes, re-writes, versions, deletes, refusals and credentials of a sink."""

    @pytest.fixture
    def sinks(self, harness: Harness, tmp_path: Path) -> Iterator[_Sinks]:
        sinks = _Sinks(harness, tmp_path)
        yield sinks
        sinks.close()

    def test_check_reaches_the_system(self, sinks: _Sinks) -> None:
        sinks.new().check()

    def test_refused_credentials_are_an_auth_error_at_once(self, harness: Harness) -> None:
        bad = harness.bad_credentials()
        if bad is None:
            pytest.skip("the harness names no credentials to get wrong")
        assert harness.spec.sink is not None
        sink = harness.spec.sink(bad)
        try:
            assert_auth_error_at_once(sink.check)
        finally:
            sink.close()

    def test_a_prepared_target_accepts_the_canonical_columns(self, harness: Harness, sinks: _Sinks) -> None:
        """`kanal check` must not report problems with a target the sink prepared itself."""
        schema = pl.Schema({**canonical(harness.entity).schema, KEY: pl.String(), VERSION: pl.Int64()})
        problems = sinks.prepared().accepts(harness.entity, sinks.options, schema)
        assert problems == [], f"accepts() finds problems with the target prepare() made: {problems}"

    def test_writes_every_record(self, harness: Harness, sinks: _Sinks) -> None:
        frame = harness.records(range(12))
        result = sinks.migrate(frame, "kit-snapshot")
        assert (result.written, result.failed_count) == (12, 0)
        assert held(harness) == expected(frame, harness.marker)

    def test_writing_a_batch_again_changes_nothing_even_with_the_sink_memory_lost(self, harness: Harness, sinks: _Sinks) -> None:
        frame = harness.records(range(12))
        again = "kit-snapshot" if harness.spec.capabilities.stable_batches else "kit-snapshot-again"
        sinks.migrate(frame, "kit-snapshot")
        once = held(harness)
        sinks.migrate(frame, again)  # re-delivered
        assert held(harness) == once == expected(frame, harness.marker)
        sinks.lose_memory()  # ids and hashes gone: the sink finds its records again, never creates them twice
        sinks.migrate(frame, again)
        assert held(harness) == once

    def test_an_older_version_never_replaces_a_newer_one(self, harness: Harness, sinks: _Sinks) -> None:
        sink = sinks.streaming()
        v1, v2, v3 = (harness.records(range(3), v) for v in (1, 2, 3))
        sinks.write(sink, as_changes(v2, UPSERT, _version(v2)), "kit-v2")
        sinks.write(sink, as_changes(v1, UPSERT, _version(v1)), "kit-v1")  # a replay, or a lagging partition
        assert held(harness) == expected(v2, harness.marker)
        sinks.write(sink, as_changes(v3, UPSERT, _version(v3)), "kit-v3")
        assert held(harness) == expected(v3, harness.marker)

    def test_deletes_apply(self, harness: Harness, sinks: _Sinks) -> None:
        if not harness.spec.capabilities.supports_deletes:
            pytest.skip("the sink does not declare supports_deletes")
        sink = sinks.streaming()
        v1 = harness.records(range(4), 1)
        sinks.write(sink, as_changes(v1, UPSERT, _version(v1)), "kit-v1")
        sinks.write(sink, as_changes(v1.head(1), DELETE, _version(v1) + 1), "kit-delete")
        assert held(harness) == expected(v1.slice(1), harness.marker)

    def test_read_back_lists_every_record_held_once(self, harness: Harness, sinks: _Sinks) -> None:
        """`kanal verify` reads a sink back (`Sink.read_back`): every record written, none deleted, each key once."""
        sink = sinks.streaming()
        frame = harness.records(range(6), 1)
        sinks.write(sink, as_changes(frame, UPSERT, _version(frame)), "kit-read-back")
        if harness.spec.capabilities.supports_deletes:
            sinks.write(sink, as_changes(frame.head(1), DELETE, _version(frame) + 1), "kit-read-back-delete")
            frame = frame.slice(1)
        back = sinks.new().read_back(harness.entity, sinks.options)
        if back is None:
            pytest.skip("the sink cannot read back what it holds (read_back returns None)")
        keys = conform(back, canonical(harness.entity)).get_column(KEY).to_list()
        assert sorted(keys) == sorted(keyed(harness, frame).get_column(KEY).to_list())

    def test_truncates_apply_and_older_records_stay_out(self, harness: Harness, sinks: _Sinks) -> None:
        if not harness.spec.capabilities.supports_truncate:
            pytest.skip("the sink does not declare supports_truncate")
        sink = sinks.streaming()
        v1 = harness.records(range(4), 1)
        sinks.write(sink, as_changes(v1, UPSERT, _version(v1)), "kit-v1")
        v3 = harness.records(range(4), 3)
        sinks.write(sink, truncate_row(v1, _version(v3)), "kit-truncate")
        assert held(harness) == {}
        late, v4 = harness.records(range(2), 2), harness.records(range(1), 4)
        sinks.write(sink, as_changes(late, UPSERT, _version(late)), "kit-late")  # older than the truncate
        sinks.write(sink, as_changes(v4, UPSERT, _version(v4)), "kit-v4")
        assert held(harness) == expected(v4, harness.marker)

    def test_a_refused_record_is_isolated_and_the_others_are_written(self, harness: Harness, sinks: _Sinks) -> None:
        good = harness.records(range(6))
        rows = good.drop(KEY).to_dicts()
        bad = harness.refuse(rows[2])
        if bad is None:
            pytest.skip("the harness names no record the system refuses")
        frame = harness.frame([*rows[:2], bad, *rows[3:]])
        result = sinks.migrate(frame, "kit-refused")
        assert result.failed is not None, "the refused record is not in WriteResult.failed"
        assert result.failed.get_column(KEY).to_list() == [frame.get_column(KEY)[2]]
        assert result.failed.get_column("reason").str.len_chars().min() > 0, "a refusal must say why"  # type: ignore[operator]
        assert result.written == 5
        assert held(harness) == expected(frame.filter(pl.int_range(pl.len()) != 2), harness.marker)


# helpers ----------------------------------------------------------------------------------------


@contextmanager
def _source(harness: Harness) -> Iterator[Source]:
    assert harness.spec.source is not None, f"connector {harness.spec.name!r} has no source"
    source = harness.spec.source(harness.config())
    try:
        yield source
    finally:
        source.close()


class _Sinks:
    """Sink instances as the engine makes them (attached to one memory, checked, prepared) and its write step."""

    def __init__(self, harness: Harness, folder: Path) -> None:
        assert harness.spec.sink is not None, f"connector {harness.spec.name!r} has no sink"
        self.harness, self.folder, self.generation = harness, folder, itertools.count()
        self.memory = self._memory()
        self.options = harness.sink_options()
        self.limits = SinkLimits(harness.spec.capabilities)
        self.skip_unchanged = harness.spec.capabilities.skip_unchanged
        self.opened: list[Sink] = []

    def _memory(self) -> SinkMemory:
        return SinkMemory(self.folder / f"kit-sink-memory-{next(self.generation)}.sqlite")

    def lose_memory(self) -> None:
        """Later sinks start with an empty memory, as after the job's state was lost."""
        self.memory.close()
        self.memory = self._memory()

    def new(self) -> Sink:
        assert self.harness.spec.sink is not None
        sink = self.harness.spec.sink(self.harness.config())
        self.opened.append(sink)
        sink.attach(self.memory)
        return sink

    def prepared(self) -> Sink:
        sink = self.new()
        sink.check()
        sink.prepare(self.harness.entity, self.options)
        return sink

    def write(self, sink: Sink, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        """The engine's write step (see the module docstring); records the guard held back count as skipped."""
        entity = self.harness.entity
        result, _ = write_changed(
            sink, entity, self.options, frame, batch_id, memory=self.memory if self.skip_unchanged else None,
            limits=self.limits, target=describe_target("kit", entity, self.options), retry=RETRY, cancel=threading.Event(),
        )  # fmt: skip
        return result

    def migrate(self, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        """A migration in a fresh process: prepare, write one batch, finish."""
        sink = self.prepared()
        result = self.write(sink, frame, batch_id)
        sink.finish(self.harness.entity, self.options)
        return result

    def streaming(self) -> Sink:
        """A sink ready for changes: a stream starts after the migration finished its targets."""
        sink = self.prepared()
        sink.finish(self.harness.entity, self.options)
        return sink

    def close(self) -> None:
        for sink in self.opened:
            sink.close()
        self.memory.close()


def _version(frame: pl.DataFrame) -> int:
    """The version of records made by `Harness.records`: their change time."""
    return micros(frame.get_column("updated_at")[0])


def _stored(position: dict) -> dict:
    """A position as it comes back from the state store (JSON)."""
    return json.loads(json.dumps(position))


def _sorted_keys(harness: Harness, frames: list[pl.DataFrame]) -> list[str]:
    if not frames:
        return []
    return sorted(keyed(harness, harness.to_canonical(pl.concat(frames, how="diagonal_relaxed"))).get_column(KEY).to_list())


def _snapshot_versions(harness: Harness, source: Source, reader: DeltaReader, position: dict, options: object) -> dict[str, int]:
    """key -> version of the snapshot rows read after `position` (empty when snapshots carry none)."""
    expr = reader.snapshot_version(harness.entity, position)
    if expr is None:
        return {}
    frames = [f for c in source.plan(harness.entity, options) for f in source.snapshot(harness.entity, options, c)]  # type: ignore[arg-type]
    rows = pl.concat(frames, how="diagonal_relaxed")
    versions = keyed(harness, harness.to_canonical(rows)).select(KEY, expr.alias(VERSION))
    assert versions.get_column(VERSION).null_count() == 0, "snapshot_version() gave rows no version"
    return dict(versions.iter_rows())


def _entity_rows(harness: Harness, changes: object) -> int:
    frame = changes.frames.get(harness.entity)  # type: ignore[attr-defined]
    return 0 if frame is None else frame.height


def _read_until(harness: Harness, reader: DeltaReader, position: dict, wanted: set[str]) -> tuple[dict, pl.DataFrame]:
    """Read (and confirm) until every wanted key arrived and a read finds nothing more; every change read."""
    got: list[pl.DataFrame] = []
    deadline = time.monotonic() + DELTA_TIMEOUT_S
    while True:
        changes = reader.read(position)
        position = _stored(changes.position)
        reader.confirm(position)
        frame = changes.frames.get(harness.entity)
        if frame is not None and frame.height:
            got.append(keyed(harness, harness.to_canonical(frame)))
        seen = {k for f in got for k in f.get_column(KEY).to_list()}
        if wanted <= seen and (frame is None or frame.height == 0):
            return position, pl.concat(got, how="diagonal_relaxed")
        read = sum(f.height for f in got)
        assert read <= 10 * len(wanted), f"the reader keeps handing out changes: {read} rows read for {len(wanted)} changes"
        assert time.monotonic() < deadline, f"changes did not arrive within {DELTA_TIMEOUT_S}s: missing {sorted(wanted - seen)}"
        if frame is None or frame.height == 0:
            time.sleep(0.1)  # caught up without the changes yet: poll again (a files delta waits for files to settle)
